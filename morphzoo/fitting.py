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

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
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


# ------------------------------------------------------------------------------------------------ fitting a raw scan
@dataclass
class ScanFit:
    """The result of :func:`fit_scan`, for one scan (or, batched, a leading dimension B and a list of residuals).

    Attributes:
        latent: (B, ...) fitted codes in the model's latent space.
        vertices: (B, V, 3) the registered meshes on the model's template, in the model's frame, metres.
        vertices_in_scan: (B, V, 3) the same meshes placed on the scans (the scans' frame and units):
            ``scale * vertices @ rotation.T + translation``.
        scale: (B,) scan units per metre (1000 for a scan in millimetres).
        rotation: (B, 3, 3); translation: (B, 3) in scan units.
        residual_mm: per scan, (N,) the distance of each of its points to the fitted surface, mm (model scale).
        offsets: (B, V, 3) the per-vertex residual (metres, model frame) when fitted, else None.
    """

    latent: Tensor
    vertices: Tensor
    vertices_in_scan: Tensor
    scale: Tensor
    rotation: Tensor
    translation: Tensor
    residual_mm: list[Tensor]
    offsets: Tensor | None = None


MIN_SCAN_POINTS = 50
_ALIGNMENT_POINTS = 600  # scan and model points the rigid search matches: enough to tell the 24 candidates apart
_ICP_ITERATIONS = 30


