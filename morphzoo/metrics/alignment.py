"""Least-squares alignment of corresponding point sets (Umeyama 1991; Kabsch 1976 when the scale is fixed)."""

from __future__ import annotations

import torch
from torch import Tensor


def similarity_procrustes(source: Tensor, target: Tensor, scale: bool = True) -> Tensor:
    r"""Align each source point set onto its target with the best rotation, uniform scale and translation.

    For corresponding points :math:`x_i` (source) and :math:`y_i` (target), :math:`i = 1..V`, this finds

    .. math::
        (s, R, t) = \arg\min_{s > 0,\, R \in SO(3),\, t} \sum_i \lVert y_i - (s R x_i + t) \rVert_2^2

    in closed form (Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
    TPAMI 1991): with centred points and :math:`\Sigma = \frac1V \sum_i (y_i - \bar y)(x_i - \bar x)^\top
    = U D V^\top`, :math:`R = U S V^\top` where :math:`S = \mathrm{diag}(1, 1, \det U \det V)`, so ``R`` is always a
    proper rotation (a mirrored shape is *not* reflected onto its target), :math:`s = \mathrm{tr}(DS) / \sigma_x^2`
    with :math:`\sigma_x^2 = \frac1V \sum_i \lVert x_i - \bar x \rVert^2`, and :math:`t = \bar y - s R \bar x`.
    With ``scale=False``, :math:`s = 1` (the Kabsch rigid alignment).

    Batched over any leading dimensions (one SVD per set), computed in float64 and returned in ``source``'s dtype.
    A degenerate source (all points equal) maps onto the target's centroid.

    Args:
        source: (..., V, 3) points to move.
        target: (..., V, 3) corresponding points, same shape.
        scale: whether to estimate the uniform scale (similarity) or keep it at 1 (rigid).

    Returns:
        (..., V, 3) the aligned source.
    """
    if source.shape != target.shape or source.dim() < 2 or source.shape[-1] != 3 or source.shape[-2] == 0:
        raise ValueError(f"similarity_procrustes: expected two (..., V, 3) tensors of the same shape with V >= 1, "
                         f"got {tuple(source.shape)} and {tuple(target.shape)}")
    x, y = source.detach().double(), target.detach().double()
    x_mean, y_mean = x.mean(dim=-2, keepdim=True), y.mean(dim=-2, keepdim=True)
    xc, yc = x - x_mean, y - y_mean
    covariance = yc.transpose(-1, -2) @ xc / x.shape[-2]  # (..., 3, 3): Σ = (1/V) Σ_i y_i x_iᵀ on centred points
    u, singular, vh = torch.linalg.svd(covariance)
    sign = torch.where(torch.linalg.det(u) * torch.linalg.det(vh) < 0, -1.0, 1.0).to(x)  # (...,)
    correction = torch.ones_like(singular)
    correction[..., -1] = sign
    rotation = (u * correction.unsqueeze(-2)) @ vh  # U diag(1, 1, sign) Vᵀ
    if scale:
        variance = xc.square().sum(dim=(-2, -1)) / x.shape[-2]
        factor = (singular * correction).sum(dim=-1) / variance.clamp_min(torch.finfo(torch.float64).tiny)
        factor = factor[..., None, None]
    else:
        factor = 1.0
    aligned = factor * (xc @ rotation.transpose(-1, -2)) + y_mean
    return aligned.to(source.dtype)


def rigid_align(source: Tensor, target: Tensor) -> Tensor:
    """Kabsch: the proper rotation and translation (no scale) that best map each source onto its target.

    ``similarity_procrustes(source, target, scale=False)``; see there.
    """
    return similarity_procrustes(source, target, scale=False)
