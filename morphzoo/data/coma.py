"""The CoMA dataset (Ranjan et al., ECCV 2018): 12 subjects × 12 extreme expressions, 5023-vertex FLAME meshes.

Download it from https://coma.is.tue.mpg.de (registration and licence required) and point ``root`` at either

- the extracted folder: ``<root>/<subject>/<expression>/<expression>.NNNNNN.ply``
  (e.g. ``FaceTalk_170725_00137_TA/bareteeth/bareteeth.000001.ply``), or
- the archive ``COMA_data.zip`` itself (or a folder holding it, as PyTorch Geometric's ``raw/`` does).

Meshes are sorted by (subject, expression, frame number), the order of the sorted file list on which CoMA's
interpolation split is defined (§5.1). Labels: ``identity`` (subject), ``expression``, ``frame`` (the file's number).
CoMA ships no separate neutral scan. Every sequence starts from the subject's neutral face, so ``neutral`` is
each subject's per-vertex mean of the first frame of each of its sequences (12 near-neutral frames; the mean averages
out the small expression residue any one first frame keeps). Methods that learn a neutral face (IB-VAE) use it. The
template is CoMA's first mesh unless a template
file (e.g. CoMA's ``template.obj``) is given: it only provides rest positions for building sampling matrices and
spirals, and every mesh must share its topology.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection, allocate_vertices
from morphzoo.data.raw import (
    cached_read,
    file_reader,
    files_fingerprint,
    is_system_metadata,
    mesh_files,
    read_meshes_into,
    require_root,
    template_from,
)
from morphzoo.errors import DataError
from morphzoo.mesh.io import parse_mesh

ARCHIVE_NAME = "COMA_data.zip"
NEUTRAL_RULE = "mean of each sequence's first frame"  # in the cache key: collections cached before had none
EXPECTED = ("the extracted CoMA folder (<root>/<subject>/<expression>/<expression>.NNNNNN.ply) or COMA_data.zip, "
            "downloaded from https://coma.is.tue.mpg.de")


def parse_coma_name(path: str) -> tuple[str, str, int]:
    """``.../<subject>/<expression>/<expression>.NNNNNN.ply`` -> (subject, expression, frame number)."""
    parts = PurePosixPath(path).parts
    match = re.fullmatch(r"(.+)\.(\d+)\.ply", parts[-1])
    if len(parts) < 3 or match is None or match[1] != parts[-2]:
        raise DataError(f"CoMA: {path} does not follow CoMA's naming <subject>/<expression>/<expression>.NNNNNN.ply")
    return parts[-3], parts[-2], int(match[2])


def read_coma(root: str | Path, template: str | Path | None = None) -> MeshCollection:
    """Read the CoMA folder or ``COMA_data.zip`` at ``root`` (see the module docstring); cached and memory-mapped."""
    root = require_root(root, "CoMA", EXPECTED)
    archive = _archive(root)
    if archive is not None:
        try:
            zipped = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise DataError(f"CoMA: {archive} is not a readable zip archive ({error}); download it again") from error
        with zipped:
            members = [m for m in zipped.namelist() if m.lower().endswith(".ply") and not is_system_metadata(m)]
            key = ("coma", NEUTRAL_RULE, files_fingerprint(archive.parent, [archive]), members, _template_key(template))
            return cached_read("coma", key, lambda directory: _build(
                directory, members, lambda m: lambda: parse_mesh(_member(zipped, m, archive), ".ply", f"{archive}:{m}"),
                template, f"{archive}"))
    files = mesh_files(root, (".ply",))
    relative = [path.relative_to(root).as_posix() for path in files]
    key = ("coma", NEUTRAL_RULE, files_fingerprint(root, files), _template_key(template))
    by_name = dict(zip(relative, files, strict=True))
    return cached_read("coma", key, lambda directory: _build(
        directory, relative, lambda name: file_reader(by_name[name]), template, str(root)))


def _member(zipped: zipfile.ZipFile, member: str, archive: Path) -> bytes:
    """One member's bytes; a damaged archive (bad CRC, truncated data) names the archive and the member."""
    try:
        return zipped.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise DataError(f"CoMA: {archive}:{member} cannot be read ({error}): the archive is damaged, download it "
                        "again") from error


def _archive(root: Path) -> Path | None:
    """The CoMA zip archive ``root`` is or holds (also under ``raw/``, PyTorch Geometric's layout), if any."""
    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise DataError(f"CoMA: {root} is a file but not a zip archive; set `root` to {EXPECTED}")
        return root
    for candidate in (root / ARCHIVE_NAME, root / "raw" / ARCHIVE_NAME):
        if candidate.is_file() and not mesh_files(root, (".ply",)):
            return candidate
    return None


def _template_key(template: str | Path | None) -> object:
    return None if template is None else files_fingerprint(Path(template).parent, [Path(template)])


def _build(directory: Path, names: list[str], reader, template: str | Path | None, source: str) -> MeshCollection:
    if not names:
        raise FileNotFoundError(f"CoMA: no .ply meshes in {source}; set `root` to {EXPECTED}")
    parsed = [parse_coma_name(name) for name in names]
    order = sorted(range(len(names)), key=lambda i: parsed[i])
    names, parsed = [names[i] for i in order], [parsed[i] for i in order]
    subjects = tuple(sorted({subject for subject, _, _ in parsed}))
    expressions = tuple(sorted({expression for _, expression, _ in parsed}))
    readers = [reader(name) for name in names]
    shared = template_from(template, readers[0], "coma")
    vertices = allocate_vertices(directory, len(names), shared.num_vertices)
    read_meshes_into(vertices, readers, names, shared, "CoMA")
    identity = np.array([subjects.index(s) for s, _, _ in parsed])
    expression = np.array([expressions.index(e) for _, e, _ in parsed])
    return MeshCollection(
        vertices=vertices, template=shared,
        labels={"identity": identity, "expression": expression, "frame": np.array([frame for _, _, frame in parsed])},
        vocabularies={"identity": subjects, "expression": expressions},
        neutral=first_frame_neutrals(vertices, identity, expression, len(subjects)),
        attributes={"dataset": "coma", "source": source}, names=tuple(names))


def first_frame_neutrals(vertices: np.ndarray, identity: np.ndarray, expression: np.ndarray,
                         subjects: int) -> np.ndarray:
    """(subjects, V, 3): each subject's mean of its sequences' first frames; meshes sorted by (subject, expression,
    frame), so a sequence's first frame is where (identity, expression) changes."""
    starts = np.flatnonzero(np.r_[True, (np.diff(identity) != 0) | (np.diff(expression) != 0)])
    sums = np.zeros((subjects, vertices.shape[1], 3))
    np.add.at(sums, identity[starts], vertices[starts])
    return (sums / np.bincount(identity[starts], minlength=subjects)[:, None, None]).astype(np.float32)


class CoMADataModule(MeshDataModule):
    """CoMA (see the module docstring).

    Args:
        root: the extracted CoMA folder or ``COMA_data.zip``.
        template: optional template mesh file (e.g. CoMA's ``template.obj``); default: the first mesh.
        **kwargs: split and loader options of :class:`MeshDataModule`. Splits: ``interpolation`` (the papers'),
            ``extrapolation`` with ``held_out_expression`` (12 folds), ``pyg-interpolation`` (PyG's per-sequence rule),
            ``identity`` with ``test_identities``.
    """

    def __init__(self, root: str, template: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.template_path = root, template

    def load_collection(self) -> MeshCollection:
        return read_coma(self.root, self.template_path)