def fit_scan(model, scans, landmarks: tuple[Tensor | list[int], Tensor] | None = None, prior_weight: float = 1.0,
             steps: int = 300, learning_rate: float = 0.02, robust_scale_mm: float = 5.0,
             fit_offsets: bool = False, smoothness_weight: float = 10.0, landmark_weight: float = 1.0,
             max_points: int = 4000, units_per_metre: float | None = None) -> ScanFit:
    r"""Register unregistered scans or point clouds to ``model``'s template: a similarity transform and the code (and,
    optionally, a smooth per-vertex residual).

    1. **Rigid start.** Each scan is centred and its scale set from its RMS radius against the model's mean shape
       (so millimetres or metres both work), unless ``units_per_metre`` gives it. The model side is 600 points spread
       by area over the mean shape, as a scan samples a surface (template vertices crowd where it is detailed, which
       would bias the centroid, the axes and the scale). The principal axes of both give 24 candidate rotations
       (axis permutations × sign flips with determinant +1); each is refined by 30 iterations of trimmed similarity
       ICP (closed-form Umeyama on pairs in both directions: the 90 % closest scan-to-model pairs, which drops noise
       and outliers, and the 70 % closest model-to-scan pairs, which drops what a crop removed; the scale is held
       for the first 15), and the candidate with the lowest two-sided trimmed distance wins. An arbitrary pose needs
       no initial guess.
    2. **Joint refinement** by Adam, in the model's frame and millimetres, of a rotation correction (axis-angle), the
       translation, the log-scale and the whitened code :math:`w` (:math:`z = \mu + L w`, as :func:`fit_landmarks`):

       .. math::
           E = \frac1N \sum_i \rho(d(x_i, S(w))) + \frac1V \sum_k \rho(\lVert v_k(w) - x_{n(k)} \rVert)
               + \lambda \lVert w \rVert^2 / D + E_\text{landmarks} + E_\text{offsets}

       with the scan points :math:`x_i` mapped into the model's frame, :math:`d` the exact point-to-surface distance
       (libigl's closest point, its barycentric coordinates making the surface point differentiable in the
       vertices), :math:`n(k)` the scan point nearest to vertex :math:`k`, and the Geman–McClure loss
       :math:`\rho(r) = \sigma^2 r^2 / (\sigma^2 + r^2)` (σ = ``robust_scale_mm``), which saturates for noise spikes,
       outliers and the parts of the template a cropped scan does not cover.
    3. With ``fit_offsets``, per-vertex offsets :math:`\delta` (mm) are optimised too, with the smoothness term
       :math:`\mu_L \frac1V \sum_k \lVert (L \delta)_k \rVert^2` (libigl's cotangent Laplacian of the mean
       shape) plus :math:`10^{-2} \frac1V \sum_k \lVert\delta_k\rVert^2`, which keeps them from absorbing the
       rigid motion.

    Args:
        model: any model with ``decode`` (a latent Gaussian is used when fitted, as in :func:`fit_landmarks`).
        scans: one scan (N, 3) or several (a (B, N, 3) tensor or a list of (N_b, 3)), points in any units and pose.
        landmarks: optional (template vertex indices (K,), positions (K, 3) or (B, K, 3) in the scans' frame).
        prior_weight: λ, per mm² of mean residual.
        steps, learning_rate: the refinement's Adam iterations and step size.
        robust_scale_mm: σ of the robust loss.
        fit_offsets, smoothness_weight: the per-vertex residual and its Laplacian weight.
        landmark_weight: weight of the mean squared landmark error (mm²).
        max_points: scans with more points are subsampled (evenly, deterministically) to this many for the fit;
            the residual is reported for every point.
        units_per_metre: the scans' known scale (1000 for millimetres, 1 for metres); None estimates it. A scale
            and a model's size modes explain a scan's size equally well, so with an estimated scale the fitted
            size is only as determined as the prior makes it: give the units when they are known.

    Raises:
        ValueError: a scan with NaN or infinite values, fewer than 50 points, or points on a line or a plane (no
            pose to recover), naming the scan.
    """
    import igl

    single = isinstance(scans, (Tensor, np.ndarray)) and np.ndim(scans) == 2
    scans = [scans] if single else list(scans)
    points = [_checked_scan(scan, index) for index, scan in enumerate(scans)]
    device, dtype = model.mean.device, model.mean.dtype
    mean_code, cholesky, shape = latent_gaussian(model)
    faces = model.template_faces.cpu().numpy().astype(np.int64)
    was_training = model.training
    model.eval()

    def decode_mm(whitened: Tensor) -> Tensor:
        return model.decode((mean_code + whitened @ cholesky.T).view(len(whitened), *shape)) * MM_PER_METRE

    with torch.no_grad():
        mean_shape = decode_mm(mean_code.new_zeros(1, len(mean_code)))[0].double().cpu()
    surface_samples = _surface_samples(mean_shape.numpy() / MM_PER_METRE, faces, _ALIGNMENT_POINTS)
    starts = [_rigid_start(scan, surface_samples, units_per_metre) for scan in points]
    fitted = [scan[_even_subset(len(scan), max_points)] for scan in points]

    # Parameters of every scan at once; each scan's terms depend on its own parameters only.
    count = len(points)
    rotation0 = torch.stack([start[0] for start in starts]).to(dtype)
    translation0 = torch.stack([start[1] for start in starts]).to(dtype)
    scale0 = torch.stack([start[2] for start in starts]).to(dtype)
    correction = torch.zeros(count, 3, dtype=dtype, requires_grad=True)  # radians
    shift = torch.zeros(count, 3, dtype=dtype, requires_grad=True)  # mm (model scale)
    log_scale = torch.zeros(count, dtype=dtype, requires_grad=True)
    whitened = torch.zeros(count, len(mean_code), dtype=dtype, device=device, requires_grad=True)
    # Adam's step is about the learning rate in each parameter's own units: scaled so that at the default (0.02) a
    # step moves the code by 0.02 standard deviations, the pose by 0.6 degrees and 2 mm, the scale by 0.5 %.
    groups = [{"params": [whitened], "lr": learning_rate}, {"params": [correction], "lr": learning_rate / 2},
              {"params": [shift], "lr": learning_rate * 100}]
    if units_per_metre is None:
        groups.append({"params": [log_scale], "lr": learning_rate / 4})
    offsets = laplacian = None  # offsets in mm
    if fit_offsets:
        offsets = torch.zeros(count, model.num_vertices, 3, dtype=dtype, device=device, requires_grad=True)
        groups.append({"params": [offsets], "lr": learning_rate * 5})
        cot = igl.cotmatrix(mean_shape.numpy(), faces).tocoo()
        laplacian = torch.sparse_coo_tensor(np.vstack([cot.row, cot.col]), cot.data, cot.shape,
                                            check_invariants=True).to(dtype).to(device)
    scan_tensors = [torch.as_tensor(scan, dtype=dtype) for scan in fitted]
    # Nearest scan point of each vertex: the scan is fixed in its own frame, so one tree per scan serves every step.
    trees = [cKDTree(scan) for scan in fitted]
    landmark_index, landmark_positions = _checked_landmarks(landmarks, count, model.num_vertices, dtype)

    def pose() -> tuple[Tensor, Tensor, Tensor]:
        rotation = rotation0 @ torch.linalg.matrix_exp(_skew(correction))
        scale = scale0 * log_scale.exp()
        return rotation, translation0 + shift * scale0[:, None] / MM_PER_METRE, scale

    def to_model_frame(x: Tensor, rotation: Tensor, translation: Tensor, scale: Tensor, b: int) -> Tensor:
        return (x - translation[b]) @ rotation[b] / scale[b] * MM_PER_METRE

    def robust(r: Tensor) -> Tensor:
        return robust_scale_mm**2 * r.pow(2) / (robust_scale_mm**2 + r.pow(2))

    with torch.inference_mode(False), torch.enable_grad():
        optimiser = torch.optim.Adam(groups)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
        for _ in range(steps):
            rotation, translation, scale = pose()
            surface = decode_mm(whitened).cpu()
            if offsets is not None:
                surface = surface + offsets.cpu()
            loss = prior_weight * whitened.pow(2).sum() / len(mean_code)
            for b, scan in enumerate(scan_tensors):
                x = to_model_frame(scan, rotation, translation, scale, b)
                closest = _surface_points(x.detach(), surface[b].detach(), faces)
                on_surface = (surface[b][faces[closest.face]] * closest.barycentric[..., None]).sum(1)
                loss = loss + robust((x - on_surface).norm(dim=-1)).mean()
                vertices_in_scan = scale[b] * surface[b].detach() / MM_PER_METRE @ rotation[b].T + translation[b]
                nearest = torch.as_tensor(trees[b].query(vertices_in_scan.detach().double().numpy())[1])
                loss = loss + robust((surface[b] - x[nearest]).norm(dim=-1)).mean()
                if landmark_index is not None:
                    targets = to_model_frame(landmark_positions[b], rotation, translation, scale, b)
                    loss = loss + landmark_weight * (surface[b][landmark_index] - targets).pow(2).sum(-1).mean()
            if offsets is not None:
                smooth = torch.stack([torch.sparse.mm(laplacian, offsets[b]) for b in range(count)])
                loss = loss + (smoothness_weight * smooth.pow(2).sum(-1) + 1e-2 * offsets.pow(2).sum(-1)).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()

    model.train(was_training)
    with torch.no_grad():
        rotation, translation, scale = pose()
        latent = (mean_code + whitened @ cholesky.T).view(count, *shape)
        vertices = model.decode(latent)
        if offsets is not None:
            vertices = vertices + offsets / MM_PER_METRE
        placed = scale[:, None, None] * vertices.cpu() @ rotation.transpose(1, 2) + translation[:, None]
        residual = []
        for b, scan in enumerate(points):
            x = to_model_frame(torch.as_tensor(scan, dtype=dtype), rotation, translation, scale, b)
            distance, _, _ = igl.point_mesh_squared_distance(x.double().numpy(),
                                                             vertices[b].double().cpu().numpy() * MM_PER_METRE, faces)
            residual.append(torch.as_tensor(np.sqrt(distance), dtype=dtype))
    result = ScanFit(latent=latent, vertices=vertices, vertices_in_scan=placed, scale=scale, rotation=rotation,
                     translation=translation, residual_mm=residual,
                     offsets=None if offsets is None else offsets.detach() / MM_PER_METRE)
    if single:
        result = ScanFit(latent=latent[0], vertices=vertices[0], vertices_in_scan=placed[0], scale=scale[0],
                         rotation=rotation[0], translation=translation[0], residual_mm=residual[:1],
                         offsets=None if result.offsets is None else result.offsets[0])
    return result


