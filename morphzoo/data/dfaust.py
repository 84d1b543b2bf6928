"""Dynamic FAUST (Bogo et al., CVPR 2017): 10 subjects × 14 motions, registered 6890-vertex SMPL-topology meshes.

Download the registrations from https://dfaust.is.tue.mpg.de (licence required) and point ``root`` at the folder
holding ``registrations_m.hdf5`` and/or ``registrations_f.hdf5``. Each file maps ``<subject>_<sequence>`` (e.g.
``50002_chicken_wings``) to a (6890, 3, T) array of the sequence's frames, plus ``faces`` (F, 3); a key may be in
either file. Meshes are sorted by (subject, sequence, frame). Labels: ``identity`` (subject), ``sequence``, ``frame``,
``sex`` (``f``/``m``: the file the sequence came from). Vertices are used as registered (with the subjects' global
translation); the template is the first frame of the first sequence unless a template file is given.

Splits. Neural3DMM (Bouritsas et al. 2019), whose DFAUST setting Deep3DMM follows, never published its split. The
default here is ``interpolation``: CoMA's rule (sorted index ``i % 100 < 10`` is test) on the sorted frames, i.e. ten
consecutive frames of every hundred of every sequence, chosen because it is the protocol of the same papers on CoMA,
it is fully determined by the files, and it tests reconstruction of unseen frames of seen motions, which is the
autoencoding task those papers report. Harder protocols: ``sequence`` (``held_out_sequences``, e.g. ``punching``:
unseen motions) and ``identity`` (``test_identities``: unseen bodies).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from morphzoo.data.base import MeshDataModule
from morphzoo.data.collection import MeshCollection, allocate_vertices
from morphzoo.data.raw import cached_read, check_topology, files_fingerprint, require_root, template_from
from morphzoo.errors import DataError

FILES = {"f": "registrations_f.hdf5", "m": "registrations_m.hdf5"}
KEY = re.compile(r"(?P<subject>[^_]+)_(?P<sequence>.+)")
EXPECTED = "the folder holding DFAUST's registrations_m.hdf5 / registrations_f.hdf5 (https://dfaust.is.tue.mpg.de)"


def read_dfaust(root: str | Path, template: str | Path | None = None) -> MeshCollection:
    """Read DFAUST's registration files in ``root`` (see the module docstring); cached and memory-mapped."""
    root = require_root(root, "DFAUST", EXPECTED)
    files = {sex: root / name for sex, name in FILES.items() if (root / name).is_file()}
    if not files:
        raise FileNotFoundError(f"DFAUST: neither {FILES['m']} nor {FILES['f']} is in {root}; set `root` to {EXPECTED}")
    key = ("dfaust", files_fingerprint(root, list(files.values())),
           None if template is None else files_fingerprint(Path(template).parent, [Path(template)]))
    return cached_read("dfaust", key, lambda directory: _build(directory, files, template))


def _build(directory: Path, files: dict[str, Path], template: str | Path | None) -> MeshCollection:
    import h5py

    handles = {}
    try:
        for sex, path in files.items():
            try:
                handles[sex] = h5py.File(path, "r")
            except (OSError, RuntimeError, ValueError) as error:
                raise DataError(f"DFAUST: cannot open {path} as HDF5 ({error}); download it again") from error
        sequences, faces = _index(handles, files)
        first = sequences[0][2:]
        shared = template_from(template, lambda: (_frames(handles, first, files)[0], faces), "dfaust")
        check_topology(shared.vertices, faces, shared, f"the mesh of {files[first[0]]}", "DFAUST")
        lengths = [handles[sex][key].shape[2] for _, _, sex, key in sequences]
        vertices = allocate_vertices(directory, sum(lengths), shared.num_vertices)
        start = 0
        for (_, _, sex, key), length in zip(sequences, lengths, strict=True):
            frames = _frames(handles, (sex, key), files)
            check_topology(frames[0], None, shared, f"{files[sex]}:{key}", "DFAUST")
            if not np.isfinite(frames).all():
                raise DataError(f"DFAUST: {files[sex]}:{key} contains NaN or infinite values; download it again")
            vertices[start:start + length] = frames
            start += length
    finally:
        for handle in handles.values():
            handle.close()
    subjects = tuple(sorted({subject for subject, _, _, _ in sequences}))
    motions = tuple(sorted({sequence for _, sequence, _, _ in sequences}))
    repeat = lambda values: np.repeat(np.array(values), lengths)  # noqa: E731
    return MeshCollection(
        vertices=vertices, template=shared,
        labels={"identity": repeat([subjects.index(s) for s, _, _, _ in sequences]),
                "sequence": repeat([motions.index(q) for _, q, _, _ in sequences]),
                "frame": np.concatenate([np.arange(length) for length in lengths]),
                "sex": repeat([("f", "m").index(sex) for _, _, sex, _ in sequences])},
        vocabularies={"identity": subjects, "sequence": motions, "sex": ("f", "m")},
        attributes={"dataset": "dfaust", "source": str(next(iter(files.values())).parent)},
        names=tuple(f"{key}/{frame:04d}" for (_, _, _, key), length in zip(sequences, lengths, strict=True)
                    for frame in range(length)))


