"""BU-3DFE (Yin et al., FG 2006), registered: 100 subjects × (neutral + 6 expressions × 4 levels) = 2,500 meshes.

BU-3DFE's scans are distributed by Binghamton University under licence; the disentanglement papers (IB-VAE §4.1,
Zhang et al.) use them registered to one topology. Point ``root`` at a folder (searched recursively, e.g. with one
sub-folder per subject) of registered meshes keeping BU-3DFE's file names, ``F0001_AN01WH_F3D.<ext>``:

- subject: sex ``F``/``M`` + a four-digit number (each sex is numbered on its own: F0001-F0056, M0001-M0044);
- expression: ``NE`` neutral, ``AN`` anger, ``DI`` disgust, ``FE`` fear, ``HA`` happiness, ``SA`` sadness,
  ``SU`` surprise; level ``01``-``04`` (neutral: ``00``);
- ethnicity: ``WH`` White, ``BL`` Black, ``AE`` East-Asian, ``AM`` Middle-East Asian, ``LA`` Hispanic/Latino,
  ``IN`` Indian.

Meshes are sorted by (subject, expression in the order above, level). Labels: ``identity``, ``expression``, ``level``
(0 = neutral), ``sex``, ``ethnicity``; ``neutral`` holds each subject's ``NE00`` mesh. Default split: the first ten
subjects in sorted order are test, the rest train (IB-VAE §4.1 following Zhang et al.).
"""

from __future__ import annotations

import re
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
    template_from,
)
from morphzoo.errors import DataError

EXPRESSIONS = ("NE", "AN", "DI", "FE", "HA", "SA", "SU")
LEVELS = 4
SEXES = ("F", "M")
ETHNICITIES = ("WH", "BL", "AE", "AM", "LA", "IN")
TEST_SUBJECTS = 10
NAME = re.compile(rf"(?P<subject>[FM]\d{{4}})_(?P<expression>{'|'.join(EXPRESSIONS)})(?P<level>\d\d)"
                  rf"(?P<ethnicity>{'|'.join(ETHNICITIES)})_F3D")
EXPECTED = "a folder of registered BU-3DFE meshes named like F0001_AN01WH_F3D.ply"


def bu3dfe_name(subject: str, expression: str, level: int, ethnicity: str) -> str:
    """BU-3DFE's file stem, e.g. ``F0001_AN01WH_F3D``."""
    return f"{subject}_{expression}{level:02d}{ethnicity}_F3D"


def parse_bu3dfe_name(path: Path) -> tuple[str, str, int, str]:
    """``F0001_AN01WH_F3D.<ext>`` -> (subject, expression, level, ethnicity); a clear error for any other name."""
    match = NAME.fullmatch(path.stem)
    if match is None:
        raise DataError(f"BU-3DFE: {path} is not named like F0001_AN01WH_F3D.<ext> (subject, expression "
                         f"{'/'.join(EXPRESSIONS)}, level 00-04, ethnicity {'/'.join(ETHNICITIES)}); rename or move it")
    level = int(match["level"])
    if (match["expression"] == "NE") != (level == 0) or level > LEVELS:
        raise DataError(f"BU-3DFE: {path} has level {level:02d}; neutral (NE) is level 00, expressions 01-04")
    return match["subject"], match["expression"], level, match["ethnicity"]


def read_bu3dfe(root: str | Path, template: str | Path | None = None) -> MeshCollection:
    """Read a folder of registered BU-3DFE meshes (see the module docstring); cached and memory-mapped."""
    root = require_root(root, "BU-3DFE", EXPECTED)
    files = mesh_files(root)
    if template is not None:
        files = [path for path in files if path.resolve() != Path(template).expanduser().resolve()]
    if not files:
        raise FileNotFoundError(f"BU-3DFE: no mesh files under {root}; set `root` to {EXPECTED}")
    key = ("bu3dfe", files_fingerprint(root, files),
           None if template is None else files_fingerprint(Path(template).parent, [Path(template)]))
    return cached_read("bu3dfe", key, lambda directory: _build(directory, root, files, template))


