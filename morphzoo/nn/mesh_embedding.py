"""Mesh embedding networks for the decoupling metric (Abrevaya et al. 2019, §5.3 "Decoupling", after Donahue et al.
2018) and the triplet loss that trains them (Schroff et al. 2015, FaceNet: semi-hard negative mining)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morphzoo.nn.geometry_mapping import GeometryMapping

EMBEDDING_CHANNELS = (32, 64, 128, 128)
NORM_GROUPS = 8


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    r"""Unit per-vertex normals: the area-weighted sum of the incident faces' normals, normalised.

    .. math::
        n_v = \frac{\sum_{f \ni v} (x_{f_1} - x_{f_0}) \times (x_{f_2} - x_{f_0})}
                   {\lVert \sum_{f \ni v} (x_{f_1} - x_{f_0}) \times (x_{f_2} - x_{f_0}) \rVert}

    (the cross product's length is twice the face's area, hence the weighting). A vertex whose normals cancel (or
    that no face uses) gets the zero vector.

    Shapes:
        vertices (B, V, 3), faces (F, 3) long -> (B, V, 3).
    """
    by_vertex = vertices.transpose(0, 1).contiguous()  # (V, B, 3): the gathers below then copy whole rows
    first, second, third = (by_vertex[faces[:, corner]] for corner in range(3))  # (F, B, 3) each
    face_normals = torch.linalg.cross(second - first, third - first)
    summed = torch.zeros_like(by_vertex)
    for corner in range(3):
        summed.index_add_(0, faces[:, corner], face_normals)
    return F.normalize(summed, dim=-1, eps=1e-20).transpose(0, 1)


class MeshEmbeddingNet(nn.Module):
    r"""A mesh to a unit vector, such that meshes of one class (identity or expression) lie close together.

    The decoupling protocol of Abrevaya et al. 2019 (§5.3, and the supplement's "Decoupling Evaluation -
    Implementation Details") embeds meshes with a ResNet-18 on 224 × 224 orthographic renders whose RGB channels are
    the vertex normals. Choice (for a 2-core CPU): a small CNN on a ``size × size`` (64 × 64) *geometry image* of the
    mesh (:class:`~morphzoo.nn.geometry_mapping.GeometryMapping`, the paper's own §4.1 layer) with six channels per
    pixel,

    .. math::
        c_v = \bigl[\, n_v,\ (x_v - \bar x_v) / s \,\bigr] \in \mathbb R^6,

    the unit vertex normal :math:`n_v` (:func:`vertex_normals`, what the paper renders) and the vertex's offset from a
    reference shape :math:`\bar x` (the training data's mean) in units of a scale :math:`s` (the data's typical
    per-coordinate standard deviation), so that the input is about unit-sized. The CNN is four blocks of a 3 × 3
    stride-2 convolution, GroupNorm (8 groups; unlike BatchNorm it behaves the same in training and evaluation, for
    any batch size) and ReLU, channels 6 → 32 → 64 → 128 → 128 (64² → 4² pixels), then a global average pool and a
    linear layer; the output is L2-normalised, as FaceNet's (Schroff et al. 2015) embeddings are.

    Args:
        faces: (F, 3) triangle indices.
        index, weight: (n², 3) the geometry image's gather form
            (:func:`morphzoo.mesh.geometry_image.geometry_image_gather`).
        reference: (V, 3) reference shape in metres (the training split's mean).
        scale: metres per input unit of the offsets (positive).
        embedding_dim: the output dimension (the paper's 128).
        channels: output channels of the four convolution blocks.

    Shapes:
        input (B, V, 3) vertex positions in metres -> output (B, embedding_dim), unit rows.
    """

    def __init__(self, faces: Tensor | np.ndarray, index: Tensor | np.ndarray, weight: Tensor | np.ndarray,
                 reference: Tensor | np.ndarray, scale: float, embedding_dim: int = 128,
                 channels: tuple[int, ...] = EMBEDDING_CHANNELS) -> None:
        super().__init__()
        reference = torch.as_tensor(reference, dtype=torch.float32)
        if reference.ndim != 2 or reference.shape[1] != 3:
            raise ValueError(f"MeshEmbeddingNet: reference must be (V, 3), got {tuple(reference.shape)}")
        if not scale > 0:
            raise ValueError(f"MeshEmbeddingNet: scale must be positive (metres per input unit), got {scale}")
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.long), persistent=False)
        self.register_buffer("reference", reference)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.mapping = GeometryMapping(index, weight)
        blocks, width = [], 6
        for out in channels:
            blocks += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GroupNorm(min(NORM_GROUPS, out), out),
                       nn.ReLU(inplace=True)]
            width = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, embedding_dim)

    def forward(self, vertices: Tensor) -> Tensor:
        if vertices.ndim != 3 or vertices.shape[1:] != self.reference.shape:
            raise ValueError(f"MeshEmbeddingNet: expected (B, {self.reference.shape[0]}, 3) vertices, got "
                             f"{tuple(vertices.shape)}")
        vertices = vertices.to(self.reference.dtype)
        channels = torch.cat([vertex_normals(vertices, self.faces), (vertices - self.reference) / self.scale], -1)
        pooled = self.features(self.mapping(channels)).mean((2, 3))
        return F.normalize(self.head(pooled), dim=-1)


def pairwise_distances(embeddings: Tensor) -> Tensor:
    r"""(B, B) Euclidean distances :math:`\lVert e_a - e_b \rVert` between the rows of ``embeddings`` (B, D), from
    exact differences; the squared distance is floored at 1e-12 so the square root has a finite gradient at 0."""
    difference = embeddings[:, None] - embeddings[None]
    return difference.square().sum(-1).clamp_min(1e-12).sqrt()


def semi_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    r"""The triplet loss with online semi-hard negative mining (Schroff, Kalenichenko & Philbin 2015, FaceNet, Eq. 2
    and §3.2), over every anchor-positive pair of the batch.

    For each pair :math:`(a, p)` of one label, :math:`p \ne a`, the negative is the nearest of those farther than the
    positive (semi-hard), or, when every negative is nearer (all hard), the farthest negative:

    .. math::
        n(a, p) = \begin{cases} \arg\min_{n:\, y_n \ne y_a,\, d(a, n) > d(a, p)} d(a, n) & \text{if one exists,} \\
                                \arg\max_{n:\, y_n \ne y_a} d(a, n) & \text{otherwise,} \end{cases}
        \qquad
        \mathcal L = \frac{1}{|P|} \sum_{(a, p) \in P} \bigl[\, d(a, p) - d(a, n(a, p)) + \alpha \,\bigr]_+

    with :math:`d` the Euclidean distance (:func:`pairwise_distances`; FaceNet squares it) and :math:`\alpha` the
    margin (FaceNet's 0.2). The loss is zero when every negative of every anchor is at least the margin farther than
    each of its positives; as in FaceNet, a negative nearer than the positive is ignored while a semi-hard one
    exists. Choice: semi-hard rather than batch-hard mining (Hermans et al. 2017), which on anny-face's expressions
    collapsed every embedding onto one point (the loss stuck at the margin); the fallback for anchor-positive pairs
    without a semi-hard negative is TensorFlow Addons' ``triplet_semihard_loss``'s.

    Shapes:
        embeddings (B, D), labels (B,) integers -> scalar.
    """
    if embeddings.ndim != 2 or labels.shape != (len(embeddings),):
        raise ValueError(f"semi_hard_triplet_loss: expected (B, D) embeddings and (B,) labels, got "
                         f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
    distances = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    if not positive.any() or same.all():
        raise ValueError("semi_hard_triplet_loss: a batch needs two labels and one label with two meshes")
    farther = ~same[:, None, :] & (distances[:, None, :] > distances[:, :, None])  # (anchor, positive, negative)
    semi_hard = distances[:, None, :].masked_fill(~farther, float("inf")).amin(-1)  # (anchor, positive)
    farthest = distances.masked_fill(same, float("-inf")).amax(-1, keepdim=True)  # (anchor, 1)
    negative = torch.where(torch.isinf(semi_hard), farthest, semi_hard)
    return F.relu(distances - negative + margin)[positive].mean()