def _corrupt(path: Path, error: Exception) -> DataError:
    return DataError(f"DFAUST: {path} is corrupt or truncated (h5py: {type(error).__name__}: {error}); download it "
                     "again")


def _index(handles: dict, files: dict[str, Path]) -> tuple[list[tuple[str, str, str, str]], np.ndarray]:
    """Sorted (subject, sequence, sex, key) of every sequence, and the faces (equal in every file)."""
    sequences, faces, faces_file, seen = [], None, None, {}
    for sex, handle in handles.items():
        try:
            keys = list(handle.keys())
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise _corrupt(files[sex], error) from error
        for key in keys:
            if key == "faces":
                try:
                    file_faces = np.asarray(handle[key], dtype=np.int64)
                except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
                    raise _corrupt(files[sex], error) from error
                if faces is not None and not np.array_equal(file_faces, faces):
                    raise DataError(f"DFAUST: the 'faces' of {files[sex]} differ from those of {faces_file}; one of "
                                    "them is damaged: download it again")
                faces, faces_file = file_faces, files[sex]
                continue
            match = KEY.fullmatch(key)
            try:
                shape = handle[key].shape
            except (OSError, RuntimeError, KeyError, ValueError) as error:
                raise _corrupt(files[sex], error) from error
            if match is None or len(shape) != 3 or shape[1] != 3:
                raise DataError(f"DFAUST: {files[sex]} holds {key!r} {shape}, expected <subject>_<sequence> keys of "
                                 "(V, 3, frames) arrays")
            if key in seen:
                raise DataError(f"DFAUST: sequence {key!r} is in both {files[seen[key]]} and {files[sex]}")
            seen[key] = sex
            sequences.append((match["subject"], match["sequence"], sex, key))
    if faces is None:
        raise DataError(f"DFAUST: no 'faces' array in {', '.join(map(str, files.values()))}")
    if not sequences:
        raise DataError(f"DFAUST: no sequences in {', '.join(map(str, files.values()))}")
    return sorted(sequences), faces


def _frames(handles: dict, sequence: tuple[str, str], files: dict[str, Path]) -> np.ndarray:
    """(T, V, 3) float32 frames of one sequence (stored V × 3 × T)."""
    sex, key = sequence
    try:
        return np.ascontiguousarray(np.asarray(handles[sex][key], dtype=np.float32).transpose(2, 0, 1))
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
        raise _corrupt(files[sex], error) from error


class DFAUSTDataModule(MeshDataModule):
    """DFAUST (see the module docstring for the files and the choice of the default split).

    Args:
        root: the folder holding ``registrations_m.hdf5`` and/or ``registrations_f.hdf5``.
        template: optional template mesh file; default: the first frame of the first sequence.
        **kwargs: split and loader options of :class:`MeshDataModule`.
    """

    def __init__(self, root: str, template: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.template_path = root, template

    def load_collection(self) -> MeshCollection:
        return read_dfaust(self.root, self.template_path)
