"""``morphzoo view NAME|FOLDER|CKPT``: the explorer (:mod:`morphzoo.explorer`) on a local web page.

The meshes to compare (interpolation, error heat-maps, part swaps) are ``--meshes`` files on the model's template or,
for a registry name, the middle frame of every test sequence of the entry's DataModule (built, or read from the cache,
on the first start).
"""

from __future__ import annotations

import argparse
import signal
import tempfile
from pathlib import Path

import numpy as np

from morphzoo.explorer import ExplorerSession, serve
from morphzoo.mesh.io import read_mesh
from morphzoo.methods.lamm import LAMM
from morphzoo.zoo.bench import datamodule_for
from morphzoo.zoo.checkpoint import export_lightning_checkpoint, load_checkpoint
from morphzoo.zoo.evaluate import middle_frames
from morphzoo.zoo.registry import load, load_registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a registry name (morphzoo list), a checkpoint folder, a Hub repository or a "
                                      "Lightning .ckpt written by morphzoo fit")
    parser.add_argument("--meshes", nargs="+", metavar="FILE",
                        help="meshes on the model's template to compare (default for a registry name: its test split)")
    parser.add_argument("--count", type=int, default=12, help="test meshes taken from the test split (default: 12)")
    parser.add_argument("--sliders", type=int, default=8, help="latent directions per factor (default: 8)")
    parser.add_argument("--up", choices=("z", "y"), default="z",
                        help="the meshes' up axis: z (anny, default; viewed from -y) or y (CoMA, DFAUST; from +z)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def load_model(spec: str):
    """A model from a registry name, checkpoint folder, Hub repository or Lightning ``.ckpt``."""
    if spec.endswith(".ckpt"):
        # one loading path for every source: the .ckpt becomes a (verified, weights-only) checkpoint folder first
        with tempfile.TemporaryDirectory() as folder:
            export_lightning_checkpoint(spec, Path(folder) / "model")
            return load_checkpoint(Path(folder) / "model")
    return load(spec)


def _meshes(args: argparse.Namespace, model) -> tuple[np.ndarray | None, list[str] | None, np.ndarray | None]:
    """The meshes to compare, their names, and the training meshes where known (registry names)."""
    if args.meshes:
        meshes = []
        for path in args.meshes:
            vertices, _ = read_mesh(path)
            if vertices.shape != (model.num_vertices, 3):
                raise ValueError(f"{path} has {len(vertices)} vertices, the model's template {model.num_vertices}: "
                                 "give meshes registered to the template (morphzoo fit-scan registers raw scans)")
            meshes.append(vertices)
        return np.stack(meshes), [Path(path).stem for path in args.meshes], None
    registry = load_registry()
    if Path(args.model).is_dir() or args.model.endswith(".ckpt") or args.model not in (
            *registry.entries, *registry.aliases):
        return None, None, None
    entry = registry.get(args.model)
    print(f"morphzoo view: reading the test split of {entry.dataset['name']} (built on first use)", flush=True)
    data = datamodule_for(entry, registry)
    indices = middle_frames(data, "test")
    indices = indices[np.linspace(0, len(indices) - 1, min(args.count, len(indices))).round().astype(int)]
    labels = data.collection.labels
    names = [", ".join(f"{key} {labels[key][i]}" for key in ("identity", "expression") if key in labels) or
             f"test {i}" for i in indices]
    return data.collection.vertices[indices], names, data.collection.vertices[np.sort(data.split_indices["train"])]


def run(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    meshes, names, train = _meshes(args, model)
    if isinstance(model, LAMM) and not model.control_mean.numel() and train is not None:
        model.fit_control_distribution(train)  # region sampling needs it; checkpoints saved before it lack it
    session = ExplorerSession(model, meshes, names, sliders=args.sliders, name=Path(args.model).name,
                             up=args.up)
    # a service manager's SIGTERM stops the server like Ctrl-C: the socket is closed, the process exits 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    serve(session, args.host, args.port, quiet=not args.verbose)
