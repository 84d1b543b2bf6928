"""Every script in ``benchmarks/`` imports (a renamed helper in ``speed.py`` once broke ``decode_latency.py``
unnoticed) and offers ``--help``. What they measure is documented in the README; their numbers are not tested here."""

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports_and_describes_itself(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other as `speed`, as when run from there
    spec = importlib.util.spec_from_file_location(f"benchmark_{script[:-3]}", BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps the description at the terminal's width
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert module.__doc__.splitlines()[0] in output.getvalue()
