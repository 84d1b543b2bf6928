"""Deployment export: a model's decoder (and its encoder, where feed-forward) as ONNX, checked against onnxruntime.

``export_onnx(model, folder)`` writes

- ``decoder.onnx``: ``latent`` (batch, *latent_shape) -> ``vertices`` (batch, V, 3), metres;
- ``encoder.onnx``: ``vertices`` (batch, V, 3) metres -> ``latent``, where the model's ``onnx_encoder`` says so:
  not for the decoupled GAN (it fits its code with Adam: no feed-forward graph exists) nor for IB-VAE (its PCT
  encoder's farthest-point sampling is a loop of data-dependent steps: tracing unrolls it, 5 minutes on 2 cores);
- ``export.json``: names, shapes, opset, the template's fingerprint and the measured parity;

with a dynamic batch axis. Each graph carries the model's normalisation, so it speaks metres like ``model.decode``.
The export traces the model's inference form (``prepare_inference``: Deep3DMM's materialised sparse mappings) with
``torch.export`` (``torch.onnx.export(dynamo=True)``) in the layers' export form (:mod:`morphzoo.nn.sparse`): sparse
products as fixed-width gathers, since ONNX has no sparse tensors and onnxruntime's multi-threaded ScatterND(add)
races on repeated indices (measured: 1e-4 m run-to-run differences). Before anything is written, onnxruntime (CPU) runs
each graph at batch 1 and batch 5 on inputs the model produces (codes of its latent Gaussian, meshes it decodes) and
must match PyTorch to ``tolerance`` (metres for vertices, code units for latents) plus float32 rounding
(:func:`parity_tolerance`); the folder appears only then.

Choice: no TorchScript. ``torch.jit`` is deprecated in PyTorch 2.x and cannot script these models' keyword-only,
dataclass-holding modules; ONNX covers deployment (onnxruntime on CPU and GPU, TensorRT, web runtimes).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from morphzoo.cache import atomic_write_bytes, temporary_directory_for
from morphzoo.errors import MorphzooError
from morphzoo.methods.base import MorphableModel
from morphzoo.nn.sparse import export_form

OPSET = 18
PARITY_BATCHES = (1, 5)


class ExportError(MorphzooError, RuntimeError):
    """A model that cannot be exported, or whose exported graph does not reproduce it."""


class _Decoder(nn.Module):
    def __init__(self, model: MorphableModel):
        super().__init__()
        self.model = model

    def forward(self, latent: Tensor) -> Tensor:
        return self.model.denormalise(self.model.decode_normalised(latent))


class _Encoder(nn.Module):
    def __init__(self, model: MorphableModel):
        super().__init__()
        self.model = model

    def forward(self, vertices: Tensor) -> Tensor:
        return self.model.encode_normalised(self.model.normalise(vertices))


@dataclass(frozen=True)
class GraphReport:
    file: str
    input: str
    input_shape: list
    output: str
    output_shape: list
    max_abs_difference: float  # onnxruntime vs PyTorch over the parity batches
    allowed_difference: float  # the tolerance plus float32 rounding (parity_tolerance)
    export_seconds: float


def _import_onnx():
    try:
        import onnx  # noqa: F401 (torch.onnx needs it)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(f"ONNX export needs the [onnx] extra ({error.name} is missing): pip install "
                          "'morphzoo[onnx]'") from None
    return onnxruntime


def parity_tolerance(tolerance: float, scale: float, terms: int) -> float:
    """The largest disagreement allowed between onnxruntime and PyTorch: ``tolerance`` plus sqrt(terms)·eps·scale, a
    rule of thumb after the statistical bound on a float32 sum of ``terms`` values (sqrt(n)·eps·Σ|terms|, Higham,
    *Accuracy and Stability of Numerical Algorithms*, §4.2), with the largest output ``scale`` standing in for Σ|terms|
    and the graph's input size for n. For a decoder (8 code entries, vertices in metres) it adds under 1e-6 m. Measured
    (batch 5): a PCA encoder's codes of magnitude 14, each a sum over 20,670 coordinates, are 4e-5 off the float64
    result in PyTorch and 6e-6 in onnxruntime (1e-4 apart over batches 1 and 5); the allowance there is 2.4e-4."""
    return tolerance + math.sqrt(terms) * float(np.finfo(np.float32).eps) * scale


def _latents(model: MorphableModel, n: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    if model.latent_mean.numel():
        return model.sample_latent(n, generator).view(n, *model.latent_shape)
    return torch.randn(n, *model.latent_shape, generator=generator).to(model.mean)


def _export_graph(module: nn.Module, example: Tensor, path: Path, input_name: str, output_name: str,
                  inputs: dict[int, Tensor], tolerance: float, runtime) -> GraphReport:
    start = time.perf_counter()
    try:
        with export_form(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside the exporter
            torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET,
                              input_names=[input_name], output_names=[output_name],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    except Exception as error:  # torch.export's errors are long; the first line names the construct
        cause = error.__cause__ or error  # torch.onnx wraps torch.export's error, which names the construct
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ExportError(f"{type(module.model).__name__}: torch.onnx.export failed ({first})") from error
    seconds = time.perf_counter() - start
    session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    difference = scale = 0.0
    with torch.no_grad():
        for batch in inputs.values():
            expected = module(batch).numpy()
            (actual,) = session.run([output_name], {input_name: batch.numpy()})
            difference = max(difference, float(np.abs(actual - expected).max()))
            scale = max(scale, float(np.abs(expected).max()))
    allowed = parity_tolerance(tolerance, scale, example[0].numel())
    if not difference <= allowed:
        raise ExportError(f"{type(module.model).__name__}: {path.name} differs from PyTorch by {difference:.3g} "
                          f"(allowed {allowed:.3g}: {tolerance:g} + float32 rounding); nothing was written")
    output_shape = ["batch", *expected.shape[1:]]
    return GraphReport(path.name, input_name, ["batch", *example.shape[1:]], output_name, output_shape, difference,
                       allowed, round(seconds, 2))


def export_onnx(model: MorphableModel, folder: str | os.PathLike, *, tolerance: float = 1e-5, seed: int = 0,
                name: str | None = None) -> dict:
    """Export ``model`` (see the module docstring) into the new folder ``folder``; returns ``export.json``'s content.

    Raises:
        ExportError: the [onnx] extra is missing, tracing fails, or onnxruntime's outputs differ by more than
            :func:`parity_tolerance` allows; nothing is left behind.
        FileExistsError: ``folder`` exists and is not empty.
    """
    runtime = _import_onnx()
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not empty: export into a new folder")
    model = model.prepare_inference().cpu().float()
    with torch.no_grad():
        latents = {n: _latents(model, n, seed + n) for n in PARITY_BATCHES}
        meshes = {n: model.decode(latent) for n, latent in latents.items()}  # also raises for an unfitted model
    graphs = {}
    with temporary_directory_for(folder) as staging:
        graphs["decoder"] = _export_graph(_Decoder(model).eval(), _latents(model, 2, seed), staging / "decoder.onnx",
                                          "latent", "vertices", latents, tolerance, runtime)
        if model.onnx_encoder:
            graphs["encoder"] = _export_graph(_Encoder(model).eval(), meshes[5][:2], staging / "encoder.onnx",
                                              "vertices", "latent", meshes, tolerance, runtime)
        report = {"format": "morphzoo-onnx", "name": name, "class": type(model).__name__, "opset": OPSET,
                  "units": "metres", "num_vertices": model.num_vertices,
                  "template_fingerprint": model.template.fingerprint(), "latent_shape": list(model.latent_shape),
                  "parity": {"runtime": f"onnxruntime {runtime.__version__} (CPU)", "batches": list(PARITY_BATCHES),
                             "tolerance": tolerance},
                  "graphs": {key: asdict(graph) for key, graph in graphs.items()}}
        atomic_write_bytes(staging / "export.json", json.dumps(report, indent=2).encode())
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(staging, folder)
    return report
