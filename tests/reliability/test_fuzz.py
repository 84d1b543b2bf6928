"""Every reader of a user-supplied file, fed truncated and garbled copies of a valid one, either reads it or raises
one of morphzoo's own errors naming the file: no bare library traceback, no hang, no partial cache entry.

Each file kind gets the same eleven cases (:func:`mutations`): empty, its first byte, truncated at 10 / 50 / 90 %, four
copies with 8 random bytes overwritten, random bytes of the same length, and text of another format. A garbled copy
may still be valid (a changed digit in a coordinate); an empty or half file never is.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from morphzoo.errors import MorphzooError
from tests.synthetic import sphere_collection

HANG_SECONDS = 60
MUST_REFUSE = ("empty", "truncated at 50%")


def mutations(data: bytes, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    cases = [("empty", b""), ("first byte", data[:1])]
    cases += [(f"truncated at {int(f * 100)}%", data[:int(len(data) * f)]) for f in (0.1, 0.5, 0.9)]
    for copy in range(4):
        garbled = bytearray(data)
        for position in rng.integers(0, len(data), 8):
            garbled[position] = int(rng.integers(0, 256))
        cases.append((f"8 bytes garbled #{copy}", bytes(garbled)))
    cases += [("random bytes", rng.bytes(len(data))), ("another format", b"<html>\x00\xff{not: [this format\n" * 8)]
    return cases


# ------------------------------------------------------------------------------------------------ the file kinds
def _collection():
    return sphere_collection(identities=2, expressions=2, frames=3)


def mesh_file(suffix: str) -> Callable[[Path], tuple[Path, Callable[[], object]]]:
    def make(folder: Path):
        from morphzoo.mesh.io import read_mesh, write_mesh

        collection = _collection()
        path = folder / f"mesh{suffix}"
        write_mesh(path, collection.vertices[0], collection.template.faces)
        return path, lambda: read_mesh(path)
    return make


def exported(format: str, file: str, reader: str):
    """A dataset folder written by ``morphzoo export-dataset``; ``reader`` is ``module:function``."""
    def make(folder: Path):
        import importlib

        from morphzoo.data.export import export_collection

        root = export_collection(_collection(), format, folder / "dataset")
        path = next(p for p in sorted(root.rglob("*")) if p.is_file() and p.name.endswith(file))
        module, _, function = reader.partition(":")
        read = getattr(importlib.import_module(module), function)
        return path, lambda: read(root)
    return make


def regions_file(folder: Path):
    from morphzoo.mesh.regions import read_regions

    path = folder / "regions.json"
    path.write_text('{"left": [0, 1, 2, 3], "right": [4, 5, 6], "top": [7, 8]}')
    return path, lambda: read_regions(path, 642)


def checkpoint_config(folder: Path):
    from morphzoo.zoo.checkpoint import load_checkpoint, write_checkpoint
    from tests.zoo.test_checkpoint import tiny_spiralnet

    checkpoint = write_checkpoint(tiny_spiralnet(), folder / "model")
    return checkpoint / "config.json", lambda: load_checkpoint(checkpoint)


def registry_file(folder: Path):
    from morphzoo.zoo.registry import load_registry
    from tests.zoo.test_registry import registry_entry, write_registry_file

    path = write_registry_file(folder, [registry_entry("spiralnet-tiny-spheres")])
    return path, lambda: load_registry(path)


def recipe_file(folder: Path):
    from morphzoo.recipes import parse
    from morphzoo.resources import resource_root

    path = folder / "spiralnet.yaml"
    shutil.copy(resource_root() / "recipes" / "spiralnet.yaml", path)
    return path, lambda: parse(path)


KINDS = {
    "PLY": mesh_file(".ply"),
    "OBJ": mesh_file(".obj"),
    "hdf5 (DFAUST)": exported("dfaust", ".hdf5", "morphzoo.data.dfaust:read_dfaust"),
    "zip (CoMA)": exported("coma-zip", ".zip", "morphzoo.data.coma:read_coma"),
    "labels.csv (folder)": exported("folder", "labels.csv", "morphzoo.data.folder:read_mesh_folder"),
    "regions.json": regions_file,
    "config.json": checkpoint_config,
    "checkpoints.yaml": registry_file,
    "recipe": recipe_file,
}


def _alarm(signum, frame):
    raise TimeoutError(f"a reader hung for {HANG_SECONDS} s")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_readers_refuse_malformed_files_with_their_own_error(kind, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MORPHZOO_CACHE", str(cache))
    (tmp_path / "valid").mkdir()
    path, read = KINDS[kind](tmp_path / "valid")
    read()  # the valid file reads
    valid, entries = path.read_bytes(), _entries(cache)
    outcomes, wrong = {}, []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case, data in mutations(valid):
            path.write_bytes(data)
            signal.alarm(HANG_SECONDS)
            try:
                read()
                outcomes[case] = "read"
            except MorphzooError as error:
                outcomes[case] = "refused"
                if path.name not in str(error):
                    wrong.append(f"{case}: the message does not name {path.name}: {error}")
            except Exception as error:  # noqa: BLE001 - the point: anything else is a bug
                wrong.append(f"{case}: {type(error).__module__}.{type(error).__name__}: {error}")
            finally:
                signal.alarm(0)
            new = _entries(cache) - entries
            partial = [name for name in new if name.endswith(".tmp")]
            assert not partial, f"{case}: partial cache entries {partial}"
            if outcomes.get(case) == "refused":
                assert not new - {n for n in new if n.endswith(".lock")}, f"{case}: a refused file left entries {new}"
    finally:
        signal.signal(signal.SIGALRM, previous)
        path.write_bytes(valid)
    refused = sum(outcome == "refused" for outcome in outcomes.values())
    print(f"{kind}: {refused}/{len(outcomes)} refused, the rest read")  # shown with pytest -rP: the README's figures
    assert not wrong, "\n".join(wrong)
    assert all(outcomes[case] == "refused" for case in MUST_REFUSE), outcomes


def _entries(cache: Path) -> set[str]:
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*")} if cache.exists() else set()
