"""Reading a dataset's raw files once into morphzoo's cache.

Every reader of a real dataset turns the files its owners distribute into a :class:`MeshCollection` stored in the
cache as a memory-mappable array. The entry is keyed by the raw files' fingerprint (relative path, size and
modification time of every file, plus the reader's options and version), so editing, adding or removing a file
rebuilds it, and it is written atomically: an interrupted read leaves nothing a later run would trust. Meshes stream
into the array as they are read, so a dataset never has to fit in memory, and are read by a few threads (parsing
releases the GIL in numpy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from morphzoo.data.collection import MeshCollection, cached_collection
from morphzoo.errors import DataError
from morphzoo.mesh.io import read_mesh, read_polygon_mesh, read_template
from morphzoo.mesh.template import Template

READER_VERSION = 1  # bump when a reader's output changes: it is part of every cache key
MESH_SUFFIXES = (".ply", ".obj", ".off", ".stl")
READ_THREADS = 4

MeshReader = Callable[[], tuple[np.ndarray, np.ndarray]]
"""Returns one mesh's (V, 3) vertices and its (F, 3) faces, or its (P, 4) polygons for a dataset with a quad template;
raises an error that names the mesh on bad input."""


def require_root(root: str | os.PathLike, dataset: str, expected: str) -> Path:
    """``root`` as a Path, or a FileNotFoundError saying what the dataset's ``root`` should point at."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{dataset}: {path} does not exist; set `root` to {expected}")
    return path


def mesh_files(root: Path, suffixes: Sequence[str] = MESH_SUFFIXES) -> list[Path]:
    """The mesh files under ``root`` (recursively), sorted by relative path, without operating-system metadata."""
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                  and not is_system_metadata(p.relative_to(root).as_posix()))


def is_system_metadata(relative_path: str) -> bool:
    """Hidden files and folders and macOS archive metadata (``.DS_Store``, ``._name.ply`` resource forks,
    ``__MACOSX/``): not meshes, although some end in ``.ply``."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative_path.split("/"))


def files_fingerprint(root: Path, files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of each file: changes whenever a file is edited, added or removed."""
    stats = []
    for path in files:
        stat = path.stat()
        stats.append((path.relative_to(root).as_posix() if path != root else path.name, stat.st_size,
                      stat.st_mtime_ns))
    return stats


def cached_read(dataset: str, key: object, build: Callable[[Path], MeshCollection]) -> MeshCollection:
    """A dataset's raw files read once by ``build`` into the cache (see the module docstring); ``key`` must hold the
    files' fingerprint and the reader's options."""
    return cached_collection(dataset, (READER_VERSION, key), build)


def template_from(template: str | os.PathLike | None, first_mesh: MeshReader, name: str) -> Template:
    """The dataset's template: the mesh file ``template`` if given, else the dataset's first mesh."""
    if template is not None:
        return read_template(template, name=name)
    vertices, faces = first_mesh()
    return Template(vertices=vertices, faces=faces, name=name)


def file_reader(path: Path, polygons: bool = False) -> MeshReader:
    """Reads ``path``'s triangles, or with ``polygons`` its polygons (to compare with a quad template's)."""
    return (lambda: read_polygon_mesh(path)) if polygons else (lambda: read_mesh(path))


def read_meshes_into(out: np.ndarray, readers: Sequence[MeshReader], names: Sequence[str], template: Template,
                     dataset: str) -> None:
    """Read mesh ``i`` into ``out[i]``, checking that it has the template's topology.

    Raises:
        ValueError: a mesh has another vertex count, or other faces (other polygons, for a quad template) than the
            template (naming the mesh).
    """

    def read(i: int) -> None:
        vertices, faces = readers[i]()
        check_topology(vertices, faces, template, names[i], dataset)
        out[i] = vertices

    with ThreadPoolExecutor(READ_THREADS) as pool:
        for _ in pool.map(read, range(len(readers))):
            pass


def check_topology(vertices: np.ndarray, faces: np.ndarray | None, template: Template, name: str,
                   dataset: str) -> None:
    """Raise a clear error if one mesh does not share the dataset's topology (``faces=None``: count only).

    With a quad template, ``faces`` are the mesh's polygons and must equal the template's; else its triangles.
    """
    if len(vertices) != template.num_vertices:
        raise DataError(f"{dataset}: {name} has {len(vertices)} vertices but the template ({template.name}) has "
                         f"{template.num_vertices}: every mesh must be registered to one topology; re-register or "
                         "remove this mesh")
    if faces is None:
        return
    if template.polygons is None and not np.array_equal(faces, template.faces):
        raise DataError(f"{dataset}: {name} has the template's vertex count but different faces: it is not "
                         f"registered to the same topology as {template.name}; re-register or remove this mesh")
    if template.polygons is not None and not np.array_equal(faces, template.polygons):
        raise DataError(f"{dataset}: {name} has the template's vertex count but not its polygons: the template "
                         f"({template.name}) is a quad mesh of {len(template.polygons)} polygons, and every mesh must "
                         "have the same ones in the same order; re-register or remove this mesh")
