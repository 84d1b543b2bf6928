"""Self-intersecting faces per mesh (libigl's exact predicates)."""

import numpy as np
import pytest
import torch
import trimesh

from morphzoo.metrics import SelfIntersections, self_intersecting_faces

# Two triangles that cross (the second pierces the first), and a third one far away.
CROSSING = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.2, -0.5], [0.2, 0.2, 0.5], [0.9, 0.9, 0.0],
                     [5, 5, 5], [6, 5, 5], [5, 6, 5]], dtype=float)
FACES = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])


def test_crossing_faces_are_counted_and_neighbours_are_not():
    assert self_intersecting_faces(CROSSING, FACES) == 2
    sphere = trimesh.creation.icosphere(subdivisions=3)
    assert self_intersecting_faces(sphere.vertices, sphere.faces) == 0  # faces sharing edges or vertices only
    folded = sphere.vertices.copy()
    cap = folded[:, 2] > 0.6
    folded[cap, 2] = -folded[cap, 2]  # push the top cap through the sphere
    assert self_intersecting_faces(folded, sphere.faces) > 0


def test_the_metric_averages_per_mesh_counts_and_is_scale_invariant():
    metric = SelfIntersections(FACES)
    flat = CROSSING.copy()
    flat[3:6, 2] = 2.0  # lift the second triangle off the first
    metric.update(torch.tensor(np.stack([CROSSING, flat])))
    metric.update(torch.tensor(CROSSING[None] * 0.001 + 3.0))  # millimetres, moved: the same crossing
    result = metric.compute()
    assert result["per_mesh"].tolist() == [2, 0, 2] and result["mean"].item() == pytest.approx(4 / 3)


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="faces must be \\(F, 3\\)"):
        SelfIntersections(np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="expected \\(B, V, 3\\) vertices with V > 8"):
        SelfIntersections(FACES).update(torch.zeros(1, 5, 3))
