"""Chebyshev spectral graph convolution (Defferrard et al. 2016), as used by CoMA (Ranjan et al. 2018, §3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from morphzoo.nn.sparse import exporting, float32_sparse_mm, padded_matmul, padded_rows


class ChebConv(nn.Module):
    r"""Chebyshev graph convolution over a fixed mesh graph.

    .. math::
        X' = \sum_{k=0}^{K-1} T_k(\tilde L) X W_k + b, \quad T_0 = X,\; T_1 = \tilde L X,\;
        T_k = 2 \tilde L T_{k-1} - T_{k-2}

    with :math:`\tilde L = 2L/\lambda_{max} - I` the scaled symmetric normalised Laplacian (``morphzoo.mesh.graph``).
    It computes exactly what ``torch_geometric.nn.ChebConv(normalization='sym', lambda_max=2)`` computes (a test checks
    this), with the same parameter count, but runs the recurrence as sparse matrix products on a ``(V, batch·channels)``
    layout instead of per-edge message passing, which is what makes CoMA fast on a CPU.

    Args:
        in_channels: input features per vertex.
        out_channels: output features per vertex.
        K: Chebyshev order (number of terms; CoMA uses 6).
        laplacian: sparse (V, V) scaled Laplacian of the mesh this layer runs on. It depends on the topology only, so
            it is a non-persistent buffer: checkpoints do not carry it.
        bias: add a learnable bias (CoMA's last decoder layer has none).
    """

    def __init__(self, in_channels: int, out_channels: int, K: int, laplacian: Tensor, bias: bool = True) -> None:
        super().__init__()
        if K < 1:
            raise ValueError(f"ChebConv: K must be >= 1, got {K}")
        self.in_channels, self.out_channels, self.K = in_channels, out_channels, K
        laplacian = laplacian.coalesce()
        # Kept as index/value buffers (not a sparse buffer) so that .to(), DDP buffer broadcasts and state handling
        # only ever see dense tensors; the sparse view is rebuilt per call at negligible cost.
        self.register_buffer("laplacian_indices", laplacian.indices().clone(), persistent=False)
        self.register_buffer("laplacian_values", laplacian.values().float().clone(), persistent=False)
        neighbours, weights = padded_rows(*self.laplacian_indices, self.laplacian_values, laplacian.shape[0])
        self.register_buffer("laplacian_neighbours", neighbours, persistent=False)  # the export form
        self.register_buffer("laplacian_weights", weights, persistent=False)
        self.num_vertices = laplacian.shape[0]
        self.weight = nn.Parameter(torch.empty(K, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Glorot-uniform over the whole K·C_in -> C_out map. (PyG initialises each of the K terms as its own layer,
        # which multiplies the output variance by K per layer; in CoMA's ten-layer stack under SGD at lr 8e-3 that
        # saturated every ReLU within the first steps in our runs, and the model never left the mean shape.)
        bound = math.sqrt(6.0 / (self.K * self.in_channels + self.out_channels))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, V, C_in) -> (B, V, C_out)."""
        batch, num_vertices, channels = x.shape
        t0 = x.transpose(0, 1).reshape(num_vertices, batch * channels)
        terms = [t0]
        if self.K > 1:
            t1 = self._apply_laplacian(t0)
            terms.append(t1)
            for _ in range(2, self.K):
                t0, t1 = t1, 2.0 * self._apply_laplacian(t1) - t0
                terms.append(t1)
        # (K, V, B, C) -> (B, V, K·C): one dense matmul mixes all Chebyshev terms and channels.
        stacked = torch.stack(terms).view(self.K, num_vertices, batch, channels).permute(2, 1, 0, 3)
        out = stacked.reshape(batch, num_vertices, self.K * channels) @ self.weight.view(-1, self.out_channels)
        return out if self.bias is None else out + self.bias

    def _apply_laplacian(self, t: Tensor) -> Tensor:
        """``L̃ t`` for a (V, C) ``t``: torch.sparse when running, fixed-width gathers under export."""
        if exporting():
            return padded_matmul(self.laplacian_neighbours, self.laplacian_weights, t)
        laplacian = torch.sparse_coo_tensor(self.laplacian_indices, self.laplacian_values, (len(t), len(t)),
                                            is_coalesced=True, check_invariants=False)
        return float32_sparse_mm(laplacian, t)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, K={self.K}, bias={self.bias is not None}"
