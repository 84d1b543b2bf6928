"""Sparse products in the form each path of morphzoo's layers needs: the CPU's, the export form's, the plain one.

- On a CPU, for float32 outside autocast (:func:`cpu_sparse_path`), layers run MKL's CSR products one mesh at a time
  (:func:`meshwise_product`, :class:`MeshwiseProduct`): each mesh's (V, C) slice is contiguous in the (B, V, C)
  layout, and the transposed products give the gradients without scatter-adds. Their patterns are built on first
  use and kept while their sources are unchanged (:class:`DerivedCache`).
- Inside :func:`export_form` (``morphzoo.deployment`` enters it around ``torch.onnx.export``) layers take the paths
  that trace to a static graph with a symbolic batch size: fixed-width gathers instead of ``torch.sparse`` kernels
  (:func:`padded_matmul`), one pass instead of memory-sized batch blocks, and no checks that branch on a buffer's
  value.
- Elsewhere (CUDA, dtypes other than float32, CPU autocast) they run the plain formula: gathers and dense products.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
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


@contextmanager
def quiet_sparse_csr() -> Iterator[None]:
    """torch warns once that sparse CSR support is "beta": nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def csr_tensor(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor of already-sorted components, without torch's O(nnz) invariant check. Its indices are int32 (int64
    ones are copied): MKL's kernels take them as they are, and convert int64 ones on every product (a third of a
    per-mesh product's time)."""
    if len(col) >= 2**31:
        raise ValueError(f"csr_tensor: {len(col)} non-zeros do not fit int32 CSR indices (at most 2**31 - 1)")
    with quiet_sparse_csr():
        return torch.sparse_csr_tensor(crow.int(), col.int(), values, shape, check_invariants=False)


def csr_from_entries(rows: Tensor, columns: Tensor, shape: tuple[int, int], values: Tensor | None = None) -> Tensor:
    """The CSR matrix with ``values`` (default 1) at ``(rows, columns)``, repeated entries summed; on their device."""
    values = torch.ones(len(rows), device=rows.device) if values is None else values
    with quiet_sparse_csr():  # checked once here: the products that use it trust its indices
        csr = torch.sparse_coo_tensor(torch.stack([rows, columns]), values, shape, check_invariants=True)
        csr = csr.coalesce().to_sparse_csr()
    return csr_tensor(csr.crow_indices(), csr.col_indices(), csr.values(), shape)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (False where it has none, e.g. ``meta``)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off on ``device_type`` within the block: torch's sparse kernels have no half precision on a CPU, nor
    CUDA's COO product (``addmm_sparse_cuda``), and ``sampled_addmm`` none anywhere."""
    return (torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type)
            else contextlib.nullcontext())


def float32_sparse_mm(matrix: Tensor, dense: Tensor) -> Tensor:
    """``matrix @ dense`` for a constant sparse float32 ``matrix`` and a dense 2-D ``dense``, computed in float32
    (float64 stays float64) with autocast off, forward and backward, and returned in ``dense``'s dtype. Why: CUDA's
    COO product (``addmm_sparse_cuda``) has no float16 or bfloat16, and under autocast an input from a half-precision
    layer, or a backward pass run inside the autocast block (Lightning's manual optimisation), would bring them; the
    product is a few terms per row, not where half precision saves time."""
    if matrix.requires_grad:
        raise ValueError("float32_sparse_mm: the sparse matrix must be a constant (it gets no gradient); use "
                         "morphzoo.nn.feature_aggregation.sparse_matmul for a trainable one")
    compute = torch.float64 if dense.dtype == torch.float64 else torch.float32
    if dense.dtype == compute and not autocast_enabled(dense.device.type):
        return torch.sparse.mm(matrix.to(compute), dense)
    with without_autocast(dense.device.type):
        return _Float32SparseProduct.apply(matrix.to(compute), dense.to(compute)).to(dense.dtype)


class _Float32SparseProduct(torch.autograd.Function):
    """``matrix @ dense`` whose backward, ``matrixᵀ @ grad``, is itself one with autocast off (and differentiable)."""

    @staticmethod
    def forward(ctx, matrix: Tensor, dense: Tensor) -> Tensor:
        ctx.matrix = matrix  # a constant: no gradient, no version check needed
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        with without_autocast(grad.device.type):
            return None, _Float32SparseProduct.apply(ctx.matrix.t(), grad.to(ctx.matrix.dtype))


def cpu_sparse_path(x: Tensor) -> bool:
    """Whether a layer takes its CPU path of sparse products (MKL's): a float32 ``x`` on a CPU, outside autocast and
    the export form. Elsewhere layers take their plain paths: on CUDA, in any other dtype (the CPU's sparse kernels
    have no half precision; under CPU autocast the plain paths run in bfloat16) and in the export form."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not exporting()
            and not torch.is_autocast_enabled("cpu"))


class DerivedCache:
    """A tensor (or tuple of them) a module derives from some of its tensors (sparse patterns, a rearranged weight),
    built on first use and rebuilt when a source is replaced, moved or changed in place: sources are compared by
    identity, storage address and version counter (tensors made in inference mode have none; their identity and
    address count). Writes through ``.data`` keep all three, so they are not seen. Copies and pickles of the module
    start empty: the value is derived data, and sparse CSR tensors can be neither deep-copied nor pickled."""

    def __init__(self) -> None:
        self._sources: tuple[Tensor, ...] = ()
        self._key: tuple | None = None
        self._value = None

    def get(self, sources: tuple[Tensor, ...], build: Callable[[], object], extra: tuple = ()):
        key = (*((t.data_ptr(), None if t.is_inference() else t._version) for t in sources), extra)
        same = len(sources) == len(self._sources) and all(a is b for a, b in zip(sources, self._sources, strict=True))
        if not same or key != self._key:
            # the sources are held, so that their addresses cannot be reused by other tensors while cached
            self._value, self._sources, self._key = build(), sources, key
        return self._value

    def __deepcopy__(self, memo: dict) -> DerivedCache:
        return DerivedCache()

    def __reduce__(self) -> tuple:
        return DerivedCache, ()


def meshwise_product(matrix: Tensor, x: Tensor, bias: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """``out[b] = matrix @ x[b] (+ bias)`` for a sparse ``matrix``, one mesh at a time: each mesh's (V, C) slice is
    contiguous in the (B, V, C) layout, so no transposition to a (V, B·C) layout is needed.

    Shapes:
        matrix: (R, V) sparse; x: (B, V, C); bias: (C,) -> (B, R, C).
    """
    out = x.new_empty(len(x), matrix.shape[0], x.shape[2]) if out is None else out
    for x_mesh, out_mesh in zip(x, out, strict=True):
        # addmm with beta=0 ignores out's old values (NaN included) and lets MKL write in place; torch.mm(out=)
        # computes aside and copies (4× slower for a (V·L, V) matrix, 2 cores), a broadcast bias costs 1.7×
        torch.addmm(out_mesh, matrix, x_mesh, beta=0, out=out_mesh)
    return out if bias is None else out.add_(bias)


class MeshwiseProduct(torch.autograd.Function):
    """:func:`meshwise_product` with its gradient ``transposed @ g[b]`` (``transposed`` = ``matrixᵀ`` in CSR, so the
    backward gathers instead of scattering)."""

    @staticmethod
    def forward(ctx, x: Tensor, matrix: Tensor, transposed: Tensor) -> Tensor:
        ctx.transposed = transposed
        return meshwise_product(matrix, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return meshwise_product(ctx.transposed, grad.contiguous()), None, None