def _checked_scan(scan, index: int) -> np.ndarray:
    points = np.asarray(scan.detach().cpu() if isinstance(scan, Tensor) else scan, dtype=np.float64)
    name = f"fit_scan: scan {index}"
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3) points, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates ({(~np.isfinite(points)).any(1).sum()} "
                         "points): remove them before fitting")
    if len(points) < MIN_SCAN_POINTS:
        raise ValueError(f"{name} has {len(points)} points; fitting needs at least {MIN_SCAN_POINTS}")
    spread = np.linalg.svd(points - points.mean(0), compute_uv=False)
    if spread[2] < 1e-3 * spread[0]:
        raise ValueError(f"{name} lies on a {'line' if spread[1] < 1e-3 * spread[0] else 'plane'}: its pose cannot "
                         "be recovered")
    return points


def _checked_landmarks(landmarks, count: int, num_vertices: int, dtype) -> tuple[Tensor | None, Tensor | None]:
    if landmarks is None:
        return None, None
    index, positions = landmarks
    index = torch.as_tensor(index, dtype=torch.long)
    positions = torch.as_tensor(positions, dtype=dtype)
    positions = positions.expand(count, *positions.shape) if positions.dim() == 2 else positions
    if positions.shape != (count, len(index), 3):
        raise ValueError(f"fit_scan: landmark positions must be ({len(index)}, 3) or ({count}, {len(index)}, 3), got "
                         f"{tuple(positions.shape)}")
    if len(index) == 0 or index.min() < 0 or index.max() >= num_vertices:
        raise ValueError(f"fit_scan: landmark indices must be template vertices in [0, {num_vertices})")
    return index, positions


