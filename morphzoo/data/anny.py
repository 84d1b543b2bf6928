"""The embedded datasets, generated locally from the ``anny`` body model (no licence, no download).

Each is a stand-in for a benchmark dataset with the same structure, labels and split protocol:

- ``anny-face``: CoMA-like expression sequences (:mod:`morphzoo.data.synth.face`);
- ``anny-bu3dfe``: BU-3DFE-like neutral + 6 expressions × 4 levels (:mod:`morphzoo.data.synth.bu3dfe`);
- ``anny-body``: DFAUST-like motion sequences (:mod:`morphzoo.data.synth.body`);
- ``anny-hand``: SynHand-like random hand shapes and poses (:mod:`morphzoo.data.synth.hand`);
- ``anny-heads``: AFLW2000-3D / UHM12k-like many-identity heads on a quad template (:mod:`morphzoo.data.synth.heads`).

Generation is deterministic in ``seed`` and cached atomically; ``tiny`` presets exist for tests.
"""

from __future__ import annotations

import importlib

from morphzoo.data.base import MeshDataModule
from morphzoo.data.bu3dfe import FirstSubjectsTest
from morphzoo.data.collection import MeshCollection
from morphzoo.data.synth.common import choose_preset
from morphzoo.data.synth.heads import PRESETS as HEADS_PRESETS

ANNY_DATASETS = {"anny-face": "face", "anny-bu3dfe": "bu3dfe", "anny-body": "body", "anny-hand": "hand",
                 "anny-heads": "heads"}


def load_anny_dataset(name: str, size: str, seed: int = 0) -> MeshCollection:
    """The embedded dataset ``name`` (one of :data:`ANNY_DATASETS`) at ``size``, generated on first use."""
    if name not in ANNY_DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; choose one of {', '.join(ANNY_DATASETS)}")
    # imported on demand: anny is slow to import and only needed when data is generated
    module = importlib.import_module(f"morphzoo.data.synth.{ANNY_DATASETS[name]}")
    return getattr(module, f"load_{name.replace('-', '_')}")(size, seed)


class AnnyDataModule(MeshDataModule):
    """Base of the embedded datasets.

    Args:
        size: ``tiny`` (tests), ``small`` (short CPU runs) or ``full`` (about the real dataset's size).
        seed: generator seed; the same seed gives bitwise identical meshes.
        **kwargs: split, batch size and loader options of :class:`MeshDataModule`.
    """

    dataset = ""

    def __init__(self, size: str = "small", seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size, self.seed = size, seed

    def load_collection(self) -> MeshCollection:
        return load_anny_dataset(self.dataset, self.size, self.seed)


class AnnyFaceDataModule(AnnyDataModule):
    """anny-face: subjects × 12 CoMA expressions (neutral → peak → neutral); CoMA's splits.

    Args:
        expressions: ``"coma"`` (the dataset) or ``"novel"``: the same people performing six expressions no CoMA-like
            recipe contains (:data:`morphzoo.data.synth.face.NOVEL_EXPRESSION_RECIPES`), the unseen-expression
            protocol of ``morphzoo bench``.
    """

    dataset = "anny-face"

    def __init__(self, size: str = "small", seed: int = 0, expressions: str = "coma", **kwargs) -> None:
        super().__init__(size, seed, **kwargs)
        self.expressions = expressions

    def load_collection(self) -> MeshCollection:
        if self.expressions == "coma":
            return super().load_collection()
        from morphzoo.data.synth.face import load_anny_face  # anny is slow to import: on demand, as above

        return load_anny_face(self.size, self.seed, self.expressions)


class AnnyBU3DFEDataModule(FirstSubjectsTest, AnnyDataModule):
    """anny-bu3dfe: BU-3DFE's structure, names and split (first ten subjects test)."""

    dataset = "anny-bu3dfe"

    def __init__(self, size: str = "full", seed: int = 0, split: str = "identity", **kwargs) -> None:
        super().__init__(size, seed, split=split, **kwargs)


class AnnyBodyDataModule(AnnyDataModule):
    """anny-body: DFAUST-like motions; DFAUST's default split (``interpolation``; also ``sequence``, ``identity``)."""

    dataset = "anny-body"


class AnnyHandDataModule(AnnyDataModule):
    """anny-hand: SynHand-like hands; a seeded random 10 % test split as in the Deep3DMM SynHand protocol."""

    dataset = "anny-hand"

    def __init__(self, size: str = "small", seed: int = 0, split: str = "random", test_size: int | float = 0.1,
                 **kwargs) -> None:
        super().__init__(size, seed, split=split, test_size=test_size, **kwargs)


class AnnyHeadsDataModule(AnnyDataModule):
    """anny-heads: one neutral head per person on a quad template; a seeded random test split whose size is the
    preset's (``aflw``: 220 of 2,000 as in the locally weighted NMF paper; ``uhm``: 600 of 6,000)."""

    dataset = "anny-heads"

    def __init__(self, size: str = "small", seed: int = 0, split: str = "random", test_size: int | None | float = None,
                 **kwargs) -> None:
        if test_size is None:
            test_size = choose_preset(HEADS_PRESETS, size, "anny-heads").test_size
        elif isinstance(test_size, float) and test_size.is_integer():
            test_size = int(test_size)  # the CLI parses a count through this Optional signature as a float
        super().__init__(size, seed, split=split, test_size=test_size, **kwargs)
