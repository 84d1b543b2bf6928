"""The decoupling metric's embedding network and triplet loss (morphzoo.nn.mesh_embedding)."""

import numpy as np
import pytest
import torch
import trimesh

from morphzoo.nn.mesh_embedding import MeshEmbeddingNet, semi_hard_triplet_loss, vertex_normals


def test_vertex_normals_point_outward_on_a_sphere_and_up_on_a_plane():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)[None].repeat(2, 1, 1)
    normals = vertex_normals(vertices, torch.as_tensor(sphere.faces))
    radial = vertices / vertices.norm(dim=-1, keepdim=True)
    assert normals.shape == (2, len(sphere.vertices), 3)
    assert torch.allclose(normals.norm(dim=-1), torch.ones(2, len(sphere.vertices)), atol=1e-6)
    assert (normals * radial).sum(-1).min() > 0.99
    plane = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]])
    flat = vertex_normals(plane, torch.tensor([[0, 1, 2], [1, 3, 2]]))
    assert torch.allclose(flat, torch.tensor([0.0, 0, 1]).expand(1, 4, 3))


def grid_network(points: int = 6, image: int = 16) -> tuple[MeshEmbeddingNet, torch.Tensor]:
    """A network on a points × points grid whose geometry image samples vertex 0 at every pixel but the first."""
    u, v = np.meshgrid(np.arange(points), np.arange(points))
    vertices = np.stack([u.ravel(), v.ravel(), np.zeros(points * points)], 1) * 0.01
    a = (v[:-1, :-1] * points + u[:-1, :-1]).ravel()
    faces = np.concatenate([np.stack([a, a + 1, a + points], 1), np.stack([a + 1, a + points + 1, a + points], 1)])
    index = np.zeros((image * image, 3), dtype=np.int64)
    weight = np.zeros((image * image, 3), dtype=np.float32)
    weight[1:, 0] = 1.0
    return MeshEmbeddingNet(faces, index, weight, vertices, scale=0.01, embedding_dim=16), torch.tensor(vertices)


def test_mesh_embedding_net_gives_unit_embeddings_and_checks_its_input():
    torch.manual_seed(0)
    network, rest = grid_network()
    meshes = rest[None] + 0.002 * torch.randn(5, *rest.shape)
    embeddings = network(meshes.double())  # any float dtype: computed in float32
    assert embeddings.shape == (5, 16) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(5), atol=1e-6)
    embeddings.sum().backward()
    assert all(parameter.grad is not None for parameter in network.parameters())
    assert set(network.state_dict()) >= {"reference", "scale"}
    with pytest.raises(ValueError, match=r"expected \(B, 36, 3\) vertices"):
        network(meshes[:, :-1])
    with pytest.raises(ValueError, match="scale must be positive"):
        MeshEmbeddingNet(np.zeros((1, 3)), np.zeros((4, 3)), np.zeros((4, 3)), rest, scale=0.0)


def test_semi_hard_triplet_loss_matches_a_hand_computation():
    # 1-D embeddings: class 0 at 0 and 0.1, class 1 at 0.25 and 1, margin 0.2; per anchor-positive pair:
    # (0 -> 0.1): d 0.1, nearest negative beyond it 0.25 -> 0.05;  (0.1 -> 0): d 0.1, negative 0.15 -> 0.15
    # (0.25 -> 1): d 0.75, both negatives nearer, farthest 0.25 -> 0.7;  (1 -> 0.25): d 0.75, negative 0.9 -> 0.05
    embeddings = torch.tensor([[0.0], [0.1], [0.25], [1.0]], requires_grad=True)
    loss = semi_hard_triplet_loss(embeddings, torch.tensor([0, 0, 1, 1]), margin=0.2)
    assert loss.item() == pytest.approx((0.05 + 0.15 + 0.7 + 0.05) / 4, abs=1e-6)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0


def test_semi_hard_triplet_loss_is_zero_when_classes_are_farther_apart_than_the_margin():
    embeddings = torch.tensor([[0.0, 0], [0.1, 0], [0, 0.1], [1.0, 0], [1.1, 0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert float(semi_hard_triplet_loss(embeddings, labels, margin=0.2)) == 0.0
    # ... and positive once the margin exceeds the gap: class 1 is 0.9 from class 0's nearest member
    assert float(semi_hard_triplet_loss(embeddings, labels, margin=1.0)) > 0.0


def test_semi_hard_triplet_loss_rejects_batches_without_triplets():
    with pytest.raises(ValueError, match="two labels"):
        semi_hard_triplet_loss(torch.zeros(3, 2), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="two labels"):
        semi_hard_triplet_loss(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(B, D\) embeddings"):
        semi_hard_triplet_loss(torch.zeros(3), torch.tensor([0, 1, 2]))