def _even_subset(size: int, count: int) -> np.ndarray:
    return np.arange(size) if size <= count else np.linspace(0, size - 1, count).round().astype(np.int64)


def _skew(w: Tensor) -> Tensor:
    zero = torch.zeros_like(w[:, 0])
    return torch.stack([torch.stack([zero, -w[:, 2], w[:, 1]], -1), torch.stack([w[:, 2], zero, -w[:, 0]], -1),
                        torch.stack([-w[:, 1], w[:, 0], zero], -1)], 1)


@dataclass
class _ClosestPoints:
    face: np.ndarray  # (N,) index of the closest triangle
    barycentric: Tensor  # (N, 3) coordinates of the closest point in it


def _surface_points(points: Tensor, vertices: Tensor, faces: np.ndarray) -> _ClosestPoints:
    import igl

    vertices = vertices.double().numpy()
    _, face, closest = igl.point_mesh_squared_distance(points.double().numpy(), vertices, faces)
    corners = vertices[faces[face]]
    barycentric = igl.barycentric_coordinates(closest, corners[:, 0].copy(), corners[:, 1].copy(),
                                              corners[:, 2].copy())
    return _ClosestPoints(face, torch.as_tensor(np.clip(barycentric, 0, 1), dtype=points.dtype))


def _surface_samples(vertices: np.ndarray, faces: np.ndarray, count: int) -> np.ndarray:
    """``count`` points spread uniformly by area over the mesh (fixed seed): a scan samples its surface by area,
    while a template's vertices crowd where it is detailed, which would bias the centroid, axes and scale."""
    return trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), count, seed=0)[0]


