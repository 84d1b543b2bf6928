"""Self-intersecting faces per mesh: a mesh-quality measure of decoded meshes (IB-VAE §4.4 reports it for the ground
truth and the reconstructions, since a point-based decoder can fold the surface through itself)."""

from __future__ import annotations

import numpy as np
import torch
from igl.predicates import find_self_intersections
from torch import Tensor
from torchmetrics import Metric


def self_intersecting_faces(vertices: np.ndarray, faces: np.ndarray) -> int:
    """The number of faces of one mesh that intersect another face of it (faces that only share a vertex or an
    edge do not count). libigl's exact predicates on an AABB tree (``igl.predicates.find_self_intersections``)."""
    _, pairs, _ = find_self_intersections(np.ascontiguousarray(vertices, dtype=np.float64),
                                          np.ascontiguousarray(faces, dtype=np.int64))
    return int(np.unique(pairs).size)


class SelfIntersections(Metric):
    r"""Self-intersecting faces per mesh, over a set of meshes of one topology.

    For meshes :math:`n`, :math:`s_n` is the number of faces that cross another face of the same mesh
    (:func:`self_intersecting_faces`); :meth:`compute` returns their mean and the per-mesh counts. The test runs on
    the CPU in float64, one mesh at a time (libigl works on one mesh).

    Args:
        faces: (F, 3) triangle indices of the meshes' shared topology.

    Shapes:
        ``update(vertices)``: (B, V, 3) in metres (any unit: the predicate is scale-invariant).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, faces: np.ndarray | Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        faces = np.asarray(torch.as_tensor(faces).cpu(), dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"SelfIntersections: faces must be (F, 3) triangle indices, got {faces.shape}")
        self.faces = faces
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, vertices: Tensor) -> None:
        if vertices.dim() != 3 or vertices.shape[-1] != 3 or vertices.shape[1] <= self.faces.max():
            raise ValueError(f"SelfIntersections: expected (B, V, 3) vertices with V > {self.faces.max()} (the "
                             f"faces' largest index), got {tuple(vertices.shape)}")
        meshes = vertices.detach().cpu().double().numpy()
        counts = [self_intersecting_faces(mesh, self.faces) for mesh in meshes]
        self.counts.append(torch.tensor(counts, dtype=torch.float32, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        counts = self.counts if isinstance(self.counts, Tensor) else torch.cat(self.counts)
        return {"mean": counts.mean(), "per_mesh": counts}
