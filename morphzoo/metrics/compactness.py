"""Compactness and generalisation of linear (PCA) shape models (Styner et al. 2003; Davies' model-quality measures).

The statistical-shape-model literature judges a linear model by

- **compactness**: the cumulative fraction of the training set's variance explained by the first :math:`k` principal
  components, :math:`C(k) = \\sum_{i \\le k} \\lambda_i / \\sum_i \\lambda_i`;
- **generalisation**: the mean per-vertex error (mm) of held-out meshes projected onto the first :math:`k`
  components, :math:`G(k) = \\frac{1}{NV} \\sum_{n, v} \\lVert \\hat x^{(k)}_{n,v} - x_{n,v} \\rVert`, with
  :math:`\\hat x^{(k)} = \\mu + U_k U_k^\\top (x - \\mu)`;
- **specificity** (see :class:`~morphzoo.metrics.specificity.Specificity`).

Both are Metrics: :class:`Compactness` accumulates training meshes, :class:`PCAGeneralisation` is built from the
training meshes and accumulates held-out meshes (sums, so DDP-safe).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from morphzoo.metrics.vertex_error import MM_PER_METRE

EXACT_SVD_LIMIT = 4096  # up to this many meshes or coordinates the SVD is exact; beyond, randomised (Halko et al.)


def principal_components(vertices: Tensor | np.ndarray, max_components: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PCA of (N, V, 3) meshes: (mean (3V,), components (K, 3V) orthonormal, variances (K,), total variance).

    Exact (full SVD) when ``min(N, 3V) <= EXACT_SVD_LIMIT``; otherwise a randomised SVD with oversampling and four
    power iterations, accurate for the leading components the metrics use. The total variance is always exact.
    """
    data = torch.as_tensor(np.asarray(vertices), dtype=torch.float64).flatten(1)
    if len(data) < 2:
        raise ValueError(f"PCA needs at least 2 meshes, got {len(data)}")
    mean = data.mean(0)
    centred = data - mean
    total = centred.pow(2).sum() / (len(data) - 1)
    rank = min(len(data) - 1, data.shape[1])
    count = min(max_components, rank)
    if min(data.shape) <= EXACT_SVD_LIMIT:
        _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    else:
        _, singular, right_t = torch.svd_lowrank(centred, q=min(count + 16, rank), niter=4)
        right = right_t.T
    return mean, right[:count], singular[:count].pow(2) / (len(data) - 1), total


class Compactness(Metric):
    r"""Cumulative explained variance :math:`C(k)` of the training meshes' PCA, :math:`k = 1..K` (module docstring).

    ``update(vertices)`` with (B, V, 3) training meshes in metres; ``compute()`` returns ``cumulative`` (K,) in
    [0, 1], ``variances`` (K,) in mm² and ``components_for`` (the smallest :math:`k` reaching 90 %, 95 %, 99 %).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, max_components: int = 256, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_components = max_components
        self.add_state("meshes", default=[], dist_reduce_fx="cat")

    def update(self, vertices: Tensor) -> None:
        _check_meshes(vertices, "Compactness")
        self.meshes.append(vertices.detach().float())

    def compute(self) -> dict[str, Tensor]:
        meshes = self.meshes if isinstance(self.meshes, Tensor) else torch.cat(self.meshes)
        _, _, variances, total = principal_components(meshes.cpu(), self.max_components)
        cumulative = variances.cumsum(0) / total
        reached = {f"{int(q * 100)}%": int(torch.searchsorted(cumulative, torch.tensor(q, dtype=cumulative.dtype))) + 1
                   for q in (0.90, 0.95, 0.99) if cumulative[-1] >= q}
        return {"cumulative": cumulative.float(), "variances": (variances * MM_PER_METRE**2).float(),
                "components_for": reached}


class PCAGeneralisation(Metric):
    r"""Held-out error :math:`G(k)` of the training meshes' PCA for each :math:`k` in ``components`` (module docstring).

    Args:
        train: (N, V, 3) training meshes in metres (the PCA is computed once, here).
        components: the numbers of components to evaluate, e.g. ``(8, 16, 32, 64)``.

    ``update(vertices)`` with held-out (B, V, 3) meshes; ``compute()`` returns ``{k: mean per-vertex error in mm}``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, train: Tensor | np.ndarray, components: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        if not components or min(components) < 0:
            raise ValueError(f"PCAGeneralisation: components must be non-negative counts, got {components}")
        self.components = tuple(int(k) for k in components)
        mean, basis, _, _ = principal_components(train, max(self.components))
        if len(basis) < max(self.components):
            raise ValueError(f"PCAGeneralisation: the training set supports at most {len(basis)} components, "
                             f"asked for {max(self.components)}")
        self.mean, self.basis = mean, basis
        self.add_state("error_sum", default=torch.zeros(len(self.components), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("vertex_count", default=torch.tensor(0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, vertices: Tensor) -> None:
        _check_meshes(vertices, "PCAGeneralisation")
        if vertices.shape[1] * 3 != len(self.mean):
            raise ValueError(f"PCAGeneralisation: meshes have {vertices.shape[1]} vertices, the PCA "
                             f"{len(self.mean) // 3}")
        centred = vertices.detach().double().flatten(1).cpu() - self.mean
        coefficients = centred @ self.basis.T
        for i, k in enumerate(self.components):
            residual = centred - coefficients[:, :k] @ self.basis[:k]
            self.error_sum[i] += residual.view(len(vertices), -1, 3).norm(dim=-1).sum().to(self.error_sum)
        self.vertex_count += vertices.shape[0] * vertices.shape[1]

    def compute(self) -> dict[int, Tensor]:
        errors = self.error_sum / self.vertex_count * MM_PER_METRE
        return {k: errors[i].float() for i, k in enumerate(self.components)}


def _check_meshes(vertices: Tensor, name: str) -> None:
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"{name}: expected (B, V, 3) vertices in metres, got {tuple(vertices.shape)}")
