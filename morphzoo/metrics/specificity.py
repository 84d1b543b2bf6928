"""Specificity of a generative shape model (Davies, Twining & Taylor 2008; Abrevaya et al. 2019, §5.3).

Also home of the chunked mean-vertex-distance kernels shared with :mod:`morphzoo.metrics.diversity`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from morphzoo.metrics.vertex_error import MM_PER_METRE

# Bytes of reference meshes converted per block (read from the array or memmap, then laid out as (3, n, V)).
BLOCK_BYTES = 16 * 2**20
# Bytes of a block of samples (laid out as (3, n, V)) and of its (samples × references) lower-bound matrix.
BOUND_BYTES = 64 * 2**20
# Pruning keeps every reference whose lower bound is within this margin of the best distance found so far: a relative
# part (float32 sums over thousands of vertices) and an absolute part proportional to the coordinates' magnitude
# (rounding of the coordinates themselves). Both are orders of magnitude above the rounding errors they cover.
PRUNE_RELATIVE_MARGIN = 1e-3
PRUNE_ABSOLUTE_MARGIN = 1e-5


def planar(vertices: Tensor) -> Tensor:
    """(B, V, 3) -> (3, B, V), contiguous: the layout the kernels below vectorise best over."""
    return vertices.permute(2, 0, 1).contiguous()


def pairwise_vertex_distance(a: Tensor, b: Tensor, a_chunk: int, b_chunk: int, reduction: str = "mean") -> Tensor:
    r"""(n, m) matrix :math:`\operatorname{mean}_v \lVert a_{i,v} - b_{j,v} \rVert` for planar ``a`` (3, n, V), ``b``
    (3, m, V) (``reduction="sum"``: the sum over vertices).

    Never materialises more than two (a_chunk, b_chunk, V) temporaries, reused across chunk pairs; small chunks keep
    them in cache. Exact differences (no :math:`|a|^2 + |b|^2 - 2ab` expansion), so identical meshes are at distance 0.
    """
    n, m, vertices = a.shape[1], b.shape[1], a.shape[2]
    out = torch.empty(n, m, dtype=a.dtype, device=a.device)
    a_chunk, b_chunk = max(1, min(a_chunk, n)), max(1, min(b_chunk, m))
    squared_buffer = torch.empty(a_chunk, b_chunk, vertices, dtype=a.dtype, device=a.device)
    delta_buffer = torch.empty_like(squared_buffer)
    for i in range(0, n, a_chunk):
        rows = slice(i, i + a_chunk)
        na = min(a_chunk, n - i)
        for j in range(0, m, b_chunk):
            cols = slice(j, j + b_chunk)
            nb = min(b_chunk, m - j)
            squared, delta = squared_buffer[:na, :nb], delta_buffer[:na, :nb]
            torch.sub(a[0, rows, None], b[0, None, cols], out=squared)
            squared.mul_(squared)
            for c in (1, 2):
                torch.sub(a[c, rows, None], b[c, None, cols], out=delta)
                squared.addcmul_(delta, delta)
            squared.sqrt_()
            out[rows, cols] = squared.mean(-1) if reduction == "mean" else squared.sum(-1)
    return out


def paired_vertex_distance(a: Tensor, b: Tensor, index_a: Tensor, index_b: Tensor, chunk: int) -> Tensor:
    r"""(P,) vector :math:`\operatorname{mean}_v \lVert a_{i_k,v} - b_{j_k,v} \rVert` for planar ``a`` (3, n, V),
    ``b`` (3, m, V) and index pairs ``(index_a[k], index_b[k])``, gathered ``chunk`` pairs at a time."""
    out = torch.empty(len(index_a), dtype=a.dtype, device=a.device)
    for k in range(0, len(index_a), chunk):
        left, right = a[:, index_a[k : k + chunk]], b[:, index_b[k : k + chunk]]  # (3, c, V) gathers
        squared = left[0] - right[0]
        squared.mul_(squared)
        for c in (1, 2):
            delta = left[c] - right[c]
            squared.addcmul_(delta, delta)
        out[k : k + chunk] = squared.sqrt_().mean(-1)
    return out


def spatial_partition(points: np.ndarray, parts: int) -> np.ndarray:
    """Labels (V,) splitting ``points`` (V, 3) into up to ``parts`` spatially compact cells of near-equal size (the
    largest cell is repeatedly halved at the median of its widest axis, as in a k-d tree)."""
    cells = [np.arange(len(points))]
    while len(cells) < parts:
        largest = max(range(len(cells)), key=lambda c: len(cells[c]))
        cell = cells[largest]
        if len(cell) < 2:
            break
        coordinates = points[cell]
        axis = int(np.argmax(coordinates.max(0) - coordinates.min(0)))
        order = cell[np.argsort(coordinates[:, axis], kind="stable")]
        cells[largest], half = order[: len(cell) // 2], order[len(cell) // 2 :]
        cells.append(half)
    labels = np.empty(len(points), dtype=np.int64)
    for label, cell in enumerate(cells):
        labels[cell] = label
    return labels


class Specificity(Metric):
    r"""Specificity of a generative model: how close its samples lie to the training set, in millimetres.

    For generated samples :math:`s` and training meshes :math:`t_1..t_N` with vertices :math:`v = 1..V` (metres),

    .. math::
        d(s) = \min_{n} \frac{1}{V} \sum_v \lVert s_v - t_{n,v} \rVert_2, \qquad
        \mathrm{Specificity} = \frac{1}{S} \sum_s d(s)

    (Davies, Twining & Taylor, *Statistical Models of Shape*, 2008; as used with :math:`S = 1000` samples by
    Abrevaya et al., *A Decoupled 3D Facial Shape Model by Adversarial Training*, ICCV 2019, §5.3). Lower is better; the
    training meshes themselves have specificity exactly 0. :meth:`compute` returns ``mean``, ``std`` and ``median`` of
    :math:`d(s)` over the samples (mm), ``per_sample`` (S,) (mm), ``nearest`` (S,) (index of each sample's nearest
    training mesh; the lowest index among exact ties) and ``num_samples``.

    Each :meth:`update` reduces its samples to their minima right away (states: per-sample minimum and nearest index,
    concatenated across processes), streaming the reference in blocks of :data:`BLOCK_BYTES` and computing exact
    distances ``sample_chunk`` × ``reference_chunk`` meshes at a time (two temporaries of that many × V floats).

    Pruning (``prune=True``, exact): the vertices are split into ``bound_groups`` spatially compact cells :math:`G` and,
    by the triangle inequality, :math:`\frac{1}{V}\sum_v \lVert s_v - t_v \rVert \ge \sum_G \lVert \frac{1}{V}
    \sum_{v \in G} (s_v - t_v) \rVert` — a distance between (G, 3) summaries, ~V/G times cheaper. Each sample is first
    compared exactly with the reference of smallest bound; then only the references whose bound does not exceed the
    best distance so far (plus a safety margin far above rounding error) are compared exactly. The result is the same
    as without pruning. How much it saves depends on the data: on the smooth synthetic shape model of
    ``benchmarks/metrics.py`` 0.1 % of the pairs are compared (15× faster); on unstructured random meshes (all
    distances alike) none are skipped and the bound costs ~5 %. The first pruned update reads the whole reference once
    to build the (N, G, 3) summaries. ``pairs_evaluated`` / ``pairs_total`` count this process's exact comparisons.

    Args:
        reference: (N, V, 3) training meshes in metres: a tensor or a numpy array, possibly a read-only memmap; kept as
            given (not a metric state, not copied) and read block by block.
        sample_chunk, reference_chunk: samples × references per exact-distance kernel call. The default 16 × 16 was
            the fastest measured on a 2-core CPU at V = 5023 (two 4.9 MB temporaries, cache-resident; ~1.1-1.4 G
            vertex pairs/s with 2 threads), against 8 × 8 (~1.0), 32 × 32 (~0.7) and 64 × 64 (~0.55, 157 MB).
        prune: use the exact lower bound above to skip references.
        bound_groups: number of vertex cells of the lower bound.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        reference: Tensor | np.ndarray,
        sample_chunk: int = 16,
        reference_chunk: int = 16,
        prune: bool = True,
        bound_groups: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(reference, Tensor):
            reference = reference.detach()
        elif not isinstance(reference, np.ndarray):
            reference = np.asarray(reference, dtype=np.float32)
        shape = tuple(reference.shape)
        if len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"Specificity: expected the reference as (N, V, 3) meshes with N, V >= 1, got {shape}")
        if min(sample_chunk, reference_chunk, bound_groups) < 1:
            raise ValueError("Specificity: sample_chunk, reference_chunk and bound_groups must be positive, got "
                             f"{sample_chunk}, {reference_chunk}, {bound_groups}")
        self.reference = reference
        self.num_references, self.num_vertices = shape[0], shape[1]
        self.sample_chunk, self.reference_chunk = sample_chunk, reference_chunk
        self.prune, self.bound_groups = prune, bound_groups
        self.pairs_evaluated = self.pairs_total = 0
        self._bound: dict | None = None  # built on the first pruned update (one pass over the reference)
        self.add_state("distances", default=[], dist_reduce_fx="cat")
        self.add_state("nearest", default=[], dist_reduce_fx="cat")

    # -- reading the reference -------------------------------------------------------------------------------------

    def _block_size(self) -> int:
        size = max(1, BLOCK_BYTES // (self.num_vertices * 3 * 4))
        return max(self.reference_chunk, size - size % self.reference_chunk)

    def _rows(self, index: slice | Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Reference meshes ``reference[index]`` (a slice, or sorted or unsorted indices) as a (n, V, 3) tensor."""
        if isinstance(self.reference, Tensor):
            rows = self.reference[index if isinstance(index, slice) else index.to(self.reference.device)]
            return rows.to(device=device, dtype=dtype)
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
        # np.array copies: a writable, contiguous chunk, never the whole (memmapped) reference.
        return torch.from_numpy(np.array(self.reference[index], dtype=numpy_dtype)).to(device)

    def _summaries(self, vertices: Tensor) -> Tensor:
        """(3, B, G) cell sums :math:`\\frac{1}{V}\\sum_{v \\in G} (x_v - o_v)` of the lower bound, computed in float64
        (``o``: the first reference mesh, subtracted so that the sums do not lose the shape to the position)."""
        bound = self._bound
        centred = planar(vertices.to(torch.float64) - bound["origin"].to(vertices.device))
        sums = torch.zeros(3, len(vertices), bound["groups"], dtype=torch.float64, device=vertices.device)
        return sums.index_add_(2, bound["labels"].to(vertices.device), centred) / self.num_vertices

    def _prepare_bound(self, device: torch.device) -> None:
        origin = self._rows(slice(0, 1), torch.float64, torch.device("cpu"))[0]
        labels = torch.from_numpy(spatial_partition(origin.numpy(), self.bound_groups))
        self._bound = {"origin": origin, "labels": labels, "groups": int(labels.max()) + 1}
        # allocated once up front: small long-lived pieces between the big transient blocks would fragment the heap
        summaries = torch.empty(3, self.num_references, self._bound["groups"], dtype=torch.float64, device=device)
        scale, block = 0.0, max(1, self._block_size() // 2)  # float64 blocks: half as many meshes
        for start in range(0, self.num_references, block):
            rows = self._rows(slice(start, start + block), torch.float64, device)
            low, high = torch.aminmax(rows)
            scale = max(scale, -float(low), float(high))
            summaries[:, start : start + block] = self._summaries(rows)
        self._bound.update(summaries=summaries, scale=scale)

    # -- the metric ------------------------------------------------------------------------------------------------

    def update(self, samples: Tensor) -> None:
        """``samples``: (B, V, 3) generated meshes in metres, V the reference's vertex count."""
        if samples.ndim != 3 or tuple(samples.shape[1:]) != (self.num_vertices, 3):
            raise ValueError(f"Specificity: expected (B, {self.num_vertices}, 3) samples (the reference's vertex "
                             f"count), got {tuple(samples.shape)}")
        samples = samples.detach()
        samples = samples.to(torch.float64 if samples.dtype == torch.float64 else torch.float32)
        if not torch.isfinite(samples).all():
            raise ValueError("Specificity: the samples contain NaN or infinite coordinates")
        if len(samples) == 0:
            return
        if self.prune and self._bound is None:
            self._prepare_bound(samples.device)
        block = max(1, min(BOUND_BYTES // (4 * self.num_references), BOUND_BYTES // (4 * 3 * self.num_vertices)))
        for start in range(0, len(samples), block):
            best, nearest = self._nearest(samples[start : start + block])
            self.distances.append(best * MM_PER_METRE)
            self.nearest.append(nearest)

    def _nearest(self, samples: Tensor) -> tuple[Tensor, Tensor]:
        """Each sample's minimum mean vertex distance to the reference (metres) and the index reaching it."""
        count, dtype, device = len(samples), samples.dtype, samples.device
        flat = planar(samples)
        best = torch.full((count,), torch.inf, dtype=dtype, device=device)
        nearest = torch.full((count,), -1, dtype=torch.long, device=device)
        self.pairs_total += count * self.num_references

        def improve(rows: Tensor | None, values: Tensor, index: Tensor) -> None:
            # lexicographic minimum of (distance, index): the lowest index wins exact ties, whatever the visiting order
            old_best = best if rows is None else best[rows]
            old_nearest = nearest if rows is None else nearest[rows]
            better = (values < old_best) | ((values == old_best) & (index < old_nearest))
            if rows is None:
                best.copy_(torch.where(better, values, old_best))
                nearest.copy_(torch.where(better, index, old_nearest))
            else:
                best[rows] = torch.where(better, values, old_best)
                nearest[rows] = torch.where(better, index, old_nearest)

        bound = None
        if self.prune:
            summaries = self._summaries(samples).to(dtype)
            converted = self._bound.setdefault("converted", {})  # the summaries in this dtype, on this device
            if (dtype, device) not in converted:
                converted[dtype, device] = self._bound["summaries"].to(device=device, dtype=dtype)
            references = converted[dtype, device]
            bound = pairwise_vertex_distance(summaries, references, 64, max(1, 2**18 // (64 * references.shape[2])),
                                             reduction="sum")  # (count, N) lower bounds
            seeds = bound.argmin(1)
            everyone = torch.arange(count, device=device)
            seed_distances = paired_vertex_distance(flat, planar(self._rows(seeds, dtype, device)), everyone, everyone,
                                                    self.sample_chunk * self.reference_chunk)
            improve(None, seed_distances, seeds)
            self.pairs_evaluated += count
            scale = max(self._bound["scale"], float(samples.abs().max()))

        block = self._block_size()
        for start in range(0, self.num_references, block):
            stop = min(start + block, self.num_references)
            if bound is None:
                distances = pairwise_vertex_distance(flat, planar(self._rows(slice(start, stop), dtype, device)),
                                                     self.sample_chunk, self.reference_chunk)
                values, index = distances.min(1)  # the first (lowest) index among ties
                improve(None, values, index + start)
                self.pairs_evaluated += distances.numel()
                continue
            threshold = best * (1 + PRUNE_RELATIVE_MARGIN) + PRUNE_ABSOLUTE_MARGIN * scale
            candidate = bound[:, start:stop] <= threshold[:, None]
            pairs = int(candidate.sum())
            if pairs == 0:
                continue
            rows = candidate.any(1).nonzero().squeeze(1)
            cols = candidate.any(0).nonzero().squeeze(1)
            candidate = candidate[rows][:, cols]
            whole_rows, whole_cols = len(rows) == count, len(cols) == stop - start
            references = planar(self._rows(slice(start, stop) if whole_cols else cols + start, dtype, device))
            if 2 * pairs >= len(rows) * len(cols):  # dense enough: all rows × cols pairs
                distances = pairwise_vertex_distance(flat if whole_rows else flat[:, rows], references,
                                                     self.sample_chunk, self.reference_chunk)
                values, index = distances.min(1)
                improve(None if whole_rows else rows, values, cols[index] + start)
                self.pairs_evaluated += distances.numel()
            else:  # sparse: only the candidate pairs
                row, col = candidate.nonzero(as_tuple=True)
                distances = paired_vertex_distance(flat, references, rows[row], col,
                                                   self.sample_chunk * self.reference_chunk)
                values = torch.full((len(rows),), torch.inf, dtype=dtype, device=device)
                values = values.scatter_reduce(0, row, distances, "amin")
                index = torch.where(distances == values[row], cols[col] + start, self.num_references)
                index = torch.full_like(rows, self.num_references).scatter_reduce(0, row, index, "amin")
                improve(rows, values, index)
                self.pairs_evaluated += len(row)
        return best, nearest

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.distances, list) and not self.distances:
            raise ValueError("Specificity: no samples; call update() with generated meshes first")
        distances = dim_zero_cat(self.distances)  # (S,) mm, concatenated rank by rank after DDP sync
        return {
            "mean": distances.mean(),
            "std": distances.std(),
            "median": distances.median(),
            "per_sample": distances,
            "nearest": dim_zero_cat(self.nearest),
            "num_samples": torch.tensor(distances.numel()),
        }
