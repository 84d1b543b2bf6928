"""morphzoo's methods: one readable file per method family, all :class:`MorphableModel` LightningModules."""

from morphzoo.methods.base import MorphableModel
from morphzoo.methods.coma import CoMA
from morphzoo.methods.spiralnet import SpiralNetPlusPlus

__all__ = ["CoMA", "MorphableModel", "SpiralNetPlusPlus"]
