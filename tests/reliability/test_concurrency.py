"""Two processes building the same cache entry at once: both succeed, the entry is computed once, nothing is corrupt.

The second process waits for the first one's lock and then reads its result (waiting is cheaper than recomputing:
each entry here takes 2 s to compute). Both kinds of entry are covered: an array file (:func:`cached_arrays`, used by
sampling matrices, spirals, templates, local weights, geometry images) and a folder (:func:`atomic_directory`, used by
datasets and embedding networks).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from tests.reliability.processes import ROOT

WRITERS = {
    "arrays": """
        import json, os, sys, time
        import numpy as np
        from morphzoo.cache import cached_arrays

        def compute():
            with open(os.environ["LOG"], "a") as log:
                log.write(f"{os.getpid()}\\n")
            time.sleep(2)
            return {"x": np.arange(1000.0) * 3}

        start = time.monotonic()
        arrays = cached_arrays("concurrency", "entry", compute)
        print(json.dumps({"seconds": time.monotonic() - start, "sum": float(arrays["x"].sum())}))
    """,
    "folder": """
        import json, os, sys, time
        from morphzoo.cache import atomic_directory, cache_dir

        def build(folder):
            with open(os.environ["LOG"], "a") as log:
                log.write(f"{os.getpid()}\\n")
            for i in range(20):
                (folder / f"part-{i}.txt").write_text(str(i) * 1000)
                time.sleep(0.1)

        start = time.monotonic()
        folder = atomic_directory(cache_dir() / "datasets" / "entry", build)
        total = sum(len(p.read_text()) for p in folder.iterdir())
        print(json.dumps({"seconds": time.monotonic() - start, "sum": total}))
    """,
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_two_writers_of_one_entry_compute_it_once(tmp_path, kind):
    env = {"MORPHZOO_CACHE": str(tmp_path / "cache"), "LOG": str(tmp_path / "computed.log"),
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    code = textwrap.dedent(WRITERS[kind])
    started = time.monotonic()
    writers = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
        results.append(json.loads(stdout))
    elapsed = time.monotonic() - started
    assert len((tmp_path / "computed.log").read_text().split()) == 1, "the entry was computed twice"
    assert results[0]["sum"] == results[1]["sum"] > 0  # both read the same, complete entry
    # the one that waited took about as long as the one that computed (it did not compute again, nor fail fast)
    assert max(r["seconds"] for r in results) >= 1.9 and elapsed < 2 * 2.0 + 3.0
    leftovers = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp"))
    assert leftovers == []
