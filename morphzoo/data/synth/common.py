"""What the embedded-data generators share: presets chosen by name and the versions that key their caches."""

from __future__ import annotations

import importlib.metadata
from typing import TypeVar

Preset = TypeVar("Preset")


def choose_preset(presets: dict[str, Preset], size: str, dataset: str) -> Preset:
    """``presets[size]``, or an error naming the valid sizes."""
    if size not in presets:
        raise ValueError(f"unknown {dataset} size {size!r}; valid sizes: {', '.join(presets)}")
    return presets[size]


def package_version(name: str) -> str:
    """The installed version of ``name`` (anny, fast-simplification): generated data depend on it."""
    return importlib.metadata.version(name)
