r"""Fitting a model's latent code to sparse targets: landmarks (Abrevaya et al. 2019, Table 2, Eq. 13), or every vertex.

.. math::
    z^* = \arg\min_z \sum_{i=1}^{p} \lVert \tilde v_i(z) - v_i \rVert_2^2 + \lambda \lVert w \rVert_2^2

by Adam on the code, batched over many targets (each target's loss depends on its own code only, so a batch fits its
targets independently). Works for every model with a decoder: :func:`fit_landmarks` takes any
:class:`~morphzoo.methods.base.MorphableModel`, and a GAN's ``encode`` is :func:`optimise_latent` on all vertices.

Choices, stated:

- **Prior coordinates** :math:`w`. A model with a latent Gaussian (the GAN's prior :math:`\mathcal N(0, I)`, or the
  Gaussian an autoencoder fits to its training latents, :meth:`~morphzoo.methods.base.MorphableModel.
  fit_latent_distribution`) is fitted in whitened coordinates: :math:`z = \mu + L w` with :math:`LL^\top = \Sigma`, so
  :math:`\lambda \lVert w \rVert^2` is the same Gaussian prior for every model, whatever the scale of its codes. For
  the GAN :math:`z = w`, the paper's Eq. 13 exactly.
- **Units.** The landmark term is in millimetres² (Table 2 reports RMSE in mm), so :math:`\lambda` weighs mm² of error
  against the squared Mahalanobis norm of the code.
- **Start.** The Gaussian's mean (:math:`w = 0`), so a fit is deterministic; the paper starts "from a randomly sampled
  code": pass ``start="random"`` with a generator for that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MM_PER_METRE = 1000.0


def optimise_latent(decode: Callable[[Tensor], Tensor], targets: Tensor, initial: Tensor, steps: int,
                    learning_rate: float, prior_weight: float = 0.0, indices: Tensor | None = None) -> Tensor:
    r"""Adam on codes ``w`` minimising :math:`\sum_{i} \lVert \mathrm{decode}(w)_{i} - t_i \rVert^2 + \lambda
    \lVert w \rVert^2` per target, over the vertices ``indices`` (default: all).

    Runs with gradients enabled even when called under ``torch.no_grad`` or Lightning's inference mode (validation).

    Shapes:
        targets: (B, K, 3); initial: (B, D); decode: (B, D) -> (B, V, 3); returns the fitted (B, D) codes.
    """
    if steps < 0:
        raise ValueError(f"fitting steps must be non-negative, got {steps}")
    with torch.inference_mode(False), torch.enable_grad():
        targets = targets.detach().clone()  # an inference-mode tensor cannot enter autograd; its clone can
        codes = initial.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([codes], lr=learning_rate)
        for _ in range(steps):
            decoded = decode(codes)
            if indices is not None:
                decoded = decoded[:, indices]
            loss = (decoded - targets).pow(2).sum((1, 2)) + prior_weight * codes.pow(2).sum(1)
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimiser.step()
    return codes.detach()


@dataclass
class LandmarkFit:
    """The result of :func:`fit_landmarks`.

    Attributes:
        latent: (B, ...) fitted codes, in the model's own latent space (``model.decode(latent)`` gives the meshes).
        vertices: (B, V, 3) the fitted meshes in metres.
        landmark_rmse_mm: (B,) root-mean-square distance of the fitted landmarks to the targets, mm.
    """

    latent: Tensor
    vertices: Tensor
    landmark_rmse_mm: Tensor


def fit_landmarks(model, landmark_indices: Tensor | list[int], positions: Tensor, prior_weight: float = 0.0,
                  steps: int = 500, learning_rate: float = 0.05, start: str = "mean",
                  generator: torch.Generator | None = None) -> LandmarkFit:
    """Fit ``model``'s code to 3D landmark positions (module docstring: Eq. 13 in whitened coordinates).

    Args:
        model: any model with ``encode``/``decode`` on tensor codes; one without a latent Gaussian is fitted in its
            raw code space around the zero code (call ``model.fit_latent_distribution(...)`` first for the prior).
        landmark_indices: (K,) template vertex indices of the landmarks.
        positions: (B, K, 3) or (K, 3) target positions in metres.
        prior_weight: λ (per mm² of landmark error).
        steps, learning_rate: Adam's iterations and step size.
        start: ``"mean"`` (w = 0) or ``"random"`` (w ~ N(0, I), drawn with ``generator``).
    """
    indices = torch.as_tensor(landmark_indices, dtype=torch.long, device=model.mean.device)
    positions = torch.as_tensor(positions, dtype=model.mean.dtype, device=model.mean.device)
    single = positions.dim() == 2
    positions = positions[None] if single else positions
    if positions.dim() != 3 or positions.shape[1:] != (len(indices), 3):
        raise ValueError(f"fit_landmarks: positions must be ({len(indices)}, 3) or (B, {len(indices)}, 3) for "
                         f"{len(indices)} landmarks, got {tuple(positions.shape)}")
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= model.num_vertices:
        raise ValueError(f"fit_landmarks: landmark indices must be template vertices in [0, {model.num_vertices})")
    if not torch.isfinite(positions).all():
        raise ValueError("fit_landmarks: the landmark positions contain NaN or infinite values")
    mean, cholesky, shape = latent_gaussian(model)
    if start == "mean":
        initial = positions.new_zeros(len(positions), len(mean))
    elif start == "random":
        initial = torch.randn(len(positions), len(mean), generator=generator).to(positions)
    else:
        raise ValueError(f"fit_landmarks: start must be 'mean' or 'random', not {start!r}")

    def decode_mm(whitened: Tensor) -> Tensor:
        return model.decode((mean + whitened @ cholesky.T).view(len(whitened), *shape)) * MM_PER_METRE

    was_training = model.training
    model.eval()
    whitened = optimise_latent(decode_mm, positions * MM_PER_METRE, initial, steps, learning_rate, prior_weight,
                               indices)
    model.train(was_training)
    with torch.no_grad():
        latent = (mean + whitened @ cholesky.T).view(len(whitened), *shape)
        vertices = model.decode(latent)
        rmse = (vertices[:, indices] - positions).pow(2).sum(-1).mean(-1).sqrt() * MM_PER_METRE
    if single:
        latent, vertices, rmse = latent[0], vertices[0], rmse[0]
    return LandmarkFit(latent=latent, vertices=vertices, landmark_rmse_mm=rmse)


def latent_gaussian(model) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """(μ (D,), L (D, D), the code's shape) of the model's latent Gaussian; without one: zero mean, identity."""
    shape = model.latent_shape
    if model.latent_mean.numel():
        return model.latent_mean, model.latent_cholesky, shape
    size = int(torch.tensor(shape).prod())
    return (model.mean.new_zeros(size), torch.eye(size, dtype=model.mean.dtype, device=model.mean.device), shape)
