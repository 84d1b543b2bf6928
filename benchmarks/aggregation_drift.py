"""How far Deep3DMM's learned feature aggregation moved from its initialisation during training.

For each trained Lightning checkpoint of a Deep3DMM model (spectral or spiral), and each aggregation (encoder
``down.i``, decoder ``up.i``), prints:

- ``w_a``: the fusion weight of Eq. 7 (initialised at 0.2);
- ``drift``: ``‖θ − θ₀‖ / ‖θ₀‖`` of its query and key vectors, against a freshly initialised twin (same
  hyperparameters, same seed: the position dims are deterministic, the noise dims are redrawn with the seed);
- ``top-k kept``: the share of the selected (row, column) pairs of the top-k mask that the twin selects too.

The paper's Fig. 6 shows receptive fields that move away from QEM's over its 300 epochs; a short run whose queries
and keys barely moved has not yet trained the aggregation it is meant to evaluate.

    python benchmarks/aggregation_drift.py runs/.../best-epoch=11.ckpt [more.ckpt ...] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from morphzoo.nn.feature_aggregation import FeatureAggregation
from morphzoo.zoo.checkpoint import import_model_class, init_args_of


@torch.no_grad()
def drift_rows(path: str, seed: int) -> list[tuple[str, float, float, float]]:
    """(module name, w_a, drift of its queries and keys, share of top-k pairs kept) per attention aggregation."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model_class = import_model_class(checkpoint["hyper_parameters"]["_class_path"], path)
    trained = model_class.from_lightning_checkpoint(path)
    torch.manual_seed(seed)
    initial = model_class(template=trained.template, mean=trained.mean, std=trained.std,
                          **init_args_of(trained))
    rows = []
    for (name, now), before in zip(trained.named_modules(), initial.modules(), strict=True):
        if not isinstance(now, FeatureAggregation) or now.aggregation != "attention":
            continue
        moved = torch.cat([(now.queries - before.queries).flatten(), (now.keys - before.keys).flatten()]).norm()
        size = torch.cat([before.queries.flatten(), before.keys.flatten()]).norm()
        index_now, index_before = now.learned_matrix()[0], before.learned_matrix()[0]
        if index_now is None:
            kept = float("nan")  # no top-k mask: every pair is selected
        else:
            kept = (index_now[:, :, None] == index_before[:, None, :]).any(-1).float().mean().item()
        weight = float(now.mixing_weight) if now.fusion else float("nan")
        rows.append((name, weight, (moved / size).item(), kept))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="Lightning .ckpt files of Deep3DMM runs")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed_everything (default 0)")
    args = parser.parse_args()
    for path in args.checkpoints:
        print(f"\n{path}\n| aggregation | w_a | drift of queries/keys | top-k pairs kept |\n|---|---|---|---|")
        for name, weight, drift, kept in drift_rows(path, args.seed):
            print(f"| {name} | {weight:.3f} | {drift:.3f} | {kept:.3f} |")


if __name__ == "__main__":
    main()
