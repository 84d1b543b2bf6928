"""``morphzoo bench``: the leaderboard run over the zoo's loadable checkpoints.

For every checkpoint with weights: load it through :func:`morphzoo.zoo.load` (verified), rebuild the DataModule of its
recipe with the entry's recorded ``--data.*`` overrides, and evaluate it on its test split with
:func:`morphzoo.zoo.evaluate.evaluate_model` (every metric that applies). Beside that protocol, each model is also
evaluated on **unseen people** and **unseen expressions** where its data can provide them (:func:`generalisation`):
the test split of the same embedded dataset generated with the next seed (new identities), and anny-face's people
performing expressions outside the training set. Writes ``results.json`` (all numbers), ``leaderboard.md`` and
figures.

The leaderboard compares like with like: one section per dataset, preset and split protocol, and within it one table
per latent size (:func:`latent_size`), with each model's training budget (epochs, wall time) beside its numbers.
Figures per section: a cumulative per-vertex error curve; per model, an error heat-map of its median-error test mesh
next to the mean error over the test split, and a grid of seeded random samples above a latent interpolation between
two test meshes of different people (what specificity and diversity summarise, to be seen).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from morphzoo.data.base import MeshDataModule
from morphzoo.methods.base import MorphableModel
from morphzoo.metrics.vertex_error import VertexError
from morphzoo.recipes import build_datamodule
from morphzoo.zoo.evaluate import evaluate_model, manipulation_pairs, test_error_maps
from morphzoo.zoo.figures import plot_cumulative_error, render_error_map, render_mesh_grid
from morphzoo.zoo.registry import Entry, Registry, RegistryError, load, load_registry

COLUMNS = (("reconstruction/mean_mm", "error mean (mm)"), ("reconstruction/median_mm", "median (mm)"),
           ("unseen_people/mean_mm", "unseen people (mm)"), ("unseen_expressions/mean_mm", "unseen expressions (mm)"),
           ("reconstruction_aligned/mean_mm", "aligned (mm)"), ("generation/specificity_mm", "specificity (mm)"),
           ("generation/diversity_mm", "diversity (mm)"), ("disentanglement/mean_mm", "disentanglement (mm)"),
           ("disentanglement_jiang/mean_mm", "Jiang disentanglement (mm)"), ("neutral/mean_mm", "neutral face (mm)"),
           ("mesh_quality/roughness_samples_mm", "sample roughness (mm)"),
           ("mesh_quality/self_intersections_reconstruction", "self-intersecting faces"))
MANIPULATION_COLUMNS = (("control_mm", "control (mm)"), ("non_control_mm", "non-control (mm)"),
                        ("unedited_mm", "no edit (mm)"), ("target_reconstruction_mm", "AE of the target (mm)"),
                        ("gap_closed", "gap closed"), ("pairs", "pairs"))
GRID_SAMPLES, GRID_STEPS = 6, 6  # samples per grid row; interpolation weights 0..1


def datamodule_for(entry: Entry, registry: Registry, overrides: Sequence[str] = ()) -> MeshDataModule:
    """The DataModule of ``entry``'s recipe with the overrides its build recorded (then ``overrides``)."""
    return build_datamodule(registry.root / entry.recipe, [*entry.overrides, *overrides])


def latent_size(model: MorphableModel) -> int:
    """The width of the model's code: its latent Gaussian's (every shipped checkpoint has one), else its encoder's."""
    if model.latent_mean.numel():
        return model.latent_mean.numel()
    with torch.no_grad():
        return int(model.encode(model.mean[None]).shape[-1])


def _test_error(model: MorphableModel, data: MeshDataModule, group: str) -> dict[str, float]:
    metric = VertexError()
    with torch.no_grad():
        for batch in data.test_dataloader():
            vertices = batch["vertices"].to(model.mean)
            metric.update(model(vertices), vertices)
    values = metric.compute()
    return {f"{group}/mean_mm": float(values["mean"]), f"{group}/median_mm": float(values["median"]),
            f"{group}/meshes": float(len(data.split_indices["test"]))}


