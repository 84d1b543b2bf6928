"""The checkpoint folder: save -> load round trips, strict loading, tampered configs, Lightning export."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from morphzoo.methods import CoMA, SpiralNetPlusPlus
from morphzoo.zoo.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    export_lightning_checkpoint,
    load_checkpoint,
    write_checkpoint,
)
from tests.synthetic import sphere_collection, sphere_template


def tiny_spiralnet(seed: int = 0) -> SpiralNetPlusPlus:
    torch.manual_seed(seed)
    meshes = torch.from_numpy(sphere_collection(2, 2, 6).vertices)
    model = SpiralNetPlusPlus(template=sphere_template(3), mean=meshes.mean(0), std=meshes.std(0) + 1e-3,
                              latent_dim=4, encoder_channels=(8, 8, 8, 8))
    model.fit_latent_distribution(meshes)  # a fitted latent Gaussian must survive the round trip (resized buffers)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_spiralnet()


@pytest.fixture(scope="module")
def meshes():
    return torch.from_numpy(sphere_collection(2, 2, 6, seed=1).vertices[:5])


def test_fp32_round_trip_gives_identical_outputs(model, meshes, tmp_path):
    folder = write_checkpoint(model, tmp_path / "ckpt", extra={"dataset": {"name": "spheres"}})
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = load_checkpoint(folder)
    assert type(loaded) is SpiralNetPlusPlus and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(meshes), model(meshes), rtol=0, atol=0)
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["class_path"] == "morphzoo.methods.SpiralNetPlusPlus"
    assert config["init_args"]["encoder_channels"] == [8, 8, 8, 8]
    assert config["template"]["fingerprint"] == model.template.fingerprint()
    assert config["dataset"] == {"name": "spheres"}
    assert config["num_params"] == sum(p.numel() for p in model.parameters())


def test_fp16_storage_is_upcast_and_close(model, meshes, tmp_path):
    folder = write_checkpoint(model, tmp_path / "half", fp16=True)
    stored = load_file(str(folder / WEIGHTS_NAME))
    assert stored["encoder_linear.weight"].dtype == torch.float16
    assert stored["mean"].dtype == torch.float32  # metre-space buffers stay float32
    assert stored["template_faces"].dtype == torch.int64 and stored["down.0.down_index"].dtype == torch.int64
    assert all(stored[name].dtype == torch.float16 for name, _ in model.named_parameters())
    loaded = load_checkpoint(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert loaded.template_faces.dtype == torch.int64
    with torch.no_grad():
        difference = (loaded(meshes) - model(meshes)).abs().max().item()
        scale = (model(meshes) - model.mean).abs().max().item()
    assert 0 < difference < 1e-2 * scale


def _rewrite_weights(folder, change):
    state = load_file(str(folder / WEIGHTS_NAME))
    change(state)
    save_file(state, str(folder / WEIGHTS_NAME))


def test_strict_loading_lists_every_problem_together(model, tmp_path):
    folder = write_checkpoint(model, tmp_path / "ckpt")

    def tamper(state):
        del state["encoder_linear.bias"]
        state["extra.weight"] = torch.zeros(2)
        state["decoder_linear.weight"] = torch.zeros(3, 3)
        state["down.0.down_index"] = state["down.0.down_index"].float()

    _rewrite_weights(folder, tamper)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder)
    message = str(error.value)
    assert "4 problem(s)" in message
    assert "missing key 'encoder_linear.bias'" in message
    assert "unexpected key 'extra.weight'" in message
    assert "shape mismatch for 'decoder_linear.weight'" in message
    assert "dtype mismatch for 'down.0.down_index'" in message


def test_init_args_that_do_not_fit_the_weights_are_a_shape_error(model, tmp_path):
    folder = write_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["init_args"]["latent_dim"] = 6
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatch for 'encoder_linear.weight'"):
        load_checkpoint(folder)


@pytest.mark.parametrize("field, value, expected", [
    ("class_path", "morphzoo.methods.CoMA", "init_args do not fit morphzoo.methods.CoMA"),
    ("class_path", "collections.OrderedDict", "not a morphzoo MorphableModel"),
    ("class_path", "morphzoo.methods.NoSuchModel", "cannot be imported"),
    ("template", {"fingerprint": "0" * 20}, "template fingerprint mismatch"),
])
def test_tampered_config_gives_a_clear_error(model, tmp_path, field, value, expected):
    folder = write_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config[field] = value
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(folder)


def test_a_model_built_without_data_statistics_round_trips(tmp_path):
    model = CoMA(template=sphere_template(2), latent_dim=4, cheb_order=2, sampling_factors=(2, 2, 2, 2)).eval()
    assert model.mean.data_ptr() == model.template_vertices.data_ptr()  # shared buffers must still be saved
    loaded = load_checkpoint(write_checkpoint(model, tmp_path / "ckpt"))
    vertices = torch.from_numpy(model.template.vertices).float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(vertices), model(vertices), rtol=0, atol=0)


def test_missing_or_broken_files_are_named(model, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    folder = write_checkpoint(model, tmp_path / "ckpt")
    (folder / WEIGHTS_NAME).write_bytes((folder / WEIGHTS_NAME).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_checkpoint(folder)
    with pytest.raises(FileExistsError, match="not empty"):
        write_checkpoint(model, folder)


def test_export_from_a_lightning_checkpoint(tmp_path, meshes):
    from lightning import Trainer

    from tests.synthetic import SphereDataModule

    data = SphereDataModule(identities=2, expressions=2, frames=20, batch_size=8)
    trained = CoMA(template=data.template, mean=data.mean, std=data.std, latent_dim=4,
                   encoder_channels=(4, 4, 4, 4), decoder_channels=(4, 4, 4, 4, 4), cheb_order=2)
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(trained, datamodule=data)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = export_lightning_checkpoint(ckpt, tmp_path / "exported", class_path="morphzoo.methods.CoMA")
    loaded = load_checkpoint(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(meshes), trained.eval()(meshes), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="does not record its model class"):
        export_lightning_checkpoint(ckpt, tmp_path / "again")
