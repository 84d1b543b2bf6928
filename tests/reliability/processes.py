"""Run a stage of morphzoo in a child process, SIGKILL it at chosen moments, and compare what it leaves on disk.

A stage is a snippet of Python that writes into the cache (``$MORPHZOO_CACHE``) or a folder; it prints ``go`` just
before the stage starts, so kill times are measured from the start of the work, not of the interpreter.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TEMPORARY = "*.tmp"


def child(code: str, env: dict[str, str]) -> subprocess.Popen:
    """``python -c code``; the code prints ``go`` (flushed) where its stage starts, after its imports, and ``done``
    is printed when it ends (before the interpreter's own shutdown, which can take longer than the stage)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen([sys.executable, "-c", code + '\nprint("done", flush=True)\n'], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_to_end(code: str, env: dict[str, str], timeout: float = 300) -> float:
    """Run the stage to its end; returns the seconds from ``go`` to ``done``. A failing stage fails the test."""
    process = child(code, env)
    assert process.stdout.readline().strip() == "go", process.stderr.read()
    start = time.monotonic()
    finished = any(line.strip() == "done" for line in iter(process.stdout.readline, ""))  # the stage may print too
    seconds = time.monotonic() - start
    _, stderr = process.communicate(timeout=timeout)
    assert finished and process.returncode == 0, stderr
    return seconds


def kill_during(code: str, env: dict[str, str], *, after: float | None = None, watch: Path | None = None) -> bool:
    """Start the stage and SIGKILL it ``after`` seconds past ``go``, or as soon as its first file (a lock aside)
    appears under ``watch``: the earliest moment it writes data. Returns whether it was still running when killed
    (False: it had already finished)."""
    process = child(code, env)
    assert process.stdout.readline().strip() == "go", process.stderr.read()
    start = time.monotonic()
    while process.poll() is None:
        if after is not None and time.monotonic() - start >= after:
            break
        if watch is not None and watch.exists() and any(p.is_file() and not p.name.endswith(".lock")
                                                        for p in watch.rglob("*")):
            break
        time.sleep(0.002)
    running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return running


def _digest_npz(data: bytes) -> str:
    """The arrays of an .npz, not its zip container (whose member timestamps differ from run to run)."""
    h = hashlib.sha256()
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        for name in sorted(arrays.files):
            array = np.ascontiguousarray(arrays[name])
            h.update(f"{name}{array.dtype.str}{array.shape}".encode() + array.tobytes())
    return h.hexdigest()


def tree_digest(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (an .npz by its arrays); lock files are left out."""
    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.name.endswith(".lock") or any(part in relative for part in ignore):
            continue
        data = path.read_bytes()
        try:
            digests[relative] = _digest_npz(data) if path.suffix == ".npz" else hashlib.sha256(data).hexdigest()
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
            digests[relative] = f"unreadable: {error}"
    return digests


def temporaries(root: Path, pattern: str = TEMPORARY) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(pattern)) if root.exists() else []


@dataclass
class KillReport:
    """What a series of kills did: how many stopped the stage before it had written everything, and what each left."""

    interrupted: int = 0
    kills: int = 0
    left: list[str] = field(default_factory=list)


def survives_kills(tmp_path: Path, code: str, env_for, reference: dict[str, str], seconds: float,
                   fractions: tuple[float, ...] = (0.25, 0.6), target: str = "cache",
                   ignore: tuple[str, ...] = (), temporary: str = TEMPORARY) -> KillReport:
    """Kill the stage when its first file appears and at ``fractions`` of its uninterrupted duration, each time
    in a fresh location; after each kill, check that nothing partial stands in for a finished file, run the stage
    again to its end and compare with ``reference`` bit for bit. ``env_for(folder)`` gives the child's environment
    for a location; ``target`` names the folder inside it that the stage writes, ``temporary`` the pattern of the
    stage's temporaries."""
    report = KillReport()
    for index, fraction in enumerate((None, *fractions)):
        location = tmp_path / f"kill-{index}"
        written = location / target
        interrupted = kill_during(code, env_for(location), after=None if fraction is None else fraction * seconds,
                                  watch=written)
        report.kills += 1
        after_kill = tree_digest(written, ignore) if written.exists() else {}
        report.interrupted += interrupted and after_kill != reference  # killed before it had written everything
        finished = {path: digest for path, digest in after_kill.items() if path in reference}
        partial = [path for path, digest in finished.items() if digest != reference[path]]
        assert not partial, f"kill at {fraction}: files left under their final names differ from a clean run: {partial}"
        left = len(temporaries(written, temporary))
        report.left.append(f"{left} temporaries, {len(finished)}/{len(reference)} files final")
        if after_kill == reference and not left:
            continue  # it had written everything when the kill landed (an export then refuses to overwrite it)
        run_to_end(code, env_for(location))
        assert tree_digest(written, ignore) == reference, f"the run after the kill at {fraction} differs"
        stale = temporaries(written, temporary)
        assert not stale, f"stale temporaries left after the kill at {fraction}: {stale}"
    return report
