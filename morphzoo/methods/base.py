"""``MorphableModel``: the LightningModule every morphzoo method derives from.

A morphable model owns its template and the training data's normalisation as buffers, so a trained model (or one
loaded from a checkpoint) works on raw meshes in metres with no DataModule around: ``encode``, ``decode`` and
``forward`` all speak metres. Training follows the field's convention (CoMA, Ranjan et al. 2018, §4): per-vertex,
per-coordinate standardisation with the training split's mean and std; errors are measured after de-normalising.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import lightning as L
import numpy as np
import torch
import trimesh
from torch import Tensor
from torch.nn import functional as F

from morphzoo.fitting import ScanFit, fit_scan
from morphzoo.mesh.template import Template
from morphzoo.metrics.vertex_error import VertexError

# Without data statistics (a model built from a template alone) normalisation is "template mean, 1 cm std".
DEFAULT_STD_METRES = 0.01
# Constructor arguments that the DataModule provides; they are stored as buffers, not as hyperparameters.
DATA_ARGUMENTS = ("template", "mean", "std")


class MorphableModel(L.LightningModule):
    """Base class: template and normalisation buffers, metre-space API, reconstruction training and evaluation.

    Subclasses implement :meth:`encode_normalised` and :meth:`decode_normalised` (on standardised coordinates) and
    ``configure_optimizers`` (their paper's schedule), and call ``self.save_hyperparameters(ignore=DATA_ARGUMENTS)``
    in their ``__init__`` (the data arguments live in buffers instead). The default training loss is the L1
    reconstruction loss on standardised coordinates that CoMA, Neural3DMM and SpiralNet++ use; methods with other
    losses override :meth:`training_step`.

    Args:
        template: the dataset's template mesh. ``morphzoo fit`` links it from the DataModule.
        mean: (V, 3) per-vertex mean of the training split, metres (linked from the DataModule).
        std: (V, 3) per-vertex standard deviation of the training split, metres (linked from the DataModule).
    """

    # A model whose latent distribution is its own fixed prior (a GAN's N(0, I), set in its constructor) sets this:
    # ``fit_latent_distribution`` then refuses to replace it.
    samples_from_prior = False
    # Whether the ONNX export (morphzoo.deployment) writes an encoder graph: models whose encode_normalised is not a
    # static feed-forward pass set False, with the reason.
    onnx_encoder = True

    def __init__(self, template: Template | None = None, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        if template is None:
            raise ValueError(
                f"{type(self).__name__} needs a template mesh. Train it through `morphzoo fit -c recipes/...yaml`, "
                "which links the template and normalisation from the DataModule, or pass `template=Template(...)`."
            )
        # Everything derived from the template (QEM levels, spirals) is computed from its float32 positions: the
        # precision of the `template_vertices` buffer that a checkpoint restores. A loaded model then rebuilds exactly
        # the structures it was trained with, even on a machine whose cache is empty.
        self.template = dataclasses.replace(template, vertices=template.vertices.astype(np.float32))
        vertices = torch.as_tensor(template.vertices, dtype=torch.float32)
        mean = vertices if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        if std is None:
            std = torch.full_like(vertices, DEFAULT_STD_METRES)
        std = torch.as_tensor(std, dtype=torch.float32)
        for name, value in (("mean", mean), ("std", std)):
            if value.shape != vertices.shape:
                raise ValueError(f"{type(self).__name__}: {name} must have the template's shape "
                                 f"{tuple(vertices.shape)}, got {tuple(value.shape)}")
        if not (std > 0).all():
            raise ValueError(f"{type(self).__name__}: std must be positive everywhere")
        self.register_buffer("template_vertices", vertices)
        self.register_buffer("template_faces", torch.as_tensor(template.faces, dtype=torch.long))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        # The Gaussian of the training latents behind `sample` (empty until `fit_latent_distribution`); saved with the
        # weights, so a checkpoint samples without its training data.
        self.register_buffer("latent_mean", torch.empty(0))
        self.register_buffer("latent_cholesky", torch.empty(0, 0))
        self.val_error = VertexError()
        self.test_error = VertexError()

    # ----------------------------------------------------------------------------------------------- metre-space API
    @property
    def num_vertices(self) -> int:
        return self.template.num_vertices

    def normalise(self, vertices: Tensor) -> Tensor:
        return (vertices - self.mean) / self.std

    def denormalise(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def encode(self, vertices: Tensor | np.ndarray) -> Tensor:
        """Latent codes of meshes: (B, V, 3) or (V, 3) vertices in metres -> (B, ...) or (...)."""
        vertices, single = self._as_batch(vertices)
        latent = self.encode_normalised(self.normalise(vertices))
        return latent[0] if single else latent

    def decode(self, latent: Tensor) -> Tensor:
        """Meshes from latent codes: (B, ...) -> (B, V, 3) vertices in metres."""
        return self.denormalise(self.decode_normalised(latent))

    def forward(self, vertices: Tensor | np.ndarray) -> Tensor:
        """Reconstruct meshes: (B, V, 3) or (V, 3) vertices in metres -> the same shape."""
        vertices, single = self._as_batch(vertices)
        reconstruction = self.denormalise(self.decode_normalised(self.encode_normalised(self.normalise(vertices))))
        return reconstruction[0] if single else reconstruction

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one mesh's latent code (what ``encode`` returns for a (V, 3) mesh)."""
        with torch.no_grad():
            return tuple(self.encode(self.template_vertices).shape)

    def num_learned_values(self) -> int:
        """The model's size for tables and the registry: its trainable parameters. Closed-form models whose fitted
        values are buffers (PCA's components) add those."""
        return sum(p.numel() for p in self.parameters())

    def encode_normalised(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_normalised(self, latent: Tensor) -> Tensor:
        raise NotImplementedError

    def _as_batch(self, vertices: Tensor | np.ndarray) -> tuple[Tensor, bool]:
        vertices = torch.as_tensor(vertices, dtype=self.mean.dtype, device=self.mean.device)
        single = vertices.dim() == 2
        if single:
            vertices = vertices[None]
        if vertices.dim() != 3 or vertices.shape[1:] != (self.num_vertices, 3):
            raise ValueError(f"{type(self).__name__}: expected vertices of shape (B, {self.num_vertices}, 3) or "
                             f"({self.num_vertices}, 3) in metres (template '{self.template.name}'), got "
                             f"{tuple(vertices.shape)}. Register the mesh to the model's template first.")
        if not torch.isfinite(vertices).all():
            raise ValueError(f"{type(self).__name__}: the input vertices contain NaN or infinite values")
        return vertices, single

    # ------------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def fit_latent_distribution(self, meshes: Iterable[Tensor | dict[str, Tensor]] | Tensor | np.ndarray,
                                batch_size: int = 256) -> None:
        """Fit the Gaussian (full covariance) of the training meshes' latent codes that :meth:`sample` draws from.

        This is how the papers evaluate plain autoencoders as generative models (specificity and diversity of
        samples, e.g. the decoupled face GAN's baselines, §5.3): an autoencoder has no prior of its own. Pass the
        training split: a DataLoader of dict batches (``data.train_dataloader()``), an iterable of (B, V, 3) tensors,
        or one (N, V, 3) array in metres. The result is stored in buffers and saved with the model.
        """
        if self.samples_from_prior:
            raise TypeError(f"{type(self).__name__} samples from its own prior N(0, I); it has no latent distribution "
                            "to fit")
        if isinstance(meshes, (Tensor, np.ndarray)):
            meshes = [meshes[start:start + batch_size] for start in range(0, len(meshes), batch_size)]
        was_training = self.training
        self.eval()
        codes = [self.encode(batch["vertices"] if isinstance(batch, dict) else batch).flatten(1).double()
                 for batch in meshes]
        self.train(was_training)
        codes = torch.cat(codes) if codes else torch.empty(0)
        if len(codes) <= codes.shape[-1]:
            raise ValueError(f"{type(self).__name__}: fitting a {codes.shape[-1]}-dimensional Gaussian needs more "
                             f"than {codes.shape[-1]} meshes, got {len(codes)}")
        mean = codes.mean(0)
        centred = codes - mean
        covariance = centred.T @ centred / (len(codes) - 1)
        # a tiny ridge keeps the Cholesky factor defined when some latent direction is unused
        covariance.diagonal().add_(1e-9 * covariance.trace().clamp_min(1e-12))
        self.latent_mean = mean.to(self.mean)
        self.latent_cholesky = torch.linalg.cholesky(covariance).to(self.mean)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random meshes (n, V, 3) in metres, decoded from the Gaussian of the training latents (a GAN: its
        prior)."""
        return self.decode(self.sample_latent(n, generator))

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes (n, D) drawn from the latent Gaussian (what :meth:`sample` decodes)."""
        self._require_latent_distribution()
        noise = torch.randn(n, len(self.latent_mean), generator=generator, dtype=self.latent_mean.dtype)
        return self.latent_mean + noise.to(self.latent_mean.device) @ self.latent_cholesky.T

    def latent_factors(self) -> dict[str, slice]:
        """The named parts of the latent code (``identity``, ``expression``, ...), for factorised sampling; empty for
        a code without factors."""
        return {}

    @torch.no_grad()
    def sample_sharing(self, factor: str, groups: int, per_group: int,
                       generator: torch.Generator | None = None) -> Tensor:
        """Random meshes in ``groups`` groups of ``per_group`` that share the code of ``factor`` (e.g. the same
        identity code under different expressions): the decoupled GAN's protocol for identity and expression
        diversity and decoupling (Abrevaya et al. 2019, §5.3).

        Each factor is drawn from its marginal in the latent Gaussian (a GAN: its prior): ``factor`` once per group,
        every other factor afresh for each mesh; parts of the code outside :meth:`latent_factors` stay at the mean.

        Returns:
            (groups, per_group, V, 3) meshes in metres.
        """
        factors = self.latent_factors()
        if factor not in factors:
            raise ValueError(f"{type(self).__name__}: its codes have no {factor!r} part to share (factors: "
                             f"{', '.join(factors) or 'none'})")
        self._require_latent_distribution()
        covariance = self.latent_cholesky @ self.latent_cholesky.T
        latent = self.latent_mean.expand(groups, per_group, -1).clone()
        for name, part in factors.items():
            block = torch.linalg.cholesky(covariance[part, part])
            draws = torch.randn(groups, 1 if name == factor else per_group, len(block), generator=generator,
                                dtype=block.dtype).to(block.device)
            latent[..., part] += draws @ block.T
        return self.decode(latent.flatten(0, 1)).unflatten(0, (groups, per_group))

    def _require_latent_distribution(self) -> None:
        if self.latent_mean.numel() == 0:
            raise RuntimeError(f"{type(self).__name__} has no latent distribution yet: call model."
                               "fit_latent_distribution(data.train_dataloader()) once (it is saved with the model)")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # The latent Gaussian's size is only known once fitted: take it from the checkpoint. Checkpoints written
        # before models could sample have none: they load unfitted.
        for name, empty in (("latent_mean", (0,)), ("latent_cholesky", (0, 0))):
            state_dict.setdefault(prefix + name, torch.empty(empty))
            setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.mean.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -------------------------------------------------------------------------------------------- latent arithmetic
    @torch.no_grad()
    def interpolate(self, source: Tensor | np.ndarray, target: Tensor | np.ndarray,
                    weights: float | Sequence[float] | Tensor) -> Tensor:
        r"""Meshes along the latent line through two meshes (Deep3DMM, Chen & Kim, CVPR 2021, §4.7).

        For each weight :math:`w`: :math:`z(w) = (1 - w)\,z_s + w\,z_t`, decoded, with :math:`z = \mathrm{encode}(x)`.
        Weights in [0, 1] interpolate (§4.7 "Interpolation", with :math:`\alpha = w`); weights outside it extrapolate
        (§4.7 "Extrapolation": with the neutral face of an identity as ``source`` and one of its expressions as
        ``target``, :math:`w > 1` exaggerates the expression). :math:`w = 0` and :math:`w = 1` give the
        reconstructions of ``source`` and ``target``. For a linear model (PCA) the result is exactly
        :math:`(1 - w)\,\hat x_s + w\,\hat x_t`.

        Args:
            source, target: (V, 3) or (B, V, 3) meshes in metres; a single mesh pairs with every mesh of a batch.
            weights: one weight, or W weights (a sequence or 1-D tensor).

        Returns:
            (W, B, V, 3) meshes in metres; without the W axis for a single number, without the B axis when both
            inputs are single meshes.
        """
        (z_source, z_target), single = self._encode_for("interpolate", source, target)
        w = torch.as_tensor(weights, dtype=z_source.dtype, device=z_source.device)
        if w.dim() > 1:
            raise ValueError(f"{type(self).__name__}.interpolate: weights must be a number or a 1-D sequence, got "
                             f"shape {tuple(w.shape)}")
        w_ = w.reshape(-1, *[1] * z_source.dim())
        latent = (1 - w_) * z_source + w_ * z_target  # (W, B, ...)
        meshes = self.decode(latent.flatten(0, 1)).unflatten(0, latent.shape[:2])
        meshes = meshes[:, 0] if single else meshes
        return meshes[0] if w.dim() == 0 else meshes

    @torch.no_grad()
    def transfer_deformation(self, source: Tensor | np.ndarray, deformed_source: Tensor | np.ndarray,
                             target: Tensor | np.ndarray) -> Tensor:
        r"""Apply the deformation between two meshes of one subject to another subject (Deep3DMM §4.7).

        With :math:`S_0` (``source``, e.g. a neutral face), :math:`S_1` (``deformed_source``, the same subject with an
        expression or pose) and :math:`T_0` (``target``, another subject, same expression or pose as :math:`S_0`),
        the paper's "deformation transfer" on latent codes: :math:`\hat T_1 = \mathrm{decode}(z_{T_0} +
        (z_{S_1} - z_{S_0}))`. With :math:`S_1 = S_0` it is the reconstruction of :math:`T_0`.

        Args:
            source, deformed_source, target: (V, 3) or (B, V, 3) meshes in metres; single meshes pair with every mesh
                of a batch (one deformation to many targets, or many deformations to one target).

        Returns:
            (B, V, 3) meshes in metres, or (V, 3) when all three inputs are single meshes.
        """
        (z_s0, z_s1, z_t0), single = self._encode_for("transfer_deformation", source, deformed_source, target)
        meshes = self.decode(z_t0 + (z_s1 - z_s0))
        return meshes[0] if single else meshes

    def _encode_for(self, method: str, *meshes: Tensor | np.ndarray) -> tuple[list[Tensor], bool]:
        """Latent codes of each input, single meshes repeated to the common batch size, and whether all were single."""
        batches = [self._as_batch(vertices) for vertices in meshes]
        sizes = {len(vertices) for vertices, single in batches if not single}
        if len(sizes) > 1:
            shapes = ", ".join(str(tuple(vertices.shape)) for vertices, _ in batches)
            raise ValueError(f"{type(self).__name__}.{method}: the batched inputs have different batch sizes "
                             f"({shapes}); give equal batch sizes, or single (V, 3) meshes, which pair with every mesh "
                             "of a batch")
        size = max(sizes, default=1)
        latents = [self.encode_normalised(self.normalise(vertices)) for vertices, _ in batches]
        if not all(isinstance(latent, Tensor) for latent in latents):
            raise TypeError(f"{type(self).__name__}.{method} needs a tensor latent code; this model encodes to "
                            f"{type(latents[0]).__name__}: combine its parts yourself and call decode")
        return [latent.expand(size, *latent.shape[1:]) for latent in latents], not sizes

    # ----------------------------------------------------------------------------------------------- raw scans
    def fit_scan(self, scan, **options) -> ScanFit:
        """Register a raw scan or point cloud, in any units and pose, with holes, noise or crops, to this model's
        template: the similarity transform and the code (optionally a smooth per-vertex residual). ``scan``: (N, 3)
        points spread over the surface (a raw scan's), a ``trimesh.Trimesh`` (its surface is sampled by area, 20000
        points), or a batch (B, N, 3) / list; ``options``: those of :func:`morphzoo.fitting.fit_scan` (e.g.
        ``units_per_metre=1000`` for a scan in mm, ``fit_offsets=True``)."""
        if isinstance(scan, trimesh.Trimesh):
            scan = trimesh.sample.sample_surface(scan, 20000, seed=0)[0]
        return fit_scan(self, scan, **options)

    # ------------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = self.normalise(batch["vertices"])
        loss = F.l1_loss(self.decode_normalised(self.encode_normalised(x)), x)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_error.update(self(batch["vertices"]), batch["vertices"])

    def on_validation_epoch_end(self) -> None:
        # Checkpoints are selected on this validation error (carved from train), never on the test split.
        self.log("val/error_mm", self.val_error.compute()["mean"], prog_bar=True)
        self.val_error.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.test_error.update(self(batch["vertices"]), batch["vertices"])

    def on_test_epoch_end(self) -> None:
        result = self.test_error.compute()
        for key in ("mean", "std", "median"):
            self.log(f"test/error_{key}_mm", result[key])
        self.test_error.reset()

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch["vertices"])

    def prepare_inference(self) -> MorphableModel:
        """Switch to the inference form and evaluation mode; returns ``self``. The registry calls it after loading
        weights. Methods whose inference form differs from their training form override it (Deep3DMM materialises its
        learned sampling matrices)."""
        return self.eval()

    @classmethod
    def restore_arguments(cls, template: Template, state: dict[str, Tensor], init_args: dict,
                          extra: dict | None = None) -> tuple[Template, dict]:
        """The constructor arguments that rebuild a saved model from its state (Lightning ``.ckpt`` or zoo folder).

        ``template`` holds the saved topology and positions only. Methods whose construction reads more from the data
        (LAMM's regions and control vertices) override this to take it from their saved buffers instead; ``extra``
        is the checkpoint's other saved fields (Lightning's checkpoint dict or the zoo's ``config.json``).
        """
        return template, init_args

    @classmethod
    def from_lightning_checkpoint(cls, path: str, map_location: str | torch.device = "cpu") -> MorphableModel:
        """Rebuild a model from a Lightning ``.ckpt``: the template and normalisation come from its buffers."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        state = checkpoint["state_dict"]
        template = Template(vertices=state["template_vertices"].double().cpu().numpy(),
                            faces=state["template_faces"].cpu().numpy())
        # LightningCLI adds bookkeeping entries such as ``_class_path``: they are not constructor arguments.
        hyperparameters = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
        template, hyperparameters = cls.restore_arguments(template, state, hyperparameters, checkpoint)
        model = cls(template=template, mean=state["mean"], std=state["std"], **hyperparameters)
        model.load_state_dict(state, strict=True)
        return model.eval()
