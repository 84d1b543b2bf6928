"""Decode latency of the exported ONNX decoders (onnxruntime, CPU) against the same models in PyTorch, in one run.

Each model is exported with ``morphzoo.deployment.export_onnx`` into a temporary folder; then PyTorch
(``inference_mode``, the model's inference form) and onnxruntime decode the same codes at batch 1 and batch 64, with
the same thread count (onnxruntime's idle threads not spinning, which would slow PyTorch's turn), alternating one
timed call each, after warm-up calls. Reported: the median time of each and
the ratio PyTorch / onnxruntime (above 1: ONNX is faster) as min-median-max over the alternating pairs.

    python benchmarks/onnx_latency.py [--models spiralnet-anny-face ...] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import morphzoo
from morphzoo.deployment import export_onnx
from morphzoo.zoo.registry import load_registry


def _time(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="registry names (default: every bundled model)")
    parser.add_argument("--repeats", type=int, default=30, help="timed pairs at batch 1 (a fifth of them at 64)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    names = args.models or [entry.name for entry in load_registry().entries.values()
                            if entry.weights and entry.weights.bundled]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    # onnxruntime's idle threads spin by default: alternating with PyTorch, they would steal its cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads\n")
    print("| model | batch | PyTorch (ms) | onnxruntime (ms) | PyTorch / onnxruntime (min-median-max) |")
    print("|---|---|---|---|---|")
    for name in names:
        model = morphzoo.load(name)
        with tempfile.TemporaryDirectory() as folder:
            export_onnx(model, Path(folder) / "onnx")
            session = onnxruntime.InferenceSession(str(Path(folder) / "onnx" / "decoder.onnx"), options,
                                                   providers=["CPUExecutionProvider"])
        for batch, repeats in ((1, args.repeats), (64, max(3, args.repeats // 5))):
            generator = torch.Generator().manual_seed(batch)
            latent = model.sample_latent(batch, generator).view(batch, *model.latent_shape)
            feed = {"latent": latent.numpy()}

            def pytorch(latent=latent, model=model):
                with torch.inference_mode():
                    model.decode(latent)

            def runtime(feed=feed, session=session):
                session.run(None, feed)

            for _ in range(3):
                pytorch(), runtime()
            pairs = np.array([(_time(pytorch), _time(runtime)) for _ in range(repeats)])
            ratios = pairs[:, 0] / pairs[:, 1]
            torch_ms, onnx_ms = np.median(pairs, axis=0) * 1000
            print(f"| {name} | {batch} | {torch_ms:.2f} | {onnx_ms:.2f} | {ratios.min():.2f} / "
                  f"{np.median(ratios):.2f} / {ratios.max():.2f} |", flush=True)


if __name__ == "__main__":
    main()
