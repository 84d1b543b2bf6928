"""Fitting a raw scan (``model.fit_scan``): time per scan and accuracy, per bundled anny-face model.

The scan is what ``tests/test_scan_fitting.py`` uses: 3000 points sampled by area over a test mesh of the tiny
anny-face data, the 20 % of largest x cropped off, rotated at random, in millimetres, shifted, with 0.5 mm of Gaussian
noise. The error is the mean distance of each fitted vertex to the same vertex of the truth, both placed on the scan;
beside it, the model's own error on the registered mesh (the floor a fit can reach). Units are estimated (the harder
case) unless ``--known-units``.

    python benchmarks/fit_scan.py [--models pca-anny-face ...] [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import trimesh

import morphzoo
from morphzoo.data import AnnyFaceDataModule

MODELS = ("pca-anny-face", "coma-anny-face", "spiralnet-anny-face", "lamm-anny-face", "deep3dmm-spiral-anny-face",
          "neural3dmm-anny-face")


def posed_scan(truth: np.ndarray, faces: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(generator.normal(size=(3, 3)))
    rotation *= np.sign(np.linalg.det(rotation))
    samples, _ = trimesh.sample.sample_surface(trimesh.Trimesh(truth, faces, process=False), 3000, seed=seed)
    samples = samples[samples[:, 0] < np.quantile(samples[:, 0], 0.8)]
    offset = np.array([100.0, -50.0, 30.0])
    scan = 1000 * samples @ rotation.T + offset + generator.normal(scale=0.5, size=samples.shape)
    return scan, 1000 * truth @ rotation.T + offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--known-units", action="store_true", help="give the scale (mm) instead of estimating it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = AnnyFaceDataModule(size="tiny")
    truth = np.asarray(data.collection.vertices[data.split_indices["test"][0]], dtype=np.float64)
    print(f"{args.steps} steps, {args.threads} threads, units {'given' if args.known_units else 'estimated'}\n")
    print("| model | fit error (mm) | registered reconstruction (mm) | scale | median residual (mm) | time (s) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model = morphzoo.load(name)
        with torch.no_grad():
            mesh = torch.as_tensor(truth, dtype=torch.float32)
            floor = float((model(mesh) - mesh).norm(dim=-1).mean()) * 1000
        scan, placed = posed_scan(truth, model.template.faces)
        start = time.perf_counter()
        fit = model.fit_scan(scan, steps=args.steps, units_per_metre=1000.0 if args.known_units else None)
        seconds = time.perf_counter() - start
        error = np.linalg.norm(fit.vertices_in_scan.double().numpy() - placed, axis=-1).mean()
        print(f"| {name} | {error:.2f} | {floor:.2f} | {float(fit.scale):.0f} | "
              f"{float(fit.residual_mm[0].median()):.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
