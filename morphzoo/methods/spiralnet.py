"""SpiralNet++ (Gong, Chen, Bronstein, Zafeiriou; ICCV Workshops 2019).

Spiral convolutions over fixed-length spirals (centre, then rings in circulator order; paper §3.1) in the hierarchical
mesh autoencoder of CoMA/Neural3DMM. Paper defaults for reconstruction (§4.2): encoder channels 32, 32, 32, 64, latent
16, spiral length 9 with dilation 1 on every level, ELU, Adam with learning rate 1e-3 decayed ×0.99 per epoch, batch
32, L1 loss, 300 epochs. The decoder mirrors the encoder (64, 64, 32, 32, 32 → 3). Every linear map, the spiral
convolutions' and the fully connected layers', starts Xavier-uniform with zero bias, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from morphzoo.mesh.spirals import spiralnet_spirals
from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS
from morphzoo.methods.mesh_autoencoder import ConvFactory, MeshAutoencoder
from morphzoo.nn.spiralconv import SpiralConv, xavier_initialise


def spiralnet_convolutions(spiral_length: int, spiral_dilation: Sequence[int]) -> ConvFactory:
    """The ``conv_factory`` of SpiralNet++: a :class:`SpiralConv` per level over spirals of ``spiral_length``
    vertices, dilated by ``spiral_dilation[level]`` (see the module docstring)."""

    def spiral(level: int, level_template: Template, c_in: int, c_out: int, bias: bool) -> SpiralConv:
        spirals = torch.from_numpy(spiralnet_spirals(level_template, spiral_length, spiral_dilation[level]))
        return SpiralConv(c_in, c_out, spirals, bias=bias)

    return spiral


class SpiralNetPlusPlus(MeshAutoencoder):
    """SpiralNet++ mesh autoencoder. See the module docstring for the paper's defaults.

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        latent_dim: latent size (16 in the paper's CoMA experiments).
        encoder_channels: encoder output channels per level; the decoder mirrors them.
        spiral_length: spiral length L on every level.
        spiral_dilation: dilation per level (one entry per sampling factor).
        sampling_factors: QEM decimation factors.
        learning_rate, weight_decay, lr_decay: Adam schedule of the paper.
    """

    # §4.2: Adam, learning rate 1e-3 ×0.99 per epoch, no weight decay (the defaults below).
    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        latent_dim: int = 16,
        encoder_channels: Sequence[int] = (32, 32, 32, 64),
        spiral_length: int = 9,
        spiral_dilation: Sequence[int] = (1, 1, 1, 1),
        sampling_factors: Sequence[int] = (4, 4, 4, 4),
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        lr_decay: float = 0.99,
    ) -> None:
        if len(spiral_dilation) != len(sampling_factors):
            raise ValueError(f"SpiralNetPlusPlus: give one spiral dilation per level ({len(sampling_factors)}), "
                             f"got {list(spiral_dilation)}")
        decoder_channels = (encoder_channels[-1], *reversed(encoder_channels))
        super().__init__(template, mean, std, latent_dim, encoder_channels, decoder_channels, sampling_factors,
                         "elu", spiralnet_convolutions(spiral_length, spiral_dilation), output_bias=True)
        xavier_initialise(self.encoder_linear)
        xavier_initialise(self.decoder_linear)
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
