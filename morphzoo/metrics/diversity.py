"""Diversity of a generative shape model's samples (Abrevaya et al. 2019, §5.3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from morphzoo.metrics.specificity import paired_vertex_distance, planar
from morphzoo.metrics.vertex_error import MM_PER_METRE

PAIR_CHUNK = 64  # pairs per distance-kernel call: two (64, V) temporaries


def canonical_order(samples: Tensor, groups: Tensor, seed: int) -> Tensor:
    """A permutation putting ``samples`` (M, V, 3) in an order that depends only on their contents and groups.

    Key: an exact integer projection of each sample's bit pattern on fixed random weights (seeded with ``seed``), so
    that the key of a sample is the same bit for bit wherever it sits in the batch (a floating-point projection could
    round differently); ties (identical samples) are broken by group.
    """
    flat = samples.reshape(len(samples), -1).contiguous().view(torch.int32)  # float64: two int32 words per value
    length = flat.shape[1]
    # |bits| < 2^31 and weights < 2^w: products summed over `length` values stay below 2^62, no int64 overflow
    weight_bits = max(1, 31 - math.ceil(math.log2(max(length, 2))))
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randint(1, 2**weight_bits, (length,), generator=generator).to(flat.device)
    keys = torch.cat([(rows.long() * weights).sum(1) for rows in flat.split(64)])
    by_group = torch.sort(groups, stable=True).indices
    return by_group[torch.sort(keys[by_group], stable=True).indices]


def sample_indices(total: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` distinct integers drawn uniformly from ``range(total)`` (Floyd's algorithm), sorted."""
    uniforms = torch.rand(count, generator=generator, dtype=torch.float64).tolist()
    chosen: set[int] = set()
    for uniform, top in zip(uniforms, range(total - count, total), strict=True):
        pick = min(int(uniform * (top + 1)), top)  # uniform in [0, top]
        chosen.add(top if pick in chosen else pick)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def triangular_pair(index: Tensor) -> tuple[Tensor, Tensor]:
    """Linear pair index ``l`` -> ``(a, b)``, ``a < b``, enumerating (0,1), (0,2), (1,2), (0,3), ... ."""
    b = torch.floor((1 + torch.sqrt(1 + 8 * index.double())) / 2).long()
    b = b - (b * (b - 1) // 2 > index).long()  # correct a float rounding either way
    b = b + ((b + 1) * b // 2 <= index).long()
    return index - b * (b - 1) // 2, b


class Diversity(Metric):
    r"""Diversity of generated samples: the mean vertex distance between random pairs of them, in millimetres.

    For pairs :math:`(a, b)` of generated meshes with vertices :math:`v = 1..V` (metres),

    .. math::
        \mathrm{Diversity} = \frac{1}{P} \sum_{(a,b)} \frac{1}{V} \sum_v \lVert a_v - b_v \rVert_2

    over :math:`P` pairs of distinct samples (Abrevaya et al., *A Decoupled 3D Facial Shape Model by Adversarial
    Training*, ICCV 2019, §5.3: 10,000 random pairs). Higher means more diverse. With a group label per sample
    (``update(samples, groups)``), pairs are drawn only within groups: samples sharing an identity code give the
    paper's *identity diversity* (expression variation at fixed identity), sharing an expression code its *expression
    diversity*; a training set with its ``identity`` labels gives the reference value from labels.

    :meth:`compute` uses all pairs when there are at most ``pairs`` of them (exact), otherwise ``pairs`` distinct pairs
    drawn uniformly with a generator seeded with ``seed``. The samples are first put in a canonical order (by content,
    :func:`canonical_order`), so the result does not depend on how they arrived (order, batches, processes). Returns
    ``mean`` and ``std`` (mm) of the pair distances, ``num_pairs`` and ``num_samples``.

    The samples themselves are the state (concatenated across processes): memory grows as S × V × 3 floats.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, pairs: int = 10_000, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if pairs < 1:
            raise ValueError(f"Diversity: pairs must be positive, got {pairs}")
        self.pairs, self.seed = pairs, seed
        self._num_vertices: int | None = None  # fixed by the first update (after a reset)
        self._grouped: bool | None = None  # whether the updates come with groups
        self.add_state("samples", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, samples: Tensor, groups: Tensor | Sequence[int] | np.ndarray | None = None) -> None:
        """``samples``: (B, V, 3) generated meshes in metres; ``groups``: optional (B,) integer label per sample."""
        if samples.ndim != 3 or samples.shape[-1] != 3:
            raise ValueError(f"Diversity: expected (B, V, 3) samples, got {tuple(samples.shape)}")
        if self._num_vertices is not None and self._num_vertices != samples.shape[1]:
            raise ValueError(f"Diversity: samples with {samples.shape[1]} vertices after samples with "
                             f"{self._num_vertices}")
        if self._grouped is not None and self._grouped != (groups is not None):
            raise ValueError("Diversity: give groups with every update or with none")
        samples = samples.detach()
        samples = samples.to(torch.float64 if samples.dtype == torch.float64 else torch.float32)
        if not torch.isfinite(samples).all():
            raise ValueError("Diversity: the samples contain NaN or infinite coordinates")
        if groups is None:
            labels = torch.zeros(len(samples), dtype=torch.long, device=samples.device)
        else:
            labels = torch.as_tensor(np.asarray(groups) if not isinstance(groups, Tensor) else groups)
            if labels.shape != (len(samples),) or labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"Diversity: expected (B,) = ({len(samples)},) integer groups, got "
                                 f"{tuple(labels.shape)} {labels.dtype}")
            labels = labels.to(device=samples.device, dtype=torch.long)
        self._num_vertices, self._grouped = samples.shape[1], groups is not None
        self.samples.append(samples)
        self.groups.append(labels)

    def reset(self) -> None:
        super().reset()
        self._num_vertices, self._grouped = None, None

    def compute(self) -> dict[str, Tensor]:
        empty = isinstance(self.samples, list) and not self.samples
        samples, groups = (None, None) if empty else (dim_zero_cat(self.samples), dim_zero_cat(self.groups))
        if empty or len(samples) < 2:
            raise ValueError(f"Diversity: needs at least 2 samples, got {0 if empty else len(samples)}")
        order = canonical_order(samples, groups, self.seed)
        samples, groups = samples[order], groups[order]

        # members of each group, in canonical order; pairs within a group of n: n (n - 1) / 2
        members = torch.sort(groups, stable=True).indices
        _, sizes = torch.unique_consecutive(groups[members], return_counts=True)
        sizes = sizes.cpu()
        group_pairs = sizes * (sizes - 1) // 2
        total = int(group_pairs.sum())
        if total == 0:
            raise ValueError(f"Diversity: no group has 2 samples ({len(samples)} samples in {len(sizes)} groups)")
        if total <= self.pairs:
            chosen = torch.arange(total)
        else:
            chosen = sample_indices(total, self.pairs, torch.Generator().manual_seed(self.seed))

        pair_end = group_pairs.cumsum(0)
        group = torch.searchsorted(pair_end, chosen, right=True)
        first, second = triangular_pair(chosen - (pair_end - group_pairs)[group])
        member_start = (sizes.cumsum(0) - sizes)[group]
        members = members.cpu()
        index_a, index_b = members[member_start + first], members[member_start + second]

        flat = planar(samples)
        device = samples.device
        distances = paired_vertex_distance(flat, flat, index_a.to(device), index_b.to(device), PAIR_CHUNK)
        distances = distances.double() * MM_PER_METRE
        return {
            "mean": distances.mean(),
            "std": distances.std() if len(distances) > 1 else torch.tensor(torch.nan, dtype=distances.dtype),
            "num_pairs": torch.tensor(len(distances)),
            "num_samples": torch.tensor(len(samples)),
        }
