"""``MeshCollection``: a labelled set of registered meshes, the unit every dataset reader and generator produces."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphzoo.cache import atomic_directory, atomic_save_npz, cache_dir, content_hash
from morphzoo.mesh.template import Template

FORMAT_VERSION = 1
VERTICES_FILE = "vertices.npy"


@dataclass(eq=False)
class MeshCollection:
    """Registered meshes of one topology with their labels, in the dataset's canonical (sorted) order.

    The order matters: split protocols such as CoMA's interpolation split ("sorted index % 100 < 10 is test") are
    defined on it. Generators and readers emit meshes sorted by (identity, expression, frame).

    Attributes:
        vertices: (N, V, 3) float32 positions in metres (may be a read-only memory map).
        template: the shared topology (with regions and UVs where known).
        labels: per-mesh integer/float arrays of length N, e.g. ``identity``, ``expression``, ``frame``,
            ``intensity`` (0 = neutral, 1 = the sequence's peak).
        vocabularies: names for integer labels, e.g. ``{"identity": (...subject names...), "expression": (...)}``.
        neutral: optional (num_identities, V, 3) float32 neutral mesh of each identity (index = ``identity`` label).
        attributes: free-form JSON-able metadata (generator, seed, preset, ...).
        names: optional name of each mesh (for readers: the file's path relative to the dataset root, or
            ``<hdf5 key>/<frame>``), used by error messages, the ``file`` split and exporters.
    """

    vertices: np.ndarray
    template: Template
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    vocabularies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    neutral: np.ndarray | None = None
    attributes: dict = field(default_factory=dict)
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.vertices)
        # The array is rectangular, so the first mesh's shape is every mesh's. Finiteness is checked on the first mesh
        # only: scanning a memory-mapped dataset on every load would cost seconds, and readers and generators
        # validate each mesh when they create it.
        self.template.check_vertices(self.vertices[:1] if n else np.zeros((0, self.template.num_vertices, 3)),
                                     "MeshCollection")
        for name, values in self.labels.items():
            if len(values) != n:
                raise ValueError(f"MeshCollection: label '{name}' has {len(values)} entries for {n} meshes")
        if self.neutral is not None:
            self.template.check_vertices(self.neutral, "MeshCollection neutral meshes")
        if self.names is not None:
            self.names = tuple(self.names)
            if len(self.names) != n:
                raise ValueError(f"MeshCollection: {len(self.names)} names for {n} meshes")

    def __len__(self) -> int:
        return len(self.vertices)

    def save(self, directory: Path) -> None:
        """Write to ``directory`` (``vertices.npy`` for memory mapping, ``meta.npz``, ``template.npz``, ``info.json``).

        Callers make it atomic by writing into a temporary directory (see :func:`morphzoo.cache.atomic_directory`).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if _backed_by(self.vertices, directory / VERTICES_FILE):
            self.vertices.flush()  # streamed into place by a reader (see allocate_vertices)
        else:
            np.save(directory / VERTICES_FILE, np.ascontiguousarray(self.vertices, dtype=np.float32))
        meta = {f"label_{k}": np.asarray(v) for k, v in self.labels.items()}
        meta.update({f"vocab_{k}": np.array(v, dtype=str) for k, v in self.vocabularies.items()})
        if self.names is not None:
            meta["names"] = np.array(self.names, dtype=str)
        if self.neutral is not None:
            meta["neutral"] = np.asarray(self.neutral, dtype=np.float32)
        atomic_save_npz(directory / "meta.npz", meta)
        atomic_save_npz(directory / "template.npz", self.template.to_arrays())
        (directory / "info.json").write_text(
            json.dumps({"format_version": FORMAT_VERSION, "count": len(self), "attributes": self.attributes}, indent=2)
        )

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> MeshCollection:
        """Read a collection written by :meth:`save`; vertices are memory-mapped unless ``mmap=False``."""
        directory = Path(directory)
        for name in (VERTICES_FILE, "meta.npz", "template.npz", "info.json"):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name} is missing: the collection is incomplete; delete "
                                        f"{directory} so it is rebuilt")
        info = json.loads((directory / "info.json").read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: format version {info.get('format_version')} != {FORMAT_VERSION}; "
                             "delete the folder so it is rebuilt")
        vertices = np.load(directory / VERTICES_FILE, mmap_mode="r" if mmap else None)
        with np.load(directory / "meta.npz", allow_pickle=False) as meta:
            labels = {k[len("label_"):]: meta[k] for k in meta.files if k.startswith("label_")}
            vocabularies = {k[len("vocab_"):]: tuple(str(s) for s in meta[k])
                            for k in meta.files if k.startswith("vocab_")}
            neutral = meta["neutral"] if "neutral" in meta.files else None
            names = tuple(str(s) for s in meta["names"]) if "names" in meta.files else None
        with np.load(directory / "template.npz", allow_pickle=False) as arrays:
            template = Template.from_arrays({k: arrays[k] for k in arrays.files})
        return cls(vertices, template, labels, vocabularies, neutral, info.get("attributes", {}), names)


def allocate_vertices(directory: Path, count: int, num_vertices: int) -> np.memmap:
    """A writable (count, V, 3) float32 array backed by ``directory``'s vertex file.

    Readers of large datasets stream meshes into it, so no dataset ever has to fit in memory; a
    :class:`MeshCollection` holding it then saves into the same ``directory`` without copying.
    """
    directory.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(directory / VERTICES_FILE, mode="w+", dtype=np.float32,
                                     shape=(count, num_vertices, 3))


def _backed_by(array: np.ndarray, path: Path) -> bool:
    return isinstance(array, np.memmap) and array.filename is not None and Path(array.filename) == path.resolve()


def cached_collection(name: str, key: object, build: Callable[[Path], MeshCollection]) -> MeshCollection:
    """The collection ``build(directory)`` makes, stored once in ``<cache>/datasets/<name>-<hash of key>`` (atomically)
    and memory-mapped afterwards.

    ``key`` must capture everything the result depends on (generator or reader version, options, the raw files'
    fingerprint). ``build`` may stream vertices into ``directory`` with :func:`allocate_vertices`.
    """
    path = cache_dir() / "datasets" / f"{name}-{content_hash(key)}"
    atomic_directory(path, lambda tmp: build(tmp).save(tmp))
    return MeshCollection.load(path)
