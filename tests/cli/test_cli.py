"""The command line, run the way users run it: as subprocesses, from recipes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from morphzoo.data.collection import MeshCollection
from morphzoo.data.export import export_collection
from morphzoo.loggers import wandb_logged_in
from morphzoo.methods import SpiralNetPlusPlus
from tests.synthetic import SphereDataModule, bu3dfe_like, sphere_collection

ROOT = Path(__file__).resolve().parents[2]

SPHERE_RECIPE = {
    "seed_everything": 0,
    "model": {"class_path": "morphzoo.methods.SpiralNetPlusPlus", "init_args": {"latent_dim": 8}},
    "data": {"class_path": "tests.synthetic.SphereDataModule", "init_args": {"frames": 40, "batch_size": 8}},
    "trainer": {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2, "accelerator": "cpu",
                "enable_progress_bar": False, "log_every_n_steps": 1},
}


def run(command: list[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def write_recipe(tmp_path: Path, **trainer) -> Path:
    recipe = {**SPHERE_RECIPE, "trainer": {**SPHERE_RECIPE["trainer"], "default_root_dir": str(tmp_path), **trainer}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_fit_links_data_into_the_model_and_logs_metrics(tmp_path):
    recipe = write_recipe(tmp_path, logger={"class_path": "lightning.pytorch.loggers.CSVLogger",
                                            "init_args": {"save_dir": str(tmp_path), "name": "run"}})
    run([sys.executable, "-m", "morphzoo", "fit", "-c", str(recipe)])
    metrics = (tmp_path / "run" / "version_0" / "metrics.csv").read_text()
    assert "val/error_mm" in metrics and "train/loss" in metrics
    config = yaml.safe_load((tmp_path / "run" / "version_0" / "config.yaml").read_text())
    # linked values are not recipe numbers: the saved config does not spell out the template or statistics
    assert "template" not in config["model"]["init_args"]

    checkpoint = next((tmp_path / "run" / "version_0" / "checkpoints").glob("*.ckpt"))
    model = SpiralNetPlusPlus.from_lightning_checkpoint(str(checkpoint))  # a CLI checkpoint loads without the CLI
    meshes = torch.from_numpy(SphereDataModule(frames=40).collection.vertices[:2])
    assert model(meshes).shape == meshes.shape
    for subcommand in ("test", "predict"):
        result = run([sys.executable, "-m", "morphzoo", subcommand, "-c", str(recipe), f"--ckpt_path={checkpoint}"])
        if subcommand == "test":
            assert "test/error_mean_mm" in result.stdout


def test_lightning_console_script_runs_a_recipe(tmp_path):
    # pip puts console scripts beside the interpreter (PATH shims, e.g. pyenv's, may not know new ones yet)
    script = Path(sys.executable).parent / "lightning"
    assert script.exists(), "the `lightning` console script is not installed: run scripts/install.sh"
    result = run([str(script), "fit", "-c", str(write_recipe(tmp_path, fast_dev_run=True))])
    assert "Running in `fast_dev_run` mode" in result.stdout + result.stderr


def test_ddp_on_two_cpu_processes(tmp_path):
    recipe = write_recipe(tmp_path, logger={"class_path": "lightning.pytorch.loggers.CSVLogger",
                                            "init_args": {"save_dir": str(tmp_path), "name": "ddp"}})
    result = run([sys.executable, "-m", "morphzoo", "fit", "-c", str(recipe), "--trainer.strategy=ddp",
                  "--trainer.devices=2", "--trainer.accelerator=cpu"])
    output = result.stdout + result.stderr
    assert "distributed_backend=gloo" in output and "All distributed processes registered" in output
    assert "val/error_mm" in (tmp_path / "ddp" / "version_0" / "metrics.csv").read_text()


def test_wandb_overlay_switches_the_logger():
    result = run([sys.executable, "-m", "morphzoo", "fit", "-c", "recipes/coma.yaml", "-c",
                  "recipes/loggers/wandb.yaml", "--print_config"])
    logger = yaml.safe_load(result.stdout)["trainer"]["logger"]
    assert logger["class_path"] == "morphzoo.loggers.WandbLogger"


def test_wandb_runs_offline_unless_logged_in(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not wandb_logged_in()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_logged_in()


def test_malformed_recipe_gives_a_clear_error(tmp_path):
    recipe = write_recipe(tmp_path)
    text = recipe.read_text().replace("latent_dim: 8", "latent_dimension: 8")
    recipe.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "morphzoo", "fit", "-c", str(recipe)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "latent_dimension" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["recipes/coma.yaml", "recipes/spiralnet.yaml", "recipes/spiralnet-anny-bu3dfe.yaml",
                                    "recipes/spiralnet-anny-body.yaml", "recipes/spiralnet-anny-hand.yaml"])
def test_recipes_run_on_the_embedded_data(recipe, tmp_path):
    run([sys.executable, "-m", "morphzoo", "fit", "-c", recipe, "-c", "recipes/quick.yaml",
         f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"])


REAL_DATA_RECIPES = {  # recipe -> (export format, fixture)
    "spiralnet-coma": ("coma", lambda: sphere_collection(3, 4, 25)),
    "spiralnet-dfaust": ("dfaust", lambda: sphere_collection(3, 4, 25)),
    "spiralnet-bu3dfe": ("bu3dfe", lambda: bu3dfe_like(subdivisions=3)),
    "spiralnet-synhand": ("folder", lambda: MeshCollection(sphere_collection(3, 4, 25).vertices,
                                                           sphere_collection(1, 1, 1).template)),
    "spiralnet-folder": ("folder", lambda: sphere_collection(3, 4, 25)),
    "locally-weighted-folder": ("folder", lambda: sphere_collection(3, 4, 25)),  # test_size 220 of these 300
}
EXTRA_ARGUMENTS = {"spiralnet-synhand": ["--data.init_args.test_size=20"],
                   "locally-weighted-folder": ["--model.init_args.parts=2"]}  # the sphere data has few parts


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(REAL_DATA_RECIPES))
def test_real_data_recipes_run_once_root_points_at_the_data(recipe, tmp_path):
    format, fixture = REAL_DATA_RECIPES[recipe]
    root = export_collection(fixture(), format, tmp_path / "data")
    extra = EXTRA_ARGUMENTS.get(recipe, [])
    run([sys.executable, "-m", "morphzoo", "fit", "-c", f"recipes/{recipe}.yaml", f"--data.init_args.root={root}",
         "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}", *extra])


@pytest.mark.slow
def test_export_dataset_command_writes_a_readable_dataset(tmp_path):
    result = run([sys.executable, "-m", "morphzoo", "export-dataset", "anny-bu3dfe", "bu3dfe", str(tmp_path / "bu")])
    assert "wrote 300 meshes of anny-bu3dfe (tiny) as bu3dfe" in result.stdout
    assert len(list((tmp_path / "bu").rglob("*_F3D.ply"))) == 300
    failed = subprocess.run([sys.executable, "-m", "morphzoo", "export-dataset", "anny-face", "bu3dfe",
                             str(tmp_path / "face")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and not (tmp_path / "face").exists()
    assert "the BU-3DFE format needs the labels identity, expression, level, ethnicity; this dataset lacks level, " \
           "ethnicity" in failed.stderr
    assert "Traceback" not in failed.stderr


@pytest.mark.slow
def test_main_job_writes_a_report(tmp_path):
    result = run([sys.executable, "-m", "morphzoo", "main-job", "--size", "tiny", "--minutes-per-model", "0.1",
                  "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert f"report written to {tmp_path / 'report.md'}" in result.stdout
    for name in ("SpiralNetPlusPlus", "CoMA"):
        assert name in report
    assert "specificity (mm)" in report
    for picture in ("cumulative_error.png", "spiralnet_reconstruction.png", "coma_reconstruction.png"):
        assert (tmp_path / picture).stat().st_size > 10_000
    results = yaml.safe_load((tmp_path / "results.json").read_text())
    assert all(0 < r["mean"] < 100 and r["median"] <= r["mean"] + r["std"] for r in results.values())
    assert all(r["metrics"]["generation/specificity_mm"] > 0 for r in results.values())
