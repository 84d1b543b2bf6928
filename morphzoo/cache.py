"""Content-addressed on-disk cache for expensive precomputation.

Sampling matrices, spirals and generated datasets are keyed by a hash of everything they depend on (template topology
and geometry, parameters, code version) and written atomically: a crash never leaves a half-written entry that a later
run would trust. The cache lives in ``$MORPHZOO_CACHE`` (default ``~/.cache/morphzoo``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """The root of morphzoo's cache (``$MORPHZOO_CACHE`` or ``~/.cache/morphzoo``)."""
    root = Path(os.environ.get("MORPHZOO_CACHE", Path.home() / ".cache" / "morphzoo"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_hash(*parts: object) -> str:
    """A stable sha256 (hex, 20 chars) of arrays, strings, numbers and JSON-able containers."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            h.update(f"ndarray{array.dtype.str}{array.shape}".encode())
            h.update(array.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that readers see either nothing or the complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_arrays(
    kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return ``compute()``'s arrays, loading them from ``<cache>/<kind>/<key>.npz`` when present."""
    path = cache_dir() / kind / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a corrupt entry is recomputed, never trusted
    arrays = compute()
    atomic_save_npz(path, arrays)
    return arrays


def atomic_directory(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temporary sibling and move it into place in one rename.

    ``build(tmp_dir)`` fills the directory. If another process finished the same entry first, its copy is kept.
    """
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=final.name + ".", suffix=".tmp"))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp)  # lost a race: the other writer's entry is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
