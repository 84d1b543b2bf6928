"""The hierarchical mesh autoencoder shared by CoMA and SpiralNet++ (and the Neural3DMM to come).

Encoder: for each level ``i`` of a QEM hierarchy, ``conv -> activation -> down-sample``; flatten the coarsest level
and map it to the latent code with a linear layer. Decoder: a linear layer back to the coarsest level, then
``up-sample -> conv -> activation`` per level, and a last convolution to xyz (no bias, no activation). The methods
differ only in their convolution (Chebyshev or spiral) and defaults, so they pass a ``conv_factory`` to this class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from morphzoo.mesh.sampling import mesh_hierarchy
from morphzoo.mesh.template import Template
from morphzoo.methods.base import MorphableModel
from morphzoo.nn.pooling import Downsample, Upsample

# conv_factory(level, level_template, in_channels, out_channels, bias) -> module mapping (B, V_level, C_in) -> C_out
ConvFactory = Callable[[int, Template, int, int, bool], nn.Module]

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
    """

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
        self.down = nn.ModuleList(Downsample(level.down_index) for level in hierarchy.levels)
        self.up = nn.ModuleList(Upsample(level.up_index, level.up_weight) for level in hierarchy.levels)

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
        x = self.decoder_linear(latent).view(len(latent), self.level_sizes[-1], self.decoder_channels[0])
        for conv, up in zip(self.decoder_convs, reversed(self.up), strict=True):
            x = self.activation(conv(up(x)))
        return self.output_conv(x)
