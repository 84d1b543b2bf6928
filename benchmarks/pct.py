"""PCT encoder speed on CoMA-sized point clouds (5023 points): latency, training throughput and where the time goes.

Reports, on this machine's CPU, for ``morphzoo.nn.PointCloudTransformer`` in the IB-VAE setting (512/256 centres,
neighbours k = 32, 1024 global features):
- inference latency at batch 1 and batch 64 (eval mode, inference mode, median over ``--repeats`` calls),
- a training step (forward, backward, Adam step) at ``--train-batch`` clouds, as clouds/s; the loss is a stand-in
  on the global feature (IB-VAE's head and decoders are not part of the encoder),
- the split of each between FPS, kNN, the four offset-attention layers and the rest (input embedding, the grouping
  LBRs, the fusing LBR, max-pools, and the backward of everything but attention).

FPS and kNN are timed by wrapping the functions ``SampleAndGroup`` calls, the attention layers by forward hooks; in
the training step the attention's forward + backward is a separate timed call on the same input, since backward ops
cannot be told apart by wall clock. FPS and kNN have no backward (they return indices), so their training-step time
is all forward. Clouds are a 5023-point Fibonacci sphere (CoMA's vertex count), jittered per cloud.

    python benchmarks/pct.py [--points 5023] [--repeats 3] [--train-batch 16] [--train-steps 2] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict

import torch

import morphzoo.nn.pointcloud as pointcloud
from morphzoo.nn import PointCloudTransformer


class StageTimer:
    """Wall-clock seconds per stage, summed until :meth:`reset` (CPU ops are synchronous, so wall clock is cost)."""

    def __init__(self, net: PointCloudTransformer) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        for name in ("farthest_point_sampling", "knn"):
            setattr(pointcloud, name, self._timed(name, getattr(pointcloud, name)))
        self.attention_input: torch.Tensor | None = None
        self._attention_start = 0.0
        net.attention[0].register_forward_pre_hook(self._attention_started)
        net.attention[-1].register_forward_hook(self._attention_finished)

    def _timed(self, name: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self._add(name, start)
            return result

        return timed

    def _attention_started(self, _module, args) -> None:
        self.attention_input = args[0].detach()
        self._attention_start = time.perf_counter()

    def _attention_finished(self, *_) -> None:
        self._add("attention", self._attention_start)

    def _add(self, name: str, start: float) -> None:
        self.seconds[name] += time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()


def clouds(batch: int, num_points: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` jittered copies of a ``num_points`` Fibonacci sphere of radius 0.1 (a face-sized cloud, metres)."""
    i = torch.arange(num_points) + 0.5
    polar, azimuth = torch.arccos(1 - 2 * i / num_points), math.pi * (1 + 5**0.5) * i
    sphere = 0.1 * torch.stack([azimuth.cos() * polar.sin(), azimuth.sin() * polar.sin(), polar.cos()], dim=1)
    return sphere + 1e-3 * torch.randn(batch, num_points, 3, generator=generator)


def timed_calls(fn, repeats: int, timer: StageTimer, warmup: int = 1) -> tuple[float, dict[str, float]]:
    """Median seconds per call, and the mean seconds per call of every stage."""
    for _ in range(warmup):
        fn()
    timer.reset()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), {name: value / repeats for name, value in timer.seconds.items()}


def attention_train_seconds(net: PointCloudTransformer, features: torch.Tensor, repeats: int) -> float:
    """Forward + backward of the four attention layers alone, on the input they saw in the training step."""
    features = features.clone().requires_grad_()

    def step():
        layers = [features]
        for attention in net.attention:
            layers.append(attention(layers[-1]))
        torch.cat(layers[1:], dim=-1).sum().backward()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def row(setting: str, total: float, stages: dict[str, float], extra: str = "") -> str:
    fps, neighbours, attention = stages["farthest_point_sampling"], stages["knn"], stages["attention"]
    rest = total - fps - neighbours - attention
    share = 100 * (fps + neighbours) / total
    return (f"| {setting} | {1000 * total:.0f} | {1000 * fps:.0f} | {1000 * neighbours:.0f} | {1000 * attention:.0f} | "
            f"{1000 * rest:.0f} | {share:.0f}% | {extra} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5023, help="points per cloud (CoMA: 5023)")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference calls per batch size (median)")
    parser.add_argument("--train-batch", type=int, default=16, help="clouds per training step")
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); on a CPU shared with other jobs, 1 thread "
                             "avoids the stalls of FPS's many small parallel steps waiting for a descheduled thread")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"{args.points} points per cloud")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = PointCloudTransformer()
    timer = StageTimer(net)
    print(f"encoder parameters: {sum(p.numel() for p in net.parameters()):,}")
    print("| setting | total (ms) | FPS (ms) | kNN (ms) | attention (ms) | rest (ms) | FPS+kNN share | throughput |")
    print("|---|---|---|---|---|---|---|---|")

    net.eval()
    for batch in (1, 64):
        points = clouds(batch, args.points, generator)
        with torch.inference_mode():
            total, stages = timed_calls(lambda points=points: net(points), args.repeats, timer)
        print(row(f"inference, batch {batch}", total, stages, f"{batch / total:.1f} clouds/s"), flush=True)

    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=5e-5)
    points = clouds(args.train_batch, args.points, generator)

    def train_step():
        optimiser.zero_grad(set_to_none=True)
        net(points).square().mean().backward()
        optimiser.step()

    total, stages = timed_calls(train_step, args.train_steps, timer)
    stages["attention"] = attention_train_seconds(net, timer.attention_input, args.train_steps)
    print(row(f"train step, batch {args.train_batch}", total, stages, f"{args.train_batch / total:.1f} clouds/s"))
    print("attention in the training row: forward + backward, timed separately; rest includes all other backward")


if __name__ == "__main__":
    main()
