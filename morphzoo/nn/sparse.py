"""The export form of morphzoo's layers, and sparse products in the form each needs.

Inside :func:`export_form` (``morphzoo.deployment`` enters it around ``torch.onnx.export``) layers take the paths
that trace to a static graph with a symbolic batch size: fixed-width gathers instead of ``torch.sparse`` kernels
(:func:`padded_matmul`), one pass instead of memory-sized batch blocks, and no checks that branch on a buffer's value.
Outside it they run their fast paths.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_state = threading.local()


@contextmanager
def export_form() -> Iterator[None]:
    """Run the layers in their export form (see the module docstring) within the block, in this thread."""
    previous = getattr(_state, "exporting", False)
    _state.exporting = True
    try:
        yield
    finally:
        _state.exporting = previous


def exporting() -> bool:
    """Whether the layers run in their export form (:func:`export_form`, or a ``torch.export`` trace)."""
    return getattr(_state, "exporting", False) or torch.compiler.is_exporting()


def padded_rows(rows: Tensor, columns: Tensor, values: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """A sparse matrix's non-zeros as fixed-width rows: ``index`` and ``weight`` (num_rows, max non-zeros per row),
    padded with column 0 and weight 0, for :func:`padded_matmul`. Computed once, eagerly (the width depends on the
    values)."""
    order = torch.argsort(rows, stable=True)
    rows, columns, values = rows[order], columns[order], values[order]
    counts = torch.bincount(rows, minlength=num_rows)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(rows), device=rows.device) - starts[rows]
    width = int(counts.max()) if len(rows) else 1
    index = torch.zeros(num_rows, width, dtype=torch.long, device=rows.device)
    weight = torch.zeros(num_rows, width, dtype=values.dtype, device=values.device)
    index[rows, position], weight[rows, position] = columns, values
    return index, weight


def padded_matmul(index: Tensor, weight: Tensor, x: Tensor) -> Tensor:
    r""":math:`y_i = \sum_k w_{ik} x_{\text{index}_{ik}}`: a sparse product as a gather and a weighted sum (the export
    form: ONNX has no sparse tensors, and onnxruntime's multi-threaded ScatterND(add) races on repeated rows, so no
    scatter either).

    Shapes:
        index, weight: (R, D); x: (n_in, C) -> (R, C).
    """
    return (weight[..., None].to(x.dtype) * x[index]).sum(1)
