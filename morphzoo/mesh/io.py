"""Reading and writing triangle meshes (PLY, OBJ) with the vertex order preserved exactly.

Registered meshes are only meaningful in their template's vertex order, so trimesh is always called with
``process=False, maintain_order=True``: no merging of duplicate vertices, no reordering, no face repair.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from morphzoo.mesh.template import Template

WRITABLE_SUFFIXES = (".ply", ".obj")
OBJ_GROUPING_KEYWORDS = frozenset({b"o", b"g", b"usemtl", b"mtllib"})


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a triangle mesh (PLY, OBJ or another format trimesh reads) with the vertices in file order.

    OBJ grouping statements (``o``, ``g``, ``usemtl``, ``mtllib``) are ignored: trimesh would split the mesh per
    material and concatenate the parts, duplicating and reordering vertices.

    Returns:
        vertices: (V, 3) float32.
        faces: (F, 3) int64.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is unreadable (truncated, corrupt, not a mesh), has no triangles, has polygons other than
            triangles, faces indexing missing vertices or non-finite vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    return parse_mesh(path.read_bytes(), path.suffix, str(path))


def parse_mesh(data: bytes, suffix: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_mesh` on a file's bytes (e.g. a member of a zip archive); ``source`` names it in errors."""
    file_type = suffix.lower().lstrip(".")
    if file_type == "obj":
        data = _without_obj_grouping(data)
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type=file_type, process=False, maintain_order=True, force="mesh")
    except Exception as error:  # trimesh's loaders raise many exception types on malformed input
        raise ValueError(f"{source}: cannot read the mesh ({type(error).__name__}: {error})") from error
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(getattr(mesh, "faces", np.empty((0, 3))), dtype=np.int64)
    if len(faces) == 0:
        raise ValueError(f"{source}: no triangle faces (empty, truncated, a point cloud, or not a mesh file)")
    declared = _declared_counts(data, file_type)
    if declared is not None and declared[1] != len(faces):
        raise ValueError(
            f"{source}: {declared[1]} polygons became {len(faces)} triangles: only triangle meshes are supported "
            "(a quad or polygon mesh would be silently triangulated)"
        )
    if declared is not None and declared[0] != len(vertices):
        raise ValueError(f"{source}: {declared[0]} vertices in the file but {len(vertices)} read: order not preserved")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"{source}: faces index vertices outside [0, {len(vertices)})")
    if not np.isfinite(vertices).all():
        raise ValueError(f"{source}: vertices contain NaN or infinite values")
    return vertices, faces


def _without_obj_grouping(data: bytes) -> bytes:
    """OBJ text without the object, group and material statements."""
    return b"\n".join(line for line in data.splitlines() if _keyword(line) not in OBJ_GROUPING_KEYWORDS)


def _keyword(line: bytes) -> bytes:
    """The first word of a line of text ('' for a blank line)."""
    words = line.split(None, 1)
    return words[0] if words else b""


def _declared_counts(data: bytes, file_type: str) -> tuple[int, int] | None:
    """(vertices, polygons) the file declares (PLY header) or lists (OBJ ``v`` and ``f`` lines); None otherwise."""
    if file_type == "ply":
        elements = dict.fromkeys((b"vertex", b"face"), 0)
        for line in data.split(b"end_header", 1)[0].splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == b"element" and words[1] in elements:
                elements[words[1]] = int(words[2])
        return elements[b"vertex"], elements[b"face"]
    if file_type == "obj":
        keywords = [_keyword(line) for line in data.splitlines()]
        return keywords.count(b"v"), keywords.count(b"f")
    return None


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a triangle mesh as binary PLY or OBJ (chosen by suffix), atomically, vertex order unchanged.

    Vertices are stored as float32 (PLY) or with 9 significant digits (OBJ): both round-trip float32 exactly.
    """
    path = Path(path)
    _atomic_write(path, mesh_bytes(vertices, faces, path.suffix, str(path)))


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, suffix: str, destination: str = "mesh") -> bytes:
    """The bytes :func:`write_mesh` writes for a ``suffix`` file (e.g. to store meshes in a zip archive)."""
    suffix = suffix.lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(f"{destination}: unsupported mesh format '{suffix}', use one of {WRITABLE_SUFFIXES}")
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{destination}: expected (V, 3) vertices and (F, 3) faces, got {vertices.shape} and "
                         f"{faces.shape}")
    if suffix == ".ply":
        return trimesh.Trimesh(vertices, faces, process=False).export(file_type="ply", encoding="binary")
    return _obj_bytes(vertices, faces)


def _obj_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """OBJ text with ``%.9g`` coordinates; trimesh's OBJ writer uses fixed decimals, losing small coordinates."""
    text = io.StringIO()
    np.savetxt(text, vertices, fmt="v %.9g %.9g %.9g")
    np.savetxt(text, faces + 1, fmt="f %d %d %d")
    return text.getvalue().encode()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling of ``path`` and rename it into place: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_template(path: str | os.PathLike, name: str | None = None) -> Template:
    """Load a template mesh (see :func:`read_mesh`), named ``name`` or the file's stem."""
    vertices, faces = read_mesh(path)
    return Template(vertices=vertices, faces=faces, name=name if name is not None else Path(path).stem)
