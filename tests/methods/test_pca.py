"""PCA and region-PCA: equal to numpy's SVD, one-pass Lightning fit, checkpoints, regions, recipes."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from morphzoo.methods import LAMM, PCA, RegionPCA
from morphzoo.recipes import MorphzooCLI
from tests.synthetic import SphereDataModule, sphere_collection, sphere_template

ROOT = Path(__file__).resolve().parents[2]
RANK = 8


@pytest.fixture(scope="module")
def low_rank():
    """50 random meshes on a 42-vertex sphere: mean shape + rank-8 deformations of about a centimetre."""
    template = sphere_template(1)
    rng = np.random.default_rng(0)
    coefficients = rng.standard_normal((50, RANK)) * np.linspace(2, 0.5, RANK)  # distinct singular values
    vertices = template.vertices.ravel() + 0.003 * coefficients @ rng.standard_normal((RANK, 3 * template.num_vertices))
    return template, vertices.reshape(50, -1, 3).astype(np.float32)


def numpy_pca(vertices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reconstruction, singular values and axes of the top-k PCA, by numpy's SVD in float64."""
    x = vertices.reshape(len(vertices), -1).astype(np.float64)
    mean = x.mean(0)
    _, singular, axes = np.linalg.svd(x - mean, full_matrices=False)
    reconstruction = mean + (x - mean) @ axes[:k].T @ axes[:k]
    return reconstruction.reshape(vertices.shape), singular[:k], axes[:k]


def random_regions(template, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, template.num_vertices)


@pytest.mark.parametrize("solver", ["dense", "arpack"])
def test_pca_equals_numpy_svd(low_rank, solver):
    template, vertices = low_rank
    model = PCA(template=template, latent_dim=5, solver=solver).fit(vertices)
    reconstruction, singular, axes = numpy_pca(vertices, 5)
    np.testing.assert_allclose(model(vertices).numpy(), reconstruction, atol=2e-7)
    np.testing.assert_allclose(model.singular_values.numpy(), singular, rtol=1e-5)
    # the axes up to sign: equal projectors
    w = model.components.double().numpy()
    np.testing.assert_allclose(w.T @ w, axes.T @ axes, atol=1e-5)
    np.testing.assert_allclose(w @ w.T, np.eye(5), atol=1e-5)  # orthonormal components
    np.testing.assert_allclose(model.mean.numpy(), vertices.mean(0), atol=1e-7)


def test_reconstruction_improves_with_latent_dim_and_is_exact_at_full_rank(low_rank):
    template, vertices = low_rank
    errors = [(PCA(template=template, latent_dim=k).fit(vertices)(vertices) - torch.from_numpy(vertices))
              .norm(dim=-1).mean().item() for k in range(1, RANK + 1)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-6 * errors[0]


def test_fit_accepts_arrays_tensors_and_dataloaders_alike():
    data = SphereDataModule(frames=20, batch_size=16)
    train = data.collection.vertices[np.sort(data.split_indices["train"])]
    from_array = PCA(template=data.template, latent_dim=4).fit(train, batch_size=7)
    from_loader = PCA(template=data.template, latent_dim=4).fit(data.train_dataloader())  # shuffled dict batches
    meshes = torch.from_numpy(data.collection.vertices[:5])
    torch.testing.assert_close(from_loader.encode(meshes), from_array.encode(meshes), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(from_loader(meshes), from_array(meshes), atol=1e-7, rtol=1e-5)


def test_latent_gaussian_is_the_pca_variance(low_rank):
    template, vertices = low_rank
    model = PCA(template=template, latent_dim=4).fit(vertices)
    # coefficients of the training meshes: mean 0, variance sigma_i^2 / (N - 1), uncorrelated
    covariance = model.latent_cholesky @ model.latent_cholesky.T
    torch.testing.assert_close(covariance, torch.diag(model.explained_variance), atol=1e-9, rtol=1e-4)
    torch.testing.assert_close(model.latent_mean, torch.zeros(4), atol=1e-6, rtol=0)
    refitted = model.latent_cholesky.clone()
    model.fit_latent_distribution(vertices)
    torch.testing.assert_close(model.latent_cholesky, refitted, atol=1e-7, rtol=1e-4)
    assert model.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, template.num_vertices, 3)


def fit_with_trainer(model, data, root: Path, epochs: int = 1) -> Trainer:
    trainer = Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=root, callbacks=[ModelCheckpoint(monitor="val/error_mm", mode="min")])
    trainer.fit(model, datamodule=data)
    return trainer


