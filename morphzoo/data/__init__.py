"""Datasets: ``MeshDataModule``, one module per real dataset, the embedded anny datasets (``synth/``), the exporter."""

from morphzoo.data.anny import (
    AnnyBodyDataModule,
    AnnyBU3DFEDataModule,
    AnnyFaceDataModule,
    AnnyHandDataModule,
    AnnyHeadsDataModule,
    load_anny_dataset,
)
from morphzoo.data.base import MeshDataModule, MeshSubset
from morphzoo.data.bu3dfe import BU3DFEDataModule
from morphzoo.data.collection import MeshCollection
from morphzoo.data.coma import CoMADataModule
from morphzoo.data.dfaust import DFAUSTDataModule
from morphzoo.data.export import FORMATS, export_collection
from morphzoo.data.folder import MeshFolderDataModule, SynHandDataModule
from morphzoo.data.splits import PROTOCOLS, split_indices
from morphzoo.data.uhm import UHMDataModule

__all__ = [
    "FORMATS", "PROTOCOLS", "AnnyBU3DFEDataModule", "AnnyBodyDataModule", "AnnyFaceDataModule", "AnnyHandDataModule",
    "AnnyHeadsDataModule", "BU3DFEDataModule", "CoMADataModule", "DFAUSTDataModule", "MeshCollection", "MeshDataModule",
    "MeshFolderDataModule", "MeshSubset", "SynHandDataModule", "UHMDataModule", "export_collection",
    "load_anny_dataset", "split_indices",
]
