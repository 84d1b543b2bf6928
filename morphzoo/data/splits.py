"""Split protocols, defined on a collection's canonical sorted order.

- ``interpolation`` (CoMA, Ranjan et al. 2018, §5.1): over the sorted list of all meshes, index ``i % 100 < 10`` is test
  (ten consecutive frames of every hundred). The original code used an unsorted ``glob``; we sort.
- ``pyg-interpolation`` (PyTorch Geometric's ``CoMA`` dataset): the same rule applied *within each sequence* (the
  ``j``-th frame of a subject's expression is test when ``j % 100 >= 90``). A different protocol: numbers obtained
  with it are not comparable with the papers' ``interpolation`` numbers.
- ``extrapolation`` (CoMA §5.2): one expression is held out; all its meshes are test (12 folds on CoMA).
- ``sequence``: the named motion sequences (label ``sequence``, e.g. DFAUST's ``punching``) are test, for every subject.
- ``identity``: held-out subjects are test (generalisation to new people; BU-3DFE's first ten subjects).
- ``random``: a seeded random ``test_size`` meshes are test (SynHand's 10K of 100K, AFLW2000-3D's 220 of 2000).
- ``file``: a JSON file ``{"train": [...], "val": [...], "test": [...]}`` listing mesh names (``MeshCollection.names``);
  ``val`` is optional and meshes it does not list are not used.

Validation is carved from the training meshes. For ``random`` it is a seeded random 5 % of them; otherwise (and for
``file`` without ``val``) it is the same block rule as the interpolation test set, shifted: index ``i % 100`` in
``[50, 55)`` (5 %). Checkpoints are selected on it; the test split is used once, for reporting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from morphzoo.data.collection import MeshCollection

PROTOCOLS = ("interpolation", "pyg-interpolation", "extrapolation", "sequence", "identity", "random", "file")
VALIDATION_BLOCK = (50, 55)
VALIDATION_FRACTION = 0.05


def split_indices(
    collection: MeshCollection,
    protocol: str = "interpolation",
    held_out_expression: str | None = None,
    held_out_sequences: Sequence[str] | None = None,
    test_identities: Sequence[str] | None = None,
    test_size: int | float = 0.1,
    split_seed: int = 0,
    split_file: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Sorted indices of the ``train``, ``val`` and ``test`` meshes of ``collection`` under ``protocol``.

    Args:
        protocol: one of :data:`PROTOCOLS`.
        held_out_expression: the test expression for ``extrapolation``.
        held_out_sequences: the test sequences for ``sequence``.
        test_identities: the test subjects for ``identity``.
        test_size: for ``random``: a number of meshes (int) or a fraction of them (float < 1).
        split_seed: seed of the ``random`` split.
        split_file: the JSON file of the ``file`` split.
    """
    index = np.arange(len(collection))
    if protocol == "random":
        return _random_split(len(collection), test_size, split_seed)
    if protocol == "file":
        return _file_split(collection, split_file)
    if protocol == "interpolation":
        is_test = index % 100 < 10
    elif protocol == "pyg-interpolation":
        is_test = _position_in_sequence(collection) % 100 >= 90
    elif protocol == "extrapolation":
        if held_out_expression is None:
            raise ValueError("split 'extrapolation' needs held_out_expression, one of: "
                             + ", ".join(collection.vocabularies.get("expression", ())))
        is_test = _has_label(collection, "expression", [held_out_expression])
    elif protocol == "sequence":
        if not held_out_sequences:
            raise ValueError("split 'sequence' needs held_out_sequences, some of: "
                             + ", ".join(collection.vocabularies.get("sequence", ())))
        is_test = _has_label(collection, "sequence", held_out_sequences)
    elif protocol == "identity":
        if not test_identities:
            raise ValueError("split 'identity' needs test_identities, some of: "
                             + ", ".join(collection.vocabularies.get("identity", ())))
        is_test = _has_label(collection, "identity", test_identities)
    else:
        raise ValueError(f"unknown split protocol {protocol!r}; choose one of {PROTOCOLS}")
    return _checked(protocol, len(collection), index[is_test], _validation_block(index[~is_test]))


