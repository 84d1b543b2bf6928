"""Surface roughness: how far each vertex sits from the centroid of its neighbours, the high-frequency noise that
vertex-distance metrics (specificity, diversity) do not see."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from morphzoo.metrics.vertex_error import MM_PER_METRE


class Roughness(Metric):
    r"""Mean length (mm) of the umbrella Laplacian of meshes on a fixed triangulation.

    With :math:`N(v)` the one-ring of vertex :math:`v` (edges of ``faces``),

    .. math::
        R = \frac{1000}{B V} \sum_b \sum_v \Big\lVert x_{b,v} - \frac{1}{|N(v)|} \sum_{u \in N(v)} x_{b,u} \Big\rVert_2

    for inputs in metres. A smooth surface of the same shape has the same value as the data; a crumpled one a larger
    value. Reported beside the training meshes' own value, so that a model's samples (or reconstructions) can be
    compared with the data they imitate. States are sums (``dist_reduce_fx="sum"``).

    Args:
        faces: (F, 3) triangle (or (F, 4) quad) vertex indices of the shared template.

    Shapes:
        update: (B, V, 3) meshes in metres.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, faces: Tensor | np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        faces = torch.as_tensor(np.asarray(faces), dtype=torch.long)
        if faces.dim() != 2 or faces.shape[1] < 3 or faces.numel() == 0:
            raise ValueError(f"Roughness: faces must be a non-empty (F, 3) or (F, 4) index array, got shape "
                             f"{tuple(faces.shape)}")
        edges = torch.cat([faces[:, [i, (i + 1) % faces.shape[1]]] for i in range(faces.shape[1])])
        edges = torch.unique(torch.cat([edges, edges.flip(1)]), dim=0)  # each undirected edge both ways, once
        self.register_buffer("source", edges[:, 0], persistent=False)
        self.register_buffer("neighbour", edges[:, 1], persistent=False)
        self.num_vertices = int(faces.max()) + 1
        degree = torch.bincount(edges[:, 0], minlength=self.num_vertices).clamp_min(1)
        self.register_buffer("degree", degree, persistent=False)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, meshes: Tensor) -> None:
        if meshes.dim() != 3 or meshes.shape[-1] != 3 or meshes.shape[1] < self.num_vertices:
            raise ValueError(f"Roughness: expected (B, V, 3) meshes with V >= {self.num_vertices} (the faces' "
                             f"vertices), got {tuple(meshes.shape)}")
        meshes = meshes.detach().double()
        neighbours = torch.zeros_like(meshes).index_add_(1, self.source, meshes[:, self.neighbour])
        centroid = neighbours / self.degree.to(meshes)[None, :, None]
        used = self.degree.new_zeros(meshes.shape[1], dtype=torch.bool)
        used[self.source] = True
        self.total += (meshes - centroid)[:, used].norm(dim=-1).sum() * MM_PER_METRE
        self.count += meshes.shape[0] * int(used.sum())

    def compute(self) -> Tensor:
        if self.count == 0:
            raise ValueError("Roughness: compute() before any update()")
        return (self.total / self.count).float()
