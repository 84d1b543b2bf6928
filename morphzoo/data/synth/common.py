"""What the embedded-data generators share: presets chosen by name and the versions that key their caches."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from morphzoo.cache import cached_arrays, content_hash
from morphzoo.mesh.template import Template

Preset = TypeVar("Preset")


def choose_preset(presets: dict[str, Preset], size: str, dataset: str) -> Preset:
    """``presets[size]``, or an error naming the valid sizes."""
    if size not in presets:
        raise ValueError(f"unknown {dataset} size {size!r}; valid sizes: {', '.join(presets)}")
    return presets[size]


def package_version(name: str) -> str:
    """The installed version of ``name`` (anny, fast-simplification): generated data depend on it."""
    return importlib.metadata.version(name)


def cached_decimated_template(dataset: str, version: int, target_vertices: int,
                              build: Callable[[], tuple[Template, np.ndarray]]) -> tuple[Template, np.ndarray]:
    """A decimated anny template and the (V,) increasing indices of the anny vertices it keeps, built once by
    ``build`` and disk-cached by generator version, target size and the anny and fast-simplification versions."""

    def arrays() -> dict[str, np.ndarray]:
        template, keep = build()
        return {**template.to_arrays(), "keep": keep}

    key = content_hash(f"{dataset}-template", version, target_vertices, package_version("anny"),
                       package_version("fast-simplification"))
    cached = cached_arrays("templates", key, arrays)
    return Template.from_arrays(cached), cached["keep"]
