"""Deep3DMM (Chen & Kim, "Learning Feature Aggregation for Deep 3D Morphable Models", CVPR 2021).

CoMA's or Neural3DMM's hierarchical autoencoder with the QEM down/up-sampling matrices replaced by learned feature
aggregation (§3.2, :class:`~morphzoo.nn.feature_aggregation.FeatureAggregation`): ``M = w_a·M_att + (1 − w_a)·M_QEM``,
where ``M_att`` comes from the cosine compatibility of trainable per-vertex queries and keys, top-k masked and
row-normalised. Everything else (convolutions, linear layers, loss, schedule) is the base model's (§4.2).

Paper defaults (§4.2): key/query size c = 21, top-k 2 for down-sampling (the released code used 8) and 32 for
up-sampling, ``w_a`` trainable and initialised to 0.2, queries and keys initialised from the vertex positions of
their level (Table 12). The comparisons on the CoMA dataset (Tables 1-3, 9-12) use latent 8 and the "simple" filters
(encoder 16, 16, 16, 32, decoder 32, 32, 16, 16, 16 + 3); "wider" is 16, 32, 64, 128 / 128, 64, 32, 32, 16 + 3.
Training (appendix C): Deep3DMM (spectral) as CoMA (SGD, lr 8e-3, 300 epochs), Deep3DMM (spiral) as Neural3DMM with
1-hop spirals (Adam, lr 1e-3, 200 epochs). Paper errors (CoMA, latent 8): spectral 0.519 mm simple / 0.441 wider
(CoMA 0.939 / 0.682); spiral 0.487 / 0.420 (Neural3DMM 0.785 / 0.525).

Ablations (their names in the paper): ``aggregation`` "attention" (ours), "full" (full mapping) or "average"
(Table 1); ``top_k_down`` / ``top_k_up`` ``None`` for no top-k mask (Fig. 15); ``fusion=False`` for "no fusing"
(Table 11); ``encoder_aggregation`` / ``decoder_aggregation`` for FA/QEM, QEM/FA and FA/FA (Table 3).

Choices where the paper is silent, stated:
- The queries and keys of a level pair are shared by its down-sampling (queries: coarse vertices, keys: fine ones)
  and its up-sampling (the reverse), as the parameter count of appendix E.1 implies: 8 weights ``w_a`` plus c vectors
  for 5023 + 1256 + 1256 + 314 + 314 + 79 + 79 + 20 vertices on the CoMA template. With FA on one side only, the
  vectors belong to that side.
- Weight decay (CoMA's 5e-4, Neural3DMM's 5e-5) applies to the convolution and linear weights only, not to the
  feature aggregation: the queries and keys enter through a scale-invariant cosine, where decay only shrinks their
  norm (and so inflates their effective learning rate), and ``w_a`` is a mixing weight.
- Only the mapping matrices are needed at inference (§3.2.1): :meth:`Deep3DMM.materialise` replaces every feature
  aggregation by a parameter-free sparse mapping. ``trainer.test``, ``trainer.predict`` and :meth:`prepare_inference`
  do it automatically; the model then has exactly the parameters of the QEM model (Table 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from morphzoo.mesh.sampling import SamplingLevel
from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS, MorphableModel
from morphzoo.methods.coma import SETTINGS as COMA_SETTINGS
from morphzoo.methods.coma import chebyshev_convolutions
from morphzoo.methods.mesh_autoencoder import MeshAutoencoder, SamplingFactory, qem_sampling
from morphzoo.methods.neural3dmm import SETTINGS as NEURAL3DMM_SETTINGS
from morphzoo.methods.neural3dmm import neural3dmm_convolutions
from morphzoo.nn.feature_aggregation import FeatureAggregation, SparseMapping, vertex_embeddings

SETTINGS = {"spectral": COMA_SETTINGS, "spiral": {name: NEURAL3DMM_SETTINGS[name] for name in ("simple", "wider")}}
"""The paper's "simple" and "wider" filters (Tables 2 and 9) for each variant (the spiral ones with 1-hop spirals)."""