def generalisation(model: MorphableModel, entry: Entry, registry: Registry, data: MeshDataModule
                   ) -> tuple[dict[str, float], dict[str, str]]:
    """Reconstruction errors (mm) beyond the training distribution's people and expressions, under the entry's own
    split protocol (its test split of other data), and the reasons where a protocol cannot apply:

    - ``unseen_people``: the entry's dataset generated with the next seed: people (for anny-hand, hands) no model
      has seen, performing the same kinds of expressions or motions;
    - ``unseen_expressions``: anny-face's people performing six expressions no training expression contains
      (``expressions="novel"``, :data:`morphzoo.data.synth.face.NOVEL_EXPRESSION_RECIPES`).

    Recorded datasets have neither: generalisation there is an identity or extrapolation split, trained for.
    """
    protocols = {"unseen_people": (hasattr(data, "seed"), f"--data.init_args.seed={getattr(data, 'seed', 0) + 1}",
                                   "recorded data: no unseen people to generate (train on an identity split)"),
                 "unseen_expressions": (hasattr(data, "expressions"), "--data.init_args.expressions=novel",
                                        "only anny-face generates novel expressions (else train on an "
                                        "extrapolation split)")}
    results, reasons = {}, {}
    for group, (applies, override, reason) in protocols.items():
        if not applies:
            reasons[group] = reason
            continue
        other = datamodule_for(entry, registry, [override])
        if other.template.fingerprint() != model.template.fingerprint():
            reasons[group] = f"{override} generates another template"
            continue
        results.update(_test_error(model, other, group))
    return results, reasons


@torch.no_grad()
def sample_grid(model: MorphableModel, data: MeshDataModule, path: Path, seed: int = 0) -> Path:
    """Seeded random samples of ``model`` (its latent Gaussian or prior) above a latent interpolation from one test
    mesh to a test mesh of another identity (:func:`~morphzoo.zoo.evaluate.manipulation_pairs`)."""
    samples = model.sample(GRID_SAMPLES, generator=torch.Generator().manual_seed(seed)).cpu().numpy()
    sources, targets = manipulation_pairs(data, "identity", seed=seed)
    ends = [sources[0], targets[0]] if len(sources) else data.split_indices["test"][[0, -1]]  # one person only
    pair = torch.from_numpy(np.asarray(data.collection.vertices[np.asarray(ends)])).to(model.mean)
    path_meshes = model.interpolate(pair[0], pair[1], torch.linspace(0, 1, GRID_STEPS)).cpu().numpy()
    return render_mesh_grid(path, [("samples", list(samples)), ("interpolation A → B", list(path_meshes))],
                            model.template.faces)


def _budget(entry: Entry) -> tuple[str, str]:
    provenance = entry.provenance or {}
    epochs = provenance.get("epochs")
    wall = provenance.get("wall_time_s")
    return ("—" if epochs is None else str(epochs)), ("—" if wall is None else f"{wall / 60:.1f}")


def _section(row: dict) -> str:
    return f"{row['dataset']} ({row['preset']}, {row['split']})" if row.get("preset") else \
        f"{row['dataset']} ({row['split']})"