def _validation_block(candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) of ``candidates`` with val = the meshes whose index ``i % 100`` lies in ``VALIDATION_BLOCK``."""
    is_val = (candidates % 100 >= VALIDATION_BLOCK[0]) & (candidates % 100 < VALIDATION_BLOCK[1])
    return candidates[~is_val], candidates[is_val]


def _checked(protocol: str, count: int, test: np.ndarray, train_val: tuple[np.ndarray, np.ndarray]
             ) -> dict[str, np.ndarray]:
    splits = {"train": np.sort(train_val[0]), "val": np.sort(train_val[1]), "test": np.sort(test)}
    for name, members in splits.items():
        if len(members) == 0:
            raise ValueError(f"split {protocol!r} leaves the {name} set empty for this collection of {count} meshes")
    return splits


def _has_label(collection: MeshCollection, label: str, names: Sequence[str]) -> np.ndarray:
    """Boolean mask of the meshes whose ``label`` is one of ``names`` (unknown names are an error)."""
    vocabulary = collection.vocabularies.get(label, ())
    if label not in collection.labels:
        raise ValueError(f"this dataset has no '{label}' label (labels: {', '.join(collection.labels) or 'none'})")
    unknown = [name for name in names if name not in vocabulary]
    if unknown:
        raise ValueError(f"unknown {label} {', '.join(map(repr, unknown))}; this dataset has: {', '.join(vocabulary)}")
    return np.isin(collection.labels[label], [vocabulary.index(name) for name in names])


def _position_in_sequence(collection: MeshCollection) -> np.ndarray:
    """Each mesh's position within its run of consecutive meshes with the same identity and expression/sequence."""
    keys = [name for name in ("identity", "expression", "sequence") if name in collection.labels]
    if "identity" not in keys or len(keys) < 2:
        raise ValueError("split 'pyg-interpolation' needs 'identity' and 'expression' (or 'sequence') labels")
    count = len(collection)
    starts = np.zeros(count, dtype=bool)
    starts[:1] = True
    for name in keys:
        values = np.asarray(collection.labels[name])
        starts[1:] |= values[1:] != values[:-1]
    start_index = np.maximum.accumulate(np.where(starts, np.arange(count), 0))
    return np.arange(count) - start_index


def _random_split(count: int, test_size: int | float, seed: int) -> dict[str, np.ndarray]:
    if isinstance(test_size, float) and not 0 < test_size < 1:
        raise ValueError(f"test_size {test_size} must be a fraction in (0, 1) or a number of meshes")
    test_count = round(test_size * count) if isinstance(test_size, float) else int(test_size)
    if not 0 < test_count < count:
        raise ValueError(f"test_size {test_size} leaves no training or no test meshes of {count}")
    order = np.random.default_rng(seed).permutation(count)
    val_count = max(1, round(VALIDATION_FRACTION * (count - test_count)))
    test, val, train = np.split(order, [test_count, test_count + val_count])
    return _checked("random", count, test, (train, val))


def _file_split(collection: MeshCollection, split_file: str | Path | None) -> dict[str, np.ndarray]:
    if split_file is None:
        raise ValueError("split 'file' needs split_file: a JSON file {\"train\": [...], \"test\": [...]} of mesh names")
    path = Path(split_file)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        listed = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(listed, dict) or not {"train", "test"} <= set(listed) <= {"train", "val", "test"}:
        raise ValueError(f"{path}: expected an object with lists 'train', 'test' and optionally 'val'")
    if collection.names is None:
        raise ValueError(f"split 'file' needs mesh names, and this dataset has none ({path})")
    position = {name: i for i, name in enumerate(collection.names)}
    members = {}
    for split, names in listed.items():
        unknown = [name for name in names if name not in position]
        if unknown:
            raise ValueError(f"{path}: '{split}' lists {len(unknown)} meshes that are not in the dataset, e.g. "
                             f"{unknown[0]!r} (names are paths relative to the dataset root, such as "
                             f"{collection.names[0]!r})")
        members[split] = np.array([position[name] for name in names], dtype=np.int64)
    every = np.concatenate(list(members.values()))
    if len(np.unique(every)) != len(every):
        raise ValueError(f"{path}: a mesh is listed twice (in one split or in two)")
    train_val = (members["train"], members["val"]) if "val" in members else _validation_block(members["train"])
    return _checked("file", len(collection), members["test"], train_val)
