"""The locally weighted autoencoder (Kim & Kim): sparse NMF local weights, part codes, cycle loss, part edits."""

import numpy as np
import pytest
import torch
from lightning import Trainer

from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection
from morphzoo.mesh.local_weights import local_weights_for, nmf_feature_matrix, sparse_nmf
from morphzoo.methods.locally_weighted import LocallyWeightedAutoencoder, cycle_loss, partition_loss
from tests.synthetic import sphere_template

TINY = {"latent_dim": 8, "parts": 2, "sampling_factors": (4, 4), "encoder_channels": (16, 16),
        "decoder_channels": (16, 16, 16), "cheb_order": 3}


def two_bump_collection(count: int = 160, seed: int = 0) -> MeshCollection:
    """Spheres whose two poles bulge independently (random amplitudes): two parts with disjoint supports."""
    template = sphere_template()
    rest = template.vertices
    directions = rest / np.linalg.norm(rest, axis=1, keepdims=True)
    bumps = np.stack([np.exp(-np.sum((directions - pole) ** 2, -1) / 0.3) for pole in ([0, 0, 1], [0, 0, -1])])
    amplitudes = np.random.default_rng(seed).uniform(0.0, 0.03, (count, 2))
    vertices = rest + (amplitudes @ bumps)[..., None] * directions
    return MeshCollection(vertices=vertices.astype(np.float32), template=template,
                          labels={"identity": np.arange(count)})


