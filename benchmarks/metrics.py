"""Speed of the generative-model metrics (Specificity, Diversity) on this machine.

Reports, at the sizes of the decoupled-face-GAN protocol (Abrevaya et al. 2019, §5.3) on a CoMA-sized training set:
- Specificity of 1000 samples against 20,000 reference meshes × 5023 vertices (the reference a read-only float32
  memmap of 1.2 GB, as a cached dataset is), with and without the exact lower-bound pruning;
- Diversity of 1000 samples with 10,000 random pairs;
with wall time, CPU time, the fraction of exact sample-reference comparisons made, peak resident memory of the process
and peak anonymous memory (temporaries; the memmap's pages are file-backed and not counted there) during each step.

Data: ``random`` (every mesh a fixed point set plus independent 2 mm noise per coordinate: all distances alike, the
worst case for pruning) or ``shape`` (a smooth 40-component linear shape model plus 0.2 mm noise, samples from the
same model: closer to real face data).

    python benchmarks/metrics.py [--references 20000] [--samples 1000] [--data random|shape] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from morphzoo.metrics.diversity import Diversity
from morphzoo.metrics.specificity import Specificity


class MemoryWatch:
    """Peak anonymous resident memory (RssAnon, bytes) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> MemoryWatch:
        self.start = self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def current() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.current())


def sphere_points(count: int) -> np.ndarray:
    """A Fibonacci sphere of radius 10 cm: the template of the synthetic meshes."""
    i = np.arange(count) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / count), np.pi * (1 + 5**0.5) * i
    return 0.1 * np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)


def mesh_source(kind: str, vertices: int, seed: int = 0):
    """A function ``(rng, count) -> (count, V, 3) float32`` drawing synthetic meshes in metres."""
    template = sphere_points(vertices)
    if kind == "random":
        return lambda rng, count: (template + 0.002 * rng.standard_normal((count, vertices, 3))).astype(np.float32)
    # smooth displacement fields: random plane waves of 5-20 cm wavelength, amplitudes decaying like 1/k
    rng = np.random.default_rng(seed)
    count_components = 40
    directions = rng.standard_normal((count_components, 3))
    directions *= (2 * np.pi / rng.uniform(0.05, 0.2, count_components) / np.linalg.norm(directions, axis=1))[:, None]
    phases = rng.uniform(0, 2 * np.pi, count_components)
    waves = np.sin(template @ directions.T + phases)  # (V, K)
    amplitudes = rng.standard_normal((count_components, 3)) * (0.006 / np.arange(1, count_components + 1))[:, None]
    components = waves.T[:, :, None] * amplitudes[:, None, :]  # (K, V, 3)

    def draw(rng: np.random.Generator, count: int) -> np.ndarray:
        codes = rng.standard_normal((count, count_components))
        meshes = template + np.einsum("nk,kvc->nvc", codes, components)
        return (meshes + 0.0002 * rng.standard_normal(meshes.shape)).astype(np.float32)

    return draw


def build_reference(path: Path, draw, count: int, vertices: int) -> np.memmap:
    """``count`` meshes written block by block to a float32 memmap, reopened read-only."""
    writable = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, vertices, 3))
    rng = np.random.default_rng(1)
    for start in range(0, count, 1000):
        writable[start : start + 1000] = draw(rng, min(1000, count - start))
    writable.flush()
    del writable
    return np.load(path, mmap_mode="r")


