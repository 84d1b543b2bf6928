"""The contract every exported method meets (``MorphableModel``): metre-space API, input checks, Lightning training,
exact checkpoint round trips, sampling, interpolation and the inference form, each on tiny arguments.

A method exported from ``morphzoo.methods`` without an entry in :data:`TINY` fails
:func:`test_every_exported_method_has_tiny_arguments`, so new methods are covered by construction.
"""

import copy
from types import SimpleNamespace

import pytest
import torch
from lightning import Trainer

from morphzoo import methods
from morphzoo.zoo.checkpoint import load_checkpoint, write_checkpoint
from tests.synthetic import BU3DFELikeDataModule, SphereDataModule, sphere_template

METHODS = sorted(set(methods.__all__) - {"MorphableModel"})
VERTICES = sphere_template().num_vertices  # SphereDataModule's sphere
# Two levels on the 642-vertex sphere (642 / 161 / 41) for the mesh autoencoders.
LEVELS = {"latent_dim": 8, "sampling_factors": (4, 4), "encoder_channels": (8, 8)}
IBVAE_TINY = {"identity_dim": 3, "expression_dim": 2, "sample_counts": (64, 32), "neighbours": 8, "decoder_hidden": 16}
TINY = {
    "CoMA": {**LEVELS, "decoder_channels": (8, 8, 8), "cheb_order": 3},
    "Deep3DMMSpectral": {**LEVELS, "decoder_channels": (8, 8, 8), "cheb_order": 3, "key_dim": 5},
    "Deep3DMMSpiral": {**LEVELS, "decoder_channels": (8, 8, 8), "spiral_rings": (1, 1), "spiral_dilation": (1, 1),
                       "key_dim": 5},
    "LAMM": {"dim": 16, "encoder_layers": 1, "decoder_layers": 1, "heads": 2, "latent_dim": 8, "regions": "cluster",
             "num_regions": 4, "control_vertices": 3},
    "DecoupledGAN": {"identities": 3, "expressions": 3, "identity_dim": 4, "expression_dim": 3, "noise_dim": 2,
                     "hidden": 32, "image_size": 16, "fit_steps": 100},
    "IBCVAE": {**IBVAE_TINY, "expressions": 6, "levels": 4},
    "IBVAE": IBVAE_TINY,
    "LocallyWeightedAutoencoder": {**LEVELS, "decoder_channels": (8, 8, 8), "cheb_order": 3, "parts": 2},
    "Neural3DMM": {**LEVELS, "decoder_channels": (8, 8, 8), "spiral_rings": (1, 1), "spiral_dilation": (1, 1)},
    "PCA": {"latent_dim": 4},
    "RegionPCA": {"latent_dim": 6, "regions": [vertex % 3 for vertex in range(VERTICES)]},
    "SpiralNetPlusPlus": {**LEVELS, "spiral_length": 5, "spiral_dilation": (1, 1)},
}
# The latent size of each method: its latent_dim; for IB-VAE |z_id| + |z_exp| (+ the IB-CVAE's label); for the GAN
# |z_id| + |z_exp| + |z_noise|.
LATENT_SIZES = {"DecoupledGAN": 9, **{name: arguments.get("latent_dim", arguments.get("identity_dim", 0)
                                                          + arguments.get("expression_dim", 0)
                                                          + arguments.get("expressions", 0))
                                      for name, arguments in TINY.items() if name != "DecoupledGAN"}}
# Conditional models train on data with their labels (same sphere template); the GAN's geometry image needs a UV map,
# so an open sphere (harmonic UVs); the rest train on SphereDataModule.
DATA = {"IBCVAE": BU3DFELikeDataModule,
        "DecoupledGAN": lambda batch_size: SphereDataModule(frames=8, batch_size=batch_size, open_cap=True)}
# Models that encode by iterative fitting (the GAN) round differently in batched and single float32 fits.
FITTED = {"DecoupledGAN"}
# The PCT encoder's BatchNorm layers start with running statistics (0, 1) that eval mode uses: after one step every
# mesh encodes to nearly the same code. A few dozen steps make their statistics the data's.
STEPS = {"IBCVAE": 30, "IBVAE": 30}
# The GAN's fast_dev_run would be one critic step and no generator step (3 critic steps per generator step).
STEPS["DecoupledGAN"] = 6
# PCA's fast_dev_run fit sees one batch, which must hold more meshes than its latent dimensions.
BATCH_SIZE = 8
# Batched and single inputs, or Deep3DMM's materialised sparse mappings, may round differently in float32.
ROUNDING = {"atol": 1e-6, "rtol": 1e-5}


