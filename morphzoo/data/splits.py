"""Split protocols, defined on a collection's canonical sorted order.

- ``interpolation`` (CoMA, Ranjan et al. 2018, §5.1): over the sorted list of all meshes, index ``i % 100 < 10`` is test
  (ten consecutive frames of every hundred). The original code used an unsorted ``glob``; we sort.
- ``extrapolation`` (CoMA §5.2): one expression is held out; all its meshes are test.
- ``identity``: held-out subjects are test (generalisation to new people).

Validation is carved from the training meshes with the same block rule as the interpolation test set, shifted:
index ``i % 100`` in ``[50, 55)`` (5 %). Checkpoints are selected on it; the test split is used once, for reporting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from morphzoo.data.collection import MeshCollection

PROTOCOLS = ("interpolation", "extrapolation", "identity")
VALIDATION_BLOCK = (50, 55)


def split_indices(
    collection: MeshCollection,
    protocol: str = "interpolation",
    held_out_expression: str | None = None,
    test_identities: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Indices of the ``train``, ``val`` and ``test`` meshes of ``collection`` under ``protocol``.

    Args:
        protocol: one of :data:`PROTOCOLS`.
        held_out_expression: the test expression for ``extrapolation`` (required there).
        test_identities: the test subjects for ``identity`` (required there).
    """
    index = np.arange(len(collection))
    if protocol == "interpolation":
        is_test = index % 100 < 10
    elif protocol == "extrapolation":
        is_test = collection.labels["expression"] == _vocabulary_id(collection, "expression", held_out_expression)
    elif protocol == "identity":
        if not test_identities:
            raise ValueError("split 'identity' needs test_identities, e.g. ['anny_000', 'anny_001']")
        ids = [_vocabulary_id(collection, "identity", name) for name in test_identities]
        is_test = np.isin(collection.labels["identity"], ids)
    else:
        raise ValueError(f"unknown split protocol {protocol!r}; choose one of {PROTOCOLS}")
    is_val = ~is_test & (index % 100 >= VALIDATION_BLOCK[0]) & (index % 100 < VALIDATION_BLOCK[1])
    splits = {"train": index[~is_test & ~is_val], "val": index[is_val], "test": index[is_test]}
    for name, members in splits.items():
        if len(members) == 0:
            raise ValueError(f"split {protocol!r} leaves the {name} set empty for this collection of "
                             f"{len(collection)} meshes")
    return splits


def _vocabulary_id(collection: MeshCollection, label: str, name: str | None) -> int:
    names = collection.vocabularies.get(label, ())
    if name not in names:
        raise ValueError(f"unknown {label} {name!r}; this dataset has: {', '.join(names)}")
    return names.index(name)
