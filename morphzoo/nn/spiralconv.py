"""Spiral convolution (SpiralNet++, Gong et al. 2019, §3.1; Neural3DMM, Bouritsas et al. 2019, §3.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from morphzoo.nn.sparse import exporting

# On a CPU, gathering (B, V·L, C) at once streams a tensor far larger than the caches; gathering a few meshes at a time
# keeps each block cache-resident (2.3× faster decoding at batch 64 on 5k vertices, measured on 2 cores).
CPU_GATHER_BLOCK_BYTES = 16 * 2**20


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
        xavier: Xavier-uniform weight and zero bias, as SpiralNet++'s reference code initialises it; False keeps
            PyTorch's ``Linear`` initialisation, as Neural3DMM's reference code does.
    """

    def __init__(
        self, in_channels: int, out_channels: int, spirals: Tensor, pad_with_dummy: bool = False, bias: bool = True,
        xavier: bool = True,
    ) -> None:
        super().__init__()
        spirals = torch.as_tensor(spirals, dtype=torch.long)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.pad_with_dummy = pad_with_dummy
        self.register_buffer("spirals", spirals)
        self.linear = nn.Linear(in_channels * spirals.shape[1], out_channels, bias=bias)
        if xavier:
            xavier_initialise(self.linear)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V, C_in) -> (B, V, C_out)."""
        batch, num_vertices, _ = x.shape
        if self.pad_with_dummy:
            x = torch.cat([x, x.new_zeros(batch, 1, x.shape[2])], dim=1)
        index = self.spirals.reshape(-1)
        if exporting():  # one pass: the number of blocks would depend on the (symbolic) batch size
            return self.linear(x.index_select(1, index).reshape(batch, num_vertices, -1))
        block = batch
        if x.device.type == "cpu":
            block = max(1, CPU_GATHER_BLOCK_BYTES // (index.numel() * x.shape[2] * x.element_size()))
        # index_select, not x[:, index]: 1.25× faster forward + backward (advanced indexing has a slower kernel)
        outputs = [self.linear(part.index_select(1, index).reshape(part.shape[0], num_vertices, -1))
                   for part in x.split(block)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, spiral_length={self.spirals.shape[1]}"


def xavier_initialise(linear: nn.Linear) -> None:
    """Xavier-uniform weight, zero bias: how SpiralNet++'s reference code initialises every linear map."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
