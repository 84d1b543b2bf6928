"""Writing into a full or read-only location fails with a clear error and leaves the previous state intact.

Both are real kernel conditions, made without privileges in a user and mount namespace (``unshare``): a small tmpfs
filled to the last byte for a full disk, a read-only bind mount of a populated cache for a read-only one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.reliability.processes import ROOT


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user namespaces (`unshare -rm`) "
                                "to mount a tiny tmpfs or a read-only bind mount")

FIRST_ENTRY = """
    import numpy as np
    from morphzoo.cache import cached_arrays
    from tests.zoo.test_checkpoint import tiny_spiralnet
    cached_arrays("sampling", "small", lambda: {"x": np.arange(100.0)})
    tiny_spiralnet()  # its sampling matrices and spirals are cached now
"""

WRITE_INTO_UNWRITABLE = """
    import os
    from pathlib import Path
    import numpy as np
    import torch
    from morphzoo.cache import CacheWriteError, cached_arrays
    from morphzoo.zoo.checkpoint import write_checkpoint
    from tests.zoo.test_checkpoint import tiny_spiralnet

    cache = Path(os.environ["MORPHZOO_CACHE"])
    before = sorted(p.name for p in cache.rglob("*"))
    # an existing entry is still served
    assert cached_arrays("sampling", "small", lambda: 1 / 0)["x"].sum() == 4950.0
    errors = []
    try:
        cached_arrays("sampling", "large", lambda: {"x": np.zeros(200_000)})
    except CacheWriteError as error:
        errors.append(str(error))
    try:
        write_checkpoint(tiny_spiralnet(), cache / "checkpoints" / "model")
    except CacheWriteError as error:
        errors.append(str(error))
    assert len(errors) == 2, errors
    for message in errors:
        assert "MORPHZOO_CACHE" in message and str(cache) in message, message
    assert "large.npz" in errors[0] and "checkpoints/model" in errors[1], errors
    after = sorted(p.name for p in cache.rglob("*"))
    created = set(after) - set(before)  # at most the (empty) locks of the refused entries and their folder
    assert all(name.endswith(".lock") for name in created - {"checkpoints"}), (before, after)
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert cached_arrays("sampling", "small", lambda: 1 / 0)["x"].sum() == 4950.0
    print("ok")
"""


def run_in_namespace(script: str, cache) -> subprocess.CompletedProcess:
    """``script`` (sh; ``$PYTHON``, ``$FIRST`` and ``$CODE`` are set) as root of a new user and mount namespace."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cache.parent), "PYTHONPATH": str(ROOT),
                               "MORPHZOO_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
                               "FIRST": textwrap.dedent(FIRST_ENTRY), "CODE": textwrap.dedent(WRITE_INTO_UNWRITABLE)},
                          capture_output=True, text=True, timeout=300)


def test_a_full_disk_gives_a_clear_error_and_keeps_the_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    result = run_in_namespace(f'mount -t tmpfs -o size=4m tmpfs {cache} && "$PYTHON" -c "$FIRST" && '
                              f'(cat /dev/zero > {cache}/filler 2>/dev/null; true) && exec "$PYTHON" -c "$CODE"', cache)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_read_only_cache_serves_its_entries_and_refuses_new_ones_clearly(tmp_path):
    cache = tmp_path / "cache"
    subprocess.run([sys.executable, "-c", textwrap.dedent(FIRST_ENTRY)], cwd=ROOT, check=True,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MORPHZOO_CACHE": str(cache)})
    result = run_in_namespace(f'mount --bind {cache} {cache} && mount -o remount,ro,bind {cache} && '
                              'exec "$PYTHON" -c "$CODE"', cache)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
