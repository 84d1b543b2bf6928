r"""PCA and region-PCA: the linear 3D morphable models that the neural ones are measured against.

**PCA** (Blanz & Vetter 1999; the CoMA paper's linear baseline, Ranjan et al. 2018 §5): with :math:`\mu` the mean
training mesh and :math:`W \in \mathbb{R}^{L \times 3V}` the top :math:`L` principal axes of the centred training
meshes (orthonormal rows),

.. math::
    z = W\,(x - \mu), \qquad \hat x = \mu + W^\top z .

**Region-PCA** (LAMM supplementary §2.2): "split the latent space of PCA into evenly sized segments, using the same
number of regions as our models, and used each segment of the latent code to control respective regions". Region
:math:`r` (its vertices' coordinates :math:`x_r`) gets its own PCA :math:`W_r` with :math:`L_r` axes, fitted on
:math:`x_r` alone, and :math:`z = (z_1, \dots, z_K)`, :math:`z_r = W_r (x_r - \mu_r)`. Stacked, the :math:`W_r` form one
:math:`L \times 3V` matrix whose rows are still orthonormal (different regions have disjoint supports), so region-PCA
*is* a PCA with block-sparse axes and shares encode/decode with it; decoding writes each vertex from its own region's
segment only (the regions partition the vertices).

Choices, stated (the papers are silent on them):

- **Metres, not standardised coordinates.** PCA runs on the centred meshes in metres, as classic 3DMMs do. It then
  minimises the squared Euclidean reconstruction error that the benchmarks report (in mm); on standardised coordinates
  it would weight every coordinate by 1/std, which blows up vertices that barely move (their std is floored at
  0.01 mm). ``fit`` sets the ``mean`` buffer to the training mean :math:`\mu` (the DataModule's training mean, which
  ``morphzoo fit`` links in, is the same); ``std`` only cancels out in ``encode_normalised``/``decode_normalised``.
- **Algorithm.** One pass over the training data keeps the meshes, centred, in float32 (anny-face full: 16k training
  meshes, 0.8 GB; anny-body full: under 2.6 GB), then takes the top right singular vectors of the centred (N, 3V)
  matrix: an exact dense SVD in float64 (LAPACK via :func:`torch.linalg.svd`) when min(N, 3V) <= 1024 or the wanted
  axes are a quarter of it or more, else ARPACK's Lanczos iteration (:func:`scipy.sparse.linalg.svds`, converged to
  machine precision, ``tol=0``) on the float32 matrix, which needs only matrix-vector products: no 3V x 3V covariance
  (1.3 GB in float64 for anny-face, 3.4 GB for anny-body) and none of its cubic-cost eigendecomposition (extrapolated:
  about 25 minutes for anny-face on 2 shared CPU cores, where the whole one-pass fit of 64 components took about a
  minute and of 8 components 22 s). ``solver="dense"`` or ``"arpack"`` forces one.
- **Signs.** Each axis is flipped so that its largest-magnitude entry is positive: fits agree regardless of data order.
- **Latent Gaussian.** PCA coefficients of the training meshes have mean 0 and variance :math:`\sigma_i^2 / (N - 1)`
  (:math:`\sigma_i` the singular values), uncorrelated. The fit stores the Gaussian of the training coefficients
  (:meth:`~morphzoo.methods.base.MorphableModel.fit_latent_distribution`), so :meth:`sample` works at once. For PCA
  that Gaussian is this diagonal one; region-PCA's segments are correlated across regions, and the full covariance
  keeps the regions of a sample coherent.
- **Size limits.** The centred data has rank at most N - 1, so ``latent_dim`` (and every region's segment) must be
  smaller than the number of training meshes; a segment cannot exceed its region's 3·V_r coordinates.
- **Regions.** From ``regions`` (a (V,) array of labels, or the path of a ``regions.json`` in the format that
  :mod:`morphzoo.data.folder` reads: ``{"region name": [vertex indices], ...}``), else from the template. Region
  order is the sorted labels; vertices labelled -1 (unassigned, as ``regions.json`` leaves the vertices it does not
  list) form one extra region, last. The latent split is even, the remainder going to the first regions
  (L = 64 over 13 regions: 5, ..., 5, 4). Regions are read when the fit starts and saved as buffers
  (``vertex_region``, ``latent_region``), so a fitted model needs neither the template's regions nor the file.
- **Training loop.** ``morphzoo fit`` trains through Lightning with manual optimisation: the training steps of the
  first epoch collect the meshes, the solve runs at its last batch (``trainer.num_training_batches``, which honours
  ``limit_train_batches`` and ``fast_dev_run``) so that the epoch's validation sees the fitted model, and later steps
  do nothing (the recipes set ``max_epochs: 1``). The solve is the one step of a :class:`ClosedFormStep` "optimiser":
  Lightning's checkpointing counts optimiser steps and would otherwise keep only ``last.ckpt``. Under DDP each
  process would see only its shard: PCA fits in a single process. Outside Lightning, call :meth:`PCA.fit`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import svds
from torch import Tensor

from morphzoo.mesh.regions import merge_regions, read_regions
from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS, MorphableModel
from morphzoo.nn.sparse import exporting

SOLVERS = ("auto", "dense", "arpack")
# "auto" takes the exact dense SVD up to this min(N, 3V) (about a second), ARPACK above it.
DENSE_SOLVER_MAX = 1024
UNASSIGNED = -1


def principal_axes(x: Tensor, k: int, solver: str = "auto") -> tuple[Tensor, Tensor]:
    r"""The top ``k`` principal axes of centred data: :math:`x = U \Sigma V^\top`, returns :math:`(\sigma_{1..k},
    V_{:, 1..k}^\top)` in float64, singular values descending, each axis signed so that its largest-magnitude entry is
    positive.

    Args:
        x: (N, D) centred data (rows are samples).
        k: the number of axes, at most min(N, D) (``"arpack"``: less than it).
        solver: ``"dense"`` (exact SVD, float64), ``"arpack"`` (Lanczos on ``x`` as given, to machine precision) or
            ``"auto"`` (see the module docstring).
    """
    smaller = min(x.shape)
    if solver == "auto":
        solver = "dense" if smaller <= DENSE_SOLVER_MAX or 4 * k >= smaller else "arpack"
    if solver == "dense":
        _, singular, axes = torch.linalg.svd(x.double(), full_matrices=False)
        singular, axes = singular[:k], axes[:k]
    else:
        _, singular, axes = svds(x.numpy(), k=k, tol=0, solver="arpack", return_singular_vectors="vh",
                                 rng=np.random.default_rng(0))
        order = np.argsort(-singular)
        singular, axes = torch.from_numpy(singular[order].astype(np.float64)), torch.from_numpy(axes[order]).double()
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    return singular, axes * signs


class ClosedFormStep(torch.optim.Optimizer):
    """The "optimiser" of a closed-form fit: its one step runs the solve (the closure). Lightning counts optimiser
    steps, and its ``ModelCheckpoint`` saves nothing but ``last.ckpt`` for a fit that took none."""

    def __init__(self, solved: list[Tensor]) -> None:
        super().__init__(solved, {})

    def step(self, closure):
        return closure()


class PCA(MorphableModel):
    """Linear 3D morphable model: PCA of the training meshes in metres (see the module docstring).

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        latent_dim: the number of principal components L (8 in the CoMA paper's comparison).
        solver: ``"auto"``, ``"dense"`` or ``"arpack"`` (see :func:`principal_axes`).

    Buffers (saved with the model): ``components`` (L, 3V, rows orthonormal, coordinates ordered x0 y0 z0 x1 ...),
    ``singular_values`` (L,) and ``num_training_meshes`` (0 until fitted).
    """

    def __init__(self, template: Template | None = None, mean: Tensor | None = None, std: Tensor | None = None,
                 latent_dim: int = 8, solver: str = "auto") -> None:
        super().__init__(template, mean, std)
        if solver not in SOLVERS:
            raise ValueError(f"{type(self).__name__}: solver must be one of {SOLVERS}, got {solver!r}")
        if not 1 <= latent_dim <= 3 * self.num_vertices:
            raise ValueError(f"{type(self).__name__}: latent_dim must lie in [1, {3 * self.num_vertices}] (3 × the "
                             f"template's {self.num_vertices} vertices), got {latent_dim}")
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
        self.automatic_optimization = False
        self.register_buffer("components", torch.zeros(latent_dim, 3 * self.num_vertices))
        self.register_buffer("singular_values", torch.zeros(latent_dim))
        self.register_buffer("num_training_meshes", torch.zeros((), dtype=torch.long))
        self._rows: list[Tensor] = []  # the centred training meshes (N_b, 3V) collected so far by the running fit

    def num_learned_values(self) -> int:
        """The fitted components' entries (region-PCA's block-sparse ones: its non-zeros) and singular values; PCA has
        no trainable parameters."""
        return int(torch.count_nonzero(self.components)) + self.singular_values.numel()

    @property
    def is_fitted(self) -> bool:
        return bool(self.num_training_meshes > 0)

    @property
    def explained_variance(self) -> Tensor:
        """(L,) variance of the training meshes along each component, :math:`\\sigma_i^2 / (N - 1)` (m²)."""
        self._require_fitted()
        return self.singular_values**2 / (self.num_training_meshes - 1)

    # ------------------------------------------------------------------------------------------------ encode/decode
    def encode_normalised(self, x: Tensor) -> Tensor:
        r""":math:`z = W (x_{metres} - \mu)`, where :math:`x_{metres} - \mu` = ``x * std``."""
        self._require_fitted()
        return (x * self.std).flatten(1) @ self.components.T

    def decode_normalised(self, latent: Tensor) -> Tensor:
        r""":math:`(\hat x - \mu) / std` with :math:`\hat x - \mu = W^\top z`."""
        self._require_fitted()
        if latent.dim() != 2 or latent.shape[1] != len(self.components):
            raise ValueError(f"{type(self).__name__}: expected latent codes of shape (B, {len(self.components)}), "
                             f"got {tuple(latent.shape)}")
        return (latent @ self.components).view(latent.shape[0], self.num_vertices, 3) / self.std

    def _require_fitted(self) -> None:
        # a traced graph cannot branch on a buffer's value: the exporter decodes eagerly, with checks, first
        if not exporting() and not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call model.fit(training meshes) (an "
                               "(N, V, 3) array in metres or a DataLoader), or train it with `morphzoo fit -c "
                               "recipes/pca.yaml`")

    # ------------------------------------------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, meshes: Iterable[Tensor | dict[str, Tensor]] | Tensor | np.ndarray, batch_size: int = 256) -> PCA:
        """Fit on the training meshes in one pass: an (N, V, 3) array or tensor in metres, or an iterable of (B, V, 3)
        batches or dict batches with ``vertices`` (``data.train_dataloader()``). Refits from scratch; returns ``self``.
        """
        if isinstance(meshes, (Tensor, np.ndarray)):
            meshes = [meshes[start:start + batch_size] for start in range(0, len(meshes), batch_size)]
        self._begin_fit()
        for batch in meshes:
            self._collect(batch["vertices"] if isinstance(batch, dict) else batch)
        self._solve()
        return self

    def _begin_fit(self) -> None:
        self._rows = []

    def _collect(self, vertices: Tensor | np.ndarray) -> None:
        vertices, _ = self._as_batch(vertices)
        self._rows.append((vertices - self.mean).flatten(1).detach().cpu())

    def _coordinate_groups(self) -> list[tuple[Tensor | None, slice]]:
        """(coordinate columns, latent slice) of each separately fitted block; ``None`` = all columns."""
        return [(None, slice(0, len(self.components)))]

    def _solve(self) -> None:
        if not self._rows:
            raise ValueError(f"{type(self).__name__}: no training meshes to fit (the data was empty)")
        x, self._rows = torch.cat(self._rows), []
        if len(x) <= len(self.components):
            raise ValueError(f"{type(self).__name__}: a {len(self.components)}-dimensional latent needs more than "
                             f"{len(self.components)} training meshes (the centred data has rank at most N - 1), got "
                             f"{len(x)}; lower latent_dim or give more meshes")
        shift = x.mean(0, dtype=torch.float64)
        x -= shift.to(x.dtype)  # exactly centred now: rows were centred on the old `mean` buffer
        components = torch.zeros(self.components.shape, dtype=torch.float64)
        singular_values = torch.zeros(len(self.components), dtype=torch.float64)
        for columns, piece in self._coordinate_groups():
            data = x if columns is None else x[:, columns]
            singular_values[piece], axes = principal_axes(data, piece.stop - piece.start, self.hparams.solver)
            components[piece, slice(None) if columns is None else columns] = axes
        self.mean += shift.view(self.num_vertices, 3).to(self.mean)
        self.components.copy_(components)
        self.singular_values.copy_(singular_values)
        self.num_training_meshes.fill_(len(x))
        meshes = x.view(len(x), self.num_vertices, 3)  # metres minus the new mean
        mean = self.mean.cpu()
        self.fit_latent_distribution(meshes[start:start + 256] + mean for start in range(0, len(x), 256))

    # ------------------------------------------------------------------------------------------------------ Lightning
    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            raise RuntimeError(f"{type(self).__name__} fits in one process; under DDP every process would see only its "
                               "shard of the data. Run it without a distributed strategy (--trainer.devices=1).")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Collect the first epoch's meshes; solve at its last batch. A fitted model does nothing."""
        if self.is_fitted:
            return
        if batch_idx == 0:
            self._begin_fit()
        self._collect(batch["vertices"])
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.optimizers().step(closure=self._solve)

    def configure_optimizers(self) -> ClosedFormStep:
        return ClosedFormStep([self.components])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Lightning's sanity check validates before the first training batch, when nothing is fitted yet.
        if self.is_fitted or not self.trainer.sanity_checking:
            super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if self.is_fitted or not self.trainer.sanity_checking:
            super().on_validation_epoch_end()


