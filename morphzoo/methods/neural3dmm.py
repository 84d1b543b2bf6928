"""Neural3DMM (Bouritsas, Bokhnyak, Ploumpis, Zafeiriou, Bronstein; ICCV 2019): spiral convolutional mesh autoencoder.

The hierarchical autoencoder of CoMA with anisotropic spiral convolutions (paper §3.2): each vertex's neighbourhood is
serialised as a spiral that starts at the vertex, enters its 1-ring at the neighbour on the shortest path (by edge
length) to a fixed reference vertex and continues ring by ring in the same direction; dilation keeps the centre, that
first neighbour and every ``dilation``-th entry after it, and a ring cut by the boundary carries a gap mark, as in the
reference implementation; every spiral of a level is cut or padded to ``L = int(mean + 2·std)`` of the spiral
lengths, padding and gap marks pointing at a dummy all-zero vertex (``morphzoo.mesh.spirals.neural3dmm_spirals``).
A spiral convolution concatenates the features along the spiral and applies one linear layer. QEM down/up-sampling
between levels, as CoMA.

Defaults are the paper's DFAUST setting (:data:`SETTINGS` ``"dfaust"``): factors [4, 4, 4, 4], spiral rings (step
sizes) [2, 2, 1, 1] and dilation [2, 2, 1, 1] on the four convolved levels, encoder 16, 32, 64, 128, decoder 128, 64,
32, 32, 16 (+ 3), latent 16, ELU. The paper lists a fifth ring count and dilation (1, 1) for the coarsest mesh, where
this architecture runs no convolution (a linear layer maps it). Training: Adam, learning rate 1e-3 decayed ×0.99 per
epoch, weight decay 5e-5, batch 16, L1 loss, 300 epochs.

:data:`SETTINGS` also holds the "simple" and "wider" filters that Deep3DMM (Chen & Kim 2021, Table 9) compares
Neural3DMM with, on the CoMA dataset with latent 8, "spiral convolution of 1 hop" (Deep3DMM appendix A: one ring,
no dilation) and 200 epochs (appendix C).

Choices, stated:
- The reference vertex (the paper's DFAUST code fixes a vertex index per template) is the hyper-parameter
  ``reference_vertex`` (default 0) of the input template; on each coarser level the spirals start towards the vertex
  nearest to its position (itself when it survives the decimation).
- The dummy vertex exists only inside the spiral convolution (``SpiralConv(pad_with_dummy=True)``); the reference code
  also carried it through the fully connected layers, adding weights that only ever multiply zeros.
- The output convolution (16 → 3) has a bias and no activation, as the reference code's last layer.
- Every layer keeps PyTorch's default ``Linear`` initialisation, as the reference code does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from morphzoo.mesh.spirals import neural3dmm_spirals
from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS
from morphzoo.methods.mesh_autoencoder import ConvFactory, MeshAutoencoder
from morphzoo.nn.spiralconv import SpiralConv

SETTINGS = {
    "dfaust": {"encoder_channels": (16, 32, 64, 128), "decoder_channels": (128, 64, 32, 32, 16),
               "spiral_rings": (2, 2, 1, 1), "spiral_dilation": (2, 2, 1, 1)},
    "simple": {"encoder_channels": (16, 16, 16, 32), "decoder_channels": (32, 32, 16, 16, 16),
               "spiral_rings": (1, 1, 1, 1), "spiral_dilation": (1, 1, 1, 1)},
    "wider": {"encoder_channels": (16, 32, 64, 128), "decoder_channels": (128, 64, 32, 32, 16),
              "spiral_rings": (1, 1, 1, 1), "spiral_dilation": (1, 1, 1, 1)},
}


def neural3dmm_convolutions(template: Template, spiral_rings: Sequence[int], spiral_dilation: Sequence[int],
                            reference_vertex: int, levels: int) -> ConvFactory:
    """The ``conv_factory`` of Neural3DMM: a dummy-padded :class:`SpiralConv` per level (see the module docstring)."""
    for name, values in (("spiral_rings", spiral_rings), ("spiral_dilation", spiral_dilation)):
        if len(values) != levels:
            raise ValueError(f"Neural3DMM: {name} needs one entry per convolved level, i.e. per sampling factor "
                             f"({levels}); got {list(values)}")
    if not 0 <= reference_vertex < template.num_vertices:
        raise ValueError(f"Neural3DMM: reference_vertex must be a vertex of the template, in [0, "
                         f"{template.num_vertices}), got {reference_vertex}")
    reference_position = template.vertices[reference_vertex]

    def spiral(level: int, level_template: Template, c_in: int, c_out: int, bias: bool) -> SpiralConv:
        reference = int(np.argmin(np.linalg.norm(level_template.vertices - reference_position, axis=1)))
        spirals = neural3dmm_spirals(level_template, spiral_rings[level], spiral_dilation[level], reference)
        return SpiralConv(c_in, c_out, torch.from_numpy(spirals), pad_with_dummy=True, bias=bias, xavier=False)

    return spiral


class Neural3DMM(MeshAutoencoder):
    """Neural3DMM spiral mesh autoencoder. See the module docstring for the paper's settings and our choices.

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        latent_dim: latent size (16 on DFAUST; 8 in Deep3DMM's CoMA-dataset comparison).
        encoder_channels, decoder_channels: see :class:`MeshAutoencoder`; :data:`SETTINGS` has the papers' settings.
        spiral_rings: rings (the paper's "step sizes") of the spirals on each convolved level, fine to coarse (one per
            sampling factor).
        spiral_dilation: dilation of the spirals on each convolved level (one per sampling factor).
        reference_vertex: the vertex of the input template that every spiral starts towards.
        sampling_factors: QEM decimation factors.
        learning_rate, weight_decay, lr_decay: Adam schedule of the paper.
    """

    # The paper's training: Adam, learning rate 1e-3 ×0.99 per epoch, weight decay 5e-5 (the defaults below).
    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        latent_dim: int = 16,
        encoder_channels: Sequence[int] = SETTINGS["dfaust"]["encoder_channels"],
        decoder_channels: Sequence[int] = SETTINGS["dfaust"]["decoder_channels"],
        spiral_rings: Sequence[int] = SETTINGS["dfaust"]["spiral_rings"],
        spiral_dilation: Sequence[int] = SETTINGS["dfaust"]["spiral_dilation"],
        reference_vertex: int = 0,
        sampling_factors: Sequence[int] = (4, 4, 4, 4),
        learning_rate: float = 1e-3,
        weight_decay: float = 5e-5,
        lr_decay: float = 0.99,
    ) -> None:
        convolutions = None if template is None else neural3dmm_convolutions(
            template, spiral_rings, spiral_dilation, reference_vertex, len(sampling_factors))
        super().__init__(template, mean, std, latent_dim, encoder_channels, decoder_channels, sampling_factors,
                         "elu", convolutions, output_bias=True)
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
