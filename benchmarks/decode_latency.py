"""CPU decode latency at batch 1 for LAMM, SpiralNet++ and CoMA at ~12k and ~72k vertices (LAMM supplement Table 3).

The supplement (§4, Table 3) measures single-batch decoding on an i7-7820X: CoMA 0.5 s / 3.8 s, SpiralNet++ 75 ms /
0.58 s, LAMM 15 ms / ~47 ms at 12k / 72k vertices. LAMM's decoder works on K + 1 = 12 tokens at any resolution; only
its inverse tokenisation W_out (3V·D weights, used once) grows with V, while the GCN decoders run every layer on
hierarchies of up to V vertices. Meshes here are closed spheres of exactly the paper's sizes (11,916 and 71,926
vertices, Fibonacci points' convex hull); the GCNs use our default settings (CoMA "simple", SpiralNet++ paper defaults)
with [4, 4, 4, 4] QEM hierarchies, which are cached on disk after the first (slow, minutes at 72k) build. LAMM uses the
paper setting (D = 512, 3 decoder layers, latent 256, K = 11 clustered regions) for both backbones.

    python benchmarks/decode_latency.py [--sizes 11916 71926] [--repeats 20] [--out runs/benchmarks/decode_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from speed import coma_sized_sphere, timed

from morphzoo.methods import LAMM, CoMA, SpiralNetPlusPlus

PAPER_CPU_SECONDS = {  # supplement Table 3, CPU column
    11_916: {"CoMA": 0.5, "SpiralNetPlusPlus": 0.075, "LAMM-transformer": 0.015, "LAMM-mixer": 0.015},
    71_926: {"CoMA": 3.80, "SpiralNetPlusPlus": 0.58, "LAMM-transformer": 0.047, "LAMM-mixer": 0.045},
}


def models(template):
    yield "CoMA", lambda: CoMA(template=template)
    yield "SpiralNetPlusPlus", lambda: SpiralNetPlusPlus(template=template)
    for backbone in ("transformer", "mixer"):
        yield f"LAMM-{backbone}", lambda backbone=backbone: LAMM(template=template, backbone=backbone,
                                                                  regions="cluster", num_regions=11)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[11_916, 71_926], help="vertex counts")
    parser.add_argument("--repeats", type=int, default=20, help="timed decodes per model (median reported)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/decode_latency.json"))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print("| vertices | model | decode params | decode b1 (ms) | paper CPU (ms) | build (s) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for size in args.sizes:
        template = coma_sized_sphere(size)
        for name, build in models(template):
            start = time.perf_counter()
            torch.manual_seed(0)
            model = build().eval()
            built = time.perf_counter() - start
            params = sum(p.numel() for n, p in model.named_parameters()
                         if n.startswith(("decoder", "output", "from_latent", "detokeniser")))
            with torch.inference_mode():
                latent = torch.randn(1, model.hparams.latent_dim)
                model.decode(latent)  # warm-up
                seconds = statistics.median(timed(lambda model=model, latent=latent: model.decode(latent))
                                            for _ in range(args.repeats))
            paper = PAPER_CPU_SECONDS.get(size, {}).get(name)
            results[f"{size}/{name}"] = {"decoder_parameters": params, "decode_b1_ms": 1000 * seconds,
                                         "paper_cpu_ms": None if paper is None else 1000 * paper}
            print(f"| {size:,} | {name} | {params:,} | {1000 * seconds:.1f} | "
                  f"{'—' if paper is None else f'{1000 * paper:.0f}'} | {built:.1f} |", flush=True)
            del model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
