"""``MorphableModel``: the LightningModule every morphzoo method derives from.

A morphable model owns its template and the training data's normalisation as buffers, so a trained model (or one
loaded from a checkpoint) works on raw meshes in metres with no DataModule around: ``encode``, ``decode`` and
``forward`` all speak metres. Training follows the field's convention (CoMA, Ranjan et al. 2018, §4): per-vertex,
per-coordinate standardisation with the training split's mean and std; errors are measured after de-normalising.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

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

    def __init__(self, template: Template | None = None, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        if template is None:
            raise ValueError(
                f"{type(self).__name__} needs a template mesh. Train it through `morphzoo fit -c recipes/...yaml`, "
                "which links the template and normalisation from the DataModule, or pass `template=Template(...)`."
            )
        self.template = template
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

    @classmethod
    def from_lightning_checkpoint(cls, path: str, map_location: str | torch.device = "cpu") -> MorphableModel:
        """Rebuild a model from a Lightning ``.ckpt``: the template and normalisation come from its buffers."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        state = checkpoint["state_dict"]
        template = Template(vertices=state["template_vertices"].double().numpy(),
                            faces=state["template_faces"].numpy())
        # LightningCLI adds bookkeeping entries such as ``_class_path``: they are not constructor arguments.
        hyperparameters = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
        model = cls(template=template, mean=state["mean"], std=state["std"], **hyperparameters)
        model.load_state_dict(state, strict=True)
        return model.eval()
