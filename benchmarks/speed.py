"""Speed of the foundation's models and data on this machine.

Reports, for CoMA and SpiralNet++:
- training throughput (meshes/s; batch 32, Adam, L1, forward + backward + step),
- decode latency at batch 1 and batch 64 (CPU, inference mode),
on two templates: the anny-face head (4200 vertices) and a closed 5023-vertex sphere whose QEM levels have the CoMA
template's sizes (5023/1256/314/79/20), comparable with the reference ports' numbers in
``shared/notes/performance-anchors.md`` (measured on a 2-core machine of this kind). Data loading and generation
rates are in ``benchmarks/data.py``.

    python benchmarks/speed.py [--skip-anny] [--out runs/benchmarks/speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from morphzoo.mesh.template import Template
from morphzoo.methods import CoMA, SpiralNetPlusPlus

# The public MIT ports measured side by side on a machine of this kind (performance-anchors.md), CoMA template.
REFERENCE_PORTS = {
    "CoMA": {"train_meshes_per_s": 9.0, "decode_b1_ms": 79.0, "decode_b64_ms": 3200.0},
    "SpiralNetPlusPlus": {"train_meshes_per_s": 30.0, "decode_b1_ms": 8.0, "decode_b64_ms": 800.0},
}


def coma_sized_sphere(num_vertices: int = 5023) -> Template:
    """A closed mesh of exactly ``num_vertices`` vertices (convex hull of a Fibonacci sphere), ~10k faces like CoMA."""
    i = np.arange(num_vertices) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / num_vertices), np.pi * (1 + 5**0.5) * i
    points = 0.1 * np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)
    hull = trimesh.convex.convex_hull(points)
    return Template(vertices=hull.vertices, faces=hull.faces, name=f"sphere{num_vertices}")


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_model(model: torch.nn.Module, steps: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    vertices = model.mean + 0.003 * torch.randn(32, model.num_vertices, 3, generator=generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        optimiser.zero_grad()
        x = model.normalise(vertices)
        torch.nn.functional.l1_loss(model.decode_normalised(model.encode_normalised(x)), x).backward()
        optimiser.step()

    model.train()
    train = median_seconds(train_step, steps)
    model.eval()
    latent_dim = model.hparams.latent_dim
    with torch.inference_mode():
        z1, z64 = torch.randn(1, latent_dim), torch.randn(64, latent_dim)
        decode_b1 = median_seconds(lambda: model.decode(z1), 30)
        decode_b64 = median_seconds(lambda: model.decode(z64), 5)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_meshes_per_s": 32 / train,
        "decode_b1_ms": 1000 * decode_b1,
        "decode_b64_ms": 1000 * decode_b64,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-anny", action="store_true", help="only the sphere template (no anny model)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/speed.json"))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")

    templates = {"sphere5023 (CoMA sizes)": coma_sized_sphere()}
    if not args.skip_anny:
        from morphzoo.data.synth.face import anny_face_template

        templates["anny-face (4200)"] = anny_face_template()
    results: dict = {"models": {}}
    print("| template | model | params | train meshes/s | decode b1 (ms) | decode b64 (ms) | speed-up vs port "
          "(train / b1 / b64) |")
    print("|---|---|---|---|---|---|---|")
    for template_name, template in templates.items():
        for model_class in (CoMA, SpiralNetPlusPlus):
            torch.manual_seed(0)
            row = measure_model(model_class(template=template), args.steps)
            results["models"][f"{template_name}/{model_class.__name__}"] = row
            speedup = "—"
            if template_name.startswith("sphere5023"):
                ref = REFERENCE_PORTS[model_class.__name__]
                speedup = (f"{row['train_meshes_per_s'] / ref['train_meshes_per_s']:.1f}× / "
                           f"{ref['decode_b1_ms'] / row['decode_b1_ms']:.1f}× / "
                           f"{ref['decode_b64_ms'] / row['decode_b64_ms']:.1f}×")
            print(f"| {template_name} | {model_class.__name__} | {row['parameters']:,} | "
                  f"{row['train_meshes_per_s']:.1f} | {row['decode_b1_ms']:.1f} | {row['decode_b64_ms']:.0f} | "
                  f"{speedup} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
