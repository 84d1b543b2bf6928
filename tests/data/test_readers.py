"""Readers of the real datasets' on-disk formats, on fixtures the exporter writes in those formats (small spheres).

Every round trip checks the reader against the collection that was exported (vertices, labels, split sizes), so the
reader and the exporter must agree with each other *and* with the documented layout the tests also check by path.
"""

import json
import os
import zipfile

import h5py
import numpy as np
import pytest

from morphzoo.cache import cache_dir
from morphzoo.data import coma
from morphzoo.data.bu3dfe import BU3DFEDataModule, read_bu3dfe
from morphzoo.data.collection import MeshCollection
from morphzoo.data.coma import CoMADataModule, read_coma
from morphzoo.data.dfaust import read_dfaust
from morphzoo.data.export import export_collection
from morphzoo.data.folder import MeshFolderDataModule, SynHandDataModule, read_mesh_folder
from morphzoo.data.splits import split_indices
from morphzoo.mesh.io import write_mesh
from tests.synthetic import bu3dfe_like, sphere_collection


@pytest.fixture(scope="module")
def faces_data():
    return sphere_collection(identities=3, expressions=4, frames=25, subdivisions=1)


def assert_same_meshes(read: MeshCollection, original: MeshCollection, labels=("identity", "expression", "frame")):
    np.testing.assert_array_equal(np.asarray(read.vertices), original.vertices)
    np.testing.assert_array_equal(read.template.faces, original.template.faces)
    for name in labels:
        np.testing.assert_array_equal(read.labels[name], original.labels[name], err_msg=name)


# --- split protocols -------------------------------------------------------------------------------------------------

def test_pyg_interpolation_splits_within_each_sequence(faces_data):
    # 25 frames per sequence never reach position 90, so take longer sequences
    long = sphere_collection(identities=1, expressions=2, frames=130, subdivisions=1)
    splits = split_indices(long, "pyg-interpolation")
    position = long.labels["frame"]  # frames count from 0 within each sequence
    np.testing.assert_array_equal(splits["test"], np.flatnonzero(position % 100 >= 90))
    assert len(splits["test"]) == 2 * 10  # frames 90..99 of each 130-frame sequence
    assert not np.array_equal(splits["test"], split_indices(long, "interpolation")["test"])


def test_sequence_split_holds_out_named_sequences(tmp_path, faces_data):
    read = read_dfaust(export_collection(faces_data, "dfaust", tmp_path / "dfaust"))
    splits = split_indices(read, "sequence", held_out_sequences=["e1", "e3"])
    held = np.isin(read.labels["sequence"], [1, 3])
    np.testing.assert_array_equal(splits["test"], np.flatnonzero(held))
    with pytest.raises(ValueError, match="unknown sequence 'e9'"):
        split_indices(read, "sequence", held_out_sequences=["e9"])
    with pytest.raises(ValueError, match="needs held_out_sequences, some of: e0, e1"):
        split_indices(read, "sequence")


def test_random_split_is_seeded_disjoint_and_sized(faces_data):
    first = split_indices(faces_data, "random", test_size=30, split_seed=3)
    again = split_indices(faces_data, "random", test_size=30, split_seed=3)
    other = split_indices(faces_data, "random", test_size=30, split_seed=4)
    assert len(first["test"]) == 30
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])
    every = np.concatenate(list(first.values()))
    assert sorted(every) == list(range(len(faces_data)))
    assert len(split_indices(faces_data, "random", test_size=0.2)["test"]) == round(0.2 * len(faces_data))
    with pytest.raises(ValueError, match="leaves no training"):
        split_indices(faces_data, "random", test_size=len(faces_data))


def test_file_split_uses_names_and_rejects_bad_files(tmp_path, faces_data):
    names = [f"m{i}.ply" for i in range(len(faces_data))]
    named = MeshCollection(faces_data.vertices, faces_data.template, names=names)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["m0.ply", "m1.ply", "m2.ply"], "val": ["m3.ply"], "test": ["m7.ply"]}))
    splits = split_indices(named, "file", split_file=path)
    assert [list(splits[k]) for k in ("train", "val", "test")] == [[0, 1, 2], [3], [7]]
    path.write_text(json.dumps({"train": ["m0.ply"], "test": ["nope.ply"]}))
    with pytest.raises(ValueError, match="'test' lists 1 meshes that are not in the dataset, e.g. 'nope.ply'"):
        split_indices(named, "file", split_file=path)
    path.write_text(json.dumps({"train": ["m0.ply"], "test": ["m0.ply"]}))
    with pytest.raises(ValueError, match="listed twice"):
        split_indices(named, "file", split_file=path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="split.json: not valid JSON"):
        split_indices(named, "file", split_file=path)


