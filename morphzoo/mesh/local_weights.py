"""Local weights: per-vertex part memberships of a registered dataset, from a sparse NMF of its training meshes.

The locally weighted autoencoder (Kim & Kim, §3.1; :mod:`morphzoo.methods.locally_weighted`) applies them to its part
codes. The module docstring there states the feature matrix and the penalty and why; scikit-learn does the NMF.
"""

from __future__ import annotations

import warnings

import numpy as np

from morphzoo.cache import cached_arrays, content_hash

DEFAULT_SPARSITY = 0.04
NMF_VERSION = 1  # bump on any change of the feature matrix or the factorisation: it keys the cache


def nmf_feature_matrix(vertices: np.ndarray) -> np.ndarray:
    """(N, V, 3) training meshes -> (V, N) non-negative features: per-vertex distance to the mean mesh, columns of
    unit L2 norm (see :mod:`morphzoo.methods.locally_weighted`, §3.1)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    features = np.linalg.norm(vertices - vertices.mean(axis=0), axis=-1).T
    return features / np.maximum(np.linalg.norm(features, axis=0, keepdims=True), 1e-12)


def sparse_nmf(features: np.ndarray, parts: int, sparsity: float = DEFAULT_SPARSITY,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Sparse NMF ``features ≈ W H`` with scikit-learn: L1 penalty ``sparsity·(N/V·‖W‖₁ + ‖H‖₁)`` (see
    :mod:`morphzoo.methods.locally_weighted`, §3.1).

    Returns:
        W: (V, parts) local weights, each column scaled to a maximum of 1 (H scaled inversely).
        H: (parts, N) coefficients.
        relative_error: ‖X − WH‖_F / ‖X‖_F.
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or (features < 0).any() or not np.isfinite(features).all():
        raise ValueError("sparse_nmf: the feature matrix must be a finite, non-negative (V, N) matrix")
    alpha = sparsity / features.shape[0]
    nmf = NMF(parts, init="nndsvda", alpha_W=alpha, alpha_H="same", l1_ratio=1.0, max_iter=2000, tol=1e-5,
              random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the penalised fit stops at max_iter near its optimum
        weights = nmf.fit_transform(features)
    coefficients = nmf.components_
    scale = weights.max(axis=0)
    if (scale <= 0).any():
        raise ValueError(f"sparse_nmf: at sparsity {sparsity} the data supports fewer than {parts} parts (one is "
                         "all zero): lower the sparsity (--model.init_args.sparsity) or ask for fewer parts "
                         "(--model.init_args.parts)")
    relative_error = float(np.linalg.norm(features - weights @ coefficients) / np.linalg.norm(features))
    return weights / scale, coefficients * scale[:, None], relative_error


def local_weights_for(vertices: np.ndarray, parts: int, sparsity: float = DEFAULT_SPARSITY) -> np.ndarray:
    """The (V, parts) float32 local weights of a training set, cached by its content (``<cache>/local-weights``)."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    key = content_hash("local-weights", NMF_VERSION, vertices, parts, float(sparsity))

    def compute() -> dict[str, np.ndarray]:
        weights, _, error = sparse_nmf(nmf_feature_matrix(vertices), parts, sparsity)
        return {"weights": weights.astype(np.float32), "relative_error": np.float64(error)}

    return cached_arrays("local-weights", key, compute)["weights"]
