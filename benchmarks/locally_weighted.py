"""The locally weighted autoencoder on anny-heads (AFLW protocol): reconstruction against CoMA at the same latent size,
locality of part swaps against the same model without local weights, and the paper's §5.1 figures.

Reports, on the 220 test heads:
- reconstruction error (mean / median per-vertex Euclidean, mm) of every checkpoint given;
- part-swap locality of the locally weighted models: for each part, the share of a swap's displacement that lands in
  that part's local-weight support (the full model's supports for both, so like is compared with like), next to the
  share of vertices in the support (what a swap that moved every vertex equally would score); and how far each part's
  swap moves the face (mm), i.e. how much of the face each part code controls;
- Fig. 5: part interpolation from a source to a target head (α = 1/9 ... 8/9), each row with the per-vertex
  displacement between its ends as a heat map (the paper colours the Hausdorff distance; in correspondence the
  per-vertex distance is its exact counterpart);
- Fig. 6: codes of 220 training heads, the 220 test heads and 220 part-synthesised heads (5 sources × 11 targets ×
  4 parts, from test heads), re-encoded, in PCA and t-SNE with 2σ ellipses.

    python benchmarks/locally_weighted.py --full runs/lw/full/version_0/checkpoints/last.ckpt \\
        --uniform runs/lw/uniform/version_0/checkpoints/last.ckpt --coma runs/lw/coma/version_0/checkpoints/last.ckpt \\
        --out runs/lw-bench
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from morphzoo.data import AnnyHeadsDataModule
from morphzoo.methods import CoMA, LocallyWeightedAutoencoder
from morphzoo.metrics.vertex_error import VertexError
from morphzoo.zoo.figures import plot_encoding_diversity, render_error_map

ALPHAS = np.arange(1, 9) / 9  # Fig. 5's columns
SOURCES, TARGETS = 5, 11  # Fig. 6's part synthesis: 5 sources × 11 targets × 4 parts = 220 heads


@torch.no_grad()
def reconstruction_mm(model, faces: torch.Tensor) -> dict[str, float]:
    error = VertexError()
    for batch in faces.split(64):
        error.update(model(batch), batch)
    return {key: float(value) for key, value in error.compute().items() if key in ("mean", "median")}


@torch.no_grad()
def part_synthesis(model: LocallyWeightedAutoencoder, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Every source with one part from every target: (S · T · K, V, 3)."""
    faces = torch.cat([sources, targets])
    assignment = [[len(sources) + t if k == part else s for k in range(model.parts)]
                  for s in range(len(sources)) for t in range(len(targets)) for part in range(model.parts)]
    return torch.cat([model.combine_parts(faces, chunk) for chunk in torch.tensor(assignment).split(64)])


@torch.no_grad()
def interpolation_figures(model: LocallyWeightedAutoencoder, source: torch.Tensor, target: torch.Tensor,
                          out: Path) -> list[str]:
    faces = model.template.faces
    paths = []
    for part in range(model.parts):
        row = model.interpolate_part(source, target, part, ALPHAS).numpy()
        displacement = np.linalg.norm(row[-1] - row[0], axis=-1) * 1000
        shown = [0, len(ALPHAS) // 2, len(ALPHAS) - 1]
        paths.append(str(render_error_map(
            out / f"part_interpolation_{part}.png", [row[i] for i in shown] + [row[-1]], faces,
            [f"part {part}, α = {ALPHAS[i] * 9:.0f}/9" for i in shown] + ["displacement α 1/9 → 8/9"],
            [None] * len(shown) + [displacement], max_error_mm=max(float(displacement.max()), 1e-3))))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", required=True, help="Lightning checkpoint of the locally weighted model")
    parser.add_argument("--uniform", help="checkpoint of the same model trained with local_weights=false")
    parser.add_argument("--coma", help="checkpoint of CoMA at the same latent size")
    parser.add_argument("--size", default="aflw", help="anny-heads preset (the checkpoints' data)")
    parser.add_argument("--out", type=Path, default=Path("runs/lw-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    data = AnnyHeadsDataModule(size=args.size)
    split = data.split_indices
    test = torch.from_numpy(np.asarray(data.collection.vertices[np.sort(split["test"])]))
    rng = np.random.default_rng(0)
    train = torch.from_numpy(np.asarray(data.collection.vertices[np.sort(rng.choice(split["train"], len(test),
                                                                                    replace=False))]))
    models = {"locally weighted": LocallyWeightedAutoencoder.from_lightning_checkpoint(args.full)}
    if args.uniform:
        models["without local weights"] = LocallyWeightedAutoencoder.from_lightning_checkpoint(args.uniform)
    if args.coma:
        models["CoMA"] = CoMA.from_lightning_checkpoint(args.coma)

    full = models["locally weighted"]
    supports = full.supports()
    results = {"test_heads": len(test), "support_share": (torch.bincount(supports, minlength=full.parts).float()
                                                           / full.num_vertices).tolist()}
    for name, model in models.items():
        entry = {"reconstruction_mm": reconstruction_mm(model, test), "latent": int(model.latent_shape[0]),
                 "parameters": model.num_learned_values()}
        if isinstance(model, LocallyWeightedAutoencoder):
            with torch.no_grad():
                entry["locality"] = model.part_swap_locality(test, supports).tolist()
                entry["swap_displacement_mm"] = (model.part_swap_displacements(test).mean(dim=(1, 2)) * 1000).tolist()
        results[name] = entry

    with torch.no_grad():
        synthesised = part_synthesis(full, test[:SOURCES], test[SOURCES:SOURCES + TARGETS])
        codes = {"train": full.encode(train), "test": full.encode(test), "part synthesis": full.encode(synthesised)}
    results["figures"] = [str(plot_encoding_diversity(args.out / "diversity.png",
                                                      {k: v.numpy() for k, v in codes.items()}))]
    results["figures"] += interpolation_figures(full, test[0], test[1], args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    print("| model | latent | parameters | test mean / median (mm) | part-swap locality (per part) | "
          "part-swap displacement (mm, per part) |")
    print("|---|---|---|---|---|---|")
    for name in models:
        entry = results[name]
        locality = " / ".join(f"{share:.2f}" for share in entry.get("locality", [])) or "—"
        moved = " / ".join(f"{size:.2f}" for size in entry.get("swap_displacement_mm", [])) or "—"
        print(f"| {name} | {entry['latent']} | {entry['parameters']:,} | {entry['reconstruction_mm']['mean']:.3f} / "
              f"{entry['reconstruction_mm']['median']:.3f} | {locality} | {moved} |")
    print("support share (chance):", " / ".join(f"{share:.2f}" for share in results["support_share"]))
    print(f"figures and results.json in {args.out}")


if __name__ == "__main__":
    main()
