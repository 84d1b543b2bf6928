"""The geometry mapping layer (Abrevaya et al., *A Decoupled 3D Facial Shape Model by Adversarial Training*, §4.1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from morphzoo.nn.sparse import float32_sparse_mm


class GeometryMapping(nn.Module):
    r"""Vertex positions to a geometry image through a fixed UV parameterisation (Eq. 5).

    .. math::
        \mathcal I_p = \sum_{k=1}^{3} w_{p,k}\, x_{i_{p,k}}

    for each pixel :math:`p`, with :math:`i_{p,\cdot}` the vertices of the UV triangle containing the pixel centre
    and :math:`w_{p,\cdot}` its barycentric coordinates (:math:`I^U, I^V, 1 - I^U - I^V` of the paper); background
    pixels have zero weights. One sparse (n², V) matrix product: linear, differentiable, on any device. The indices
    and weights come from :func:`morphzoo.mesh.geometry_image.geometry_image_gather` and are not saved with a model
    (they are rebuilt from its template).

    Args:
        index: (n², 3) int vertex indices per pixel (row-major, row 0 at the top).
        weight: (n², 3) barycentric weights per pixel.

    Shapes:
        input (B, V, C) per-vertex values -> output (B, C, n, n).
    """

    def __init__(self, index: Tensor | np.ndarray, weight: Tensor | np.ndarray) -> None:
        super().__init__()
        index, weight = torch.as_tensor(index, dtype=torch.long), torch.as_tensor(weight, dtype=torch.float32)
        size = round(len(index) ** 0.5)
        if index.shape != weight.shape or index.shape != (size * size, 3):
            raise ValueError(f"GeometryMapping: index and weight must both be (n², 3), got {tuple(index.shape)} and "
                             f"{tuple(weight.shape)}")
        self.size = size
        rows = torch.arange(len(index)).repeat_interleave(3)
        matrix = torch.sparse_coo_tensor(torch.stack([rows, index.reshape(-1)]), weight.reshape(-1),
                                         (len(index), int(index.max()) + 1), check_invariants=True).coalesce()
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, vertices, channels = x.shape
        if vertices < self.matrix.shape[1]:
            raise ValueError(f"GeometryMapping: the UV map uses vertex {self.matrix.shape[1] - 1}, the input has "
                             f"{vertices} vertices")
        matrix = self.matrix if vertices == self.matrix.shape[1] else torch.sparse_coo_tensor(
            self.matrix.indices(), self.matrix.values(), (self.matrix.shape[0], vertices), check_invariants=False)
        columns = x.permute(1, 0, 2).reshape(vertices, batch * channels)  # (V, B·C)
        image = float32_sparse_mm(matrix, columns)  # (n², B·C)
        return image.view(self.size, self.size, batch, channels).permute(2, 3, 0, 1)
