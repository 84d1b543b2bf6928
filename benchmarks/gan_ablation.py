"""The decoupled GAN's Tables 1 and 2 on an embedded dataset: its ablations (§5.4) beside autoencoders of the zoo.

Table 1 (decoupling, diversity, specificity; §5.3): Dec-Id, Dec-Exp (% of same-code pairs the embedding networks judge
"same"; n = m = 100), Div, Div-Id, Div-Exp (mm, 10,000 pairs) and Sp (mm, 1000 samples against the training split), and
the training data's diversity from its labels. Dec-* and Div-Id/Exp need a code with identity and expression parts
(the GAN, IB-VAE); a plain autoencoder has neither (its row shows "—"), its samples come from the Gaussian of its
training latents. Table 2 (sparse fitting): the RMSE (mm, all vertices) of ``fit_landmarks`` on the template's
landmarks of the middle frame of every test sequence, for each λ.

Train the variants first (same recipe, schedule and seed), e.g. on anny-face with the CPU overlay:

    morphzoo fit -c decoupled-gan -c schedules/decoupled-gan-cpu --trainer.logger.init_args.name=full
    ... --model.init_args.laplacian_weight=0        (w/o mesh regularisation)
    ... --model.init_args.classify_expression=false (identity classifier only)
    ... --model.init_args.feature_loss=false        (w/o feature loss)

then evaluate every checkpoint (``NAME=PATH`` for a Lightning checkpoint of any method, or a zoo name):

    python benchmarks/gan_ablation.py full=runs/.../last.ckpt no-reg=... ibvae-anny-face --data-size small

Writes ``results.json`` (resumable: finished rows are kept) and ``tables.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import morphzoo
from morphzoo.data import AnnyBU3DFEDataModule, AnnyFaceDataModule
from morphzoo.methods.base import MorphableModel
from morphzoo.metrics.diversity import Diversity
from morphzoo.metrics.specificity import Specificity
from morphzoo.zoo.checkpoint import import_model_class
from morphzoo.zoo.embedding import decoupling_scores
from morphzoo.zoo.evaluate import _generate, data_diversity, factorised_diversity, landmark_fitting_errors

DATASETS = {"anny-face": AnnyFaceDataModule, "anny-bu3dfe": AnnyBU3DFEDataModule}
TABLE_1 = (("decoupling/identity_percent", "Dec-Id (%)"), ("decoupling/expression_percent", "Dec-Exp (%)"),
           ("generation/diversity_mm", "Div"), ("generation/diversity_same_identity_code_mm", "Div-Id"),
           ("generation/diversity_same_expression_code_mm", "Div-Exp"), ("generation/specificity_mm", "Sp"))
LAMBDAS = (0.0, 1e-3, 1e-2, 10.0)  # the three and the paper's largest (Table 2: 0, 0.01, 10)


def load_model(spec: str) -> tuple[str, MorphableModel]:
    name, _, path = spec.partition("=")
    if not path:
        return name, morphzoo.load(name)
    class_path = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]["_class_path"]
    return name, import_model_class(class_path, path).from_lightning_checkpoint(path)


@torch.no_grad()
def table_1_row(model: MorphableModel, data, samples: int, pairs: int, seed: int) -> dict[str, float]:
    train = data.subset("train")
    generated = _generate(model, train, samples, seed, 64)
    specificity = Specificity(data.collection.vertices[sorted(data.split_indices["train"])])
    diversity = Diversity(pairs=pairs, seed=seed)
    for chunk in generated.split(64):
        specificity.update(chunk)
        diversity.update(chunk)
    row = {"generation/specificity_mm": float(specificity.compute()["mean"]),
           "generation/diversity_mm": float(diversity.compute()["mean"])}
    if {"identity", "expression"} <= set(model.latent_factors()):
        row.update(factorised_diversity(model, pairs, seed))
        row.update(decoupling_scores(model.sample_sharing, data, seed=seed))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=CHECKPOINT.ckpt or a zoo name")
    parser.add_argument("--dataset", default="anny-face", choices=sorted(DATASETS))
    parser.add_argument("--data-size", default="small")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/gan-ablation"))
    parser.add_argument("--table-1-only", action="store_true",
                        help="skip Table 2 (the paper reports it on CoMA's sequences; anny-face stands in for them)")
    args = parser.parse_args()
    data = DATASETS[args.dataset](size=args.data_size)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for spec in args.models:
        name, model = load_model(spec)
        if name in results:
            continue
        start = time.perf_counter()
        row = table_1_row(model.eval(), data, args.samples, args.pairs, args.seed)
        if not args.table_1_only:
            row.update(landmark_fitting_errors(model, data, LAMBDAS))
        results[name] = {"source": spec, "class": type(model).__name__, "evaluation_seconds":
                         round(time.perf_counter() - start, 1), "metrics": row}
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    reference = data_diversity(data, args.pairs, args.seed)
    lines = [f"Decoupled GAN Table 1 on {args.dataset} ({args.data_size}, {data.split_arguments['protocol']} split)",
             "", "| model | " + " | ".join(title for _, title in TABLE_1) + " |", "|---|" + "---|" * len(TABLE_1),
             f"| training data | — | — | {reference['data/diversity_global_mm']:.2f} | "
             f"{reference.get('data/diversity_same_identity_mm', float('nan')):.2f} | "
             f"{reference.get('data/diversity_same_expression_mm', float('nan')):.2f} | — |"]
    for name, entry in results.items():
        row = entry["metrics"]
        lines.append(f"| {name} | " + " | ".join(f"{row[key]:.{1 if 'percent' in key else 2}f}" if key in row else "—"
                                                 for key, _ in TABLE_1) + " |")
    fitted = {name: entry for name, entry in results.items() if "landmark_fit/targets" in entry["metrics"]}
    if fitted:
        lines += ["", "Table 2: landmark fitting RMSE (mm, all vertices; λ per mm² on the whitened code)", "",
                  "| model | " + " | ".join(f"λ = {weight:g}" for weight in LAMBDAS) + " |",
                  "|---|" + "---|" * len(LAMBDAS)]
    for name, entry in fitted.items():
        row = entry["metrics"]
        lines.append(f"| {name} | " + " | ".join(f"{row[f'landmark_fit/lambda_{weight:g}/rmse_mm']:.2f}"
                                                 for weight in LAMBDAS) + " |")
    (args.out / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
