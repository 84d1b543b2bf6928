r"""Learned feature aggregation between mesh levels (Deep3DMM: Chen & Kim, "Learning Feature Aggregation for Deep 3D
Morphable Models", CVPR 2021, §3).

A hierarchical mesh autoencoder moves vertex features between levels with a mapping matrix, ``X' = M X`` (Eq. 1).
CoMA and Neural3DMM use the fixed QEM matrices (vertex selection down, barycentric interpolation up); Deep3DMM learns
``M`` from trainable per-vertex query and key vectors (Eq. 2-7). Only ``M`` is needed at inference, so a trained
:class:`FeatureAggregation` turns into a :class:`SparseMapping` (:meth:`FeatureAggregation.materialise`) with the same
outputs and no parameters.

Training runs ``M`` as one CSR matrix (the learned top-k rows and QEM's merged, :func:`blended_rows`) times each mesh
(:func:`sparse_matmul`). Its gradients are CSR products too: the sampled product ``(G Xᵀ)`` on its pattern
(``torch.sparse.sampled_addmm``) for its values and ``Mᵀ G`` for its input, never a dense matrix or a scatter-add; the
selected scores ``q_i · k_j`` and their gradients are the same two products (:func:`sampled_product`). Each step's
top-k selection starts from the last one (:meth:`FeatureAggregation.select_top_k`).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from morphzoo.nn.sparse import (
    autocast_enabled,
    cpu_sparse_path,
    csr_tensor,
    exporting,
    meshwise_product,
    padded_matmul,
    padded_rows,
    quiet_sparse_csr,
    without_autocast,
)

AGGREGATIONS = ("attention", "full", "average", "full-qem")
"""How the learned matrix ``M_a`` is built (paper Table 1): ``"attention"`` (the paper's method, Eq. 3-6),
``"full"`` (full mapping: ``M_a`` itself is a trainable dense matrix, directly parameterised), ``"average"`` (QEM's
receptive fields with equal weights; nothing learned), and morphzoo's ``"full-qem"`` (a trainable dense matrix that
starts at ``M_QEM``)."""

FUSION_FORMS = ("linear", "sigmoid")
"""How ``w_a`` of Eq. 7 is parameterised: ``"linear"`` (the paper: ``w_a`` itself is trained, and may leave [0, 1])
or ``"sigmoid"`` (``w_a = σ(θ)``, so ``M`` stays a blend of two row-stochastic matrices)."""

POSITION_SCALE = 0.1
"""Initial query/key dims 0-2: the per-axis standardised vertex positions times this (paper §4.2, Table 12)."""
NOISE_SCALE = 0.01
"""Initial query/key dims 3+: U(-NOISE_SCALE, NOISE_SCALE). The paper only says "uniform". A tenth of the position
dims' scale keeps the initial top-k neighbourhoods local, while the extra dims still receive gradients (exactly zero
extra dims would receive none: the cosine's gradient along them is proportional to their values)."""


def vertex_embeddings(positions: Tensor, frame: Tensor, dim: int = 21) -> nn.Parameter:
    """Trainable (n, dim) query/key vectors initialised from vertex positions (paper §4.2, "precomputed" in Table 12).

    Dims 0-2 are ``POSITION_SCALE · (positions − mean) / std`` with the per-axis mean and std of ``frame`` (the finer
    mesh of a level pair, so the queries and keys of a pair share one frame and a coarse vertex starts equal to the
    fine vertex it was selected from); the other ``dim − 3`` dims are ``U(−NOISE_SCALE, NOISE_SCALE)``.
    """
    if dim < 3:
        raise ValueError(f"vertex_embeddings: dim (the paper's c) must be >= 3 to hold the positions, got {dim}")
    frame = torch.as_tensor(frame, dtype=torch.float32)
    positions = torch.as_tensor(positions, dtype=torch.float32)
    standardised = (positions - frame.mean(0)) / frame.std(0).clamp_min(1e-12)
    noise = torch.rand(len(positions), dim - 3) * (2 * NOISE_SCALE) - NOISE_SCALE
    return nn.Parameter(torch.cat([POSITION_SCALE * standardised, noise], dim=1))


