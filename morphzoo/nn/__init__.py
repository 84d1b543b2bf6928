"""Reusable mesh layers: small, documented ``nn.Module``s with the formula in the docstring."""

from morphzoo.nn.chebconv import ChebConv
from morphzoo.nn.pooling import Downsample, Upsample
from morphzoo.nn.spiralconv import SpiralConv

__all__ = ["ChebConv", "Downsample", "SpiralConv", "Upsample"]
