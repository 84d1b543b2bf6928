"""morphzoo's methods: one readable file per method family, all :class:`MorphableModel` LightningModules."""

from morphzoo.methods.base import MorphableModel
from morphzoo.methods.coma import CoMA
from morphzoo.methods.decoupled_gan import DecoupledGAN
from morphzoo.methods.deep3dmm import Deep3DMMSpectral, Deep3DMMSpiral
from morphzoo.methods.ibvae import IBCVAE, IBVAE
from morphzoo.methods.lamm import LAMM
from morphzoo.methods.locally_weighted import LocallyWeightedAutoencoder
from morphzoo.methods.neural3dmm import Neural3DMM
from morphzoo.methods.pca import PCA, RegionPCA
from morphzoo.methods.spiralnet import SpiralNetPlusPlus

__all__ = ["CoMA", "DecoupledGAN", "Deep3DMMSpectral", "Deep3DMMSpiral", "IBCVAE", "IBVAE", "LAMM",
           "LocallyWeightedAutoencoder", "MorphableModel", "Neural3DMM", "PCA", "RegionPCA", "SpiralNetPlusPlus"]
