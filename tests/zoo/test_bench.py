"""``morphzoo bench`` on a tiny registry with one bundled checkpoint."""

import json

import pytest
import torch

from morphzoo.metrics.vertex_error import VertexError
from morphzoo.recipes import RecipeError
from morphzoo.zoo import hub
from morphzoo.zoo import registry as zoo
from morphzoo.zoo.bench import datamodule_for, write_leaderboard
from morphzoo.zoo.checkpoint import write_checkpoint
from tests.zoo.test_checkpoint import tiny_spiralnet
from tests.zoo.test_registry import cli, registry_entry, write_registry_file


def test_bench_writes_the_leaderboard_with_the_models_numbers(tmp_path, capsys):
    folder = write_checkpoint(tiny_spiralnet(), tmp_path / "zoo" / "spiralnet-tiny-spheres", fp16=True)
    files = {p.name: vars(hub.describe_file(p)) for p in folder.iterdir()}
    path = write_registry_file(tmp_path, [
        registry_entry("spiralnet-tiny-spheres", status="available",
                       weights={"bundled": "zoo/spiralnet-tiny-spheres", "files": files},
                       build={"seed": 0, "overrides": ["--data.init_args.frames=20", "--trainer.max_epochs=1"]}),
        registry_entry("spiralnet-other-spheres")])
    out = tmp_path / "bench"
    output = cli(capsys, "bench", "--registry", str(path), "--out", str(out), "--samples", "20", "--pairs", "50")
    assert "evaluated 1 checkpoint(s)" in output

    results = json.loads((out / "results.json").read_text())
    (row,) = results["models"]
    assert row["name"] == "spiralnet-tiny-spheres" and results["skipped"] == {"spiralnet-other-spheres":
                                                                             "no weights (not-built)"}
    # the reported reconstruction error is the model's on the test split of the recorded DataModule (frames=20)
    registry = zoo.load_registry(path)
    data = datamodule_for(registry.get("spiralnet-tiny-spheres"), registry)
    assert data.sizes == (2, 2, 20) and row["test_meshes"] == len(data.split_indices["test"])
    model, metric = zoo.load("spiralnet-tiny-spheres", registry=path), VertexError()
    with torch.no_grad():
        for batch in data.test_dataloader():
            metric.update(model(batch["vertices"]), batch["vertices"])
    expected = float(metric.compute()["mean"])
    assert abs(row["metrics"]["reconstruction/mean_mm"] - expected) < 1e-4 * max(expected, 1)
    assert {"generation/specificity_mm", "generation/diversity_mm", "reconstruction_aligned/mean_mm"} <= set(
        row["metrics"])

    # unseen people: the same protocol on the data generated with the next seed (other identity scalings)
    fresh = datamodule_for(registry.get("spiralnet-tiny-spheres"), registry, ["--data.init_args.seed=1"])
    assert fresh.seed == 1 and not torch.equal(fresh.mean, data.mean)
    unseen = VertexError()
    with torch.no_grad():
        for batch in fresh.test_dataloader():
            unseen.update(model(batch["vertices"]), batch["vertices"])
    assert row["metrics"]["unseen_people/mean_mm"] == pytest.approx(float(unseen.compute()["mean"]), rel=1e-4)
    assert "unseen_expressions/mean_mm" not in row["metrics"]  # the spheres have no novel expressions to generate
    assert "novel expressions" in row["protocols_not_applicable"]["unseen_expressions"]
    assert row["latent"] == 4 and (row["epochs"], row["wall_min"]) == ("1", "0.0")  # the entry's provenance

    markdown = (out / "leaderboard.md").read_text()
    assert "## spheres (interpolation)" in markdown and "### latent 4" in markdown
    assert "| `spiralnet-tiny-spheres` | SpiralNetPlusPlus | 1 | 0.0 |" in markdown  # the budget beside the numbers
    assert f"{row['metrics']['reconstruction/mean_mm']:.3f}" in markdown
    assert f"{row['metrics']['unseen_people/mean_mm']:.3f}" in markdown
    assert "spiralnet-other-spheres" in markdown  # listed as not evaluated, with the reason
    for figure in ("cumulative_error_spheres_interpolation.png", "error_map_spiralnet-tiny-spheres.png",
                   "samples_spiralnet-tiny-spheres.png"):
        assert (out / figure).stat().st_size > 1000 and f"({figure})" in markdown


def test_the_leaderboard_puts_models_of_other_latent_sizes_in_other_tables(tmp_path):
    rows = [{"name": f"m{latent}-{i}", "method": "M", "dataset": "spheres", "preset": None, "split": "interpolation",
             "latent": latent, "epochs": "1", "wall_min": "0.1", "num_params": 10,
             "metrics": {"reconstruction/mean_mm": error}}
            for i, (latent, error) in enumerate([(8, 3.0), (64, 1.0), (8, 2.0)])]
    write_leaderboard(rows, {}, {"spheres (interpolation)": []}, tmp_path / "board.md")
    text = (tmp_path / "board.md").read_text()
    latent_8, latent_64 = text.index("### latent 8"), text.index("### latent 64")
    assert latent_8 < text.index("`m8-2`") < text.index("`m8-0`") < latent_64 < text.index("`m64-1`")  # sorted


def test_bench_reads_overrides_in_lightningclis_syntax(tmp_path):
    path = write_registry_file(tmp_path, [registry_entry("spiralnet-tiny-spheres", build={
        "seed": 0, "overrides": ["--data.init_args.frames", "12", "--trainer.max_epochs=1"]})])
    registry = zoo.load_registry(path)
    assert datamodule_for(registry.get("spiralnet-tiny-spheres"), registry).sizes == (2, 2, 12)


def test_bench_names_a_malformed_override(tmp_path):
    path = write_registry_file(tmp_path, [registry_entry("spiralnet-tiny-spheres", build={
        "seed": 0, "overrides": ["--data.init_args.no_such_argument=3"]})])
    registry = zoo.load_registry(path)
    with pytest.raises(RecipeError, match="no_such_argument"):
        datamodule_for(registry.get("spiralnet-tiny-spheres"), registry)