def timed(fn) -> dict[str, float]:
    with MemoryWatch() as memory:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "peak_anon_mb": memory.peak / 2**20,
            "added_anon_mb": (memory.peak - memory.start) / 2**20, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=20_000, help="training meshes for Specificity")
    parser.add_argument("--samples", type=int, default=1000, help="generated samples for both metrics")
    parser.add_argument("--vertices", type=int, default=5023)
    parser.add_argument("--pairs", type=int, default=10_000, help="Diversity's random pairs")
    parser.add_argument("--batch", type=int, default=100, help="samples per update() call")
    parser.add_argument("--data", choices=("random", "shape"), default="random")
    parser.add_argument("--sample-chunk", type=int, default=None, help="Specificity's sample_chunk (default: its own)")
    parser.add_argument("--reference-chunk", type=int, default=None)
    parser.add_argument("--modes", default="exhaustive,pruned", help="Specificity runs: pruned and/or exhaustive")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/metrics.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}")

    draw = mesh_source(args.data, args.vertices)
    samples = torch.from_numpy(draw(np.random.default_rng(2), args.samples))
    chunks = {key: value for key, value in (("sample_chunk", args.sample_chunk),
                                            ("reference_chunk", args.reference_chunk)) if value}
    results: dict = {"config": {**vars(args), "out": str(args.out), "threads": torch.get_num_threads(),
                                "cores": os.cpu_count(), "load_average_before": load_before}, "runs": {}}
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        reference = build_reference(Path(directory) / "reference.npy", draw, args.references, args.vertices)
        print(f"reference: {reference.shape} float32 memmap, {reference.nbytes / 2**30:.2f} GiB, built in "
              f"{time.perf_counter() - start:.0f} s")
        values = {}
        for mode in filter(None, args.modes.split(",")):
            metric = Specificity(reference, prune=mode == "pruned", **chunks)

            def run_specificity(metric=metric):
                for begin in range(0, len(samples), args.batch):
                    metric.update(samples[begin : begin + args.batch])
                return metric.compute()

            row = timed(run_specificity)
            value = row.pop("result")
            row.update(mean_mm=float(value["mean"]), evaluated=metric.pairs_evaluated / metric.pairs_total,
                       vertex_pairs_per_s=args.samples * args.references * args.vertices / row["wall_s"],
                       sample_chunk=metric.sample_chunk, reference_chunk=metric.reference_chunk)
            values[mode] = value
            results["runs"][f"specificity_{mode}"] = row
            rows.append((f"Specificity ({mode})", f"{args.samples} samples × {args.references} refs", row,
                         f"{row['mean_mm']:.3f} mm, {100 * row['evaluated']:.1f} % pairs exact"))
            print(f"| {rows[-1][0]} | {row['wall_s']:.1f} s |", flush=True)
            del metric
        if len(values) == 2:  # pruning is exact: the same minima and nearest meshes
            pruned, exhaustive = values["pruned"], values["exhaustive"]
            results["pruned_vs_exhaustive"] = {
                "max_abs_difference_mm": float((pruned["per_sample"] - exhaustive["per_sample"]).abs().max()),
                "same_nearest": bool(torch.equal(pruned["nearest"], exhaustive["nearest"])),
            }

    diversity = Diversity(pairs=args.pairs)

    def run_diversity():
        for begin in range(0, len(samples), args.batch):
            diversity.update(samples[begin : begin + args.batch])
        return diversity.compute()

    row = timed(run_diversity)
    value = row.pop("result")
    row.update(mean_mm=float(value["mean"]), num_pairs=int(value["num_pairs"]))
    results["runs"]["diversity"] = row
    rows.append(("Diversity", f"{args.samples} samples, {row['num_pairs']} pairs", row, f"{row['mean_mm']:.3f} mm"))

    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_average_after"] = os.getloadavg()
    print(f"\n{args.vertices} vertices, data {args.data}, updates of {args.batch} samples\n")
    print("| metric | size | wall (s) | CPU (s) | peak anon RSS (MB) | of which added by the step (MB) | value |")
    print("|---|---|---|---|---|---|---|")
    for name, size, row, value in rows:
        print(f"| {name} | {size} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['peak_anon_mb']:.0f} | "
              f"{row['added_anon_mb']:.0f} | {value} |")
    if "pruned_vs_exhaustive" in results:
        agreement = results["pruned_vs_exhaustive"]
        print(f"\npruned vs exhaustive: max |difference| {agreement['max_abs_difference_mm']:.2g} mm, "
              f"same nearest meshes: {agreement['same_nearest']}")
    print(f"\npeak resident memory of the process (incl. mapped reference pages): {results['peak_rss_mb']:.0f} MB; "
          f"load average after {results['load_average_after'][0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