def _to_vertex_major(x: Tensor) -> Tensor:
    """(B, V, C) -> (V, B·C)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _from_vertex_major(x: Tensor, batch: int) -> Tensor:
    """(V, B·C) -> (B, V, C), a view."""
    return x.view(len(x), batch, -1).transpose(0, 1)


def _mapping_forward(forward):
    """A mapping module's ``forward(x)``, with ``x`` checked against the module's ``num_inputs`` (the CSR kernels do
    not check bounds) and run in float32 under autocast (the mapping's values are float32; ``M`` is a few products
    per vertex, not where autocast saves time)."""

    @functools.wraps(forward)
    def wrapper(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_inputs:
            raise ValueError(f"{type(self).__name__}: x must be (batch, {self.num_inputs}, channels), features of the "
                             f"{self.num_inputs} vertices of the level it maps from; got {tuple(x.shape)}")
        if not autocast_enabled(x.device.type):
            return forward(self, x)
        with without_autocast(x.device.type):
            return forward(self, x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)

    return wrapper


def _outside_autocast(backward):
    """A ``backward(ctx, grad)`` run with autocast off: a backward pass called under autocast runs under it too, which
    would cast the sparse products' operands to half precision."""

    @functools.wraps(backward)
    def wrapper(ctx, grad: Tensor):
        with without_autocast(grad.device.type):
            return backward(ctx, grad)

    return wrapper


def _fixed_width_crow(num_rows: int, width: int, device: torch.device) -> Tensor:
    """CSR row pointers (int32) of a matrix with ``width`` non-zeros in each of ``num_rows`` rows."""
    return torch.arange(0, num_rows * width + 1, width, dtype=torch.int32, device=device)


def _transposed(crow: Tensor, col: Tensor, values: Tensor, num_columns: int) -> Tensor:
    """``Mᵀ`` of the CSR matrix ``(crow, col, values)`` as CSR: its entries by column, stably (so the columns of each
    transposed row stay sorted)."""
    col = col.int()  # int32 keys: half the sort's time
    order = torch.argsort(col, stable=True)
    rows = torch.repeat_interleave(torch.arange(len(crow) - 1, dtype=torch.int32, device=col.device), crow.diff(),
                                   output_size=len(col))
    transposed_crow = F.pad(torch.bincount(col, minlength=num_columns).cumsum(0), (1, 0))
    return csr_tensor(transposed_crow, rows[order], values[order], (num_columns, len(crow) - 1))


