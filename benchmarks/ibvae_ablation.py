"""IB-VAE's ablation (Tables 1-2) on an embedded dataset: "no IB" (β_id = 1, β_mi = 0), "β_mi = 0" (β_id = 10) and the
full model (β_id = 10, β_mi = 50), same recipe, schedule and seed; every metric of ``evaluate_model`` for each.

    python benchmarks/ibvae_ablation.py                                  # anny-face small, the CPU schedule overlay
    python benchmarks/ibvae_ablation.py --recipe ibvae-anny-bu3dfe --schedule ""   # the paper's schedule
    python benchmarks/ibvae_ablation.py --beta-mi-sweep 500                     # + β_id = 10, β_mi = 500 (Fig. 3)

Writes ``results.json`` (resumable: finished rows are kept) and ``ablation.md`` into ``--out``; each run's
best-validation checkpoint stays in its folder (the full model's can be registered with ``morphzoo zoo build NAME
--from-checkpoint``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from morphzoo.recipes import fit_best, instantiate
from morphzoo.zoo.evaluate import evaluate_model

VARIANTS = {"no-ib": (1.0, 0.0), "beta-mi-0": (10.0, 0.0), "full": (10.0, 50.0)}
COLUMNS = (("disentanglement/mean_mm", "disentanglement Eq. 14 mean"), ("disentanglement/median_mm", "median"),
           ("disentanglement_jiang/mean_mm", "Jiang mean"), ("reconstruction/mean_mm", "reconstruction mean"),
           ("reconstruction/median_mm", "median"), ("neutral/mean_mm", "neutral face mean"),
           ("mesh_quality/self_intersections_reconstruction", "self-intersecting faces"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ibvae")
    parser.add_argument("--schedule", default="schedules/ibvae-cpu", help="overlay recipe ('' for the paper's)")
    parser.add_argument("--override", action="append", default=[], help="extra `morphzoo fit` argument")
    parser.add_argument("--out", type=Path, default=Path("runs/ibvae-ablation"))
    parser.add_argument("--beta-mi-sweep", type=float, nargs="*", default=[],
                        help="extra variants with β_id = 10 and these β_mi (Fig. 3's sweep)")
    args = parser.parse_args()
    variants = {**VARIANTS, **{f"beta-mi-{value:g}": (10.0, value) for value in args.beta_mi_sweep}}
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    recipes = [args.recipe, *([args.schedule] if args.schedule else [])]
    for name, (beta_identity, beta_mi) in variants.items():
        if name in results:
            continue
        cli = instantiate(recipes, [f"--model.init_args.beta_identity={beta_identity}",
                                    f"--model.init_args.beta_mi={beta_mi}", *args.override,
                                    f"--trainer.default_root_dir={args.out / name}", "--trainer.logger=false",
                                    "--trainer.enable_progress_bar=false"])
        checkpoint, seconds = fit_best(cli)
        metrics = evaluate_model(cli.model, cli.datamodule, samples=200, pairs=2000)
        results[name] = {"beta_identity": beta_identity, "beta_mi": beta_mi, "epochs": cli.trainer.current_epoch,
                         "train_seconds": round(seconds, 1), "checkpoint": checkpoint, "metrics": metrics}
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    lines = [f"IB-VAE ablation: `{' + '.join(recipes)}` {' '.join(args.override)}", "",
             "| variant | β_id | β_mi | epochs | train time | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---|---|---|---|" + "---|" * len(COLUMNS)]
    for name, row in results.items():
        values = [f"{row['metrics'][key]:.3f}" if key in row["metrics"] else "—" for key, _ in COLUMNS]
        lines.append(f"| {name} | {row['beta_identity']:g} | {row['beta_mi']:g} | {row['epochs']} | "
                     f"{row['train_seconds'] / 60:.1f} min | " + " | ".join(values) + " |")
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
