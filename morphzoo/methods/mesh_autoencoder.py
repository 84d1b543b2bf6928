"""The hierarchical mesh autoencoder shared by CoMA, SpiralNet++, Neural3DMM and Deep3DMM.

Encoder: for each level ``i`` of a QEM hierarchy, ``conv -> activation -> down-sample``; flatten the coarsest level
and map it to the latent code with a linear layer. Decoder: a linear layer back to the coarsest level, then
``up-sample -> conv -> activation`` per level, and a last convolution to xyz (no activation). The methods differ in
their convolution (Chebyshev or spiral) and defaults, so they pass a ``conv_factory`` to this class; Deep3DMM also
replaces the QEM down/up-sampling by learned feature aggregation through a ``sampling_factory``. Any convolution
combines with any sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from morphzoo.mesh.sampling import SamplingLevel, mesh_hierarchy
from morphzoo.mesh.template import Template
from morphzoo.methods.base import MorphableModel
from morphzoo.nn.pooling import Downsample, Upsample

# conv_factory(level, level_template, in_channels, out_channels, bias) -> module mapping (B, V_level, C_in) -> C_out
ConvFactory = Callable[[int, Template, int, int, bool], nn.Module]
# sampling_factory(direction, level, sampling, fine_template, coarse_template) -> module for ``levels[level]``:
# direction "down" maps (B, V_fine, C) -> (B, V_coarse, C), direction "up" maps (B, V_coarse, C) -> (B, V_fine, C).
SamplingFactory = Callable[[str, int, SamplingLevel, Template, Template], nn.Module]


def qem_sampling(direction: str, level: int, sampling: SamplingLevel, fine: Template, coarse: Template) -> nn.Module:
    """The fixed QEM sampling of CoMA (§3.2): vertex selection down, barycentric interpolation up."""
    if direction == "down":
        return Downsample(sampling.down_index)
    return Upsample(sampling.up_index, sampling.up_weight)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU}


class MeshAutoencoder(MorphableModel):
    """Hierarchical convolutional mesh autoencoder (see the module docstring).

    Args:
        template, mean, std: see :class:`MorphableModel`.
        latent_dim: size of the latent code.
        encoder_channels: output channels of the encoder convolution at each level (one per sampling factor).
        decoder_channels: channels at the coarsest level after the decoder's linear layer, then the output channels of
            the decoder convolution at each level from coarse to fine (one more entry than ``sampling_factors``).
        sampling_factors: QEM decimation factor between consecutive levels.
        activation: ``"relu"`` or ``"elu"``.
        conv_factory: builds the convolution for a level.
        output_bias: whether the last convolution (to xyz) has a bias (CoMA's has none; SpiralNet++'s has one).
        sampling_factory: builds the down- and up-sampling between two levels (default: :func:`qem_sampling`).

    Training follows the family's schedule, which each method states as data: :attr:`optimizer_class` names its
    paper's optimiser, and its hyper-parameters ``learning_rate``, ``weight_decay``, ``lr_decay`` (and ``momentum``
    for SGD) give the values; the learning rate is multiplied by ``lr_decay`` after every epoch (0.99 in CoMA,
    Neural3DMM, SpiralNet++ and Deep3DMM).
    """

    optimizer_class: ClassVar[type[torch.optim.Optimizer]]

    def __init__(
        self,
        template: Template | None,
        mean: Tensor | None,
        std: Tensor | None,
        latent_dim: int,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        sampling_factors: Sequence[int],
        activation: str,
        conv_factory: ConvFactory,
        output_bias: bool,
        sampling_factory: SamplingFactory = qem_sampling,
    ) -> None:
        super().__init__(template, mean, std)
        levels = len(sampling_factors)
        if len(encoder_channels) != levels or len(decoder_channels) != levels + 1:
            raise ValueError(
                f"{type(self).__name__}: with {levels} sampling factors, give {levels} encoder channels and "
                f"{levels + 1} decoder channels; got {list(encoder_channels)} and {list(decoder_channels)}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        hierarchy = mesh_hierarchy(self.template, list(sampling_factors))
        self.level_sizes = hierarchy.sizes
        templates = hierarchy.templates
        # down[i] maps level i to level i + 1; up[i] maps level i + 1 back to level i.
        self.down, self.up = (
            nn.ModuleList(sampling_factory(direction, i, hierarchy.levels[i], templates[i], templates[i + 1])
                          for i in range(levels))
            for direction in ("down", "up")
        )

        channels = [3, *encoder_channels]
        self.encoder_convs = nn.ModuleList(
            conv_factory(i, templates[i], channels[i], channels[i + 1], True) for i in range(levels)
        )
        coarsest = self.level_sizes[-1]
        self.encoder_linear = nn.Linear(coarsest * encoder_channels[-1], latent_dim)
        self.decoder_linear = nn.Linear(latent_dim, coarsest * decoder_channels[0])
        # Decoder convolution j runs on level levels-1-j, after up-sampling into it.
        self.decoder_convs = nn.ModuleList(
            conv_factory(levels - 1 - j, templates[levels - 1 - j], decoder_channels[j], decoder_channels[j + 1], True)
            for j in range(levels)
        )
        self.output_conv = conv_factory(0, templates[0], decoder_channels[-1], 3, output_bias)
        self.activation = ACTIVATIONS[activation]()
        self.decoder_channels = tuple(decoder_channels)

    def encode_normalised(self, x: Tensor) -> Tensor:
        for conv, down in zip(self.encoder_convs, self.down, strict=True):
            x = down(self.activation(conv(x)))
        return self.encoder_linear(x.flatten(1))

    def decode_normalised(self, latent: Tensor) -> Tensor:
        return self.decode_coarsest(
            self.decoder_linear(latent).view(latent.shape[0], self.level_sizes[-1], self.decoder_channels[0]))

    def decode_coarsest(self, x: Tensor) -> Tensor:
        """The decoder after its linear layer: (B, V_coarsest, C) features -> (B, V, 3) standardised coordinates."""
        for conv, up in zip(self.decoder_convs, reversed(self.up), strict=True):
            x = self.activation(conv(up(x)))
        return self.output_conv(x)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser parameter groups: one, every parameter with ``weight_decay``. Deep3DMM exempts its feature
        aggregation."""
        return [{"params": list(self.parameters()), "weight_decay": weight_decay}]

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # Only the SGD methods have a momentum hyper-parameter (Adam's betas stay torch's defaults).
        momentum = {"momentum": hp.momentum} if "momentum" in hp else {}
        optimizer = self.optimizer_class(self.parameter_groups(hp.weight_decay), lr=hp.learning_rate, **momentum)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
