"""PCT encoder and IB-VAE speed on CoMA-sized point clouds (5023 points): latency, training throughput, where time goes.

Reports, on this machine's CPU, for ``morphzoo.nn.PointCloudTransformer`` in the IB-VAE setting (512/256 centres,
neighbours k = 32, 1024 global features):
- inference latency at batch 1 and batch 64 (eval mode, inference mode, median over ``--repeats`` calls),
- a training step (forward, backward, Adam step) at ``--train-batch`` clouds, as clouds/s; the loss is a stand-in
  on the global feature (IB-VAE's head and decoders are not part of the encoder),
- the split of each between FPS, kNN, the four offset-attention layers and the rest (input embedding, the grouping
  LBRs, the fusing LBR, max-pools, and the backward of everything but attention);
and for the whole ``morphzoo.methods.IBVAE`` (its defaults: |z_id| = |z_exp| = 4, decoders with 256 hidden units) on
a 5023-vertex template:
- encoder latency at batch 1 and batch 64: ``IBVAE.encode`` (normalisation, PCT, fully connected head, posterior
  layer; eval mode, inference mode, median over ``--repeats`` calls),
- a full training step at ``--train-batch`` meshes, as meshes/s: the four loss terms as ``IBVAE.loss_terms`` computes
  them, their Eq. 12 weighted sum with the model's hparams as ``IBVAE.training_step`` forms it (at epoch 0, so λ2 is
  undecayed; Lightning's logging left out), backward, and a step of the optimiser ``configure_optimizers`` returns
  (Adam with L2 weight decay),
- the split of each between FPS, kNN, attention, the MLPs (head, posterior layer, identity decoder and full-face
  decoder) and the rest (the PCT's other layers as above, normalisation, reparameterisation, the loss terms, the
  backward of everything but attention and the MLPs, and the Adam step, whose time is also printed on its own).

FPS and kNN are timed by wrapping the functions ``SampleAndGroup`` calls, the attention layers and the MLPs by forward
hooks (at inference that is their cost). In a training step backward ops cannot be told apart by wall clock, so the
hooks also keep each timed module's input, and after the timed steps the attention's forward + backward (the four
layers chained) and the MLPs' forward + backward (each of the four MLPs on its own input, gradients w.r.t. parameters
and inputs, as in the step) are separate timed calls on those inputs; they replace the hooks' forward-only times. FPS
and kNN have no backward (they return indices), so their training-step time is all forward. The PCT's clouds are a
5023-point Fibonacci sphere of radius 10 cm (CoMA's vertex count), jittered per cloud. IB-VAE's template is the
closed mesh of those points' convex hull (at 5023 points: 10042 faces; as in ``benchmarks/speed.py``), normalised by
the template itself and the default 1 cm std (the values do not change the cost); each mesh's neutral face is the
template scaled anisotropically (±5 %) plus smooth random radial bumps (identity, ~5 mm), and its expression adds
smaller bumps (~3 mm); every eighth mesh is its own neutral face, so the MI term's mask keeps and drops meshes.

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
import trimesh
from torch import nn

import morphzoo.nn.pointcloud as pointcloud
from morphzoo.mesh.template import Template
from morphzoo.methods.ibvae import IBVAE
from morphzoo.nn import PointCloudTransformer

MLPS = ("head", "posterior", "identity_decoder", "full_decoder")  # IB-VAE's fully connected modules


class StageTimer:
    """Wall-clock seconds per stage, summed until :meth:`reset` (CPU ops are synchronous, so wall clock is cost)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        for name in ("farthest_point_sampling", "knn"):
            setattr(pointcloud, name, self._timed(name, getattr(pointcloud, name)))
        self.inputs: dict[str, torch.Tensor] = {}  # the latest input of each watched module, detached
        self._starts: dict[str, float] = {}

    def watch(self, stage: str, first: nn.Module, last: nn.Module | None = None, name: str | None = None) -> None:
        """Add to ``stage`` the time from the call of ``first`` to the return of ``last`` (default: ``first``), and
        keep ``first``'s input as ``inputs[name]`` (default: ``stage``)."""
        name = name or stage

        def started(_module, args) -> None:
            self.inputs[name] = args[0].detach()
            self._starts[name] = time.perf_counter()

        def finished(*_) -> None:
            self.add(stage, self._starts[name])

        first.register_forward_pre_hook(started)
        (last or first).register_forward_hook(finished)

    def _timed(self, name: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self.add(name, start)
            return result

        return timed

    def add(self, name: str, start: float) -> None:
        self.seconds[name] += time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()


def fibonacci_sphere(num_points: int) -> torch.Tensor:
    """(num_points, 3) evenly spread points on a sphere of radius 0.1 (a face-sized cloud, metres)."""
    i = torch.arange(num_points, dtype=torch.float64) + 0.5
    polar, azimuth = torch.arccos(1 - 2 * i / num_points), math.pi * (1 + 5**0.5) * i
    return 0.1 * torch.stack([azimuth.cos() * polar.sin(), azimuth.sin() * polar.sin(), polar.cos()], dim=1)


def clouds(batch: int, num_points: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` jittered copies of a ``num_points`` Fibonacci sphere."""
    return fibonacci_sphere(num_points).float() + 1e-3 * torch.randn(batch, num_points, 3, generator=generator)


def sphere_template(num_vertices: int) -> Template:
    """A closed mesh of exactly ``num_vertices`` vertices: the convex hull of the Fibonacci sphere."""
    hull = trimesh.convex.convex_hull(fibonacci_sphere(num_vertices).numpy())
    if len(hull.vertices) != num_vertices:
        raise RuntimeError(f"the convex hull kept {len(hull.vertices)} of {num_vertices} sphere points")
    return Template(vertices=hull.vertices, faces=hull.faces, name=f"sphere{num_vertices}")


def radial_bumps(points: torch.Tensor, batch: int, count: int, amplitude: float, width: float,
                 generator: torch.Generator) -> torch.Tensor:
    """(batch, V, 3) smooth displacements along the radial direction (the sphere's normals): ``count`` Gaussian bumps
    of height ~ N(0, amplitude²) and radius ``width`` (metres) centred on random vertices, per mesh."""
    centre = points.mean(0)
    radial = (points - centre) / (points - centre).norm(dim=1, keepdim=True)
    centres = points[torch.randint(len(points), (batch, count), generator=generator)]  # (B, C, 3)
    heights = amplitude * torch.randn(batch, 1, count, generator=generator)
    weights = torch.exp(-((points[None, :, None] - centres[:, None]) ** 2).sum(-1) / (2 * width**2))  # (B, V, C)
    return (weights * heights).sum(-1, keepdim=True) * radial


def face_batch(template: torch.Tensor, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``vertices`` and ``neutral`` (batch, V, 3) in metres: random identities and expressions of the template."""
    centre = template.mean(0)
    scale = 1 + 0.05 * torch.randn(batch, 1, 3, generator=generator)
    neutral = centre + (template - centre) * scale + radial_bumps(template, batch, 6, 5e-3, 0.03, generator)
    expression = radial_bumps(template, batch, 4, 3e-3, 0.02, generator)
    expression[::8] = 0  # every eighth mesh is its subject's neutral scan
    return {"vertices": neutral + expression, "neutral": neutral}


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


def forward_backward_seconds(step, repeats: int) -> float:
    """Mean seconds per call of ``step`` after one warm-up call."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def attention_train_seconds(net: PointCloudTransformer, features: torch.Tensor, repeats: int) -> float:
    """Forward + backward of the four attention layers alone, on the input they saw in the training step."""
    features = features.clone().requires_grad_()

    def step():
        layers = [features]
        for attention in net.attention:
            layers.append(attention(layers[-1]))
        torch.cat(layers[1:], dim=-1).sum().backward()

    return forward_backward_seconds(step, repeats)


def mlp_train_seconds(model: IBVAE, inputs: dict[str, torch.Tensor], repeats: int) -> float:
    """Forward + backward of IB-VAE's four MLPs alone, each on the input it saw in the training step (gradients for
    the parameters, freshly allocated as after ``zero_grad``, and for the inputs, as in the step)."""
    inputs = {name: inputs[name].clone().requires_grad_() for name in MLPS}
    modules = {name: getattr(model, name) for name in MLPS}

    def step():
        for module in modules.values():
            module.zero_grad(set_to_none=True)
        sum(modules[name](x).sum() for name, x in inputs.items()).backward()

    return forward_backward_seconds(step, repeats)


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{1000 * seconds:.1f}" if seconds < 0.01 else f"{1000 * seconds:.0f}"


def row(setting: str, total: float, stages: dict[str, float], extra: str = "") -> str:
    fps, neighbours, attention = stages["farthest_point_sampling"], stages["knn"], stages["attention"]
    mlps = stages.get("mlp")
    rest = total - fps - neighbours - attention - (mlps or 0.0)
    share = 100 * (fps + neighbours) / total
    return (f"| {setting} | {ms(total)} | {ms(fps)} | {ms(neighbours)} | {ms(attention)} | {ms(mlps)} | {ms(rest)} | "
            f"{share:.0f}% | {extra} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5023, help="points per cloud and template vertices (CoMA: 5023)")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference calls per batch size (median)")
    parser.add_argument("--train-batch", type=int, default=16, help="clouds (meshes) per training step")
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
    timer = StageTimer()
    net = PointCloudTransformer()
    timer.watch("attention", net.attention[0], net.attention[-1])
    template = sphere_template(args.points)
    model = IBVAE(template=template)
    timer.watch("attention", model.encoder.attention[0], model.encoder.attention[-1])
    for name in MLPS:
        timer.watch("mlp", getattr(model, name), name=name)
    print(f"encoder parameters: {sum(p.numel() for p in net.parameters()):,}; IB-VAE parameters: "
          f"{model.num_learned_values():,} on a {template.num_vertices}-vertex, {len(template.faces)}-face template")
    print("| setting | total (ms) | FPS (ms) | kNN (ms) | attention (ms) | MLPs (ms) | rest (ms) | FPS+kNN share | "
          "throughput |")
    print("|---|---|---|---|---|---|---|---|---|")

    net.eval()
    for batch in (1, 64):
        points = clouds(batch, args.points, generator)
        with torch.inference_mode():
            total, stages = timed_calls(lambda points=points: net(points), args.repeats, timer)
        print(row(f"PCT inference, batch {batch}", total, stages, f"{batch / total:.1f} clouds/s"), flush=True)

    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=5e-5)
    points = clouds(args.train_batch, args.points, generator)

    def train_step():
        optimiser.zero_grad(set_to_none=True)
        net(points).square().mean().backward()
        start = time.perf_counter()
        optimiser.step()
        timer.add("adam", start)

    total, stages = timed_calls(train_step, args.train_steps, timer)
    stages["attention"] = attention_train_seconds(net, timer.inputs["attention"], args.train_steps)
    pct_adam = stages["adam"]
    print(row(f"PCT train step, batch {args.train_batch}", total, stages, f"{args.train_batch / total:.1f} clouds/s"),
          flush=True)

    model.eval()
    template_vertices = model.template_vertices
    for batch in (1, 64):
        vertices = face_batch(template_vertices, batch, generator)["vertices"]
        with torch.inference_mode():
            total, stages = timed_calls(lambda vertices=vertices: model.encode(vertices), args.repeats, timer)
        print(row(f"IB-VAE encode, batch {batch}", total, stages, f"{batch / total:.1f} meshes/s"), flush=True)

    model.train()
    hp = model.hparams
    optimiser = model.configure_optimizers()["optimizer"]
    meshes = face_batch(template_vertices, args.train_batch, generator)

    def ibvae_train_step():
        optimiser.zero_grad(set_to_none=True)
        terms = model.loss_terms(meshes)
        loss = (hp.lambda_reconstruction * (terms["rec"] + hp.beta_identity * terms["id"])
                + model.regularisation_weight(0) * (terms["kl"] + hp.beta_mi * terms["mi"]))
        loss.backward()
        start = time.perf_counter()
        optimiser.step()
        timer.add("adam", start)

    total, stages = timed_calls(ibvae_train_step, args.train_steps, timer)
    stages["attention"] = attention_train_seconds(model.encoder, timer.inputs["attention"], args.train_steps)
    stages["mlp"] = mlp_train_seconds(model, timer.inputs, args.train_steps)
    print(row(f"IB-VAE train step, batch {args.train_batch}", total, stages,
              f"{args.train_batch / total:.1f} meshes/s"))
    print("training rows: attention and MLPs are forward + backward, timed separately; rest includes all other "
          f"backward, the loss and the Adam step ({ms(pct_adam)} ms PCT, {ms(stages['adam'])} ms IB-VAE)")


if __name__ == "__main__":
    main()