# --- CoMA ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("format", ["coma", "coma-zip"])
def test_coma_round_trip_and_protocols(tmp_path, faces_data, format):
    root = export_collection(faces_data, format, tmp_path / "coma")
    if format == "coma":
        assert (root / "s1" / "e2" / "e2.000007.ply").is_file()  # <subject>/<expression>/<expression>.NNNNNN.ply
        read = read_coma(root)
    else:
        assert zipfile.is_zipfile(root / "COMA_data.zip")
        read = read_coma(root / "COMA_data.zip")
    assert isinstance(read.vertices, np.memmap)
    assert_same_meshes(read, faces_data)
    assert read.vocabularies["identity"] == faces_data.vocabularies["identity"]
    for protocol, kwargs in [("interpolation", {}), ("extrapolation", {"held_out_expression": "e1"})]:
        ours, theirs = split_indices(read, protocol, **kwargs), split_indices(faces_data, protocol, **kwargs)
        assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_coma_neutral_is_each_subjects_mean_first_frame(tmp_path, faces_data):
    read = read_coma(export_collection(faces_data, "coma", tmp_path / "coma"))
    identity, expression, frame = (read.labels[k] for k in ("identity", "expression", "frame"))
    for subject in range(len(read.vocabularies["identity"])):
        firsts = [np.flatnonzero((identity == subject) & (expression == e) & (frame == frame[(identity == subject)
                  & (expression == e)].min()))[0] for e in np.unique(expression[identity == subject])]
        np.testing.assert_allclose(read.neutral[subject], np.mean(read.vertices[firsts], axis=0), atol=1e-7)


def test_coma_interpolation_follows_the_sorted_file_list(tmp_path, faces_data):
    root = export_collection(faces_data, "coma", tmp_path / "coma")
    data = CoMADataModule(str(root), split="interpolation")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.ply"))
    expected = [name for i, name in enumerate(files) if i % 100 < 10]
    assert [data.collection.names[i] for i in data.split_indices["test"]] == expected


def test_coma_accepts_pyg_raw_layout_and_ignores_macos_metadata(tmp_path, faces_data):
    root = export_collection(faces_data, "coma-zip", tmp_path / "pyg" / "raw")
    with zipfile.ZipFile(root / "COMA_data.zip", "a") as archive:  # what macOS's archiver adds: not meshes
        archive.writestr("__MACOSX/s0/e0/._e0.000000.ply", b"\x00\x05\x16\x07 resource fork")
        archive.writestr("s0/e0/._e0.000001.ply", b"\x00\x05\x16\x07 resource fork")
    assert_same_meshes(read_coma(tmp_path / "pyg"), faces_data)


def test_coma_bad_inputs_name_the_file(tmp_path, faces_data):
    root = export_collection(faces_data, "coma", tmp_path / "coma")
    with pytest.raises(FileNotFoundError, match="does not exist; set `root` to the extracted CoMA folder"):
        read_coma(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .ply meshes"):
        read_coma(tmp_path / "empty")
    odd = root / "s0" / "e0" / "smile_01.ply"
    odd.write_bytes((root / "s0" / "e0" / "e0.000000.ply").read_bytes())
    with pytest.raises(ValueError, match="smile_01.ply does not follow CoMA's naming"):
        read_coma(root)
    odd.unlink()
    victim = root / "s2" / "e3" / "e3.000004.ply"
    victim.write_bytes(victim.read_bytes()[:300])  # truncated
    with pytest.raises(ValueError, match="e3.000004.ply"):
        read_coma(root)
    other = sphere_collection(identities=1, expressions=1, frames=1, subdivisions=2)
    write_mesh(victim, other.vertices[0], other.template.faces)  # another topology
    with pytest.raises(ValueError, match=r"e3.000004.ply has 162 vertices but the template .* has 42"):
        read_coma(root)
    write_mesh(victim, faces_data.vertices[0], faces_data.template.faces[:, ::-1])  # same count, other faces
    with pytest.raises(ValueError, match="e3.000004.ply has the template's vertex count but different faces"):
        read_coma(root)
    assert not list((cache_dir() / "datasets").glob("*.tmp")), "a failed read left a half-written cache entry"


def test_reads_are_cached_by_file_fingerprint(tmp_path, faces_data, monkeypatch):
    root = export_collection(faces_data, "coma", tmp_path / "coma")
    read_coma(root)
    monkeypatch.setattr(coma, "read_meshes_into", lambda *a, **k: pytest.fail("re-read a cached dataset"))
    assert_same_meshes(read_coma(root), faces_data)
    victim = root / "s0" / "e0" / "e0.000003.ply"
    changed = faces_data.vertices[3] * 1.5
    write_mesh(victim, changed, faces_data.template.faces)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_coma(root).vertices[3], changed)