def _sampled(crow: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``(A Bᵀ)_e = a_{row(e)} · b_{col(e)}`` at the entries of the pattern ``(crow, col)``, never the dense product."""
    if a.dtype not in (torch.float32, torch.float64):  # sampled_addmm has no half precision
        return _sampled(crow, col, a.float(), b.float()).to(a.dtype)
    pattern = csr_tensor(crow, col, a.new_zeros(len(col)), (len(crow) - 1, len(b)))
    return torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()


def _mesh_products(matrix: Tensor, x: Tensor) -> Tensor:
    """``matrix @ x[b]`` for each mesh of ``x`` (B, n_in, C), contiguous (B, n_out, C): one CSR product per mesh on the
    CPU path (:func:`~morphzoo.nn.sparse.cpu_sparse_path`; no layout copies), else one on the (n_in, B·C) layout."""
    if cpu_sparse_path(x):
        return meshwise_product(matrix, x)
    return _from_vertex_major(matrix @ _to_vertex_major(x), len(x)).contiguous()


class _SparseMatmul(torch.autograd.Function):
    """``M x_b`` per mesh for the CSR matrix ``M = (crow, col, values)``, differentiable in ``values`` and ``x``."""

    @staticmethod
    def forward(ctx, crow: Tensor, col: Tensor, values: Tensor, x: Tensor) -> Tensor:
        # copies of inference tensors (a mapping materialised in inference mode), which save_for_backward refuses;
        # x only for the values' gradient
        matrix = [t.clone() if t.is_inference() else t for t in (crow, col, values)]
        ctx.save_for_backward(*matrix, x if ctx.needs_input_grad[2] else None)
        ctx.num_inputs = x.shape[1]
        return _mesh_products(csr_tensor(crow, col, values, (len(crow) - 1, x.shape[1])), x)

    @staticmethod
    @once_differentiable  # the CPU path's products write in place (addmm(out=)): no graph of the backward
    @_outside_autocast
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor | None, Tensor | None]:
        crow, col, values, x = ctx.saved_tensors
        grad = grad.to(values.dtype).contiguous()
        grad_values = grad_x = None
        if ctx.needs_input_grad[2]:  # (G Xᵀ) on the pattern, summed over meshes: one product on the (V, B·C) layout
            grad_values = _sampled(crow, col, _to_vertex_major(grad), _to_vertex_major(x))
        if ctx.needs_input_grad[3]:  # Mᵀ G
            grad_x = _mesh_products(_transposed(crow, col, values, ctx.num_inputs), grad)
        return None, None, grad_values, grad_x


class _SampledProduct(torch.autograd.Function):
    """``(A Bᵀ)`` at the entries of a CSR pattern, differentiable in ``a`` and ``b``: the dual of
    :class:`_SparseMatmul` (each one's forward is a part of the other's backward)."""

    @staticmethod
    def forward(ctx, crow: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(crow, col, a, b)
        return _sampled(crow, col, a, b)

    @staticmethod
    @once_differentiable
    @_outside_autocast
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor | None, Tensor | None]:
        crow, col, a, b = ctx.saved_tensors
        grad = grad.to(a.dtype)
        grad_a = csr_tensor(crow, col, grad, (len(a), len(b))) @ b if ctx.needs_input_grad[2] else None  # G B
        grad_b = _transposed(crow, col, grad, len(b)) @ a if ctx.needs_input_grad[3] else None  # Gᵀ A
        return None, None, grad_a, grad_b


def sparse_matmul(crow: Tensor, col: Tensor, values: Tensor, x: Tensor) -> Tensor:
    r"""``x'_{b,i} = Σ_e values_e · x_{b,col_e}`` over the entries ``e`` of row ``i``: the CSR matrix
    ``(crow, col, values)`` (sorted, distinct columns per row) times each mesh of ``x``. Differentiable in ``values``
    and ``x``; the gradients are a sampled product and transposed CSR products, never a dense matrix or a scatter-add.
    The columns must lie in [0, n_in): the kernels do not check (the mapping modules check their input's size). Half
    precision runs in float32 on a CPU.

    Shapes:
        crow: (n_out + 1,); col, values: (nnz,); x: (B, n_in, C) -> (B, n_out, C).
    """
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):  # no CPU sparse kernel in half
        return sparse_matmul(crow, col, values.float(), x.float()).to(x.dtype)
    if torch.is_grad_enabled() and (values.requires_grad or x.requires_grad):
        return _SparseMatmul.apply(crow, col, values, x)
    return _mesh_products(csr_tensor(crow, col, values, (len(crow) - 1, x.shape[1])), x)  # no autograd to record


def sampled_product(crow: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    r"""``v_e = a_{row(e)} · b_{col(e)}``: the entries of ``A Bᵀ`` on the CSR pattern ``(crow, col)``, differentiable in
    ``a`` and ``b`` (the gradients are CSR products: no gather, no scatter-add).

    Shapes:
        crow: (n_a + 1,); col: (nnz,); a: (n_a, c); b: (n_b, c) -> (nnz,).
    """
    return _SampledProduct.apply(crow, col, a, b)


def blended_rows(index: Tensor, weight: Tensor, qem_index: Tensor, qem_weight: Tensor,
                 mixing_weight: Tensor | float, num_inputs: int) -> tuple[Tensor, Tensor, Tensor]:
    """``M = w_a M_a + (1 − w_a) M_QEM`` (Eq. 7) on the union of both patterns, as CSR ``(crow, col, values)`` with
    int32 indices: one sparse product instead of two and a blend of their outputs. Differentiable in ``weight`` and
    ``mixing_weight``.

    Both matrices come as fixed-width rows with sorted, distinct columns: ``index``, ``weight`` (n_out, k) and
    ``qem_index``, ``qem_weight`` (n_out, P). A QEM entry at a column of ``M_a``'s row is added to that entry; the
    others become entries of their own.
    """
    shared = qem_index[:, :, None] == index[:, None, :]  # (n_out, P, k)
    qem_at_learned = torch.einsum("rpk,rp->rk", shared.to(qem_weight), qem_weight)
    learned = mixing_weight * weight + (1 - mixing_weight) * qem_at_learned
    own = (1 - mixing_weight) * qem_weight
    # the shared QEM entries get the column num_inputs, sorted last in their row and dropped
    columns, order = torch.cat([index, qem_index.masked_fill(shared.any(2), num_inputs)], 1).sort(1)
    values = torch.cat([learned, own], 1).gather(1, order)
    kept = columns < num_inputs
    crow = F.pad(kept.sum(1).cumsum(0), (1, 0))
    return crow.int(), columns[kept].int(), values[kept]


def top_k_columns(scores: Tensor, k: int) -> Tensor:
    """The columns of each row's ``k`` largest scores, in increasing order: ``scores.topk(k).indices.sort(1).values``
    in two cheaper selections (1.6× faster on Deep3DMM's 5023 × 1256 up-sampling scores, k = 32, on 2 cores).

    The columns are cut into groups of ``g ≈ √(n_in / k)``; the ``k`` groups with the largest maxima hold every score
    above the k-th largest (fewer than ``k`` groups can have a larger maximum), and enough equal to it, so a top-k of
    their ``k·g`` candidates is a top-k of the row. Group ``j`` is the strided columns ``j, j + G, j + 2G, …`` (``G``
    groups), so its maximum reduces over contiguous memory; a last group holds the columns left over. Among tied
    scores it may pick other columns than ``topk`` would; the selected values are the same. Scores must be finite
    (cosines are).

    Shapes:
        scores: (n_out, n_in) -> (n_out, k).
    """
    num_rows, num_columns = scores.shape
    width = max(1, round(math.sqrt(num_columns / k)))
    strided = num_columns // width  # groups of `width` strided columns; the rest, if any, is a last group
    if width == 1:  # with width >= 2 there are always more than k groups
        return scores.topk(k, dim=1, sorted=False).indices.sort(1).values
    rest = strided * width
    maxima = scores[:, :rest].view(num_rows, width, strided).amax(1)
    if rest < num_columns:
        maxima = torch.cat([maxima, scores[:, rest:].amax(1, keepdim=True)], dim=1)
    groups = maxima.topk(k, dim=1, sorted=False).indices[:, :, None]
    member = torch.arange(width, device=scores.device)
    candidates = torch.where(groups < strided, groups + strided * member, rest + member).view(num_rows, -1)
    beyond = candidates >= num_columns  # the last group's missing members: never selected
    values = scores.gather(1, candidates.clamp_max(num_columns - 1)).masked_fill_(beyond, -math.inf)
    return candidates.gather(1, values.topk(k, dim=1, sorted=False).indices).sort(1).values


class FeatureAggregation(nn.Module):
    r"""Learned mapping of vertex features from ``n_in`` to ``n_out`` vertices (Deep3DMM, paper §3.2, Eq. 1-7).

    .. math::
        s_{ij} = \max\big(0, \cos(q_i, k_j)\big), \qquad
        m_{a,ij} = \frac{b_{ij} s_{ij}}{\sum_j b_{ij} s_{ij}}, \qquad
        M = w_a M_a + (1 - w_a) M_{QEM}, \qquad x'_i = \sum_j M_{ij} x_j

    with ``b_ij = 1`` for the ``top_k`` largest scores of row ``i`` (Eq. 4) and ``M_QEM`` the precomputed QEM matrix
    (``SamplingLevel.down_matrix()`` or ``up_matrix()``). Queries ``q`` (n_out, c) belong to the output vertices, keys
    ``k`` (n_in, c) to the input vertices; :func:`vertex_embeddings` initialises them.

    Choices where the paper is silent:

    - The paper clamps negative cosines "to ~0": here to exactly 0. A row whose selected scores are all 0 (every key
      points away from the query) would be 0/0 in Eq. 6: it becomes the uniform average of its top-k (of all keys
      without a mask), so every row of ``M_a`` sums to 1.
    - ``top_k=None`` or ``top_k >= n_in`` applies no mask: a dense ``M_a`` (the "w/o topk" variant of Fig. 15).
    - ``aggregation="full"`` (Table 1's full mapping, "directly parameterizes the mapping matrices as trainable
      parameters") is a trainable dense ``M_a`` used as is (no normalisation), started as ``nn.Linear`` starts its
      weight, U(-1/√n_in, 1/√n_in): the paper gives no initialisation, and one at ``M_QEM`` would be close to the
      QEM model by construction. ``"full-qem"`` is that start (morphzoo's variant, not the paper's). ``"average"``
      gives every vertex of a QEM receptive field (the non-zeros of a row of ``M_QEM``) the same weight; QEM
      down-sampling selects one vertex, so its average is QEM itself.
    - ``fusion=None`` (the default) is the paper's per aggregation: Eq. 7 for ``"attention"`` (and ``"full-qem"``),
      none for Table 1's alternatives ``"full"`` and ``"average"``, which replace QEM. ``fusion=False`` uses ``M =
      M_a`` ("no fusing", Table 11). With ``trainable_fusion=False``, ``w_a`` is a fixed buffer: ``fusion_init=0``
      reproduces the QEM model exactly.
    - The paper's linear ``w_a`` is unconstrained: trained, it left [0, 1] (−0.33 to 0.78 over the 8 mappings of the
      spectral model in the README's run), so ``M`` is then not a blend of two row-stochastic matrices (its rows
      still sum to 1, but weights can be negative). ``fusion_form="sigmoid"`` keeps it inside, ``w_a = σ(θ)`` with
      ``θ`` started at logit(``fusion_init``).

    Args:
        qem_index: (n_out, P) columns of the non-zeros of ``M_QEM`` per row (1 for selection, 3 for barycentric).
        qem_weight: (n_out, P) their values (zeros allowed).
        num_inputs: ``n_in``.
        queries: (n_out, c) trainable queries (``"attention"`` only). Pass the same ``nn.Parameter`` objects to two
            modules to share them (Deep3DMM shares a level pair's vectors between its down- and up-sampling).
        keys: (n_in, c) trainable keys (``"attention"`` only).
        aggregation: one of :data:`AGGREGATIONS`.
        top_k: ``k`` of the top-k mask of ``"attention"`` (the paper: 2 down, 32 up); ``None`` for no mask.
        fusion: fuse with ``M_QEM`` (Eq. 7); None: the paper's choice for ``aggregation`` (see above).
        fusion_init: initial ``w_a`` (paper: 0.2).
        trainable_fusion: learn ``w_a`` (the paper) or keep it fixed.
        fusion_form: one of :data:`FUSION_FORMS`.
    """

    def __init__(
        self,
        qem_index: Tensor,
        qem_weight: Tensor,
        num_inputs: int,
        queries: nn.Parameter | None = None,
        keys: nn.Parameter | None = None,
        aggregation: str = "attention",
        top_k: int | None = None,
        fusion: bool | None = None,
        fusion_init: float = 0.2,
        trainable_fusion: bool = True,
        fusion_form: str = "linear",
    ) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"FeatureAggregation: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if fusion_form not in FUSION_FORMS:
            raise ValueError(f"FeatureAggregation: fusion_form must be one of {FUSION_FORMS}, got {fusion_form!r}")
        if fusion is None:
            fusion = aggregation in ("attention", "full-qem")
        if fusion and fusion_form == "sigmoid" and not 0 < fusion_init < 1:
            raise ValueError(f"FeatureAggregation: a sigmoid w_a starts strictly inside (0, 1), got {fusion_init}")
        qem_index = torch.as_tensor(qem_index, dtype=torch.long)
        qem_weight = torch.as_tensor(qem_weight, dtype=torch.float32)
        if qem_index.shape != qem_weight.shape or qem_index.dim() != 2:
            raise ValueError(f"FeatureAggregation: qem_index and qem_weight must both be (n_out, P), got "
                             f"{tuple(qem_index.shape)} and {tuple(qem_weight.shape)}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"FeatureAggregation: top_k must be >= 1 or None (no mask), got {top_k}")
        self.num_outputs, self.num_inputs = len(qem_index), num_inputs
        self.aggregation, self.fusion, self.fusion_form = aggregation, fusion, fusion_form
        self.top_k = None if top_k is None or top_k >= num_inputs else top_k
        # M_QEM as rows with a fixed number of non-zeros (sorted, distinct columns, as blended_rows needs)
        qem_index, order = qem_index.sort(1)
        self.register_buffer("qem_index", qem_index)
        self.register_buffer("qem_weight", qem_weight.gather(1, order))
        if aggregation == "attention":
            if queries is None or keys is None:
                raise ValueError("FeatureAggregation: aggregation='attention' needs queries and keys "
                                 "(see vertex_embeddings)")
            if queries.shape[0] != self.num_outputs or keys.shape[0] != num_inputs or queries.shape[1] != keys.shape[1]:
                raise ValueError(f"FeatureAggregation: queries must be ({self.num_outputs}, c) and keys "
                                 f"({num_inputs}, c); got {tuple(queries.shape)} and {tuple(keys.shape)}")
            self.queries, self.keys = queries, keys
            self._selection: Tensor | None = None  # the last top-k columns: the next selection's seed (select_top_k)
        elif aggregation == "full":
            bound = num_inputs**-0.5
            self.mapping = nn.Parameter(torch.empty(self.num_outputs, num_inputs).uniform_(-bound, bound))
        elif aggregation == "full-qem":
            self.mapping = nn.Parameter(self._qem_dense())
        if fusion:
            # stored as "fusion_weight" in either form: w_a itself (linear) or its logit θ (sigmoid)
            fusion_weight = torch.tensor(float(fusion_init))
            if fusion_form == "sigmoid":
                fusion_weight = torch.logit(fusion_weight)
            if trainable_fusion:
                self.fusion_weight = nn.Parameter(fusion_weight)
            else:
                self.register_buffer("fusion_weight", fusion_weight)

    def _qem_dense(self) -> Tensor:
        dense = self.qem_weight.new_zeros(self.num_outputs, self.num_inputs)
        return dense.scatter_add_(1, self.qem_index, self.qem_weight)

    def learned_matrix(self) -> tuple[Tensor | None, Tensor]:
        """``M_a`` as ``(index, weight)`` rows with k non-zeros (top-k attention, average) or ``(None, dense)``."""
        if self.aggregation == "average":
            support = (self.qem_weight != 0).to(self.qem_weight)
            return self.qem_index, support / support.sum(1, keepdim=True)
        if self.aggregation in ("full", "full-qem"):
            return None, self.mapping
        queries, keys = F.normalize(self.queries, dim=1), F.normalize(self.keys, dim=1)
        if self.top_k is None:
            return None, self._normalise_rows((queries @ keys.T).clamp_min(0))
        index = self.select_top_k(queries.detach(), keys.detach())  # then only the selected scores, with gradients
        crow = _fixed_width_crow(*index.shape, index.device)
        scores = sampled_product(crow, index.reshape(-1).int(), queries, keys).view(index.shape).clamp_min(0)
        return index, self._normalise_rows(scores)

    @torch.no_grad()
    def select_top_k(self, queries: Tensor, keys: Tensor) -> Tensor:
        """The columns of each row's ``top_k`` largest scores ``queries @ keys.T``, in increasing order, as
        :func:`top_k_columns` selects them (up to ties), seeded with this module's last selection.

        A row keeps its last columns when no other column scores above the lowest of them: they are then still a top-k
        of the row. Only the other rows are selected anew. Queries and keys move little per optimiser step (the README's
        Deep3DMM runs keep 90-98 % of the initial top-k pairs over 12 epochs at the finest levels), so a training step
        costs one product, a gather and a row maximum where a selection of every row would cost a two-stage top-k
        (5023 × 1256 scores, k = 32: 1.9 instead of 18 ms on 2 cores). A selection made in inference mode is not
        kept, so that no inference tensor becomes module state.
        """
        scores = queries @ keys.T
        last = self._selection
        if last is None or last.device != scores.device or last.shape != (self.num_outputs, self.top_k):
            index = top_k_columns(scores, self.top_k)
        else:
            lowest = scores.gather(1, last).amin(1)
            best_other = scores.scatter_(1, last, -math.inf).amax(1)
            stale = (best_other > lowest).nonzero().squeeze(1)
            index = last if len(stale) == 0 else last.index_copy(
                0, stale, top_k_columns(queries[stale] @ keys.T, self.top_k))
        if not torch.is_inference_mode_enabled():
            self._selection = index
        return index

    @staticmethod
    def _normalise_rows(scores: Tensor) -> Tensor:
        """Eq. 6 with the all-zero-row guard (see the class docstring)."""
        total = scores.sum(1, keepdim=True)
        uniform = torch.full_like(scores, 1.0 / scores.shape[1])
        return torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), uniform)

    def differentiable_matrix(self) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """The mapping ``M`` of Eq. 7, differentiable: CSR ``(crow, col, values)`` when ``M_a`` is sparse (top-k
        attention, average), ``(None, None, dense)`` when it is dense."""
        index, weight = self.learned_matrix()
        if index is None:
            if self.fusion:
                weight = self.mixing_weight * weight + (1 - self.mixing_weight) * self._qem_dense()
            return None, None, weight
        if self.fusion:
            return blended_rows(index, weight, self.qem_index, self.qem_weight, self.mixing_weight, self.num_inputs)
        return _fixed_width_crow(*index.shape, index.device), index.reshape(-1).int(), weight.reshape(-1)

    @_mapping_forward
    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, n_in, C) -> (B, n_out, C)."""
        crow, col, values = self.differentiable_matrix()
        return values @ x if crow is None else sparse_matmul(crow, col, values, x)

    @property
    def mixing_weight(self) -> Tensor:
        """``w_a`` of Eq. 7 (through the sigmoid for ``fusion_form="sigmoid"``)."""
        return self.fusion_weight.sigmoid() if self.fusion_form == "sigmoid" else self.fusion_weight

    @torch.no_grad()
    def matrix(self) -> Tensor:
        """The current mapping ``M`` (Eq. 7) as a coalesced sparse COO (n_out, n_in) tensor, in float32 (also under
        autocast: the training forward's ``M``)."""
        with without_autocast(self.qem_weight.device.type):
            crow, col, values = self.differentiable_matrix()
        if crow is None:
            return values.to_sparse()
        with quiet_sparse_csr():
            return csr_tensor(crow, col, values, (self.num_outputs, self.num_inputs)).to_sparse_coo().coalesce()

    def materialise(self) -> SparseMapping:
        """A parameter-free :class:`SparseMapping` applying the current ``M``: the inference form (paper §1, §3.2.1)."""
        return SparseMapping(self.matrix())

    def extra_repr(self) -> str:
        return (f"{self.num_inputs} -> {self.num_outputs}, aggregation={self.aggregation}, top_k={self.top_k}, "
                f"fusion={self.fusion}" + (f" ({self.fusion_form})" if self.fusion else ""))


class SparseMapping(nn.Module):
    r"""A fixed sparse mapping between mesh levels, ``x'_i = Σ_j M_ij x_j``: a materialised :class:`FeatureAggregation`.

    ``M`` is kept as CSR index/value buffers (saved with the model; loading resizes them to the checkpoint's, since the
    number of non-zeros depends on the learned top-k patterns) and applied by :func:`sparse_matmul`.

    Args:
        matrix: (n_out, n_in) sparse COO or dense tensor.
    """

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        csr = matrix.detach().float()
        with quiet_sparse_csr():
            csr = csr.to_sparse_csr() if csr.layout != torch.sparse_csr else csr
        self.num_outputs, self.num_inputs = csr.shape
        # copies: views of a sparse tensor's members cannot be traced (torch.export)
        self.register_buffer("crow_indices", csr.crow_indices().clone())
        self.register_buffer("col_indices", csr.col_indices().clone())
        self.register_buffer("values", csr.values().clone())
        self._pad_rows()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        for name in ("col_indices", "values"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.values.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._pad_rows()

    def _pad_rows(self) -> None:
        """The export form's fixed-width rows (:func:`~morphzoo.nn.sparse.padded_rows`), from the CSR buffers."""
        rows = torch.repeat_interleave(torch.arange(self.num_outputs, device=self.crow_indices.device),
                                       self.crow_indices.diff())
        index, weight = padded_rows(rows, self.col_indices, self.values, self.num_outputs)
        self.register_buffer("padded_index", index, persistent=False)
        self.register_buffer("padded_weight", weight, persistent=False)

    @_mapping_forward
    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, n_in, C) -> (B, n_out, C)."""
        if exporting():  # a traced graph cannot hold a sparse tensor (nn/sparse.py)
            return _from_vertex_major(padded_matmul(self.padded_index, self.padded_weight, _to_vertex_major(x)),
                                      x.shape[0])
        return sparse_matmul(self.crow_indices, self.col_indices, self.values.to(x.dtype), x)

    def extra_repr(self) -> str:
        return f"{self.num_inputs} -> {self.num_outputs}, nnz={len(self.values)}"