def fast_dev_run(model: methods.MorphableModel, data: SphereDataModule) -> Trainer:
    """One training batch (``fast_dev_run``); :data:`STEPS` more for the methods that need them."""
    steps = STEPS.get(type(model).__name__)
    schedule = {"max_steps": steps, "limit_val_batches": 1} if steps else {"fast_dev_run": True}
    trainer = Trainer(**schedule, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.fixture(scope="module")
def data():
    return SphereDataModule(frames=8, batch_size=BATCH_SIZE)


@pytest.fixture(scope="module")
def meshes(trained):
    """Four meshes of different subjects and expressions from the method's data, (4, V, 3) in metres."""
    return torch.from_numpy(trained.data.collection.vertices[[3, 21, 38, 60]])


@pytest.fixture(scope="module", params=METHODS)
def trained(request, data):
    """A method after a ``fast_dev_run`` fit (in eval mode), its trainer and its state before the fit. Tests that
    change the model work on a copy."""
    torch.manual_seed(0)
    data = DATA[request.param](batch_size=BATCH_SIZE) if request.param in DATA else data
    model = getattr(methods, request.param)(template=data.template, mean=data.mean, std=data.std,
                                            **TINY[request.param])
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainer = fast_dev_run(model, data)
    return SimpleNamespace(model=model.eval(), trainer=trainer, before=before, data=data)


def test_every_exported_method_has_tiny_arguments():
    assert set(TINY) == set(METHODS)
    assert all(issubclass(getattr(methods, name), methods.MorphableModel) for name in METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_a_template_is_required(name):
    with pytest.raises(ValueError, match="needs a template mesh"):
        getattr(methods, name)(**TINY[name])


def test_fast_dev_run_fit_changes_the_model(trained):
    model, before = trained.model, trained.before
    after = model.state_dict()
    # Closed-form models (PCA) have no parameters: their fit fills buffers.
    learned = [name for name, _ in model.named_parameters()] or list(before)
    assert any(not torch.equal(before[name], after[name]) for name in learned)
    if isinstance(model, methods.PCA):
        assert model.is_fitted


def test_metre_space_shapes_and_forward(trained, meshes):
    model = trained.model
    latent = model.encode(meshes)
    assert latent.shape[0] == len(meshes) and latent[0].numel() == LATENT_SIZES[type(model).__name__]
    reconstruction = model.decode(latent)
    assert reconstruction.shape == meshes.shape and reconstruction.dtype == torch.float32
    assert torch.equal(model(meshes), reconstruction)
    # Metres, not standardised units: near the input on a sphere of radius 0.1 m, even barely trained.
    assert (reconstruction - meshes).norm(dim=-1).mean() < 0.05
    same = torch.testing.assert_close if type(model).__name__ in FITTED else \
        lambda actual, expected: torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    same(model.encode(meshes[0]), model.encode(meshes[:1])[0])
    same(model(meshes[0]), model(meshes[:1])[0])


def test_bad_meshes_raise_errors_that_name_the_problem(trained, meshes):
    model = trained.model
    vertices = model.num_vertices
    with_nan = meshes.clone()
    with_nan[1, 5, 0] = float("nan")
    for bad, message in ((with_nan, "contain NaN or infinite values"),
                         (meshes[:, :-1], rf"expected vertices of shape \(B, {vertices}, 3\) or \({vertices}, 3\)"),
                         (meshes[0, :-1], rf"expected vertices of shape \(B, {vertices}, 3\)")):
        for call in (model.encode, model):
            with pytest.raises(ValueError, match=message):
                call(bad)


def test_lightning_checkpoint_round_trip_is_exact(trained, meshes, tmp_path):
    model = trained.model
    trained.trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = type(model).from_lightning_checkpoint(str(tmp_path / "model.ckpt"))
    assert not restored.training
    state, expected = restored.state_dict(), model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    assert torch.equal(restored(meshes), model(meshes))


def test_zoo_folder_round_trip_is_exact(trained, meshes, tmp_path):
    model = trained.model
    loaded = load_checkpoint(write_checkpoint(model, tmp_path / "checkpoint"))
    assert type(loaded) is type(model)
    # Loading switches to the inference form (Deep3DMM materialises): compare with the source's inference form.
    reference = copy.deepcopy(model).prepare_inference()
    assert torch.equal(loaded(meshes), reference(meshes))


def test_sampling_from_the_fitted_latent_gaussian(trained):
    model = copy.deepcopy(trained.model)
    if model.samples_from_prior:  # a GAN samples from its prior and refuses to replace it
        with pytest.raises(TypeError, match="samples from its own prior"):
            model.fit_latent_distribution(trained.data.train_dataloader())
    else:
        model.fit_latent_distribution(trained.data.train_dataloader())
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, model.num_vertices, 3) and torch.isfinite(samples).all()
    assert torch.equal(model.sample(5, generator=torch.Generator().manual_seed(0)), samples)
    assert not torch.equal(model.sample(5, generator=torch.Generator().manual_seed(1)), samples)


def test_interpolation_ends_are_the_reconstructions(trained, meshes):
    model = trained.model
    source, target = meshes[0], meshes[2]
    ends = model.interpolate(source, target, [0.0, 1.0])
    assert ends.shape == (2, model.num_vertices, 3)
    assert not torch.allclose(model(source), model(target), **ROUNDING)  # swapped ends would fail
    torch.testing.assert_close(ends[0], model(source), **ROUNDING)
    torch.testing.assert_close(ends[1], model(target), **ROUNDING)


def test_prepare_inference_keeps_outputs(trained, meshes):
    expected = trained.model(meshes)
    model = copy.deepcopy(trained.model).train()
    assert model.prepare_inference() is model and not model.training
    torch.testing.assert_close(model(meshes), expected, **ROUNDING)