def feature_aggregation_sampling(
    aggregation: str = "attention",
    top_k_down: int | None = 2,
    top_k_up: int | None = 32,
    key_dim: int = 21,
    fusion: bool | None = None,
    fusion_init: float = 0.2,
    trainable_fusion: bool = True,
    encoder_aggregation: bool = True,
    decoder_aggregation: bool = True,
    fusion_form: str = "linear",
) -> SamplingFactory:
    """A :class:`MeshAutoencoder` ``sampling_factory`` with Deep3DMM's feature aggregation (arguments: see
    :class:`Deep3DMMSpectral`); sides without aggregation keep the QEM sampling."""
    embeddings: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}

    def build(direction: str, level: int, sampling: SamplingLevel, fine: Template, coarse: Template) -> nn.Module:
        if not (encoder_aggregation if direction == "down" else decoder_aggregation):
            return qem_sampling(direction, level, sampling, fine, coarse)
        if aggregation == "attention" and level not in embeddings:
            frame = torch.from_numpy(fine.vertices)
            embeddings[level] = (vertex_embeddings(frame, frame, key_dim),
                                 vertex_embeddings(torch.from_numpy(coarse.vertices), frame, key_dim))
        fine_vectors, coarse_vectors = embeddings.get(level, (None, None))
        options = {"aggregation": aggregation, "fusion": fusion, "fusion_init": fusion_init,
                   "trainable_fusion": trainable_fusion, "fusion_form": fusion_form}
        if direction == "down":
            selection = torch.from_numpy(sampling.down_index)[:, None]
            return FeatureAggregation(selection, torch.ones(selection.shape), sampling.num_fine, queries=coarse_vectors,
                                      keys=fine_vectors, top_k=top_k_down, **options)
        return FeatureAggregation(torch.from_numpy(sampling.up_index), torch.from_numpy(sampling.up_weight),
                                  sampling.num_coarse, queries=fine_vectors, keys=coarse_vectors, top_k=top_k_up,
                                  **options)

    return build


