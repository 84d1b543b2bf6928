"""The registry: schema check (real file and broken fixtures), list/info/load, bundled entries, README table, CLI and
``zoo build``."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from morphzoo.zoo import hub
from morphzoo.zoo import registry as zoo
from morphzoo.zoo.checkpoint import write_checkpoint

ROOT = Path(__file__).resolve().parents[2]

SPHERE_RECIPE = {
    "seed_everything": 0,
    "model": {"class_path": "morphzoo.methods.SpiralNetPlusPlus",
              "init_args": {"latent_dim": 4, "encoder_channels": [8, 8, 8, 8]}},
    "data": {"class_path": "tests.synthetic.SphereDataModule",
             "init_args": {"identities": 2, "expressions": 2, "frames": 40, "batch_size": 8}},
    "trainer": {"max_epochs": 300, "accelerator": "cpu", "enable_model_summary": False,
                "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"monitor": "val/error_mm", "mode": "min", "filename": "best-{epoch}"}}]},
}


def registry_entry(name: str, **fields) -> dict:
    """A valid registry entry (a not-built bundled one unless ``fields`` say otherwise)."""
    entry = {
        "name": name, "class_path": "morphzoo.methods.SpiralNetPlusPlus", "recipe": "recipes/sphere.yaml",
        "dataset": {"name": "spheres", "split": "interpolation"}, "status": "not-built", "weights": None,
        "metrics": {}, "num_params": None,
        "licence": {"code": "Apache-2.0", "weights": "Apache-2.0", "data": "procedural (tests)"},
        "paper": {"title": "SpiralNet++", "url": "https://arxiv.org/abs/1911.05856"}, "provenance": None,
        "build": {"seed": 0, "overrides": ["--data.init_args.frames=20", "--trainer.max_epochs=1",
                                           "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"]},
    }
    entry.update(fields)
    if entry["status"] == "available":
        entry.update(metrics=fields.get("metrics", {"reconstruction/mean_mm": 1.0}),
                     num_params=fields.get("num_params", 1),
                     provenance=fields.get("provenance", {"morphzoo_version": "0.1.0", "commit": "unknown", "seed": 0,
                                                          "epochs": 1, "wall_time_s": 1.0, "note": "test"}))
    return entry


def write_registry_file(folder: Path, entries: list[dict]) -> Path:
    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    (folder / "recipes" / "sphere.yaml").write_text(yaml.safe_dump(SPHERE_RECIPE))
    path = folder / "checkpoints.yaml"
    zoo.write_registry({"schema_version": 1, "models": entries}, path)
    return path


def problems_of(entries: list[dict], tmp_path: Path) -> list[str]:
    path = write_registry_file(tmp_path, entries)
    return zoo.validate(yaml.safe_load(path.read_text()), tmp_path)


# ---------------------------------------------------------------------------------------------------------- schema
def test_the_real_registry_follows_the_schema():
    raw = yaml.safe_load((ROOT / "checkpoints.yaml").read_text())
    assert zoo.validate(raw, ROOT, check_imports=True) == []
    registry = zoo.load_registry(ROOT / "checkpoints.yaml")
    for required in ("coma-anny-face", "spiralnet-anny-face", "spiralnet-coma", "coma-coma", "spiralnet-dfaust",
                     "spiralnet-synhand"):
        assert required in registry.entries
    for entry in registry.entries.values():  # no invented repositories or hashes for licensed data
        if entry.status == "not-published":
            assert entry.weights is None and entry.licence["data"]


HUB = {"repo_id": "org/model", "revision": "a" * 40,
       "files": {"model.safetensors": {"sha256": "b" * 64, "size": 10}, "config.json": {"sha256": "c" * 64,
                                                                                       "size": 5}}}


@pytest.mark.parametrize("change, expected", [
    (lambda e: e["weights"].update(revision="main"), "pinned 40-hex commit, not a branch"),
    (lambda e: e["weights"].update(revision="A" * 40), "pinned 40-hex commit"),
    (lambda e: e["weights"]["files"]["model.safetensors"].update(sha256="b" * 63), "64 lowercase hex"),
    (lambda e: e["weights"]["files"]["model.safetensors"].update(size=0), "positive integer"),
    (lambda e: e["weights"]["files"]["model.safetensors"].update(size="10"), "positive integer"),
    (lambda e: e["weights"]["files"].pop("config.json"), "lacks config.json"),
    (lambda e: e["weights"].update(repo_id="not a repo"), "look like 'org/name'"),
    (lambda e: e.update(class_path="morphzoo.methods.Nope"), "cannot be imported"),
    (lambda e: e.update(class_path="torch.nn.Linear"), "not a morphzoo MorphableModel"),
    (lambda e: e.update(recipe="recipes/missing.yaml"), "does not exist"),
    (lambda e: e.update(status="not-built"), "but weights are given"),
    (lambda e: e.update(name="SpiralNet_Tiny"), "name must be lowercase"),
    (lambda e: e.update(num_params=-3), "num_params must be a positive integer"),
    (lambda e: e.pop("licence"), "missing field 'licence'"),
    (lambda e: e.update(url="x"), "unknown field 'url'"),
    (lambda e: e.update(provenance=None), "needs num_params, metrics and provenance"),
])
def test_schema_rejects_broken_entries(tmp_path, change, expected):
    entry = registry_entry("spiralnet-tiny-spheres", status="available", weights=copy.deepcopy(HUB))
    assert problems_of([entry], tmp_path) == []
    change(entry)
    problems = problems_of([entry], tmp_path)
    assert any(expected in problem for problem in problems), problems
    with pytest.raises(zoo.RegistryError, match="breaks the schema"):
        zoo.load_registry(tmp_path / "checkpoints.yaml", check_imports=True)


def test_schema_rejects_duplicate_names_and_aliases(tmp_path):
    problems = problems_of([registry_entry("spiralnet-a-spheres", aliases=["tiny"]),
                            registry_entry("spiralnet-a-spheres"), registry_entry("spiralnet-b-spheres",
                                                                                  aliases=["tiny"])], tmp_path)
    assert sum("is used by both" in p for p in problems) == 2


def test_bundled_weights_must_live_in_zoo_slash_name(tmp_path):
    entry = registry_entry("spiralnet-tiny-spheres", status="available",
                           weights={"bundled": "elsewhere", "files": copy.deepcopy(HUB["files"])})
    assert any("must be 'zoo/spiralnet-tiny-spheres'" in p for p in problems_of([entry], tmp_path))
    entry["weights"]["bundled"] = "zoo/spiralnet-tiny-spheres"
    assert any("does not exist" in p for p in problems_of([entry], tmp_path))


# ------------------------------------------------------------------------------------------------------ Python API
@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """A registry with one bundled tiny checkpoint, one not-built and one not-published entry."""
    from tests.zoo.test_checkpoint import tiny_spiralnet

    root = tmp_path_factory.mktemp("bundled")
    model = tiny_spiralnet()
    folder = write_checkpoint(model, root / "zoo" / "spiralnet-tiny-spheres", fp16=True)
    files = {p.name: vars(hub.describe_file(p)) for p in folder.iterdir()}
    entries = [registry_entry("spiralnet-tiny-spheres", aliases=["tiny"], status="available",
                              weights={"bundled": "zoo/spiralnet-tiny-spheres", "files": files},
                              build={"seed": 0, "overrides": ["--data.init_args.frames=20"]}),
               registry_entry("spiralnet-other-spheres"),
               registry_entry("spiralnet-licensed-spheres", status="not-published")]
    return write_registry_file(root, entries), model


def test_list_models_and_info(bundled):
    path, _ = bundled
    assert zoo.list_models(registry=path) == ["spiralnet-licensed-spheres", "spiralnet-other-spheres",
                                              "spiralnet-tiny-spheres"]
    assert zoo.list_models("*-tiny-*", registry=path) == ["spiralnet-tiny-spheres"]
    assert zoo.list_models(pretrained=True, registry=path) == ["spiralnet-tiny-spheres"]
    assert zoo.list_models(pretrained=False, registry=path) == ["spiralnet-licensed-spheres",
                                                                "spiralnet-other-spheres"]
    entry = zoo.info("tiny", registry=path)
    assert entry.name == "spiralnet-tiny-spheres" and entry.weights.bundled == "zoo/spiralnet-tiny-spheres"
    with pytest.raises(zoo.RegistryError, match="did you mean spiralnet-tiny-spheres"):
        zoo.info("tiny-spheres", registry=path)


def test_bundled_entry_loads_without_network_and_detects_tampering(bundled, monkeypatch, tmp_path):
    import morphzoo

    path, model = bundled
    monkeypatch.setenv("MORPHZOO_REGISTRY", str(path))
    monkeypatch.setenv("MORPHZOO_HUB_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    loaded = morphzoo.load("tiny")
    assert not loaded.training
    meshes = torch.from_numpy(model.template.vertices).float()[None]
    with torch.no_grad():
        assert (loaded(meshes) - model(meshes)).abs().max() < 1e-3
    copy_root = tmp_path / "copy"
    copy_root.mkdir()
    for item in ("checkpoints.yaml", "recipes", "zoo"):
        subprocess.run(["cp", "-r", str(path.parent / item), str(copy_root)], check=True)
    weights = copy_root / "zoo" / "spiralnet-tiny-spheres" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(hub.ChecksumError, match="bundled checkpoint spiralnet-tiny-spheres.*sha256"):
        zoo.load("tiny", registry=copy_root / "checkpoints.yaml")


def test_unavailable_entries_explain_how_to_get_them(bundled):
    path, _ = bundled
    with pytest.raises(zoo.NotAvailableError) as error:
        zoo.load("spiralnet-licensed-spheres", registry=path)
    assert "morphzoo fit -c recipes/sphere.yaml --data.init_args.root=" in str(error.value)
    assert "morphzoo export" in str(error.value) and "morphzoo.load(" in str(error.value)
    with pytest.raises(zoo.NotAvailableError, match="morphzoo zoo build spiralnet-other-spheres"):
        zoo.load("spiralnet-other-spheres", registry=path)
    with pytest.raises(zoo.RegistryError, match="neither a checkpoint folder"):
        zoo.load("no-such-model", registry=path)


def test_a_local_folder_loads_directly(bundled):
    path, _ = bundled
    model = zoo.load(path.parent / "zoo" / "spiralnet-tiny-spheres")
    assert model.num_vertices == 642


# ------------------------------------------------------------------------------------------- README, size, CLI
def test_readme_zoo_table_is_up_to_date():
    registry = zoo.load_registry(ROOT / "checkpoints.yaml")
    assert not zoo.sync_readme(ROOT / "README.md", registry, check=True), "run `morphzoo zoo table`"


def test_readme_table_check_detects_staleness(tmp_path, bundled):
    path, _ = bundled
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{zoo.TABLE_START}\nold\n{zoo.TABLE_END}\noutro\n")
    registry = zoo.load_registry(path)
    assert zoo.sync_readme(readme, registry, check=True) and "old" in readme.read_text()
    assert zoo.sync_readme(readme, registry)
    assert not zoo.sync_readme(readme, registry, check=True)
    text = readme.read_text()
    assert "`spiralnet-tiny-spheres`" in text and text.startswith("intro") and text.endswith("outro\n")


def test_bundled_zoo_stays_under_120_mb():
    # The wheel carries the zoo: 24 checkpoints, 112 MB in float16 (an 81 MB wheel). The two IB-VAE entries are
    # ~18 MB each: their MLP decoders map 256 hidden units to 3V = 12,600 outputs (the paper's design), twice; the
    # decoupled GAN's generator maps 512 to 12,600 (14 MB); the nine PCA / SpiralNet++ / Deep3DMM entries on
    # anny-body, anny-hand and anny-bu3dfe add 16 MB.
    total = sum(f.stat().st_size for f in (ROOT / "zoo").rglob("*") if f.is_file()) if (ROOT / "zoo").exists() else 0
    assert total < 120e6


def morphzoo_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "morphzoo", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def cli(capsys, *args: str) -> str:
    """Run ``morphzoo ARGS`` in this process (the console script's main); returns stdout."""
    from morphzoo.cli import main

    main(list(args))
    return capsys.readouterr().out


def test_cli_list_info_verify_and_table_check(bundled, capsys):
    path, _ = bundled
    listing = cli(capsys, "list", "*tiny*", "--registry", str(path))
    assert "spiralnet-tiny-spheres" in listing and "other" not in listing
    assert "zoo/spiralnet-tiny-spheres" in cli(capsys, "info", "tiny", "--registry", str(path))
    assert "verified" in cli(capsys, "verify", "--registry", str(path))
    with pytest.raises(SystemExit, match="morphzoo fit -c recipes/sphere.yaml"):
        cli(capsys, "download", "spiralnet-licensed-spheres", "--registry", str(path))
    assert "up to date" in cli(capsys, "zoo", "table", "--check")


def test_zoo_build_trains_exports_evaluates_and_registers(tmp_path):
    path = write_registry_file(tmp_path, [registry_entry("spiralnet-tiny-spheres")])
    result = morphzoo_cli("zoo", "build", "spiralnet-tiny-spheres", "--registry", str(path), "--samples", "20",
                          "--pairs", "50")
    assert "built spiralnet-tiny-spheres" in result.stdout
    entry = zoo.load_registry(path, check_imports=True).get("spiralnet-tiny-spheres")
    assert entry.status == "available" and entry.weights.bundled == "zoo/spiralnet-tiny-spheres"
    assert entry.provenance["epochs"] == 1 and entry.provenance["seed"] == 0
    assert entry.metrics["reconstruction/mean_mm"] > 0 and entry.num_params > 0
    folder = tmp_path / "zoo" / "spiralnet-tiny-spheres"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    leftovers = sorted(p.name for p in (tmp_path / "zoo").iterdir())
    assert leftovers == [".spiralnet-tiny-spheres.lock", "spiralnet-tiny-spheres"]  # no temporaries; the entry's lock
    for filename, record in entry.weights.files.items():
        assert hub.check_file(folder / filename, record, use_cache=False) is None
    model = zoo.load("spiralnet-tiny-spheres", registry=path)
    assert sum(p.numel() for p in model.parameters()) == entry.num_params
    assert model.latent_mean.numel() == 4  # the latent Gaussian ships with the model: it samples out of the box


def test_updating_an_entry_keeps_the_schema_header(tmp_path):
    path = write_registry_file(tmp_path, [registry_entry("spiralnet-tiny-spheres")])
    path.write_text("# the schema\n#   documented here\n\n" + path.read_text())
    zoo.update_entry(path, "spiralnet-tiny-spheres", {"aliases": ["tiny"]})
    assert path.read_text().startswith("# the schema\n#   documented here\n\nschema_version: 1")
    assert zoo.info("tiny", registry=path).name == "spiralnet-tiny-spheres"
    with pytest.raises(zoo.RegistryError, match="refusing to write"):
        zoo.update_entry(path, "spiralnet-tiny-spheres", {"status": "available"})


def train_tiny_lightning_checkpoint(folder: Path):
    """``folder/run.ckpt`` (and the model): a SpiralNet++ on spheres after one training step (what `morphzoo export`
    reads)."""
    from lightning import Trainer

    from morphzoo.methods import SpiralNetPlusPlus
    from tests.synthetic import SphereDataModule

    data = SphereDataModule(identities=2, expressions=2, frames=20)
    model = SpiralNetPlusPlus(template=data.template, mean=data.mean, std=data.std, latent_dim=4,
                              encoder_channels=(8, 8, 8, 8))
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(folder / "run.ckpt")
    return folder / "run.ckpt", model


def test_cli_export_prints_a_registry_block(tmp_path, capsys):
    _, model = train_tiny_lightning_checkpoint(tmp_path)
    out = tmp_path / "exported"
    capsys.readouterr()
    output = cli(capsys, "export", str(tmp_path / "run.ckpt"), str(out), "--name", "spiralnet-tiny-spheres", "--fp16",
                 "--dataset", "spheres", "--recipe", "recipes/sphere.yaml", "--class-path",
                 "morphzoo.methods.SpiralNetPlusPlus")
    block = yaml.safe_load(output.split("):\n", 1)[1])[0]
    assert block["weights"]["files"]["model.safetensors"] == vars(hub.describe_file(out / "model.safetensors"))
    assert block["num_params"] == sum(p.numel() for p in model.parameters())
    assert "revision" in block["weights"]  # to be filled by `morphzoo push`, never invented
