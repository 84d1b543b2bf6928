"""The geometry mapping layer (Abrevaya et al., *A Decoupled 3D Facial Shape Model by Adversarial Training*, §4.1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class GeometryMapping(nn.Module):
    r"""Vertex positions to a geometry image through a fixed UV parameterisation (Eq. 5).

    .. math::
        \mathcal I_p = \sum_{k=1}^{3} w_{p,k}\, x_{i_{p,k}}

    for each pixel :math:`p`, with :math:`i_{p,\cdot}` the vertices of the UV triangle containing the pixel centre
    and :math:`w_{p,\cdot}` its barycentric coordinates (:math:`I^U, I^V, 1 - I^U - I^V` of the paper); background
    pixels have zero weights. A gather and a weighted sum: linear, differentiable, on any device. The indices and
    weights come from :func:`morphzoo.mesh.geometry_image.geometry_image_gather` and are not saved with a model (they
    are rebuilt from its template).

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
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        gathered = x[:, self.index]  # (B, n², 3, C)
        image = (gathered * self.weight[..., None].to(x.dtype)).sum(2)  # (B, n², C)
        return image.transpose(1, 2).reshape(len(x), x.shape[-1], self.size, self.size)
