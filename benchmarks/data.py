"""Speed of the data pipeline on this machine.

Reports:
- reading a dataset's raw files into the cache: CoMA-format PLY files of 5023 vertices (meshes/s, one-off per dataset);
- the DataLoader over a memory-mapped cached dataset, shuffled, batch 32 (meshes/s, with 0 and 2 worker processes),
  on a CoMA-sized dataset (20,000 meshes × 5023 vertices, 1.2 GB) — to compare with the models' training throughput
  (``benchmarks/speed.py``): the loader must never be the bottleneck;
- generation rates of the embedded anny datasets (meshes/s, anny's model already built).

    python benchmarks/data.py [--read-meshes 2000] [--loader-meshes 20000] [--skip-anny] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from speed import coma_sized_sphere

from morphzoo.data.anny import ANNY_DATASETS
from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection, allocate_vertices
from morphzoo.data.coma import read_coma
from morphzoo.data.export import export_collection
from morphzoo.data.raw import cached_read


class CollectionDataModule(MeshDataModule):
    def __init__(self, collection: MeshCollection, **kwargs) -> None:
        super().__init__(**kwargs)
        self._collection = collection

    def load_collection(self) -> MeshCollection:
        return self._collection


def random_collection(count: int, seed: int = 0) -> MeshCollection:
    """``count`` CoMA-sized meshes with labels, built in morphzoo's cache as a memory-mapped collection."""
    template = coma_sized_sphere()

    def build(directory: Path) -> MeshCollection:
        vertices = allocate_vertices(directory, count, template.num_vertices)
        rng = np.random.default_rng(seed)
        for start in range(0, count, 1000):
            chunk = min(1000, count - start)
            vertices[start:start + chunk] = template.vertices + 0.002 * rng.standard_normal((chunk, 1, 3))
        frames = np.arange(count)
        return MeshCollection(vertices, template, labels={"identity": frames // 2000, "expression": frames // 200 % 10,
                                                          "frame": frames % 200},
                              vocabularies={"identity": tuple(f"s{i}" for i in range(count // 2000 + 1)),
                                            "expression": tuple(f"e{i}" for i in range(10))})

    return cached_read("benchmark-random", (count, seed, template.fingerprint()), build)


def reading_rate(count: int) -> dict[str, float]:
    collection = random_collection(count)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = export_collection(collection, "coma", Path(tmp) / "coma")
        written = time.perf_counter() - start
        start = time.perf_counter()
        read = read_coma(root)
        seconds = time.perf_counter() - start
    assert len(read) == count
    return {"meshes": count, "write_seconds": written, "read_seconds": seconds, "read_meshes_per_s": count / seconds}


def loader_rate(count: int, workers: int, batches: int = 200) -> dict[str, float]:
    data = CollectionDataModule(random_collection(count), batch_size=32, num_workers=workers)
    loader = data.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # worker start-up is a one-off
    start, meshes = time.perf_counter(), 0
    for _, batch in zip(range(batches), iterator, strict=False):
        meshes += len(batch["vertices"])
    seconds = time.perf_counter() - start
    return {"meshes": meshes, "seconds": seconds, "meshes_per_s": meshes / seconds}


def generation_rates() -> dict[str, dict[str, float]]:
    import importlib

    rates = {}
    for name, module_name in ANNY_DATASETS.items():
        generate = getattr(importlib.import_module(f"morphzoo.data.synth.{module_name}"),
                           f"generate_{name.replace('-', '_')}")
        generate("tiny")  # builds or loads anny's model once, outside the timing
        start = time.perf_counter()
        count = len(generate("small"))
        seconds = time.perf_counter() - start
        rates[name] = {"meshes": count, "seconds": seconds, "meshes_per_s": count / seconds}
        print(f"| generation {name} (small) | {count} meshes in {seconds:.1f} s | {count / seconds:,.0f} meshes/s |",
              flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read-meshes", type=int, default=2000)
    parser.add_argument("--loader-meshes", type=int, default=20_000)
    parser.add_argument("--skip-anny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/data.json"))
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores")
    print("| measurement | size | rate |\n|---|---|---|")
    results = {"reading": reading_rate(args.read_meshes)}
    r = results["reading"]
    print(f"| read CoMA PLYs into the cache | {r['meshes']} × 5023 v | {r['read_meshes_per_s']:,.0f} meshes/s "
          f"(writing them: {r['meshes'] / r['write_seconds']:,.0f}/s) |", flush=True)
    results["loader"] = {}
    for workers in (0, 2):
        row = loader_rate(args.loader_meshes, workers)
        results["loader"][f"workers={workers}"] = row
        print(f"| DataLoader, shuffled, batch 32, {workers} workers | {args.loader_meshes} × 5023 v memory-mapped | "
              f"{row['meshes_per_s']:,.0f} meshes/s |", flush=True)
    if not args.skip_anny:
        results["generation"] = generation_rates()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
