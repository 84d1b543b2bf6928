"""The main job: generate the embedded anny-face data, train models from their recipes, evaluate on the test split
and write a short report (errors in mm, error heat-map renders, cumulative error curves).

Each model trains under a wall-clock budget (``--minutes-per-model``) so the whole job fits in about 20 minutes on a
2-core CPU; the checkpoint with the lowest validation error is evaluated once on the test split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from morphzoo.data.synth.face import load_anny_face
from morphzoo.recipes import fit_best, instantiate
from morphzoo.zoo.evaluate import evaluate_model, test_error_maps
from morphzoo.zoo.figures import plot_cumulative_error, render_error_map

DEFAULT_RECIPES = ("spiralnet", "coma")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES),
                        help="recipes (names or files) to train and compare")
    parser.add_argument("--minutes-per-model", type=float, default=6.0, help="training wall-clock budget per model")
    parser.add_argument("--size", default="small", help="anny-face preset: tiny, small or full")
    parser.add_argument("--out", type=Path, default=Path("runs/main-job"), help="where the runs and report go")


def train_and_evaluate(recipe: str, args: argparse.Namespace) -> dict:
    name = Path(recipe).stem
    budget = f"00:00:{int(args.minutes_per_model):02d}:{int(args.minutes_per_model % 1 * 60):02d}"
    cli = instantiate(recipe, [f"--data.init_args.size={args.size}", f"--trainer.max_time={budget}",
                               f"--trainer.default_root_dir={args.out / name}", "--trainer.logger.init_args.save_dir",
                               str(args.out), "--trainer.logger.init_args.name", name,
                               "--trainer.enable_progress_bar=false"])
    best, train_seconds = fit_best(cli)
    result = test_error_maps(cli.model, cli.datamodule)
    result["metrics"] = evaluate_model(cli.model, cli.datamodule)
    result.update(
        name=name,
        method=type(cli.model).__name__,
        parameters=sum(p.numel() for p in cli.model.parameters()),
        epochs=cli.trainer.current_epoch,
        train_seconds=train_seconds,
        checkpoint=best,
        faces=cli.model.template.faces,
        train_meshes=len(cli.datamodule.split_indices["train"]),
        test_meshes=len(cli.datamodule.split_indices["test"]),
    )
    return result


def write_report(results: list[dict], out: Path, size: str, total_seconds: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plot_cumulative_error(out / "cumulative_error.png",
                          {r["method"]: (r["curve_thresholds"], r["curve_fraction"]) for r in results})
    max_error = float(max(np.percentile(r["per_vertex"], 99) for r in results))
    lines = [
        f"# morphzoo main job: anny-face `{size}`, interpolation split",
        "",
        f"{results[0]['train_meshes']} training and {results[0]['test_meshes']} test meshes; each model trained under "
        f"a wall-clock budget and evaluated once on the test split with its best-validation checkpoint. "
        f"Total time {total_seconds / 60:.1f} min.",
        "",
        "| model | parameters | epochs | training time | test error mean ± std (mm) | median (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['method']} (`{r['name']}`) | {r['parameters']:,} | {r['epochs']} | "
                     f"{r['train_seconds'] / 60:.1f} min | {r['mean']:.3f} ± {r['std']:.3f} | {r['median']:.3f} |")
    lines += ["", "Every metric of `morphzoo.metrics` that applies (`evaluate_model`; samples from the Gaussian of "
              "each model's training latents; the last column is the training data's own diversity, for reference):",
              "", "| model | aligned error (mm) | specificity (mm) | diversity (mm) | data diversity: all / same "
              "identity / same expression (mm) |", "|---|---|---|---|---|"]
    for r in results:
        m = r["metrics"]
        lines.append(f"| {r['method']} | {m['reconstruction_aligned/mean_mm']:.3f} | "
                     f"{m['generation/specificity_mm']:.3f} | {m['generation/diversity_mm']:.3f} | "
                     f"{m['data/diversity_global_mm']:.2f} / {m['data/diversity_same_identity_mm']:.2f} / "
                     f"{m['data/diversity_same_expression_mm']:.2f} |")
    lines += ["", "![cumulative error](cumulative_error.png)", ""]
    for r in results:
        picture = render_error_map(
            out / f"{r['name']}_reconstruction.png",
            [r["example_truth"], r["example_reconstruction"], r["example_truth"]],
            r["faces"],
            ["ground truth", f"{r['method']} reconstruction", "mean error over the test set"],
            [None, np.linalg.norm(r["example_reconstruction"] - r["example_truth"], axis=1) * 1000, r["per_vertex"]],
            max_error_mm=max_error,
        )
        lines += [f"## {r['method']}", "", f"Test mesh #{r['example_index']} (the median-error test mesh); right: "
                  "per-vertex mean error over the whole test split.", "", f"![{r['name']}]({picture.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    summary = {r["name"]: {k: (float(r[k]) if k in ("mean", "std", "median", "train_seconds") else r[k])
                           for k in ("method", "parameters", "epochs", "train_seconds", "mean", "std", "median",
                                     "checkpoint", "metrics")} for r in results}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return report


def run_main_job(args: argparse.Namespace) -> Path:
    start = time.perf_counter()
    print(f"[main-job] generating (or loading) anny-face '{args.size}' ...", flush=True)
    collection = load_anny_face(args.size)
    print(f"[main-job] {len(collection)} meshes of {collection.template.num_vertices} vertices "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    results = []
    for recipe in args.recipes:
        print(f"[main-job] training {recipe} for at most {args.minutes_per_model:g} min ...", flush=True)
        results.append(train_and_evaluate(recipe, args))
        r = results[-1]
        print(f"[main-job] {r['method']}: test error {r['mean']:.3f} ± {r['std']:.3f} mm "
              f"(median {r['median']:.3f}) after {r['epochs']} epochs", flush=True)
    report = write_report(results, args.out, args.size, time.perf_counter() - start)
    print(f"[main-job] report written to {report.resolve()}", flush=True)
    return report