class TwoBumpDataModule(MeshDataModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(split="random", test_size=0.1, batch_size=16, **kwargs)

    def load_collection(self) -> MeshCollection:
        return two_bump_collection()


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained on the two-bump spheres (CPU, ~20 s)."""
    torch.manual_seed(0)
    data = TwoBumpDataModule()
    model = LocallyWeightedAutoencoder(template=data.template, mean=data.mean, std=data.std, **TINY,
                                       learning_rate=0.02)
    trainer = Trainer(max_epochs=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    return model.eval(), data


def test_sparse_nmf_recovers_a_parts_based_matrix():
    # X = W0 H0 with two disjoint non-negative parts: NMF must reconstruct it and find the parts.
    rng = np.random.default_rng(0)
    true_weights = np.zeros((60, 2))
    true_weights[:30, 0], true_weights[30:, 1] = rng.uniform(0.5, 1, 30), rng.uniform(0.5, 1, 30)
    features = true_weights @ rng.uniform(0, 1, (2, 40))
    weights, coefficients, error = sparse_nmf(features, 2, sparsity=0.0)
    assert (weights >= 0).all() and (coefficients >= 0).all()
    assert error == pytest.approx(np.linalg.norm(features - weights @ coefficients) / np.linalg.norm(features))
    assert error < 1e-3
    assert np.allclose(weights.max(axis=0), 1)
    found = weights.argmax(axis=1)
    assert len(set(found[:30])) == 1 and len(set(found[30:])) == 1 and found[0] != found[-1]


def test_sparsity_zeroes_weights_and_too_much_is_refused():
    features = nmf_feature_matrix(two_bump_collection(60).vertices)
    assert (features >= 0).all() and np.allclose(np.linalg.norm(features, axis=0), 1)
    dense, _, dense_error = sparse_nmf(features, 2, sparsity=0.0)
    sparse, _, sparse_error = sparse_nmf(features, 2, sparsity=0.04)
    assert (sparse == 0).mean() > (dense == 0).mean()
    assert sparse_error >= dense_error - 1e-6
    with pytest.raises(ValueError, match="lower the sparsity"):
        sparse_nmf(features, 2, sparsity=1e4)
    with pytest.raises(ValueError, match="non-negative"):
        sparse_nmf(-features, 2)


def test_local_weights_are_cached_by_content(monkeypatch):
    vertices = two_bump_collection(40).vertices
    first = local_weights_for(vertices, 2)
    monkeypatch.setattr("morphzoo.mesh.local_weights.sparse_nmf", lambda *args, **kwargs: 1 / 0)
    assert np.array_equal(local_weights_for(vertices, 2), first)
    with pytest.raises(ZeroDivisionError):  # other data is another key: it is computed
        local_weights_for(vertices[:30], 2)


def test_cycle_loss_is_zero_for_an_exactly_invertible_toy():
    # Parts are complementary coordinate blocks; decoding sums them, factorising projects: an exact inverse pair.
    masks = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]])
    vertices = torch.randn(6, 4)
    factorise = lambda x: x[:, None] * masks  # noqa: E731
    decode = lambda parts: parts.sum(1)  # noqa: E731
    permutations = torch.stack([torch.randperm(6), torch.randperm(6)])
    assert cycle_loss(vertices, factorise(vertices), decode, factorise, permutations) < 1e-7
    lossy = lambda parts: 0.5 * parts.sum(1)  # noqa: E731 -- not inverted by factorise: the loss must see it
    assert cycle_loss(vertices, factorise(vertices), lossy, factorise, permutations) > 0.1


def test_partition_loss_is_zero_exactly_for_a_partition_of_the_identity():
    partition = torch.stack([torch.diag(torch.tensor([1.0, 1, 0])), torch.diag(torch.tensor([0.0, 0, 1]))])
    assert partition_loss(partition) == 0
    assert partition_loss(partition * 0.9) > 0
    assert partition_loss(torch.stack([torch.eye(3), torch.eye(3)])) > 0  # overlapping parts


def test_part_codes_recompose_to_the_whole_code():
    model = LocallyWeightedAutoencoder(template=sphere_template(), **TINY)
    latent = torch.randn(5, TINY["latent_dim"])
    # at initialisation, up to the symmetry-breaking noise
    assert (model.part_codes(latent).sum(1) - latent).abs().max() < 0.2
    optimiser = torch.optim.Adam([model.projections], lr=0.01)
    for _ in range(300):
        optimiser.zero_grad()
        partition_loss(model.projections).backward()
        optimiser.step()
    torch.testing.assert_close(model.part_codes(latent).sum(1), latent, atol=1e-3, rtol=0)


def test_uniform_weights_decode_the_recomposed_code_like_coma():
    model = LocallyWeightedAutoencoder(template=sphere_template(), **TINY, local_weights=False).eval()
    parts = torch.randn(3, TINY["parts"], TINY["latent_dim"])
    coma = model.decode_coarsest(model.decoder_linear(parts.sum(1) / TINY["parts"]).view(
        3, model.level_sizes[-1], model.decoder_channels[0]))
    torch.testing.assert_close(model.decode_parts_normalised(parts), coma)


def test_coarsest_weights_are_a_partition_of_unity(trained):
    model, _ = trained
    weights = model.coarsest_weights()
    assert weights.shape == (model.level_sizes[-1], TINY["parts"])
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(len(weights)))


def test_local_weights_find_the_two_bumps(trained):
    model, _ = trained
    supports = model.supports().numpy()
    z = model.template.vertices[:, 2]
    north, south = supports[z > 0.07], supports[z < -0.07]
    assert np.bincount(north).max() / len(north) > 0.9 and np.bincount(south).max() / len(south) > 0.9
    assert np.bincount(north).argmax() != np.bincount(south).argmax()


def test_swapping_a_part_moves_mostly_that_part(trained):
    model, data = trained
    faces = torch.from_numpy(data.collection.vertices[data.split_indices["test"]])
    with torch.no_grad():
        locality = model.part_swap_locality(faces)
        reconstruction = model(faces)
    assert (reconstruction - faces).norm(dim=-1).mean() < 0.003  # it learned (bumps are up to 30 mm)
    share = np.bincount(model.supports().numpy(), minlength=2) / model.num_vertices
    assert (locality.numpy() > 0.75).all() and (locality.numpy() > share + 0.2).all()


def test_part_interpolation_and_combination(trained):
    model, data = trained
    faces = torch.from_numpy(data.collection.vertices[:3])
    with torch.no_grad():
        reconstructions = model(faces)
        ends = model.interpolate_part(faces[0], faces[1], part=1, alphas=[0.0, 1.0])
        torch.testing.assert_close(ends[0], reconstructions[0], atol=1e-6, rtol=0)
        both = model.decode_parts(torch.stack([model.encode_parts(faces[0])[0], model.encode_parts(faces[1])[1]])[None])
        torch.testing.assert_close(ends[1], both[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(model.combine_parts(faces, [2, 2]), reconstructions[2], atol=1e-6, rtol=0)
        mixed = model.combine_parts(faces, [[0, 1], [1, 0]])
        assert mixed.shape == (2, model.num_vertices, 3)
    with pytest.raises(ValueError, match="part must be in"):
        model.interpolate_part(faces[0], faces[1], part=2, alphas=[0.5])
    with pytest.raises(ValueError, match="assignment must be"):
        model.combine_parts(faces, [0, 1, 2])
    with pytest.raises(ValueError, match="assignment indexes faces"):
        model.combine_parts(faces, [0, 3])


def test_missing_or_bad_local_weights_are_refused():
    model = LocallyWeightedAutoencoder(template=sphere_template(), **TINY)
    with pytest.raises(RuntimeError, match="no local weights yet"):
        model.decode(torch.zeros(1, TINY["latent_dim"]))
    with pytest.raises(ValueError, match="local weights must be finite, non-negative and of shape"):
        model.set_local_weights(np.ones((10, 2)))
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="fit it with a MeshDataModule"):
        trainer.fit(model, train_dataloaders=[{"vertices": torch.zeros(2, model.num_vertices, 3)}])
