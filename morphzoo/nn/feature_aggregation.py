r"""Learned feature aggregation between mesh levels (Deep3DMM: Chen & Kim, "Learning Feature Aggregation for Deep 3D
Morphable Models", CVPR 2021, §3).

A hierarchical mesh autoencoder moves vertex features between levels with a mapping matrix, ``X' = M X`` (Eq. 1).
CoMA and Neural3DMM use the fixed QEM matrices (vertex selection down, barycentric interpolation up); Deep3DMM learns
``M`` from trainable per-vertex query and key vectors (Eq. 2-7). Only ``M`` is needed at inference, so a trained
:class:`FeatureAggregation` turns into a :class:`SparseMapping` (:meth:`FeatureAggregation.materialise`) with the same
outputs and no parameters.

Sparse products run in a ``(V, batch·channels)`` layout as CSR matrix products; the gradient of a top-k matrix's
values is the sampled product ``(G Xᵀ)`` on its pattern (``torch.sparse.sampled_addmm``), never a dense matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from morphzoo.nn.sparse import csr_tensor, exporting, padded_matmul, padded_rows, quiet_sparse_csr

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


class _RowsMatmul(torch.autograd.Function):
    """``M @ x`` for a sparse ``M`` with ``k`` non-zeros per row at sorted, distinct columns ``index`` (n_out, k)."""

    @staticmethod
    def forward(ctx, index: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        n_out, k = index.shape
        crow = torch.arange(0, n_out * k + 1, k, device=index.device)
        matrix = csr_tensor(crow, index.reshape(-1), weight.reshape(-1), (n_out, len(x)))
        ctx.save_for_backward(index, weight, x)
        return matrix @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor | None, Tensor | None]:
        index, weight, x = ctx.saved_tensors
        n_out, k = index.shape
        columns = index.reshape(-1)
        grad_weight = grad_x = None
        if ctx.needs_input_grad[1]:  # dL/dM_ij = (G Xᵀ)_ij on the pattern only
            pattern = csr_tensor(torch.arange(0, n_out * k + 1, k, device=index.device), columns, weight.reshape(-1),
                           (n_out, len(x)))
            grad_weight = torch.sparse.sampled_addmm(pattern, grad, x.T, beta=0.0).values().view(n_out, k)
        if ctx.needs_input_grad[2]:  # dL/dX = Mᵀ G; Mᵀ in CSR: entries by column, stably (rows stay sorted)
            order = torch.argsort(columns, stable=True)
            crow = F.pad(torch.bincount(columns, minlength=len(x)).cumsum(0), (1, 0))
            transposed = csr_tensor(crow, torch.div(order, k, rounding_mode="floor"), weight.reshape(-1)[order],
                              (len(x), n_out))
            grad_x = transposed @ grad
        return None, grad_weight, grad_x


def rows_matmul(index: Tensor, weight: Tensor, x: Tensor) -> Tensor:
    r"""``x'_i = Σ_j weight[i, j] · x[index[i, j]]``: a sparse matrix with k non-zeros per row times ``x`` (n_in, D).

    ``index`` (n_out, k) must hold distinct columns per row, in increasing order. Differentiable in ``weight`` and
    ``x``.
    """
    return _RowsMatmul.apply(index, weight, x)


def top_k_columns(scores: Tensor, k: int) -> Tensor:
    """The columns of each row's ``k`` largest scores, in increasing order: ``scores.topk(k).indices.sort(1).values``
    in two cheaper selections (1.6× faster on Deep3DMM's 5023 × 1256 up-sampling scores, k = 32, on 2 cores).

    The columns are cut into groups of ``g ≈ √(n_in / k)``; the ``k`` groups with the largest maxima hold every score
    above the k-th largest (fewer than ``k`` groups can have a larger maximum), and enough equal to it, so a top-k of
    their ``k·g`` candidates is a top-k of the row. Among tied scores it may pick other columns than ``topk`` would;
    the selected values are the same. Scores must be finite (cosines are).

    Shapes:
        scores: (n_out, n_in) -> (n_out, k).
    """
    num_rows, num_columns = scores.shape
    width = max(1, round(math.sqrt(num_columns / k)))
    whole = num_columns // width  # groups of `width`; a last, shorter group holds the rest
    if width == 1:  # with width >= 2 there are always more than k groups
        return scores.topk(k, dim=1, sorted=False).indices.sort(1).values
    maxima = scores[:, :whole * width].view(num_rows, whole, width).amax(2)
    if whole * width < num_columns:
        maxima = torch.cat([maxima, scores[:, whole * width:].amax(1, keepdim=True)], dim=1)
    groups = maxima.topk(k, dim=1, sorted=False).indices
    candidates = (groups[:, :, None] * width + torch.arange(width, device=scores.device)).view(num_rows, -1)
    beyond = candidates >= num_columns  # the short group's missing columns: never selected
    values = scores.gather(1, candidates.clamp_max(num_columns - 1)).masked_fill_(beyond, -math.inf)
    return candidates.gather(1, values.topk(k, dim=1, sorted=False).indices).sort(1).values


def _to_vertex_major(x: Tensor) -> Tensor:
    """(B, V, C) -> (V, B·C)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _from_vertex_major(x: Tensor, batch: int) -> Tensor:
    """(V, B·C) -> (B, V, C), a view."""
    return x.view(len(x), batch, -1).transpose(0, 1)


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
        # M_QEM as rows with a fixed number of non-zeros (sorted distinct columns, as rows_matmul needs)
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
        with torch.no_grad():  # select on the dense scores, then recompute only the selected ones with gradients
            index = top_k_columns(queries @ keys.T, self.top_k)
        # index_select, not keys[index]: 2-3× faster forward + backward on a CPU
        selected = keys.index_select(0, index.reshape(-1)).view(*index.shape, -1)
        scores = (queries[:, None, :] * selected).sum(-1).clamp_min(0)
        return index, self._normalise_rows(scores)

    @staticmethod
    def _normalise_rows(scores: Tensor) -> Tensor:
        """Eq. 6 with the all-zero-row guard (see the class docstring)."""
        total = scores.sum(1, keepdim=True)
        uniform = torch.full_like(scores, 1.0 / scores.shape[1])
        return torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), uniform)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, n_in, C) -> (B, n_out, C)."""
        batch = x.shape[0]
        x = _to_vertex_major(x)
        index, weight = self.learned_matrix()
        learned = weight @ x if index is None else rows_matmul(index, weight, x)
        if self.fusion:
            qem = rows_matmul(self.qem_index, self.qem_weight, x)
            learned = self.mixing_weight * learned + (1 - self.mixing_weight) * qem
        return _from_vertex_major(learned, batch)

    @property
    def mixing_weight(self) -> Tensor:
        """``w_a`` of Eq. 7 (through the sigmoid for ``fusion_form="sigmoid"``)."""
        return self.fusion_weight.sigmoid() if self.fusion_form == "sigmoid" else self.fusion_weight

    @torch.no_grad()
    def matrix(self) -> Tensor:
        """The current mapping ``M`` (Eq. 7) as a coalesced sparse COO (n_out, n_in) tensor."""
        index, weight = self.learned_matrix()
        shape = (self.num_outputs, self.num_inputs)
        if index is None:
            learned = weight.to_sparse()
        else:
            rows = torch.arange(self.num_outputs, device=weight.device).repeat_interleave(index.shape[1])
            learned = torch.sparse_coo_tensor(torch.stack([rows, index.reshape(-1)]), weight.reshape(-1), shape,
                                              check_invariants=False)
        if not self.fusion:
            return learned.coalesce()
        rows = torch.arange(self.num_outputs, device=weight.device).repeat_interleave(self.qem_index.shape[1])
        qem = torch.sparse_coo_tensor(torch.stack([rows, self.qem_index.reshape(-1)]), self.qem_weight.reshape(-1),
                                      shape, check_invariants=False)
        return (self.mixing_weight * learned + (1 - self.mixing_weight) * qem).coalesce()

    def materialise(self) -> SparseMapping:
        """A parameter-free :class:`SparseMapping` applying the current ``M``: the inference form (paper §1, §3.2.1)."""
        return SparseMapping(self.matrix())

    def extra_repr(self) -> str:
        return (f"{self.num_inputs} -> {self.num_outputs}, aggregation={self.aggregation}, top_k={self.top_k}, "
                f"fusion={self.fusion}" + (f" ({self.fusion_form})" if self.fusion else ""))


class SparseMapping(nn.Module):
    r"""A fixed sparse mapping between mesh levels, ``x'_i = Σ_j M_ij x_j``: a materialised :class:`FeatureAggregation`.

    ``M`` is kept as CSR index/value buffers (saved with the model; loading resizes them to the checkpoint's, since the
    number of non-zeros depends on the learned top-k patterns) and applied as one sparse product in a
    ``(V, batch·channels)`` layout.

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

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, n_in, C) -> (B, n_out, C)."""
        if exporting():  # a traced graph cannot hold a sparse tensor (nn/sparse.py)
            return _from_vertex_major(padded_matmul(self.padded_index, self.padded_weight, _to_vertex_major(x)),
                                      x.shape[0])
        matrix = csr_tensor(self.crow_indices, self.col_indices, self.values.to(x.dtype),
                            (self.num_outputs, self.num_inputs))
        return _from_vertex_major(matrix @ _to_vertex_major(x), x.shape[0])

    def extra_repr(self) -> str:
        return f"{self.num_inputs} -> {self.num_outputs}, nnz={len(self.values)}"
