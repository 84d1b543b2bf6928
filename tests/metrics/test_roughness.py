"""Roughness: the umbrella Laplacian's mean length, by hand and by its invariances."""

import numpy as np
import pytest
import torch

from morphzoo.metrics import Roughness
from tests.synthetic import sphere_template

TETRAHEDRON = np.array([[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0]])


def test_roughness_by_hand_on_a_tetrahedron():
    meshes = torch.rand(2, 4, 3, dtype=torch.float64)
    metric = Roughness(TETRAHEDRON)
    metric.update(meshes)
    expected = np.mean([np.linalg.norm(m[v] - np.delete(m, v, 0).mean(0)) for m in meshes.numpy() for v in range(4)])
    assert float(metric.compute()) == pytest.approx(1000 * expected, rel=1e-5)


def test_quad_faces_use_their_four_edges_not_the_diagonals():
    square = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 1]]])
    metric = Roughness(np.array([[0, 1, 2, 3]]))
    metric.update(square)  # vertex 0's neighbours are 1 and 3, not 2
    by_hand = [np.linalg.norm(square[0, v].numpy() - square[0, [(v - 1) % 4, (v + 1) % 4]].numpy().mean(0))
               for v in range(4)]
    assert float(metric.compute()) == pytest.approx(1000 * np.mean(by_hand), rel=1e-5)


def test_roughness_is_rigid_invariant_scales_with_size_and_sees_noise():
    template = sphere_template(3)
    sphere = torch.from_numpy(template.vertices)[None].double()

    def measure(meshes):
        metric = Roughness(template.faces)
        metric.update(meshes)
        return float(metric.compute())

    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    base = measure(sphere)
    assert measure(sphere @ rotation.T + 0.3) == pytest.approx(base, rel=1e-6)
    assert measure(2 * sphere) == pytest.approx(2 * base, rel=1e-6)
    noise = 0.01 * torch.randn(sphere.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert measure(sphere + noise) > 1.5 * base  # crumpled: same shape, much rougher


def test_roughness_does_not_depend_on_batching():
    meshes = torch.rand(6, 4, 3)
    whole, parts = Roughness(TETRAHEDRON), Roughness(TETRAHEDRON)
    whole.update(meshes)
    for chunk in meshes.split(4):
        parts.update(chunk)
    assert float(whole.compute()) == pytest.approx(float(parts.compute()), rel=1e-6)


def test_roughness_rejects_bad_inputs():
    with pytest.raises(ValueError, match="faces must be a non-empty"):
        Roughness(np.zeros((0, 3), dtype=int))
    metric = Roughness(TETRAHEDRON)
    with pytest.raises(ValueError, match=r"expected \(B, V, 3\) meshes with V >= 4"):
        metric.update(torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
