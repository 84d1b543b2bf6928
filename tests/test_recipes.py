"""Recipes by name or file (morphzoo.resources) and the one recipe -> (model, datamodule, trainer) path
(morphzoo.recipes)."""

import logging

import pytest
import yaml

from morphzoo import recipes, resources
from morphzoo.methods import SpiralNetPlusPlus
from tests.cli.test_cli import ROOT, SPHERE_RECIPE
from tests.synthetic import SphereDataModule


@pytest.fixture
def sphere_recipe(tmp_path):
    path = tmp_path / "sphere.yaml"
    path.write_text(yaml.safe_dump({**SPHERE_RECIPE, "trainer": {**SPHERE_RECIPE["trainer"],
                                                                 "default_root_dir": str(tmp_path)}}))
    return path


def test_in_a_checkout_the_shipped_files_are_the_repositorys():
    assert resources.resource_root() == ROOT
    assert set(resources.recipe_names()) == {str(p.relative_to(ROOT / "recipes").with_suffix(""))
                                             for p in (ROOT / "recipes").rglob("*.yaml")}


@pytest.mark.parametrize("name", ["spiralnet", "spiralnet.yaml", "recipes/spiralnet.yaml"])
def test_a_recipe_is_found_by_name_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resources.find_recipe(name) == ROOT / "recipes" / "spiralnet.yaml"
    assert resources.find_recipe("loggers/wandb") == ROOT / "recipes" / "loggers" / "wandb.yaml"


def test_a_file_in_the_working_directory_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "spiralnet.yaml").write_text("model: {}\n")
    assert resources.find_recipe("recipes/spiralnet.yaml") == tmp_path / "recipes" / "spiralnet.yaml"


def test_an_unknown_recipe_suggests_the_closest_names():
    with pytest.raises(resources.ResourceError, match="did you mean .*deep3dmm-spiral"):
        resources.find_recipe("deep3dmm-spirl")
    with pytest.raises(resources.ResourceError, match="shipped recipes: .*spiralnet"):
        resources.find_recipe("zzzzzz")


def test_every_config_flag_form_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = str(ROOT / "recipes" / "coma.yaml")
    assert recipes.resolve_config_paths(["fit", "-c", "coma", "--config=coma", "--config", "coma", "--x=coma"]) == [
        "fit", "-c", shipped, f"--config={shipped}", "--config", shipped, "--x=coma"]


def test_parse_merges_overrides_in_lightningclis_syntax_and_builds_nothing(sphere_recipe):
    config = recipes.parse(sphere_recipe, ["--data.init_args.frames", "12", "--trainer.max_epochs=3"])
    assert config.data.init_args.frames == 12 and config.trainer.max_epochs == 3
    assert config.model.class_path == "morphzoo.methods.SpiralNetPlusPlus"
    assert not hasattr(config, "model_init") and config.seed_everything is False


def test_build_datamodule_builds_only_the_data(sphere_recipe):
    data = recipes.build_datamodule(sphere_recipe, ["--data.init_args.frames=12"])
    assert isinstance(data, SphereDataModule) and data.sizes[-1] == 12


def test_instantiate_links_the_data_into_the_model(sphere_recipe):
    cli = recipes.instantiate(sphere_recipe, ["--model.init_args.latent_dim=5"])
    assert isinstance(cli.model, SpiralNetPlusPlus) and cli.model.hparams.latent_dim == 5
    assert cli.model.template.fingerprint() == cli.datamodule.template.fingerprint()
    assert cli.trainer.max_epochs == 1


def test_fit_best_restores_the_best_checkpoint_or_names_what_is_missing(sphere_recipe, tmp_path):
    callback = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=val/error_mm",
                f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.logger=false"]
    cli = recipes.instantiate(sphere_recipe, callback)
    best, seconds = recipes.fit_best(cli)
    assert best.startswith(str(tmp_path / "ckpt")) and seconds > 0
    restored = SpiralNetPlusPlus.from_lightning_checkpoint(best)
    for name, value in restored.state_dict().items():
        assert (value == cli.model.state_dict()[name]).all(), name

    cli = recipes.instantiate(sphere_recipe, ["--trainer.enable_checkpointing=false", "--trainer.logger=false"])
    with pytest.raises(ValueError, match="needs a ModelCheckpoint monitoring val/error_mm"):
        recipes.fit_best(cli)


def test_lightnings_advertising_tips_are_dropped():
    recipes.quiet_third_party_output()
    lightning_logger, seen = logging.getLogger("lightning.pytorch"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    lightning_logger.addHandler(handler)
    try:
        lightning_logger.info("💡 Tip: For seamless cloud uploads, try installing something")
        lightning_logger.info("GPU available: False")
    finally:
        lightning_logger.removeHandler(handler)
    assert seen == ["GPU available: False"]


@pytest.mark.parametrize("dataset", ["", "-anny-body", "-anny-hand", "-coma", "-dfaust", "-synhand"])
def test_a_spectral_comparison_uses_one_activation_and_the_papers_on_the_papers_data(dataset):
    """CoMA and Deep3DMM (spectral) on the same data share their activation (Deep3DMM's Table 2 compares like with
    like), and the recipes on CoMA's and DFAUST's data, which reproduce the papers' tables, use the papers' ReLU."""
    coma = yaml.safe_load((ROOT / "recipes" / f"coma{dataset}.yaml").read_text())["model"]["init_args"]
    deep = yaml.safe_load((ROOT / "recipes" / f"deep3dmm-spectral{dataset}.yaml").read_text())["model"]["init_args"]
    assert coma["activation"] == deep["activation"]
    if dataset in ("-coma", "-dfaust"):
        assert coma["activation"] == "relu"
