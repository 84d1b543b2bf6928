"""Reconstruction error against latent size on anny-face (LAMM supplement Table 2's comparison, on the embedded data).

Trains each recipe at each latent size with the same shortened schedule (``--epochs``; PCA is fitted in one pass),
keeps the best-validation checkpoint and measures its test error once. With ``--manipulation LATENT`` it then runs
LAMM's second stage (self-supervised manipulation, supplement §2.3) from the LAMM autoencoder of that latent size and
reports the manipulation error on control and non-control vertices. Results are appended to a JSON file as they
come (a long run can be resumed: finished rows are skipped) and printed as a markdown table.

    python benchmarks/latent_sizes.py --recipes recipes/pca.yaml recipes/lamm-small.yaml recipes/spiralnet.yaml \
        --latent-sizes 32 64 128 256 --epochs 3 --manipulation 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from morphzoo.recipes import fit_best, instantiate
from morphzoo.zoo.evaluate import test_error_maps


def fit(recipe: str, overrides: list[str], root: Path):
    cli = instantiate(recipe, [*overrides, f"--trainer.default_root_dir={root}", "--trainer.logger=false",
                               "--trainer.enable_progress_bar=false"])
    best, seconds = fit_best(cli)
    return cli, best, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", required=True)
    parser.add_argument("--latent-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the neural models")
    parser.add_argument("--size", default="full", help="anny-face preset")
    parser.add_argument("--manipulation", type=int, default=None, help="latent size of the LAMM to run stage 2 on")
    parser.add_argument("--manipulation-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/latent-sizes"))
    args = parser.parse_args()
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    def save(key: str, row: dict) -> None:
        results[key] = row
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{key}: {json.dumps(row)}", flush=True)

    for recipe in args.recipes:
        for latent in args.latent_sizes:
            key = f"{Path(recipe).stem}@{latent}"
            if key in results:
                continue
            epochs = 1 if "pca" in Path(recipe).stem else args.epochs
            cli, best, seconds = fit(recipe, [f"--data.init_args.size={args.size}", f"--trainer.max_epochs={epochs}",
                                              f"--model.init_args.latent_dim={latent}"], args.out / key)
            error = test_error_maps(cli.model, cli.datamodule)
            save(key, {"method": type(cli.model).__name__, "latent": latent, "epochs": epochs,
                       "parameters": cli.model.num_learned_values(), "train_seconds": round(seconds, 1),
                       "mean_mm": float(error["mean"]), "median_mm": float(error["median"]), "checkpoint": best})

    if args.manipulation is not None:
        key = f"lamm-manipulation@{args.manipulation}"
        autoencoder = results.get(f"lamm-small@{args.manipulation}")
        if key not in results and autoencoder is not None:
            cli, best, seconds = fit("recipes/lamm-manipulation.yaml", [
                f"--data.init_args.size={args.size}", f"--trainer.max_epochs={args.manipulation_epochs}",
                "--model.init_args.dim=128", f"--model.init_args.latent_dim={args.manipulation}",
                f"--model.init_args.init_from={autoencoder['checkpoint']}"], args.out / key)
            test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
            save(key, {"method": "LAMM (manipulation stage)", "latent": args.manipulation,
                       "epochs": args.manipulation_epochs, "train_seconds": round(seconds, 1),
                       **{name.removeprefix("test/"): round(float(value), 4) for name, value in test.items()}})

    print("\n| model | latent | epochs | parameters | test error mean (mm) | median (mm) |\n|---|---|---|---|---|---|")
    for row in results.values():
        if "mean_mm" in row:
            print(f"| {row['method']} | {row['latent']} | {row['epochs']} | {row['parameters']:,} | "
                  f"{row['mean_mm']:.3f} | {row['median_mm']:.3f} |")


if __name__ == "__main__":
    main()
