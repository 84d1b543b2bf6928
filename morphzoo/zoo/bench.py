"""``morphzoo bench``: the leaderboard run over the zoo's loadable checkpoints.

For every checkpoint with weights: load it through :func:`morphzoo.zoo.load` (verified), rebuild the DataModule of its
recipe with the entry's recorded ``--data.*`` overrides, and evaluate it on its test split with
:func:`morphzoo.zoo.evaluate.evaluate_model` (every metric that applies). Writes ``results.json`` (all numbers),
``leaderboard.md`` (one table per dataset) and figures: a cumulative per-vertex error curve per dataset and, per
model, an error heat-map of its median-error test mesh next to the mean error over the test split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from morphzoo.data.base import MeshDataModule
from morphzoo.recipes import build_datamodule
from morphzoo.zoo.evaluate import evaluate_model, test_error_maps
from morphzoo.zoo.figures import plot_cumulative_error, render_error_map
from morphzoo.zoo.registry import Entry, Registry, RegistryError, load, load_registry

COLUMNS = (("reconstruction/mean_mm", "error mean (mm)"), ("reconstruction/median_mm", "median (mm)"),
           ("reconstruction_aligned/mean_mm", "aligned (mm)"), ("generation/specificity_mm", "specificity (mm)"),
           ("generation/diversity_mm", "diversity (mm)"), ("disentanglement/mean_mm", "disentanglement (mm)"),
           ("disentanglement_jiang/mean_mm", "Jiang disentanglement (mm)"), ("neutral/mean_mm", "neutral face (mm)"),
           ("mesh_quality/self_intersections_reconstruction", "self-intersecting faces"))


def datamodule_for(entry: Entry, registry: Registry) -> MeshDataModule:
    """The DataModule of ``entry``'s recipe with the overrides its build recorded."""
    return build_datamodule(registry.root / entry.recipe, entry.overrides)


def _write_markdown(rows: list[dict], skipped: dict[str, str], figures: dict[str, list[str]], path: Path) -> None:
    lines = ["# morphzoo leaderboard", "", "Every loadable checkpoint of `checkpoints.yaml`, evaluated once on its "
             "test split with `morphzoo.zoo.evaluate_model` (`morphzoo bench`). Errors in mm.", ""]
    for dataset in sorted({row["dataset"] for row in rows}):
        group = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["metrics"].get(COLUMNS[0][0]))
        lines += [f"## {dataset} ({group[0]['split']})", "",
                  "| model | method | params | " + " | ".join(title for _, title in COLUMNS) + " |",
                  "|---|---|---|" + "---|" * len(COLUMNS)]
        for row in group:
            values = [f"{row['metrics'][key]:.3f}" if key in row["metrics"] else "—" for key, _ in COLUMNS]
            lines.append(f"| `{row['name']}` | {row['method']} | {row['num_params']:,} | " + " | ".join(values) + " |")
        reference = group[0]["metrics"].get("mesh_quality/self_intersections_data")
        if reference is not None:  # the same seeded test meshes for every row of a dataset
            lines += ["", f"Self-intersecting faces of the true test meshes the last column counts on: "
                          f"{reference:.3f} per mesh."]
        lines += [""] + [f"![{Path(figure).stem}]({figure})" for figure in figures[dataset]] + [""]
    if skipped:
        lines += ["## Not evaluated", ""] + [f"- `{name}`: {reason}" for name, reason in sorted(skipped.items())]
    path.write_text("\n".join(lines) + "\n")


def run_bench(names: Sequence[str] | None = None, out: str | Path = "runs/bench", registry: str | Path | None = None,
              samples: int = 1000, pairs: int = 10_000, endpoint: str | None = None,
              cache_dir: str | Path | None = None) -> dict:
    """Evaluate ``names`` (default: every checkpoint with weights) and write the leaderboard into ``out``."""
    registry_ = load_registry(registry)
    entries = [registry_.get(name) for name in names] if names else list(registry_.entries.values())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped, maps = [], {}, {}
    for entry in entries:
        if not entry.available:
            skipped[entry.name] = f"no weights ({entry.status})"
            continue
        model = load(entry.name, registry=registry_.path, endpoint=endpoint, cache_dir=cache_dir)
        data = datamodule_for(entry, registry_)
        if data.template.fingerprint() != model.template.fingerprint():
            raise RegistryError(f"{entry.name}: the DataModule of {entry.recipe} (with {entry.overrides}) has "
                                "another template than the checkpoint; fix the entry's build overrides")
        metrics = evaluate_model(model, data, samples=samples, pairs=pairs)
        maps[entry.name] = test_error_maps(model, data)
        rows.append({"name": entry.name, "method": entry.method, "dataset": entry.dataset["name"],
                     "split": entry.dataset["split"], "num_params": model.num_learned_values(),
                     "test_meshes": len(data.split_indices["test"]), "registry_metrics": entry.metrics,
                     "metrics": metrics, "faces": model.template.faces})
    figures: dict[str, list[str]] = {}
    for dataset in sorted({row["dataset"] for row in rows}):
        group = [row for row in rows if row["dataset"] == dataset]
        curve = plot_cumulative_error(out / f"cumulative_error_{dataset}.png", {
            row["name"]: (maps[row["name"]]["curve_thresholds"], maps[row["name"]]["curve_fraction"]) for row in group})
        figures[dataset] = [curve.name]
        max_error = float(max(np.percentile(maps[row["name"]]["per_vertex"], 99) for row in group))
        for row in group:
            error_map = maps[row["name"]]
            truth, reconstruction = error_map["example_truth"], error_map["example_reconstruction"]
            picture = render_error_map(
                out / f"error_map_{row['name']}.png", [truth, reconstruction, truth], row["faces"],
                ["ground truth", f"{row['name']} (median-error test mesh)", "mean error over the test split"],
                [None, np.linalg.norm(reconstruction - truth, axis=1) * 1000, error_map["per_vertex"]], max_error)
            figures[dataset].append(picture.name)
    for row in rows:
        del row["faces"]
    results = {"models": rows, "skipped": skipped, "samples": samples, "pairs": pairs}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _write_markdown(rows, skipped, figures, out / "leaderboard.md")
    return results