# --- DFAUST ----------------------------------------------------------------------------------------------------------

def test_dfaust_round_trip(tmp_path, faces_data):
    root = export_collection(faces_data, "dfaust", tmp_path / "dfaust")
    with h5py.File(root / "registrations_m.hdf5") as male, h5py.File(root / "registrations_f.hdf5") as female:
        keys = sorted(set(male) | set(female))
        assert "faces" in male and "faces" in female
        assert male["s0_e0"].shape == (faces_data.template.num_vertices, 3, 25)  # V × 3 × T
        assert "s1_e0" in female  # sequences are spread over both files
    assert keys == ["faces"] + sorted(f"s{i}_e{e}" for i in range(3) for e in range(4))
    read = read_dfaust(root)
    assert_same_meshes(read, faces_data, labels=("identity", "frame"))
    np.testing.assert_array_equal(read.labels["sequence"], faces_data.labels["expression"])
    assert read.vocabularies["sequence"] == faces_data.vocabularies["expression"]
    assert len(split_indices(read, "interpolation")["test"]) == len(split_indices(faces_data, "interpolation")["test"])


def test_dfaust_bad_inputs(tmp_path, faces_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither registrations_m.hdf5 nor registrations_f.hdf5"):
        read_dfaust(tmp_path / "empty")
    root = export_collection(faces_data, "dfaust", tmp_path / "dfaust")
    with h5py.File(root / "registrations_m.hdf5", "a") as file:
        file["s0_e0"][5, 1, 3] = np.nan
    with pytest.raises(ValueError, match="registrations_m.hdf5:s0_e0 contains NaN"):
        read_dfaust(root)
    with h5py.File(root / "registrations_m.hdf5", "a") as file:
        file["s0_e0"][5, 1, 3] = 0.0
        del file["s2_e3"]
        file["s2_e3"] = np.zeros((10, 3, 4), np.float32)
    with pytest.raises(ValueError, match="s2_e3 has 10 vertices"):
        read_dfaust(root)
    with h5py.File(root / "registrations_f.hdf5", "a") as file:
        file["s0_e0"] = np.zeros((42, 3, 4), np.float32)
    with pytest.raises(ValueError, match="'s0_e0' is in both"):
        read_dfaust(root)
    (root / "registrations_f.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot open .*registrations_f.hdf5 as HDF5"):
        read_dfaust(root)


# --- BU-3DFE ---------------------------------------------------------------------------------------------------------

def test_bu3dfe_round_trip_names_and_default_split(tmp_path):
    original = bu3dfe_like()
    root = export_collection(original, "bu3dfe", tmp_path / "bu3dfe")
    assert (root / "F0002" / "F0002_NE00WH_F3D.ply").is_file()  # the first subject in sorted order, ethnicity 0
    assert (root / "F0003" / "F0003_SU04BL_F3D.ply").is_file()
    read = read_bu3dfe(root)
    assert_same_meshes(read, original, labels=("identity", "expression", "level", "ethnicity"))
    np.testing.assert_array_equal(read.neutral, original.neutral)
    subjects = read.vocabularies["identity"]
    np.testing.assert_array_equal(read.labels["sex"], [subjects[i][0] == "M" for i in read.labels["identity"]])
    data = BU3DFEDataModule(str(root))
    test_subjects = {subjects[i] for i in read.labels["identity"][data.split_indices["test"]]}
    assert test_subjects == set(sorted(subjects)[:10])
    assert len(data.split_indices["test"]) == 10 * 25


def test_bu3dfe_bad_names_and_missing_neutral(tmp_path):
    root = export_collection(bu3dfe_like(), "bu3dfe", tmp_path / "bu3dfe")
    stray = root / "F0002" / "F0002_XX01WH_F3D.ply"
    stray.write_bytes((root / "F0002" / "F0002_NE00WH_F3D.ply").read_bytes())
    with pytest.raises(ValueError, match="F0002_XX01WH_F3D.ply is not named like F0001_AN01WH_F3D"):
        read_bu3dfe(root)
    stray.rename(root / "F0002" / "F0002_AN05WH_F3D.ply")
    with pytest.raises(ValueError, match="F0002_AN05WH_F3D.ply has level 05"):
        read_bu3dfe(root)
    (root / "F0002" / "F0002_AN05WH_F3D.ply").rename(root / "F0002" / "F0002_AN01BL_F3D.ply")
    with pytest.raises(ValueError, match="are the same scan"):
        read_bu3dfe(root)
    (root / "F0002" / "F0002_AN01BL_F3D.ply").unlink()
    (root / "F0002" / "F0002_NE00WH_F3D.ply").unlink()
    with pytest.raises(ValueError, match="no neutral scan \\(NE00\\) for F0002"):
        read_bu3dfe(root)


# --- registered-mesh folder, SynHand ---------------------------------------------------------------------------------

def test_folder_round_trip_with_labels_and_regions(tmp_path, faces_data):
    template = faces_data.template
    regions = (template.vertices[:, 2] > 0).astype(np.int64)
    labelled = MeshCollection(faces_data.vertices, type(template)(template.vertices, template.faces, regions,
                                                                  ("lower", "upper")),
                              faces_data.labels, faces_data.vocabularies)
    root = export_collection(labelled, "folder", tmp_path / "folder", suffix=".obj")
    assert (root / "000000.obj").is_file() and (root / "labels.csv").is_file()
    (root / "._000000.obj").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # metadata, not a mesh
    read = read_mesh_folder(root)
    assert_same_meshes(read, faces_data, labels=("identity", "expression", "frame"))
    np.testing.assert_allclose(read.labels["intensity"], faces_data.labels["intensity"])
    assert read.labels["intensity"].dtype == np.float32 and read.vocabularies["expression"] == ("e0", "e1", "e2", "e3")
    np.testing.assert_array_equal(read.template.regions, regions)
    assert read.template.region_names == ("lower", "upper")


def test_folder_template_sample_and_split_file(tmp_path, faces_data):
    root = export_collection(MeshCollection(faces_data.vertices, faces_data.template), "folder", tmp_path / "f")
    write_mesh(root / "template.ply", faces_data.template.vertices, faces_data.template.faces)
    read = read_mesh_folder(root, template=root / "template.ply")
    assert len(read) == len(faces_data) and "template.ply" not in read.names
    np.testing.assert_allclose(read.template.vertices, faces_data.template.vertices, atol=1e-7)
    sample = read_mesh_folder(root, template=root / "template.ply", sample_size=40, sample_seed=1)
    assert len(sample) == 40 and list(sample.names) == sorted(sample.names)
    rows = [read.names.index(name) for name in sample.names]
    np.testing.assert_array_equal(np.asarray(sample.vertices), read.vertices[rows])
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": list(read.names[:200]), "test": list(read.names[250:])}))
    data = MeshFolderDataModule(str(root), template=str(root / "template.ply"), split="file", split_file=str(split))
    assert len(data.split_indices["test"]) == len(faces_data) - 250
    assert len(data.split_indices["train"]) + len(data.split_indices["val"]) == 200


def test_synhand_protocol_samples_then_holds_out(tmp_path, faces_data):
    root = export_collection(MeshCollection(faces_data.vertices, faces_data.template), "folder", tmp_path / "hands")
    data = SynHandDataModule(str(root), sample_size=200, test_size=20)
    assert len(data.collection) == 200
    sizes = {k: len(v) for k, v in data.split_indices.items()}
    assert sizes["test"] == 20 and sizes["train"] + sizes["val"] == 180


def test_folder_bad_inputs(tmp_path, faces_data):
    root = export_collection(faces_data, "folder", tmp_path / "folder")
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="labels.csv: no row for 1 meshes, e.g. '000299.ply'"):
        read_mesh_folder(root)
    (root / "labels.csv").unlink()
    (root / "regions.json").write_text(json.dumps({"a": [0, 1], "b": [1, 2]}))
    with pytest.raises(ValueError, match="region 'b' overlaps"):
        read_mesh_folder(root)
    (root / "regions.json").unlink()
    (root / "000005.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 42\n")
    with pytest.raises(ValueError, match="000005.ply"):
        read_mesh_folder(root)
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        read_mesh_folder(root / "000001.ply")


def test_export_refuses_to_overwrite_and_names_missing_labels(tmp_path, faces_data):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_collection(faces_data, "coma", tmp_path / "full")
    unlabelled = MeshCollection(faces_data.vertices, faces_data.template)
    with pytest.raises(ValueError, match="the CoMA format needs the labels identity, expression, frame"):
        export_collection(unlabelled, "coma", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="unknown dataset format 'obj'"):
        export_collection(faces_data, "obj", tmp_path / "new")
