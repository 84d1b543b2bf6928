"""Spiral convolution (SpiralNet++, Gong et al. 2019, §3.1; Neural3DMM, Bouritsas et al. 2019, §3.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpiralConv(nn.Module):
    r"""Spiral convolution: gather each vertex's spiral of neighbours, concatenate, apply one linear map.

    .. math:: x'_i = W \,\big\Vert_{j \in S(i)} x_j + b

    where :math:`S(i)` is the fixed-length spiral sequence of vertex :math:`i` (``morphzoo.mesh.spirals``).
    Neural3DMM spirals pad short sequences with the dummy index ``V``; set ``pad_with_dummy=True`` to append the
    all-zero dummy vertex those indices point to.

    Args:
        in_channels: input features per vertex.
        out_channels: output features per vertex.
        spirals: (V, L) integer spiral indices.
        pad_with_dummy: append a zero vertex at index V before gathering (Neural3DMM padding).
        bias: add a learnable bias.
    """

    def __init__(
        self, in_channels: int, out_channels: int, spirals: Tensor, pad_with_dummy: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        spirals = torch.as_tensor(spirals, dtype=torch.long)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.pad_with_dummy = pad_with_dummy
        self.register_buffer("spirals", spirals)
        self.linear = nn.Linear(in_channels * spirals.shape[1], out_channels, bias=bias)
        nn.init.xavier_uniform_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V, C_in) -> (B, V, C_out)."""
        batch, num_vertices, _ = x.shape
        if self.pad_with_dummy:
            x = torch.cat([x, x.new_zeros(batch, 1, x.shape[2])], dim=1)
        gathered = x[:, self.spirals.reshape(-1)]
        return self.linear(gathered.reshape(batch, num_vertices, -1))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, spiral_length={self.spirals.shape[1]}"