def write_leaderboard(rows: list[dict], skipped: dict[str, str], figures: dict[str, list[str]], path: Path) -> None:
    lines = ["# morphzoo leaderboard", "",
             "Every loadable checkpoint of `checkpoints.yaml`, evaluated once on its test split with "
             "`morphzoo.zoo.evaluate_model` (`morphzoo bench`). Errors in mm. One section per dataset, preset and "
             "split; one table per latent size, so that only comparable models share a table. *epochs* and *wall* "
             "(minutes, training on the 2-core CPU) are the training budget; the papers train for hundreds of "
             "epochs. *unseen people*: the same protocol on the dataset generated with the next seed (new "
             "identities, the same kinds of expressions or motions); *unseen expressions* (anny-face): the same "
             "people performing six expressions no training expression contains. — : not applicable or not "
             "measured.", ""]
    for section in sorted({_section(row) for row in rows}):
        members = [row for row in rows if _section(row) == section]
        lines += [f"## {section}", ""]
        for latent in sorted({row["latent"] for row in members}):
            group = sorted((row for row in members if row["latent"] == latent),
                           key=lambda row: row["metrics"].get(COLUMNS[0][0], np.inf))
            lines += [f"### latent {latent}", "",
                      "| model | method | epochs | wall (min) | params | " + " | ".join(t for _, t in COLUMNS) + " |",
                      "|---|---|---|---|---|" + "---|" * len(COLUMNS)]
            for row in group:
                values = [f"{row['metrics'][key]:.3f}" if key in row["metrics"] else "—" for key, _ in COLUMNS]
                lines.append(f"| `{row['name']}` | {row['method']} | {row['epochs']} | {row['wall_min']} | "
                             f"{row['num_params']:,} | " + " | ".join(values) + " |")
            lines.append("")
        manipulated = [row for row in members if any(key.startswith("manipulation_") for key in row["metrics"])]
        if manipulated:
            lines += ["### manipulation (LAMM Table 2)", "",
                      "Each test mesh driven through its control vertices alone to a test mesh of another person "
                      "(*identity*) or of the same person with another expression (*expression*); *no edit*: the "
                      "source's reconstruction against the target; *AE of the target*: encoding the whole target; "
                      "*gap closed*: the share of the distance between them that the edit covers.", "",
                      "| model | pairing | " + " | ".join(t for _, t in MANIPULATION_COLUMNS) + " |",
                      "|---|---|" + "---|" * len(MANIPULATION_COLUMNS)]
            for row in manipulated:
                for change in ("identity", "expression"):
                    if f"manipulation_{change}/pairs" not in row["metrics"]:
                        continue
                    values = [row["metrics"][f"manipulation_{change}/{key}"] for key, _ in MANIPULATION_COLUMNS]
                    lines.append(f"| `{row['name']}` | {change} | " + " | ".join(
                        f"{value:.0f}" if key == "pairs" else f"{value:.3f}"
                        for (key, _), value in zip(MANIPULATION_COLUMNS, values, strict=True)) + " |")
            lines.append("")
        rough = members[0]["metrics"].get("mesh_quality/roughness_data_mm")
        if rough is not None:  # the same test meshes for every row of a section
            lines += [f"Roughness of the true test meshes (the reference for *sample roughness*): {rough:.3f} mm.", ""]
        reference = members[0]["metrics"].get("mesh_quality/self_intersections_data")
        if reference is not None:  # the same seeded test meshes for every row of a section
            lines += [f"Self-intersecting faces of the true test meshes the last column counts on: "
                      f"{reference:.3f} per mesh.", ""]
        lines += [f"![{Path(figure).stem}]({figure})" for figure in figures[section]] + [""]
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
    rows, skipped, maps, grids = [], {}, {}, {}
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
        beyond, not_applicable = generalisation(model, entry, registry_, data)
        metrics.update(beyond)
        maps[entry.name] = test_error_maps(model, data)
        grids[entry.name] = sample_grid(model, data, out / f"samples_{entry.name}.png").name
        epochs, wall = _budget(entry)
        rows.append({"name": entry.name, "method": entry.method, "dataset": entry.dataset["name"],
                     "preset": entry.dataset.get("preset"), "split": entry.dataset["split"],
                     "latent": latent_size(model), "epochs": epochs, "wall_min": wall,
                     "num_params": model.num_learned_values(), "test_meshes": len(data.split_indices["test"]),
                     "protocols_not_applicable": not_applicable,
                     "registry_metrics": entry.metrics, "metrics": metrics, "faces": model.template.faces})
    figures: dict[str, list[str]] = {}
    for section in sorted({_section(row) for row in rows}):
        group = [row for row in rows if _section(row) == section]
        stem = section.replace(" (", "_").replace(", ", "_").rstrip(")")
        curve = plot_cumulative_error(out / f"cumulative_error_{stem}.png", {
            row["name"]: (maps[row["name"]]["curve_thresholds"], maps[row["name"]]["curve_fraction"]) for row in group})
        figures[section] = [curve.name]
        max_error = float(max(np.percentile(maps[row["name"]]["per_vertex"], 99) for row in group))
        for row in group:
            error_map = maps[row["name"]]
            truth, reconstruction = error_map["example_truth"], error_map["example_reconstruction"]
            picture = render_error_map(
                out / f"error_map_{row['name']}.png", [truth, reconstruction, truth], row["faces"],
                ["ground truth", f"{row['name']} (median-error test mesh)", "mean error over the test split"],
                [None, np.linalg.norm(reconstruction - truth, axis=1) * 1000, error_map["per_vertex"]], max_error)
            figures[section] += [picture.name, grids[row["name"]]]
    for row in rows:
        del row["faces"]
    results = {"models": rows, "skipped": skipped, "samples": samples, "pairs": pairs}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_leaderboard(rows, skipped, figures, out / "leaderboard.md")
    return results
