"""The embedded default dataset: CoMA-like face sequences generated locally from the ``anny`` head model."""

from __future__ import annotations

from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection


class AnnyFaceDataModule(MeshDataModule):
    """anny-face: subjects × 12 CoMA expressions (neutral → peak → neutral), generated and cached on first use.

    Args:
        size: ``tiny`` (tests), ``small`` (the main job) or ``full`` (about CoMA's size).
        seed: generator seed; the same seed gives bitwise identical meshes.
        **kwargs: split, batch size and loader options of :class:`MeshDataModule`.
    """

    def __init__(self, size: str = "small", seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size, self.seed = size, seed

    def load_collection(self) -> MeshCollection:
        from morphzoo.data.synth.face import load_anny_face  # imports anny (slow): only when data is needed

        return load_anny_face(self.size, self.seed)
