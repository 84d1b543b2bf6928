"""What the explorer page can ask of a model: every interaction as a function of a :class:`MorphableModel`.

The page never sees a latent code. It holds *coordinates* ``c`` in the principal directions of the model's latent
Gaussian (:meth:`MorphableModel.fit_latent_distribution`; a GAN: its prior N(0, I)), in standard deviations:

.. math:: z = \\mu + B c, \\qquad B = \\operatorname{blockdiag}_f\\big(U_f \\Lambda_f^{1/2}\\big),

where :math:`U_f \\Lambda_f U_f^\\top` is the eigendecomposition of the covariance block of latent factor ``f``
(``identity``, ``expression``, ... from :meth:`MorphableModel.latent_factors`; the whole code for a model without
factors), columns by decreasing variance. A slider moves one coordinate; ``c = 0`` is the mean code. Choice: per-factor
bases, so that an IB-VAE or GAN slider changes one factor only; where factors correlate in the fitted Gaussian, the
coordinates of different factors are correlated too, and :meth:`sample` draws from the joint Gaussian (then projects)
so samples are exactly :meth:`MorphableModel.sample`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from morphzoo.methods.base import MorphableModel
from morphzoo.methods.lamm import LAMM
from morphzoo.methods.locally_weighted import LocallyWeightedAutoencoder


class ExplorerError(ValueError):
    """A request the model cannot answer (unknown mesh, wrong length); its message goes back to the page."""


class ExplorerSession:
    """A model, its latent coordinates and the meshes to compare with, behind one lock (the server is threaded).

    Args:
        model: a model with a latent distribution (bundled zoo models have one).
        meshes: (N, V, 3) meshes in metres on the model's template, for interpolation, error maps and part swaps.
        mesh_names: a name per mesh (default ``mesh 0``, ``mesh 1``, ...).
        sliders: how many directions per factor the page shows.
        name: the model's name on the page.
        up: the meshes' up axis, ``"z"`` (anny; the page looks down -y) or ``"y"`` (CoMA, DFAUST; it looks down +z).
    """

    def __init__(self, model: MorphableModel, meshes: Tensor | np.ndarray | None = None,
                 mesh_names: Sequence[str] | None = None, sliders: int = 8, name: str | None = None,
                 up: str = "z"):
        if model.latent_mean.numel() == 0:
            raise ExplorerError(f"{type(model).__name__} has no latent distribution, so it has no sliders or samples: "
                                "call model.fit_latent_distribution(data.train_dataloader()) and save it, or view a "
                                "zoo model (they carry theirs)")
        self.model = model.eval()
        self.name = name or type(model).__name__
        if up not in ("y", "z"):
            raise ExplorerError(f"the up axis is 'y' or 'z', got {up!r}")
        self.up = up
        self.lock = threading.Lock()
        meshes = torch.empty(0, model.num_vertices, 3) if meshes is None else torch.as_tensor(meshes).float()
        if meshes.dim() != 3 or meshes.shape[1:] != (model.num_vertices, 3):
            raise ExplorerError(f"the meshes to compare must be (N, {model.num_vertices}, 3) on the model's template, "
                                f"got {tuple(meshes.shape)}; register them to the template first (morphzoo fit-scan)")
        if not torch.isfinite(meshes).all():
            raise ExplorerError("the meshes to compare contain NaN or infinite coordinates")
        self.meshes = meshes
        self.mesh_names = list(mesh_names) if mesh_names is not None else [f"mesh {i}" for i in range(len(meshes))]
        if len(self.mesh_names) != len(meshes):
            raise ExplorerError(f"{len(self.mesh_names)} mesh names for {len(meshes)} meshes")
        self._build_basis(sliders)

    def _build_basis(self, sliders: int) -> None:
        mean, cholesky = self.model.latent_mean.double(), self.model.latent_cholesky.double()
        covariance = cholesky @ cholesky.T
        dimension = len(mean)
        factors = dict(self.model.latent_factors()) or {"latent": slice(0, dimension)}
        covered = torch.zeros(dimension, dtype=torch.bool)
        for part in factors.values():
            covered[part] = True
        if not covered.all():  # parts of the code outside every factor still get directions of their own
            factors["other"] = torch.nonzero(~covered).flatten()
        basis = torch.zeros(dimension, dimension, dtype=torch.float64)
        self.factors, column = [], 0
        for name, part in factors.items():
            rows = torch.arange(dimension)[part]
            variances, vectors = torch.linalg.eigh(covariance[rows][:, rows])
            variances, vectors = variances.flip(0).clamp_min(0), vectors.flip(1)
            basis[rows[:, None], column + torch.arange(len(rows))] = vectors * variances.sqrt()
            share = variances / variances.sum().clamp_min(1e-300)
            self.factors.append({"name": name, "columns": list(range(column, column + min(sliders, len(rows)))),
                                 "variance_share": [round(float(s), 4) for s in share[:sliders]]})
            column += len(rows)
        self.latent_mean, self.basis = mean, basis
        self.inverse = torch.linalg.pinv(basis)

    # ---------------------------------------------------------------------------------------------- coordinates
    @property
    def dimension(self) -> int:
        return len(self.latent_mean)

    def latent(self, coordinates: Sequence[float]) -> Tensor:
        c = torch.as_tensor(coordinates, dtype=torch.float64)
        if c.shape != (self.dimension,) or not torch.isfinite(c).all():
            raise ExplorerError(f"coordinates must be {self.dimension} finite numbers, got shape {tuple(c.shape)}")
        return self.latent_mean + self.basis @ c

    def coordinates_of(self, latent: Tensor) -> Tensor:
        return self.inverse @ (latent.double().flatten() - self.latent_mean)

    def _decode(self, latent: Tensor) -> Tensor:
        return self.model.decode(latent.to(self.model.latent_mean)[None])[0]

    def _mesh(self, index: int) -> Tensor:
        if not 0 <= int(index) < len(self.meshes):
            raise ExplorerError(f"there is no mesh {index}; the session has {len(self.meshes)} (0..{len(self) - 1})")
        return self.meshes[int(index)]

    def __len__(self) -> int:
        return len(self.meshes)

    # -------------------------------------------------------------------------------------------- interactions
    @torch.inference_mode()
    def decode(self, coordinates: Sequence[float]) -> Tensor:
        """(V, 3) metres: the mesh at ``coordinates``."""
        with self.lock:
            return self._decode(self.latent(coordinates))

    @torch.inference_mode()
    def sample(self, seed: int) -> tuple[Tensor, Tensor]:
        """``model.sample`` seeded with ``seed``: its coordinates and mesh."""
        generator = torch.Generator().manual_seed(int(seed))
        with self.lock:
            latent = self.model.sample_latent(1, generator)[0]
            return self.coordinates_of(latent), self._decode(latent)

    @torch.inference_mode()
    def encode(self, index: int) -> dict[str, Tensor]:
        """Mesh ``index``'s coordinates, its reconstruction and the per-vertex reconstruction error in mm."""
        target = self._mesh(index)
        with self.lock:
            latent = self.model.encode(target[None])[0]
            reconstruction = self._decode(latent)
        error = (reconstruction - target).norm(dim=-1) * 1000
        return {"coordinates": self.coordinates_of(latent), "vertices": reconstruction, "error_mm": error}

    @torch.inference_mode()
    def interpolate(self, source: int, target: int, weight: float) -> tuple[Tensor, Tensor]:
        """The mesh at ``(1 - w) z_source + w z_target`` (:meth:`MorphableModel.interpolate`) and its coordinates."""
        a, b = self._mesh(source), self._mesh(target)
        with self.lock:
            codes = self.model.encode(torch.stack([a, b]))
            latent = torch.lerp(codes[0], codes[1], float(weight))
            return self.coordinates_of(latent), self._decode(latent)

    # --------------------------------------------------------------------------------------- method-specific
    def features(self) -> dict:
        """What the page shows beyond sliders: LAMM's regions and control vertices, the NMF autoencoder's parts."""
        model, features = self.model, {}
        if isinstance(model, LAMM):
            features["regions"] = {"names": list(model.region_names), "labels": model.region_labels.tolist(),
                                   "controls": model.control_index.tolist(),
                                   "can_sample": bool(model.control_mean.numel())}
        if isinstance(model, LocallyWeightedAutoencoder) and model.has_local_weights:
            features["parts"] = {"count": model.parts, "supports": model.supports().tolist()}
        return features

    def _require(self, kind: type, what: str) -> None:
        if not isinstance(self.model, kind):
            raise ExplorerError(f"{type(self.model).__name__} has no {what}")

    @torch.inference_mode()
    def edit_regions(self, coordinates: Sequence[float], moves: Sequence[Sequence[float]]) -> Tensor:
        """LAMM: move control vertices of the mesh at ``coordinates``; ``moves`` are ``[region, k, dx, dy, dz]``
        rows (metres, ``k`` indexes ``control_index[region]``); LAMM deforms the rest (:meth:`LAMM.edit`)."""
        self._require(LAMM, "control vertices to drag")
        controls = self.model.control_index
        displacements = torch.zeros(*controls.shape, 3)
        for row in moves:
            region, k, *delta = row
            if not (0 <= int(region) < controls.shape[0] and 0 <= int(k) < controls.shape[1] and len(delta) == 3):
                raise ExplorerError(f"a control move is [region 0..{controls.shape[0] - 1}, vertex "
                                    f"0..{controls.shape[1] - 1}, dx, dy, dz], got {list(row)}")
            displacements[int(region), int(k)] += torch.tensor(delta, dtype=torch.float32)
        with self.lock:
            return self.model.edit(self._decode(self.latent(coordinates)), displacements)

    @torch.inference_mode()
    def sample_region(self, coordinates: Sequence[float], region: int, seed: int) -> Tensor:
        """LAMM: a new random shape for one region of the mesh at ``coordinates`` (:meth:`LAMM.sample_regions`)."""
        self._require(LAMM, "regions to sample")
        if not 0 <= int(region) < self.model.num_regions:
            raise ExplorerError(f"there is no region {region}; the model has {self.model.num_regions}")
        generator = torch.Generator().manual_seed(int(seed))
        with self.lock:
            base = self._decode(self.latent(coordinates))
            return self.model.sample_regions([int(region)], base[None], generator=generator)[0]

    @torch.inference_mode()
    def swap_parts(self, coordinates: Sequence[float], sources: Sequence[int]) -> Tensor:
        """NMF autoencoder: part ``k`` from mesh ``sources[k]`` (-1: the mesh at ``coordinates``)
        (:meth:`LocallyWeightedAutoencoder.combine_parts`)."""
        self._require(LocallyWeightedAutoencoder, "parts to swap")
        if len(sources) != self.model.parts:
            raise ExplorerError(f"give a source mesh for each of the {self.model.parts} parts, got {len(sources)}")
        for source in sources:
            if source != -1:
                self._mesh(source)
        with self.lock:
            faces = torch.cat([self._decode(self.latent(coordinates))[None], self.meshes])
            return self.model.combine_parts(faces, [int(source) + 1 for source in sources])
