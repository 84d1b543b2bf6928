"""Mesh down- and up-sampling between levels of a QEM hierarchy (CoMA, Ranjan et al. 2018, §3.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from morphzoo.nn.sparse import DerivedCache, MeshwiseProduct, cpu_sparse_path, csr_from_entries


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

    ``x'[f] = sum_j up_weight[f, j] · x[up_index[f, j]]``. On a CPU it is the sparse product ``U x`` per mesh, with
    the gradient ``Uᵀ g``, both in CSR: 5-8× faster than a gather and a batched (1×3)·(3×C) product at 5k vertices
    (2 cores; inference at batch 1 and 64), and 7-17× in training, where the gather's own backward scatters.
    Elsewhere (CUDA, dtypes other than float32, autocast, export) it is that gather and product.
    """

    def __init__(self, up_index: Tensor, up_weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("up_index", torch.as_tensor(up_index, dtype=torch.long))
        self.register_buffer("up_weight", torch.as_tensor(up_weight, dtype=torch.float32))
        self._sparse = DerivedCache()

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V_coarse, C) -> (B, V_fine, C)."""
        if cpu_sparse_path(x):
            matrix, transposed = self._sparse.get((self.up_index, self.up_weight), lambda: self.matrices(x.shape[1]),
                                                  extra=(x.shape[1],))
            return MeshwiseProduct.apply(x, matrix, transposed)
        gathered = x[:, self.up_index]  # (B, V_fine, 3, C)
        return (self.up_weight[:, None, :].to(x.dtype) @ gathered).squeeze(2)

    def matrices(self, num_coarse: int) -> tuple[Tensor, Tensor]:
        """``U`` (V_fine, V_coarse) and ``Uᵀ``, in CSR."""
        needed = int(self.up_index.max()) + 1
        if num_coarse < needed:
            raise ValueError(f"Upsample: its input has {num_coarse} vertices, but it interpolates from a level of at "
                             f"least {needed}: pass the features of the coarse level this layer was built for")
        fine = torch.arange(len(self.up_index), device=self.up_index.device).repeat_interleave(self.up_index.shape[1])
        coarse, weight = self.up_index.reshape(-1), self.up_weight.reshape(-1)
        size = (len(self.up_index), num_coarse)
        return (csr_from_entries(fine, coarse, size, weight), csr_from_entries(coarse, fine, size[::-1], weight))
