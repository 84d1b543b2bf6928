"""Content-addressed on-disk cache for expensive precomputation, and the atomic writes everything else uses.

Sampling matrices, spirals and generated datasets are keyed by a hash of everything they depend on (template topology
and geometry, parameters, code version). The cache lives in ``$MORPHZOO_CACHE`` (default ``~/.cache/morphzoo``).

What is guaranteed, and how (the README's "Reliability" section lists the tests that kill processes to prove it):

- **No partial entry is ever read as valid.** Every file and folder is written under a temporary sibling name
  (``.NAME.<random>.tmp``) and renamed into place in one ``os.replace``; the rename is the completeness marker. A
  process killed at any point leaves the old state or the new one, plus at most a stale temporary.
- **Stale temporaries are removed** by the next writer of the same entry, which holds the entry's lock, so no live
  writer can own them.
- **Concurrent writers** (two DDP ranks, two users) of one entry take its file lock (``.NAME.lock`` beside it,
  ``filelock``): the second waits and then reads the first one's result instead of computing it again. Readers of a
  finished entry take no lock, so a read-only cache serves what it holds.
- **A write that cannot happen** (disk full, read-only or foreign-owned location) raises :class:`CacheWriteError`
  naming the path and, inside the cache, ``MORPHZOO_CACHE``; the previous state is left as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from filelock import FileLock

from morphzoo.errors import MorphzooError

TEMPORARY_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp/mkdtemp create private (0600/0700) entries, a shared cache needs the usual modes
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class CacheWriteError(MorphzooError, OSError):
    """A file or folder could not be written: disk full, read-only, or no permission. The message names the path."""


def _cache_root() -> Path:
    return Path(os.environ.get("MORPHZOO_CACHE", Path.home() / ".cache" / "morphzoo"))


def cache_dir() -> Path:
    """The root of morphzoo's cache (``$MORPHZOO_CACHE`` or ``~/.cache/morphzoo``), created if missing."""
    root = _cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(root, error) from error
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


# ------------------------------------------------------------------------------------------------ atomic writing
def write_error(path: Path, error: OSError) -> OSError:
    """``error`` as a :class:`CacheWriteError` that names ``path`` and the fix, when it is a cannot-write error."""
    if error.errno not in WRITE_ERRNOS or isinstance(error, CacheWriteError):
        return error
    root = _cache_root().expanduser().absolute()  # not cache_dir(): creating the root may be what failed
    inside_cache = Path(path).absolute().is_relative_to(root)
    fix = (f"it is in morphzoo's cache {root}: free space or make it writable there, or set MORPHZOO_CACHE to "
           "another folder" if inside_cache else "free space or make the location writable, or choose another one")
    return CacheWriteError(error.errno, f"cannot write {path}: {error.strerror or error} ({fix}); "
                                        "nothing was changed there")


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; when the block ends without error it replaces ``path``.

    Readers see the old file or the complete new one, never a part. On error the temporary is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path),
                                                 suffix=TEMPORARY_SUFFIX)
        os.chmod(descriptor, 0o666 & ~_UMASK)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        with os.fdopen(descriptor, mode) as file:
            yield file
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(path, error) from error
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as file:
        file.write(data)


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that readers see either nothing or the complete file."""
    with atomic_file(path) as file:
        np.savez(file, **arrays)


@contextmanager
def temporary_directory_for(final: Path) -> Iterator[Path]:
    """A new empty temporary sibling of ``final``, removed if the block fails; the caller renames it into place."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temporary_prefix(final), suffix=TEMPORARY_SUFFIX))
        temporary.chmod(0o777 & ~_UMASK)
    except OSError as error:
        raise write_error(final, error) from error
    try:
        yield temporary
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError):
            raise write_error(final, error) from error
        raise


# ------------------------------------------------------------------------------------------------- cache entries
@contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold the inter-process lock of the cache entry ``path`` (a file or folder), then clear its stale temporaries.

    Holding the lock means no other writer of this entry is alive, so any temporary of it left behind is a dead
    process's and is removed.
    """
    lock_path = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path)
        lock.acquire()
    except OSError as error:
        raise write_error(path, error) from error  # names the entry being written; the lock beside it is the cause
    try:
        for stale in path.parent.glob(f"{_temporary_prefix(path)}*{TEMPORARY_SUFFIX}"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        yield
    finally:
        lock.release()


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``path``, or None when it is missing or damaged (the zip's CRCs catch damage)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, KeyError):
        return None


def cached_arrays(
    kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Return ``compute()``'s arrays, loading them from ``<cache>/<kind>/<key>.npz`` when present.

    A damaged entry is recomputed, never trusted. Concurrent callers compute once: the others wait for the lock and
    read the result.
    """
    path = cache_dir() / kind / f"{key}.npz"
    arrays = _read_npz(path)
    if arrays is not None:
        return arrays
    with entry_lock(path):
        arrays = _read_npz(path)  # another process may have written it while this one waited
        if arrays is None:
            arrays = compute()
            atomic_save_npz(path, arrays)
    return arrays


def atomic_directory(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temporary sibling and move it into place in one rename, under the entry's lock.

    ``build(tmp_dir)`` fills the directory. If another process finished the same entry first (or while this one
    waited for the lock), its copy is kept and ``build`` is not called.
    """
    if final.exists():
        return final
    with entry_lock(final):
        if final.exists():
            return final
        with temporary_directory_for(final) as temporary:
            build(temporary)
            os.replace(temporary, final)
    return final