class RegionPCA(PCA):
    """Region-PCA (LAMM supplementary §2.2): one PCA per region, the latent split evenly (see the module docstring).

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        latent_dim: total latent size L, split over the K regions (the remainder to the first ones); L >= K.
        regions: a (V,) array of region labels (-1 = unassigned) or the path of a ``regions.json``; default: the
            template's regions. Read when the fit starts.
        num_regions: with the template's regions, merge or split them to K regions exactly as LAMM's
            ``regions="merge"`` does (:func:`~morphzoo.mesh.regions.merge_regions`, every vertex assigned), so that
            region-PCA and LAMM share their regions, as in LAMM's supplementary comparison ("the same number of
            regions as our models"). ``None``: the template's regions as they are.
        solver: see :func:`principal_axes`.

    Buffers besides PCA's: ``vertex_region`` (V,) and ``latent_region`` (L,), the region label of each vertex and of
    each latent coordinate (set by the fit): segment r of the latent controls the vertices of the same label.
    """

    def __init__(self, template: Template | None = None, mean: Tensor | None = None, std: Tensor | None = None,
                 latent_dim: int = 64, regions: str | Sequence[int] | None = None, num_regions: int | None = None,
                 solver: str = "auto") -> None:
        super().__init__(template, mean, std, latent_dim, solver)
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
        self.register_buffer("vertex_region", torch.zeros(self.num_vertices, dtype=torch.long))
        self.register_buffer("latent_region", torch.zeros(latent_dim, dtype=torch.long))

    def segment_sizes(self) -> dict[int, int]:
        """Latent coordinates per region label, in latent order (fitted models)."""
        self._require_fitted()
        labels, counts = torch.unique_consecutive(self.latent_region, return_counts=True)
        return dict(zip(labels.tolist(), counts.tolist(), strict=True))

    def _begin_fit(self) -> None:
        # Resolved when the fit starts, so bad regions fail at the first batch, not after a pass over the data.
        super()._begin_fit()
        self._groups = self._region_groups(self._resolve_regions())

    def _coordinate_groups(self) -> list[tuple[Tensor | None, slice]]:
        return self._groups

    def _resolve_regions(self) -> np.ndarray:
        name, regions = type(self).__name__, self.hparams.regions
        if self.hparams.num_regions is not None:
            if regions is not None:
                raise ValueError(f"{name}: num_regions merges the template's regions; it cannot be combined with "
                                 "explicit regions (give one of the two)")
            return merge_regions(self.template, self.hparams.num_regions)[0]
        if isinstance(regions, (str, Path)):
            path = Path(regions)
            if not path.is_file():
                raise FileNotFoundError(f"{name}: regions file {path} not found; give a regions.json "
                                        "({\"region name\": [vertex indices], ...}) or a (V,) array of labels")
            return read_regions(path, self.num_vertices)[0]
        if regions is None:
            if self.template.regions is None:
                raise ValueError(
                    f"{name}: the template '{self.template.name}' has no vertex regions. Pass `regions`: a (V,) array "
                    "of region labels or the path of a regions.json ({\"region name\": [vertex indices], ...}); "
                    "real CoMA and DFAUST ship none, and a mesh folder (SynHand, UHM) reads regions.json from its root")
            return self.template.regions
        labels = np.asarray(regions)
        if labels.shape != (self.num_vertices,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name}: regions must be ({self.num_vertices},) integer labels (one per template "
                             f"vertex, -1 = unassigned), got {labels.dtype} array of shape {labels.shape}")
        return labels

    def _region_groups(self, labels: np.ndarray) -> list[tuple[Tensor, slice]]:
        """Column indices and latent slice of each region; sets the ``vertex_region``/``latent_region`` buffers."""
        name = type(self).__name__
        if (labels < UNASSIGNED).any():
            raise ValueError(f"{name}: region labels must be >= 0, or -1 for unassigned vertices; got "
                             f"{labels.min()}")
        present = np.unique(labels)
        order = [*present[present >= 0], *present[present == UNASSIGNED]]  # unassigned vertices: one extra region
        latent_dim = len(self.components)
        if latent_dim < len(order):
            raise ValueError(f"{name}: latent_dim={latent_dim} is smaller than the {len(order)} regions; every region "
                             f"needs at least one latent coordinate")
        sizes = [latent_dim // len(order) + (i < latent_dim % len(order)) for i in range(len(order))]
        groups, start = [], 0
        for label, size in zip(order, sizes, strict=True):
            vertices = torch.from_numpy(np.flatnonzero(labels == label))
            if size > 3 * len(vertices):
                raise ValueError(f"{name}: region {label} has {len(vertices)} vertices ({3 * len(vertices)} "
                                 f"coordinates) but its latent segment has {size}; lower latent_dim or merge regions")
            groups.append(((3 * vertices[:, None] + torch.arange(3)).flatten(), slice(start, start + size)))
            self.latent_region[start:start + size] = int(label)
            start += size
        self.vertex_region.copy_(torch.from_numpy(labels))
        return groups
