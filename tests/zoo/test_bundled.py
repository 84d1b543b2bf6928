"""The checkpoints shipped in zoo/ load with no network and reproduce the test errors their registry entries record."""

import socket

import numpy as np
import pytest
import torch

import morphzoo
from morphzoo.data.anny import ANNY_DATASETS
from morphzoo.metrics.vertex_error import VertexError
from morphzoo.zoo.bench import datamodule_for
from morphzoo.zoo.registry import load_registry

REGISTRY = load_registry()
BUNDLED = sorted(entry.name for entry in REGISTRY.entries.values()
                 if entry.weights is not None and entry.weights.bundled and entry.dataset["name"] in ANNY_DATASETS)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is forbidden in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_zoo_bundles_every_method_on_anny_face():
    methods = {REGISTRY.entries[name].class_path for name in BUNDLED if name.endswith("anny-face")}
    assert {f"morphzoo.methods.{name}" for name in ("PCA", "RegionPCA", "CoMA", "SpiralNetPlusPlus", "Neural3DMM",
                                                     "Deep3DMMSpectral", "Deep3DMMSpiral", "LAMM", "IBVAE",
                                                     "DecoupledGAN")} <= methods


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoint_reproduces_its_recorded_test_error(name, no_network):
    entry = morphzoo.info(name)
    model = morphzoo.load(name)
    assert not model.training
    data = datamodule_for(entry, REGISTRY)  # the entry's recipe with its recorded data overrides
    data.setup("test")
    if data.template.fingerprint() != model.template.fingerprint():
        # anny-body's topology is a QEM decimation of anny's mesh made on first use: float differences between CPUs
        # can change its collapses, and then the generated data no longer fit the shipped weights' template
        pytest.skip(f"{name}: the {entry.dataset['name']} template generated on this machine "
                    f"({data.template.fingerprint()}) is not the one the weights were trained on "
                    f"({model.template.fingerprint()})")
    metric = VertexError()
    with torch.inference_mode():
        for batch in data.test_dataloader():
            metric.update(model(batch["vertices"]), batch["vertices"])
    measured = float(metric.compute()["mean"])
    recorded = entry.metrics["reconstruction/mean_mm"]
    # the entry was measured on the same deterministic data with the same shipped weights: only float noise differs
    np.testing.assert_allclose(measured, recorded, rtol=2e-3, atol=2e-4)


@pytest.mark.slow
def test_bundled_lamm_corrupting_one_region_token_changes_that_region_most(no_network):
    """LAMM supplement §3.1, Fig. 3: noise on one learned decoder region token of the trained anny-face autoencoder
    moves that region's vertices far more than the rest of the face."""
    model = morphzoo.load("lamm-anny-face")
    data = datamodule_for(morphzoo.info("lamm-anny-face"), REGISTRY)
    data.setup("test")
    meshes = next(iter(data.test_dataloader()))["vertices"][:16]
    with torch.inference_mode():
        ratios = model.locality_ratios(meshes)
    assert ratios.shape == (model.num_regions,)
    assert (ratios > 1).all(), ratios  # every region: its own vertices move more than the others on average
    assert ratios.median() > 3, ratios  # "far more": the typical region's vertices move several times as much