MODELS = {
    "pca": lambda data: PCA(template=data.template, mean=data.mean, std=data.std, latent_dim=4),
    "region-pca": lambda data: RegionPCA(template=data.template, mean=data.mean, std=data.std, latent_dim=7,
                                         regions=random_regions(data.template, 3).tolist()),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lightning_fit_equals_fit_on_the_array_and_checkpoints_round_trip(name, tmp_path, monkeypatch):
    data = SphereDataModule(frames=20, batch_size=16)
    model = MODELS[name](data)
    solves = []
    solve = model._solve
    monkeypatch.setattr(model, "_solve", lambda: solves.append(1) or solve())
    trainer = fit_with_trainer(model, data, tmp_path, epochs=3)
    assert len(solves) == 1  # the first epoch fits, later epochs do nothing

    train = data.collection.vertices[np.sort(data.split_indices["train"])]
    reference = MODELS[name](data).fit(train)
    meshes = torch.from_numpy(data.collection.vertices[data.split_indices["test"]])
    torch.testing.assert_close(model.mean, reference.mean)
    torch.testing.assert_close(model.components, reference.components, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(meshes), reference(meshes), atol=1e-7, rtol=1e-5)
    # the epoch's validation saw the fitted model
    mean_shape_error = (data.mean - meshes).norm(dim=-1).mean() * 1000
    assert trainer.callback_metrics["val/error_mm"] < 0.5 * mean_shape_error

    # the solve counts as an optimiser step, so the recipes' ModelCheckpoint keeps a best-validation checkpoint
    best = trainer.checkpoint_callback.best_model_path
    assert best
    restored = type(model).from_lightning_checkpoint(best)  # no data, no regions needed
    assert restored.is_fitted
    torch.testing.assert_close(restored(meshes), model(meshes))
    torch.testing.assert_close(restored.latent_cholesky, model.latent_cholesky)
    torch.testing.assert_close(restored.sample(2, torch.Generator().manual_seed(1)),
                               model.sample(2, torch.Generator().manual_seed(1)))


def test_unfitted_and_malformed_use_raise_clear_errors(low_rank):
    template, vertices = low_rank
    model = PCA(template=template, latent_dim=4)
    with pytest.raises(RuntimeError, match=r"not fitted yet: call model.fit"):
        model(vertices)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        model.decode(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="needs more than 4 training meshes"):
        model.fit(vertices[:4])
    with pytest.raises(ValueError, match="solver must be one of"):
        PCA(template=template, solver="lapack")
    with pytest.raises(ValueError, match=r"latent_dim must lie in \[1, 126\]"):
        PCA(template=template, latent_dim=127)
    model.fit(vertices)
    with pytest.raises(ValueError, match=r"expected latent codes of shape \(B, 4\)"):
        model.decode(torch.zeros(2, 5))


# ------------------------------------------------------------------------------------------------------- region-PCA
def test_region_pca_with_one_region_is_pca(low_rank):
    template, vertices = low_rank
    pca = PCA(template=template, latent_dim=5).fit(vertices)
    region = RegionPCA(template=template, latent_dim=5, regions=np.zeros(template.num_vertices, int)).fit(vertices)
    torch.testing.assert_close(region.components, pca.components)
    torch.testing.assert_close(region(vertices), pca(vertices))


def test_region_segment_controls_only_its_region_and_regions_partition_the_vertices():
    collection = sphere_collection(3, 3, 20)
    labels = random_regions(collection.template, 4)
    labels[labels == 3] = -1  # unassigned vertices form one extra region
    model = RegionPCA(template=collection.template, latent_dim=10, regions=labels).fit(collection.vertices)
    assert model.segment_sizes() == {0: 3, 1: 3, 2: 2, -1: 2}  # 10 over 4 regions, remainder first, unassigned last
    assert model.vertex_region.tolist() == labels.tolist()
    meshes = torch.from_numpy(collection.vertices[:4])
    latent = model.encode(meshes)
    for label in (0, 1, 2, -1):
        edited = latent.clone()
        edited[:, model.latent_region == label] += torch.randn(4, model.segment_sizes()[label]) * 0.01
        moved = (model.decode(edited) - model.decode(latent)).norm(dim=-1).amax(0) > 0
        assert moved[torch.from_numpy(labels == label)].any()
        assert not moved[torch.from_numpy(labels != label)].any()
    # each region's block is that region's own PCA
    vertices = collection.vertices[:, labels == 1]
    reconstruction, _, _ = numpy_pca(vertices, 3)
    np.testing.assert_allclose(model(collection.vertices)[:, labels == 1].numpy(), reconstruction, atol=1e-6)


def test_regions_come_from_the_template_or_a_regions_json(tmp_path):
    collection = sphere_collection(2, 2, 10)
    labels = random_regions(collection.template, 3)
    labels[:10] = -1
    path = tmp_path / "regions.json"
    path.write_text(json.dumps({f"r{k}": np.flatnonzero(labels == k).tolist() for k in range(3)}))
    from_file = RegionPCA(template=collection.template, latent_dim=6, regions=str(path)).fit(collection.vertices)
    template = type(collection.template)(vertices=collection.template.vertices, faces=collection.template.faces,
                                         regions=labels)
    from_template = RegionPCA(template=template, latent_dim=6).fit(collection.vertices)
    torch.testing.assert_close(from_file.components, from_template.components)
    assert from_file.vertex_region.tolist() == labels.tolist()


def test_num_regions_gives_region_pca_lamms_regions():
    """LAMM's supplementary comparison uses region-PCA with "the same number of regions as our models": num_regions
    merges the template's regions exactly as LAMM's regions="merge" does."""
    collection = sphere_collection(2, 2, 10)
    labels = random_regions(collection.template, 6)
    labels[:20] = -1  # unassigned vertices: merging assigns them, as in LAMM
    template = type(collection.template)(vertices=collection.template.vertices, faces=collection.template.faces,
                                         regions=labels)
    model = RegionPCA(template=template, latent_dim=8, num_regions=4).fit(collection.vertices)
    lamm = LAMM(template=template, regions="merge", num_regions=4, dim=16, heads=2, latent_dim=8, encoder_layers=1,
                decoder_layers=1, control_vertices=2)
    assert model.vertex_region.tolist() == lamm.region_labels.tolist()
    assert sorted(model.segment_sizes()) == [0, 1, 2, 3]  # four regions, none unassigned
    with pytest.raises(ValueError, match="cannot be combined with explicit regions"):
        RegionPCA(template=template, latent_dim=8, num_regions=4, regions=labels).fit(collection.vertices)


def test_bad_regions_raise_clear_errors(tmp_path):
    collection = sphere_collection(2, 2, 10)
    template, vertices = collection.template, collection.vertices
    cases = [
        ({}, "has no vertex regions. Pass `regions`"),
        ({"regions": [0, 1, 2]}, r"regions must be \(642,\) integer labels"),
        ({"regions": np.full(642, 0.5)}, r"regions must be \(642,\) integer labels"),
        ({"regions": np.full(642, -2)}, "region labels must be >= 0, or -1"),
        ({"regions": np.arange(642) % 7, "latent_dim": 6}, "latent_dim=6 is smaller than the 7 regions"),
        ({"regions": np.r_[np.zeros(641, int), 1], "latent_dim": 8}, "region 1 has 1 vertices .* segment has 4"),
        ({"regions": str(tmp_path / "missing.json")}, "regions file .*missing.json not found"),
    ]
    for arguments, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            RegionPCA(template=template, **{"latent_dim": 4, **arguments}).fit(vertices)


# ---------------------------------------------------------------------------------------------------------- recipes
NEW_RECIPES = sorted(str(path.relative_to(ROOT)) for pattern in ("pca*.yaml", "region-pca*.yaml", "coma-*.yaml")
                     for path in (ROOT / "recipes").glob(pattern))


def test_every_dataset_has_its_recipes():
    datasets = ("anny-body", "anny-hand", "coma", "dfaust", "synhand")
    expected = {f"recipes/{method}-{dataset}.yaml" for method in ("pca", "region-pca", "coma") for dataset in datasets}
    assert expected | {"recipes/pca.yaml", "recipes/region-pca.yaml"} <= set(NEW_RECIPES)


@pytest.mark.parametrize("recipe", NEW_RECIPES)
def test_recipes_parse(recipe, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["morphzoo"])  # the CLI gets its arguments from `args` alone
    with pytest.raises(SystemExit) as stopped:
        MorphzooCLI(args=["fit", "-c", str(ROOT / recipe), "--print_config"])
    assert stopped.value.code == 0
    assert "class_path: morphzoo.methods." in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["recipes/pca.yaml", "recipes/region-pca.yaml"])
def test_pca_recipe_fits_tiny_anny_face_through_the_cli(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["morphzoo"])
    cli = MorphzooCLI(args=["fit", "-c", str(ROOT / recipe), "--data.init_args.size=tiny",
                            "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
                            "--trainer.enable_progress_bar=false"])
    assert cli.model.is_fitted
    assert 0 < cli.trainer.callback_metrics["val/error_mm"] < 10
