"""Mesh down- and up-sampling between levels of a QEM hierarchy (CoMA, Ranjan et al. 2018, §3.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from morphzoo.nn.sparse import exporting


class Downsample(nn.Module):
    """Keep the vertices that survive QEM decimation: ``x'[c] = x[down_index[c]]`` (a 0/1 selection matrix D)."""

    def __init__(self, down_index: Tensor) -> None:
        super().__init__()
        self.register_buffer("down_index", torch.as_tensor(down_index, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V_fine, C) -> (B, V_coarse, C)."""
        return x.index_select(1, self.down_index)


class Upsample(nn.Module):
    """Barycentric interpolation from the coarse triangle each fine vertex projects onto (matrix U, rows sum to 1).

    ``x'[f] = sum_j up_weight[f, j] · x[up_index[f, j]]``: U has three non-zeros per row, so a gather followed by a
    batched (1×3)·(3×C) product applies it (2.3× faster on a CPU than an einsum, which copies to permute). The gather's
    own backward scatters; training instead takes the gradient as the sparse product ``Uᵀ g`` (1.2× faster SpiralNet++
    and Neural3DMM training steps on 2 cores, ``benchmarks/speed.py``).
    """

    def __init__(self, up_index: Tensor, up_weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("up_index", torch.as_tensor(up_index, dtype=torch.long))
        self.register_buffer("up_weight", torch.as_tensor(up_weight, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V_coarse, C) -> (B, V_fine, C)."""
        if x.requires_grad and torch.is_grad_enabled() and not exporting():
            return _Interpolate.apply(x, self.up_index, self.up_weight)
        return _interpolate(x, self.up_index, self.up_weight)


def _interpolate(x: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    gathered = x[:, index]  # (B, V_fine, 3, C)
    return (weight[:, None, :] @ gathered).squeeze(2)


class _Interpolate(torch.autograd.Function):
    """:func:`_interpolate` with the gradient as a sparse product: ``dL/dx = Uᵀ g`` in a (V, B·C) layout."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(index, weight)
        ctx.num_coarse = x.shape[1]
        return _interpolate(x, index, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        index, weight = ctx.saved_tensors
        batch, fine, channels = grad.shape
        rows = torch.arange(fine, device=index.device).repeat_interleave(index.shape[1])
        transposed = torch.sparse_coo_tensor(torch.stack([index.reshape(-1), rows]), weight.reshape(-1).to(grad.dtype),
                                             (ctx.num_coarse, fine), check_invariants=False)
        columns = grad.transpose(0, 1).reshape(fine, batch * channels)
        return torch.sparse.mm(transposed, columns).view(ctx.num_coarse, batch, channels).transpose(0, 1), None, None
