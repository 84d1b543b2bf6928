"""The template's vertex graph: adjacency, PyG edge indices and the scaled Laplacian of spectral convolutions."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from morphzoo.mesh.template import Template


def adjacency_matrix(template: Template) -> scipy.sparse.csr_matrix:
    """The (V, V) float32 0/1 symmetric adjacency ``A`` of the mesh edges (no self loops)."""
    edges = template.edges()
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    values = np.ones(len(rows), dtype=np.float32)
    shape = (template.num_vertices, template.num_vertices)
    return scipy.sparse.csr_matrix((values, (rows, cols)), shape=shape)


def edge_index(template: Template) -> np.ndarray:
    """(2, 2E) int64 directed edges, both directions of every mesh edge, sorted by source: PyG's ``edge_index``."""
    adjacency = adjacency_matrix(template).tocoo()
    order = np.lexsort((adjacency.col, adjacency.row))
    return np.stack([adjacency.row[order], adjacency.col[order]]).astype(np.int64)


def scaled_laplacian(template: Template) -> scipy.sparse.csr_matrix:
    """The rescaled Laplacian ``L̃ = 2 L_sym / λ_max − I`` of Chebyshev convolutions, with ``λ_max = 2``.

    ``L_sym = I − D^{-1/2} A D^{-1/2}`` (Defferrard et al. 2016), so ``L̃ = −D^{-1/2} A D^{-1/2}``: the operator
    ``torch_geometric.nn.ChebConv(normalization="sym")`` applies with ``lambda_max=2`` and CoMA uses. The eigenvalues of
    ``L_sym`` lie in [0, 2], hence those of ``L̃`` in [−1, 1]. An isolated vertex (degree 0) gets an all-zero row.

    Returns:
        (V, V) float32 symmetric CSR matrix.
    """
    adjacency = adjacency_matrix(template)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inverse_sqrt_degree = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inverse_sqrt_degree, where=degree > 0)
    scaling = scipy.sparse.diags(inverse_sqrt_degree)
    return (-(scaling @ adjacency @ scaling)).astype(np.float32).tocsr()


def sparse_to_torch(matrix: scipy.sparse.spmatrix | scipy.sparse.sparray) -> torch.Tensor:
    """A coalesced float32 ``torch.sparse_coo_tensor`` with the entries of a scipy sparse matrix."""
    coo = scipy.sparse.coo_matrix(matrix)
    indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, size=coo.shape, check_invariants=True).coalesce()
