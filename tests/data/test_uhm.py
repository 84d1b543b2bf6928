"""Folders of quad meshes registered to a quad template (UHM12k's layout): the folder reader, the quad export and
UHMDataModule's split."""

import json

import numpy as np
import pytest

from morphzoo.data import UHMDataModule, export_collection
from morphzoo.data.collection import MeshCollection
from morphzoo.data.folder import read_mesh_folder
from morphzoo.mesh import Template, read_polygon_mesh, triangulate_polygons, write_mesh
from tests.mesh.test_quad_io import mixed_grid

MESHES = 30


def quad_heads(count: int = MESHES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, V, 3) float32 meshes of one mixed quad/triangle topology (shuffled vertex and polygon order), and it."""
    vertices, polygons = mixed_grid()
    offsets = np.random.default_rng(seed).normal(0, 0.05, (count, *vertices.shape))
    return (vertices + offsets).astype(np.float32), polygons


@pytest.fixture
def quad_folder(tmp_path):
    meshes, polygons = quad_heads()
    root = tmp_path / "uhm"
    for i, vertices in enumerate(meshes):
        write_mesh(root / f"head_{i:03d}.obj", vertices, polygons)
    return root, meshes, polygons


def test_folder_of_quad_meshes_reads_vertices_in_order_and_keeps_the_polygons(quad_folder):
    root, meshes, polygons = quad_folder
    read = read_mesh_folder(root)
    np.testing.assert_array_equal(np.asarray(read.vertices), meshes)
    np.testing.assert_array_equal(read.template.polygons, polygons)
    np.testing.assert_array_equal(read.template.faces, triangulate_polygons(meshes[0], polygons))
    np.testing.assert_array_equal(read.template.vertices, meshes[0])
    assert read.names[0] == "head_000.obj"

    rest = meshes.mean(0)  # a template file of its own, inside the folder: not a sample
    write_mesh(root / "template.ply", rest, polygons)
    with_template = read_mesh_folder(root, template=root / "template.ply")
    assert len(with_template) == MESHES and "template.ply" not in with_template.names
    np.testing.assert_array_equal(with_template.template.faces, triangulate_polygons(rest, polygons))
    np.testing.assert_allclose(with_template.template.vertices, rest.astype(np.float32))


def test_a_mesh_with_other_polygons_is_named(quad_folder):
    root, meshes, polygons = quad_folder
    rotated = polygons.copy()
    rotated[3] = np.roll(rotated[3], 1)  # the same quad, listed from another corner
    write_mesh(root / "head_007.obj", meshes[7], rotated)
    with pytest.raises(ValueError, match="head_007.obj has the template's vertex count but not its polygons"):
        read_mesh_folder(root)
    write_mesh(root / "head_007.obj", meshes[7], triangulate_polygons(meshes[7], polygons))
    with pytest.raises(ValueError, match="head_007.obj has the template's vertex count but not its polygons"):
        read_mesh_folder(root)


def test_a_quad_mesh_in_a_triangle_folder_is_named_with_the_fix(tmp_path):
    meshes, polygons = quad_heads(3)
    faces = triangulate_polygons(meshes[0], polygons)
    for i, vertices in enumerate(meshes):
        write_mesh(tmp_path / f"m{i}.ply", vertices, faces if i < 2 else polygons)
    with pytest.raises(ValueError, match="m2.ply: a quad or polygon mesh.*quad template"):
        read_mesh_folder(tmp_path)


def test_a_quad_dataset_exports_as_quads(tmp_path):
    meshes, polygons = quad_heads(5)
    template = Template(meshes[0], triangulate_polygons(meshes[0], polygons), polygons=polygons, name="heads")
    root = export_collection(MeshCollection(meshes, template), "folder", tmp_path / "export", suffix=".ply")
    for i in (0, 4):
        vertices, read_polygons = read_polygon_mesh(root / f"{i:06d}.ply")
        np.testing.assert_array_equal(read_polygons, polygons)
        np.testing.assert_array_equal(vertices, meshes[i])
    read = read_mesh_folder(root)
    np.testing.assert_array_equal(np.asarray(read.vertices), meshes)
    np.testing.assert_array_equal(read.template.polygons, polygons)


def test_uhm_reads_regions_and_splits_a_seeded_ten_percent(quad_folder, tmp_path):
    root, meshes, polygons = quad_folder
    regions = {"left": [0, 1, 2, 3], "nose": [4, 5], "right": [8, 9, 10]}
    (root / "regions.json").write_text(json.dumps(regions))
    data = UHMDataModule(str(root))
    assert data.template.polygons is not None and data.template.region_names == ("left", "nose", "right")
    np.testing.assert_array_equal(data.template.regions, [0, 0, 0, 0, 1, 1, -1, -1, 2, 2, 2, -1])
    np.testing.assert_array_equal(np.asarray(data.collection.vertices), meshes)
    splits = data.split_indices
    assert len(splits["test"]) == round(0.1 * MESHES)
    assert sorted(np.concatenate(list(splits.values()))) == list(range(MESHES))
    again = UHMDataModule(str(root)).split_indices
    assert all(np.array_equal(splits[name], again[name]) for name in splits)
    other = UHMDataModule(str(root), split_seed=1).split_indices
    assert not np.array_equal(splits["test"], other["test"])

    split_file = tmp_path / "split.json"
    names = data.collection.names
    split_file.write_text(json.dumps({"train": list(names[:20]), "val": list(names[20:24]), "test": list(names[24:])}))
    by_file = UHMDataModule(str(root), split_file=str(split_file)).split_indices
    np.testing.assert_array_equal(by_file["test"], np.arange(24, MESHES))
    np.testing.assert_array_equal(by_file["val"], np.arange(20, 24))
    with pytest.raises(ValueError, match="split_file .* is read by split 'file' only"):
        UHMDataModule(str(root), split="random", split_file=str(split_file))