class Deep3DMM(MeshAutoencoder):
    """A :class:`MeshAutoencoder` whose sampling may hold :class:`FeatureAggregation` modules: their inference form
    (:meth:`materialise`), optimiser parameter groups and checkpoint handling. Any convolution combines with it:
    pass ``sampling_factory=feature_aggregation_sampling(...)``."""

    @property
    def is_materialised(self) -> bool:
        return any(isinstance(module, SparseMapping) for module in [*self.down, *self.up])

    def materialise(self) -> Deep3DMM:
        """Replace every feature aggregation by its fixed sparse mapping, in place (idempotent). Outputs are unchanged
        and the parameters are exactly the QEM model's; the model can no longer be trained."""
        for modules in (self.down, self.up):
            for i, module in enumerate(modules):
                if isinstance(module, FeatureAggregation):
                    modules[i] = module.materialise()
        return self

    def prepare_inference(self) -> MorphableModel:
        """Materialise (see :meth:`materialise`) and switch to evaluation mode."""
        self.materialise()
        return super().prepare_inference()

    def on_test_start(self) -> None:
        self.materialise()

    def on_predict_start(self) -> None:
        self.materialise()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.is_materialised:
            raise RuntimeError(
                f"{type(self).__name__} was materialised for inference (by materialise(), prepare_inference(), "
                "trainer.test or trainer.predict): its queries and keys are gone and it cannot be trained. Build a "
                "new model and load the training checkpoint (from_lightning_checkpoint) to train it further."
            )
        return super().training_step(batch, batch_idx)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser groups: convolutions and linear layers with ``weight_decay``, feature aggregation without."""
        sampling = {id(p) for p in [*self.down.parameters(), *self.up.parameters()]}
        groups = [{"params": [p for p in self.parameters() if id(p) not in sampling], "weight_decay": weight_decay},
                  {"params": [p for p in self.parameters() if id(p) in sampling], "weight_decay": 0.0}]
        return [group for group in groups if group["params"]]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # A state dict saved after materialising holds sparse mappings where the training model has aggregations.
        if any(key.startswith(prefix) and key.endswith(".col_indices") for key in state_dict):
            self.materialise()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Deep3DMMSpectral(Deep3DMM):
    """Deep3DMM (spectral): CoMA's Chebyshev autoencoder with learned feature aggregation (module docstring).

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        latent_dim, encoder_channels, decoder_channels, cheb_order, sampling_factors, activation: as
            :class:`~morphzoo.methods.CoMA` (defaults: latent 8, "simple" filters, K = 6, ELU).
        aggregation: ``"attention"`` (the paper), ``"full"`` or ``"average"`` (Table 1), or ``"full-qem"`` (a
            trainable dense mapping started at QEM; morphzoo's).
        top_k_down, top_k_up: k of the top-k masks (2 and 32); ``None`` for no mask.
        key_dim: size c of the queries and keys (21).
        fusion: fuse with the QEM matrices (Eq. 7); ``False`` is Table 11's "no fusing"; ``None`` (default): the
            paper's per aggregation (fused attention, unfused Table 1 alternatives).
        fusion_init: initial fusion weight ``w_a`` (0.2).
        trainable_fusion: learn ``w_a`` (the paper); ``False`` keeps it at ``fusion_init`` (0 gives CoMA exactly).
        fusion_form: ``"linear"`` (the paper's unconstrained ``w_a``; the zoo's) or ``"sigmoid"`` (``w_a`` kept in
            (0, 1)); see :class:`~morphzoo.nn.FeatureAggregation`.
        encoder_aggregation, decoder_aggregation: learn the encoder's down-sampling / the decoder's up-sampling; the
            other side keeps QEM (Table 3).
        learning_rate, momentum, weight_decay, lr_decay: CoMA's SGD schedule.
    """

    # Appendix C: trained as CoMA: SGD with momentum 0.9, learning rate 8e-3 ×0.99 per epoch, weight decay 5e-4 (on
    # the convolutions and linear layers only, see `parameter_groups`).
    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.SGD

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        latent_dim: int = 8,
        encoder_channels: Sequence[int] = COMA_SETTINGS["simple"]["encoder_channels"],
        decoder_channels: Sequence[int] = COMA_SETTINGS["simple"]["decoder_channels"],
        cheb_order: int = 6,
        sampling_factors: Sequence[int] = (4, 4, 4, 4),
        activation: str = "elu",
        aggregation: str = "attention",
        top_k_down: int | None = 2,
        top_k_up: int | None = 32,
        key_dim: int = 21,
        fusion: bool | None = None,
        fusion_init: float = 0.2,
        trainable_fusion: bool = True,
        encoder_aggregation: bool = True,
        decoder_aggregation: bool = True,
        fusion_form: str = "linear",
        learning_rate: float = 8e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_decay: float = 0.99,
    ) -> None:
        sampling = feature_aggregation_sampling(aggregation, top_k_down, top_k_up, key_dim, fusion, fusion_init,
                                                trainable_fusion, encoder_aggregation, decoder_aggregation,
                                                fusion_form)
        super().__init__(template, mean, std, latent_dim, encoder_channels, decoder_channels, sampling_factors,
                         activation, chebyshev_convolutions(cheb_order), output_bias=False, sampling_factory=sampling)
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)


class Deep3DMMSpiral(Deep3DMM):
    """Deep3DMM (spiral): Neural3DMM's spiral autoencoder with learned feature aggregation (module docstring).

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        latent_dim, encoder_channels, decoder_channels, spiral_rings, spiral_dilation, reference_vertex,
            sampling_factors: as :class:`~morphzoo.methods.Neural3DMM`; defaults: the paper's comparison (latent 8,
            "simple" filters, 1-hop spirals without dilation).
        aggregation, top_k_down, top_k_up, key_dim, fusion, fusion_init, trainable_fusion, encoder_aggregation,
            decoder_aggregation: see :class:`Deep3DMMSpectral`.
        learning_rate, weight_decay, lr_decay: Neural3DMM's Adam schedule.
    """

    # Appendix C: trained as Neural3DMM: Adam, learning rate 1e-3 ×0.99 per epoch, weight decay 5e-5 (on the
    # convolutions and linear layers only, see `parameter_groups`).
    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        latent_dim: int = 8,
        encoder_channels: Sequence[int] = NEURAL3DMM_SETTINGS["simple"]["encoder_channels"],
        decoder_channels: Sequence[int] = NEURAL3DMM_SETTINGS["simple"]["decoder_channels"],
        spiral_rings: Sequence[int] = NEURAL3DMM_SETTINGS["simple"]["spiral_rings"],
        spiral_dilation: Sequence[int] = NEURAL3DMM_SETTINGS["simple"]["spiral_dilation"],
        reference_vertex: int = 0,
        sampling_factors: Sequence[int] = (4, 4, 4, 4),
        aggregation: str = "attention",
        top_k_down: int | None = 2,
        top_k_up: int | None = 32,
        key_dim: int = 21,
        fusion: bool | None = None,
        fusion_init: float = 0.2,
        trainable_fusion: bool = True,
        encoder_aggregation: bool = True,
        decoder_aggregation: bool = True,
        fusion_form: str = "linear",
        learning_rate: float = 1e-3,
        weight_decay: float = 5e-5,
        lr_decay: float = 0.99,
    ) -> None:
        convolutions = None if template is None else neural3dmm_convolutions(
            template, spiral_rings, spiral_dilation, reference_vertex, len(sampling_factors))
        sampling = feature_aggregation_sampling(aggregation, top_k_down, top_k_up, key_dim, fusion, fusion_init,
                                                trainable_fusion, encoder_aggregation, decoder_aggregation,
                                                fusion_form)
        super().__init__(template, mean, std, latent_dim, encoder_channels, decoder_channels, sampling_factors,
                         "elu", convolutions, output_bias=True, sampling_factory=sampling)
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