def _build(directory: Path, root: Path, files: list[Path], template: str | Path | None) -> MeshCollection:
    parsed = {path: parse_bu3dfe_name(path) for path in files}
    owners: dict[tuple[str, str, int], Path] = {}
    for path, (subject, expression, level, _) in parsed.items():
        if (subject, expression, level) in owners:
            raise DataError(f"BU-3DFE: {path} and {owners[subject, expression, level]} are the same scan "
                             f"({subject} {expression}{level:02d}); keep one")
        owners[subject, expression, level] = path
    subjects = tuple(sorted({subject for subject, _, _, _ in parsed.values()}))
    ethnicity = {}
    for path, (subject, _, _, code) in parsed.items():
        if ethnicity.setdefault(subject, code) != code:
            raise DataError(f"BU-3DFE: {path} gives {subject} the ethnicity {code}, other files {ethnicity[subject]}")
    without_neutral = [s for s in subjects if (s, "NE", 0) not in owners]
    if without_neutral:
        raise DataError(f"BU-3DFE: no neutral scan (NE00) for {', '.join(without_neutral)}; every subject needs one")
    order = sorted(parsed, key=lambda p: (subjects.index(parsed[p][0]), EXPRESSIONS.index(parsed[p][1]), parsed[p][2]))
    readers = [file_reader(path) for path in order]
    shared = template_from(template, readers[0], "bu3dfe")
    names = [path.relative_to(root).as_posix() for path in order]
    vertices = allocate_vertices(directory, len(order), shared.num_vertices)
    read_meshes_into(vertices, readers, names, shared, "BU-3DFE")
    identity = np.array([subjects.index(parsed[p][0]) for p in order])
    neutral_rows = [order.index(owners[subject, "NE", 0]) for subject in subjects]
    return MeshCollection(
        vertices=vertices, template=shared,
        labels={"identity": identity,
                "expression": np.array([EXPRESSIONS.index(parsed[p][1]) for p in order]),
                "level": np.array([parsed[p][2] for p in order]),
                "sex": np.array([SEXES.index(parsed[p][0][0]) for p in order]),
                "ethnicity": np.array([ETHNICITIES.index(parsed[p][3]) for p in order])},
        vocabularies={"identity": subjects, "expression": EXPRESSIONS, "sex": SEXES, "ethnicity": ETHNICITIES},
        neutral=np.asarray(vertices[neutral_rows]),
        attributes={"dataset": "bu3dfe", "source": str(root)}, names=tuple(names))


class FirstSubjectsTest:
    """DataModule mixin: the ``identity`` split without ``test_identities`` tests the first ten subjects in sorted order
    (IB-VAE §4.1, following Zhang et al.)."""

    def resolved_split_arguments(self) -> dict:
        arguments = super().resolved_split_arguments()
        if arguments["protocol"] == "identity" and not arguments["test_identities"]:
            arguments["test_identities"] = list(self.vocabularies["identity"][:TEST_SUBJECTS])
        return arguments


class BU3DFEDataModule(FirstSubjectsTest, MeshDataModule):
    """Registered BU-3DFE (see the module docstring).

    Args:
        root: the folder of registered meshes named like ``F0001_AN01WH_F3D.ply``.
        template: optional template mesh file; default: the first subject's neutral mesh.
        **kwargs: split and loader options of :class:`MeshDataModule`. Default split: ``identity`` with the first ten
            subjects as test (pass ``test_identities`` to choose others).
    """

    def __init__(self, root: str, template: str | None = None, split: str = "identity", **kwargs) -> None:
        super().__init__(split=split, **kwargs)
        self.root, self.template_path = root, template

    def load_collection(self) -> MeshCollection:
        return read_bu3dfe(self.root, self.template_path)
