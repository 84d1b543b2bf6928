"""``morphzoo fit-scan NAME SCAN``: register a raw scan or point cloud to a model's template.

Writes ``OUT.ply`` (the registered mesh on the model's template, model frame, metres), ``OUT-in-scan.ply`` (the same
mesh placed on the scan, in the scan's frame and units) and ``OUT.npz`` (``latent``, ``residual_mm`` per scan point,
``rotation``, ``translation``, ``scale``), and prints the fit's scale and residuals.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from morphzoo.cache import atomic_save_npz
from morphzoo.mesh.io import read_points, write_mesh
from morphzoo.zoo.registry import load

UNITS = {"auto": None, "m": 1.0, "cm": 100.0, "mm": 1000.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a registry name (morphzoo list), a checkpoint folder or a Hub repository")
    parser.add_argument("scan", help="the scan: a mesh or point cloud file (PLY, OBJ, ...)")
    parser.add_argument("--out", help="output path without suffix (default: SCAN's name + '-registered' beside it)")
    parser.add_argument("--units", choices=list(UNITS), default="auto",
                        help="the scan's units (default: estimated with the scale; give them when known)")
    parser.add_argument("--offsets", action="store_true", help="also fit a smooth per-vertex residual")
    parser.add_argument("--steps", type=int, default=300, help="refinement iterations (default: 300)")


def run(args: argparse.Namespace) -> None:
    scan_path = Path(args.scan)
    out = Path(args.out) if args.out else scan_path.with_name(scan_path.stem + "-registered")
    points = read_points(scan_path)
    model = load(args.model)
    start = time.perf_counter()
    fit = model.fit_scan(points, units_per_metre=UNITS[args.units], fit_offsets=args.offsets, steps=args.steps)
    seconds = time.perf_counter() - start
    faces = model.template.faces
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mesh(out.with_suffix(".ply"), fit.vertices.numpy(), faces)
    in_scan = out.parent / f"{out.name}-in-scan.ply"
    write_mesh(in_scan, fit.vertices_in_scan.numpy(), faces)
    residual = fit.residual_mm[0].numpy()
    atomic_save_npz(out.with_suffix(".npz"), {"latent": fit.latent.numpy(), "residual_mm": residual,
                                              "rotation": fit.rotation.numpy(), "translation": fit.translation.numpy(),
                                              "scale": fit.scale.numpy()})
    print(f"fitted {len(points)} points of {scan_path} to {args.model} in {seconds:.1f} s: "
          f"scale {float(fit.scale):.4g} scan units per metre; distance of the scan points to the fit (mm): "
          f"median {np.median(residual):.2f}, 95 % {np.percentile(residual, 95):.2f}. Wrote "
          f"{out.with_suffix('.ply')} (template, metres), {in_scan} and {out.with_suffix('.npz')}")