def _rigid_start(scan: np.ndarray, model_points: np.ndarray, known_scale: float | None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(R, t, s) with ``scan ≈ s * R @ model_mm / 1000 + t``: the best of 24 principal-axis starts after trimmed
    similarity ICP (the docstring of :func:`fit_scan`, step 1) of ``model_points`` (metres) to the scan."""
    source = torch.as_tensor(model_points, dtype=torch.float32)
    target = torch.as_tensor(scan[_even_subset(len(scan), _ALIGNMENT_POINTS)], dtype=torch.float32)
    source_centre, target_centre = source.mean(0), target.mean(0)
    source_axes = torch.linalg.svd((source - source_centre).T, full_matrices=False)[0]
    target_axes = torch.linalg.svd((target - target_centre).T, full_matrices=False)[0]
    candidates = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            rotation = target_axes @ torch.diag(torch.tensor(signs, dtype=source.dtype)) @ torch.eye(
                3, dtype=source.dtype)[list(permutation)] @ source_axes.T
            if torch.linalg.det(rotation) > 0:
                candidates.append(rotation)
    rotation = torch.stack(candidates)  # (24, 3, 3)
    scale = ((target - target_centre).pow(2).sum(1).mean() / (source - source_centre).pow(2).sum(1).mean()).sqrt()
    scale = torch.full((len(rotation),), float(known_scale) if known_scale else float(scale), dtype=source.dtype)
    translation = target_centre - scale[:, None] * (rotation @ source_centre)
    for iteration in range(_ICP_ITERATIONS + 1):
        placed = scale[:, None, None] * source @ rotation.transpose(1, 2) + translation[:, None]  # (K, M, 3)
        distance = torch.cdist(target.expand(len(rotation), -1, -1), placed)  # (K, N, M)
        to_model, nearest_model = distance.min(2)  # each scan point's nearest model point
        to_scan, nearest_scan = distance.min(1)  # each model point's nearest scan point
        keep_scan = to_model <= to_model.quantile(0.9, dim=1, keepdim=True)  # noise and outliers
        keep_model = to_scan <= to_scan.quantile(0.7, dim=1, keepdim=True)  # and what a crop removed
        if iteration == _ICP_ITERATIONS:
            break
        # Both directions: scan-to-model pairs alone let a growing model cover a cropped scan.
        matched = torch.cat([source[nearest_model], source.expand(len(rotation), -1, -1)], 1)
        targets = torch.cat([target.expand(len(rotation), -1, -1), target[nearest_scan]], 1)
        weight = torch.cat([keep_scan, keep_model], 1).to(source.dtype)
        fixed = known_scale if known_scale else (scale if iteration < _ICP_ITERATIONS // 2 else None)
        rotation, translation, scale = _umeyama(matched, targets, weight, fixed)
    score = (to_model * keep_scan).sum(1) / keep_scan.sum(1) + (to_scan * keep_model).sum(1) / keep_model.sum(1)
    best = score.argmin()
    return rotation[best].double(), translation[best].double(), scale[best].double()


def _umeyama(source: Tensor, target: Tensor, weight: Tensor, known_scale: float | Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Batched weighted similarity (R, t, s) minimising :math:`\\sum_i w_i \\lVert s R x_i + t - y_i \\rVert^2`
    (Umeyama 1991; ``s`` fixed when known). Shapes: source, target (K, N, 3); weight (K, N)."""
    weight = weight / weight.sum(1, keepdim=True)
    source_centre = (weight[..., None] * source).sum(1)
    target_centre = (weight[..., None] * target).sum(1)
    x, y = source - source_centre[:, None], target - target_centre[:, None]
    covariance = (weight[..., None] * y).transpose(1, 2) @ x  # (K, 3, 3)
    u, singular, vt = torch.linalg.svd(covariance)
    flip = torch.ones_like(singular)
    flip[:, 2] = torch.sign(torch.linalg.det(u @ vt))
    rotation = u @ torch.diag_embed(flip) @ vt
    variance = (weight * x.pow(2).sum(-1)).sum(1)
    scale = (singular * flip).sum(1) / variance if known_scale is None else torch.as_tensor(
        known_scale, dtype=variance.dtype).expand_as(variance)
    translation = target_centre - scale[:, None] * (source_centre[:, None] @ rotation.transpose(1, 2))[:, 0]
    return rotation, translation, scale
