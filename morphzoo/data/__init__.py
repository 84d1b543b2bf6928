"""Datasets: ``MeshDataModule`` and one module per dataset; ``synth/`` generates the embedded anny data."""

from morphzoo.data.anny_face import AnnyFaceDataModule
from morphzoo.data.base import MeshDataModule, MeshSubset
from morphzoo.data.collection import MeshCollection
from morphzoo.data.splits import PROTOCOLS, split_indices

__all__ = ["PROTOCOLS", "AnnyFaceDataModule", "MeshCollection", "MeshDataModule", "MeshSubset", "split_indices"]
