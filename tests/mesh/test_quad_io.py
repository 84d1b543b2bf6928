"""Quad and mixed meshes: reading and writing them with vertex and polygon order kept, their triangulation, and
templates that keep their polygons."""

from __future__ import annotations

import numpy as np
import pytest

from morphzoo.mesh import Template, read_mesh, read_polygon_mesh, read_template, triangulate_polygons, write_mesh
from morphzoo.mesh.io import PolygonMeshError, mesh_bytes


def quad_grid(rows: int = 3, columns: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, quads) of a rows × columns vertex grid with uneven spacing and a little relief, with the vertices and
    the quads in shuffled order, so that any reordering by a reader or writer shows."""
    rng = np.random.default_rng(seed)
    x, y = np.cumsum(rng.uniform(0.5, 1.5, columns)), np.cumsum(rng.uniform(0.5, 1.5, rows))
    grid = np.stack(np.meshgrid(x, y), axis=-1).reshape(-1, 2)  # vertex r * columns + c
    vertices = np.column_stack([grid, rng.uniform(-0.1, 0.1, len(grid))]).astype(np.float32)
    index = np.arange(rows * columns).reshape(rows, columns)
    quads = np.stack([index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]], axis=-1).reshape(-1, 4)
    order = rng.permutation(len(vertices))  # new vertex i is old vertex order[i]
    return vertices[order], np.argsort(order)[quads][rng.permutation(len(quads))]


def mixed_grid() -> tuple[np.ndarray, np.ndarray]:
    """The quad grid with two quads replaced by one of their triangles each (rows ending in -1)."""
    vertices, quads = quad_grid()
    quads[[0, 2], 3] = -1
    return vertices, quads


def shoelace_area(points: np.ndarray) -> np.ndarray:
    """(N,) area of planar polygons (N, K, 2) given in order."""
    x, y = points[..., 0], points[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y).sum(-1))


@pytest.mark.parametrize("mesh", [quad_grid, mixed_grid], ids=["quads", "mixed"])
@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_polygon_meshes_round_trip_byte_for_byte_in_order(tmp_path, suffix, mesh):
    vertices, polygons = mesh()
    first, second = tmp_path / f"first{suffix}", tmp_path / f"second{suffix}"
    write_mesh(first, vertices, polygons)
    read_vertices, read_polygons = read_polygon_mesh(first)
    assert read_vertices.dtype == np.float32 and read_polygons.dtype == np.int64
    np.testing.assert_array_equal(read_vertices, vertices)
    np.testing.assert_array_equal(read_polygons, polygons)
    write_mesh(second, read_vertices, read_polygons)
    assert second.read_bytes() == first.read_bytes()
    if suffix == ".obj":  # quads are written as quads, not triangulated
        face_lines = [line.split() for line in first.read_text().splitlines() if line.startswith("f ")]
        assert [len(line) - 1 for line in face_lines] == list(3 + (polygons[:, 3] >= 0))
    else:
        assert f"element face {len(polygons)}\nproperty list uchar int vertex_indices\n".encode() in first.read_bytes()


def test_polygons_without_a_quad_are_written_as_the_triangle_mesh():
    vertices, quads = quad_grid()
    triangles = triangulate_polygons(vertices, quads)
    padded = np.column_stack([triangles, np.full(len(triangles), -1)])
    for suffix in (".obj", ".ply"):
        assert mesh_bytes(vertices, padded, suffix) == mesh_bytes(vertices, triangles, suffix)


def test_obj_corner_forms_relative_indices_and_other_statements(tmp_path):
    path = tmp_path / "forms.obj"
    path.write_text(
        "# exported by some tool\nmtllib head.mtl\no head\n"
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0 0.5 0.5 0.5\nvt 0 0\nvt 1 0\nvt 1 1\nvn 0 0 1\n"
        "g face\nusemtl skin\n"
        "f 1/1/1 2/2/1 3/3/1 4/1/1\n"
        "f 1//1 2//1 3//1  # a comment\n"
        "v 2 0 0\n"
        "f -4/2 -1/1 -3/3\n"        # relative to the 5 vertices defined so far: 2, 5, 3
        "v 3 3 3\n"
        "\tf 5 2 3 6\r\n"           # leading whitespace, CRLF
        "f -1 -2 -3\n"
    )
    vertices, polygons = read_polygon_mesh(path)
    np.testing.assert_array_equal(vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [3, 3, 3]])
    np.testing.assert_array_equal(polygons, [[0, 1, 2, 3], [0, 1, 2, -1], [1, 4, 2, -1], [4, 1, 2, 5],
                                             [5, 4, 3, -1]])


def test_ascii_and_binary_ply_with_other_properties(tmp_path):
    vertices, polygons = mixed_grid()
    lines = ["ply", "format ascii 1.0", "comment z first, normals and a face flag around the lists",
             f"element vertex {len(vertices)}", "property float z", "property float nx", "property float x",
             "property float y", f"element face {len(polygons)}", "property uchar flag",
             "property list uchar int vertex_indices", "property list uchar float texcoord", "end_header"]
    lines += [f"{z:.9g} 0 {x:.9g} {y:.9g}" for x, y, z in vertices]
    lines += [f"7 {(p >= 0).sum()} {' '.join(map(str, p[p >= 0]))} 2 0.5 0.5" for p in polygons]
    (tmp_path / "ascii.ply").write_text("\n".join(lines) + "\n")
    read_vertices, read_polygons = read_polygon_mesh(tmp_path / "ascii.ply")
    np.testing.assert_array_equal(read_vertices, vertices)
    np.testing.assert_array_equal(read_polygons, polygons)

    header = (f"ply\nformat binary_big_endian 1.0\nelement vertex {len(vertices)}\nproperty double x\n"
              "property double y\nproperty double z\nproperty uchar red\nelement edge 1\nproperty int vertex1\n"
              f"property int vertex2\nelement face {len(polygons)}\nproperty list ushort uint vertex_index\n"
              "property short flag\nend_header\n").encode()
    vertex_rows = np.zeros(len(vertices), dtype=[("xyz", ">f8", 3), ("red", "u1")])
    vertex_rows["xyz"] = vertices
    faces = b"".join(np.array([(p >= 0).sum()], ">u2").tobytes() + p[p >= 0].astype(">u4").tobytes()
                     + np.array([-3], ">i2").tobytes() for p in polygons)
    data = header + vertex_rows.tobytes() + np.array([0, 1], ">i4").tobytes() + faces
    (tmp_path / "binary.ply").write_bytes(data)
    read_vertices, read_polygons = read_polygon_mesh(tmp_path / "binary.ply")
    np.testing.assert_array_equal(read_vertices, vertices)
    np.testing.assert_array_equal(read_polygons, polygons)


def test_polygon_read_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        read_polygon_mesh(tmp_path / "missing.obj")
    (tmp_path / "pentagon.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 1 0\nv 1 2 0\nv 0 1 0\nf 1 2 3 4 5\n")
    with pytest.raises(ValueError, match="pentagon.obj: polygon 0 has 5 corners; only triangles and quads"):
        read_polygon_mesh(tmp_path / "pentagon.obj")
    (tmp_path / "outside.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3 9\n")
    with pytest.raises(ValueError, match="outside.obj: polygons index vertices outside"):
        read_polygon_mesh(tmp_path / "outside.obj")
    (tmp_path / "mesh.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    with pytest.raises(ValueError, match="mesh.off: polygon meshes are read from .ply and .obj"):
        read_polygon_mesh(tmp_path / "mesh.off")

    vertices, polygons = mixed_grid()
    write_mesh(tmp_path / "whole.ply", vertices, polygons)
    data = (tmp_path / "whole.ply").read_bytes()
    body = data.index(b"end_header\n") + len(b"end_header\n")
    for cut in (len(data) - 1, len(data) - 20, body + 12 * len(vertices) + 5, body + 20):  # in faces, in vertices
        (tmp_path / "truncated.ply").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated.ply: cannot read the PLY data: truncated"):
            read_polygon_mesh(tmp_path / "truncated.ply")
    (tmp_path / "truncated.ply").write_bytes(data[:-1])
    with pytest.raises(ValueError, match="truncated.ply: .*the face element runs past the end of the file"):
        read_polygon_mesh(tmp_path / "truncated.ply")
    ascii_ply = "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n" \
                "element face 2\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n" \
                "3 0 1 2\n4 0 1 2"
    (tmp_path / "ascii.ply").write_text(ascii_ply + " 3\n")
    assert read_polygon_mesh(tmp_path / "ascii.ply")[1].tolist() == [[0, 1, 2, -1], [0, 1, 2, 3]]
    (tmp_path / "ascii.ply").write_text(ascii_ply + "\n")  # the last quad lost a corner: its line ends early
    with pytest.raises(ValueError, match=r"ascii.ply: cannot read the PLY data: truncated .*row 1 of the face element"):
        read_polygon_mesh(tmp_path / "ascii.ply")
    (tmp_path / "headless.ply").write_bytes(data[:body - 20])
    with pytest.raises(ValueError, match="headless.ply: not a PLY file"):
        read_polygon_mesh(tmp_path / "headless.ply")


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_read_mesh_refuses_quads_and_names_the_fix(tmp_path, suffix):
    path = tmp_path / f"mixed{suffix}"
    write_mesh(path, *mixed_grid())  # trimesh cannot even load a binary PLY mixing triangles and quads
    with pytest.raises(PolygonMeshError, match=f"mixed{suffix}: a quad or polygon mesh.*read_polygon_mesh"):
        read_mesh(path)


def test_triangulation_splits_each_quad_along_its_shorter_diagonal():
    rng = np.random.default_rng(1)
    vertices, polygons = mixed_grid()
    vertices[:, :2] += rng.uniform(-0.2, 0.2, (len(vertices), 2))  # a planar mesh of irregular convex quads
    vertices[:, 2] = 0
    faces = triangulate_polygons(vertices, polygons)
    quad = polygons[:, 3] >= 0
    assert faces.dtype == np.int64 and len(faces) == len(polygons) + quad.sum()
    start = np.cumsum(1 + quad) - (1 + quad)
    np.testing.assert_array_equal(faces[start[~quad]], polygons[~quad, :3])  # triangles kept, in place
    first, second = faces[start[quad]], faces[start[quad] + 1]
    corners = vertices[polygons[quad]][..., :2]
    np.testing.assert_allclose(shoelace_area(vertices[first][..., :2]) + shoelace_area(vertices[second][..., :2]),
                               shoelace_area(corners), rtol=1e-6)
    shared = [sorted(set(a) & set(b)) for a, b in zip(first.tolist(), second.tolist(), strict=True)]
    ac = np.linalg.norm(corners[:, 0] - corners[:, 2], axis=1)
    bd = np.linalg.norm(corners[:, 1] - corners[:, 3], axis=1)
    assert (ac != bd).all()
    expected = np.where((bd < ac)[:, None], np.sort(polygons[quad][:, [1, 3]]), np.sort(polygons[quad][:, [0, 2]]))
    np.testing.assert_array_equal(shared, expected)
    assert {True, False} == set(bd < ac)  # both cases occur
    normals = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    quad_normals = np.cross(vertices[polygons[:, 1]] - vertices[polygons[:, 0]],
                            vertices[polygons[:, 2]] - vertices[polygons[:, 0]])
    assert (np.sign(normals[:, 2]) == np.sign(quad_normals[0, 2])).all()  # wound like the quads

    kite = np.array([[0, 0, 0], [2, -0.5, 0], [4, 0, 0], [2, 0.5, 0]])  # b-d is the short diagonal
    np.testing.assert_array_equal(triangulate_polygons(kite, [[0, 1, 2, 3]]), [[0, 1, 3], [1, 2, 3]])
    np.testing.assert_array_equal(triangulate_polygons(kite[[1, 2, 3, 0]], [[0, 1, 2, 3]]), [[0, 1, 2], [0, 2, 3]])


def test_template_keeps_polygons_through_arrays_and_files(tmp_path):
    vertices, polygons = mixed_grid()
    faces = triangulate_polygons(vertices, polygons)
    template = Template(vertices, faces, polygons=polygons, name="grid")
    np.savez(tmp_path / "template.npz", **template.to_arrays())
    with np.load(tmp_path / "template.npz") as arrays:
        restored = Template.from_arrays({key: arrays[key] for key in arrays.files})
    np.testing.assert_array_equal(restored.polygons, polygons)
    np.testing.assert_array_equal(restored.faces, faces)
    assert restored.polygons.dtype == np.int64
    assert Template(vertices, faces).to_arrays().keys() == template.to_arrays().keys() - {"polygons"}
    assert Template(vertices, faces).fingerprint() == template.fingerprint()  # a checkpoint stores faces only

    write_mesh(tmp_path / "grid.obj", vertices, polygons)
    read = read_template(tmp_path / "grid.obj")
    np.testing.assert_array_equal(read.polygons, polygons)
    np.testing.assert_array_equal(read.faces, faces)
    write_mesh(tmp_path / "triangles.ply", vertices, faces)
    assert read_template(tmp_path / "triangles.ply").polygons is None


def test_template_rejects_bad_polygons():
    vertices, polygons = quad_grid()
    faces = triangulate_polygons(vertices, polygons)
    with pytest.raises(ValueError, match="Template 'template': polygons must be \\(P, 4\\)"):
        Template(vertices, faces, polygons=polygons[:, :3])
    wrong = polygons.copy()
    wrong[0, 1] = -1
    with pytest.raises(ValueError, match="-1 only as the last entry"):
        Template(vertices, faces, polygons=wrong)
    wrong[0, 1] = len(vertices)
    with pytest.raises(ValueError, match=f"must lie in \\[0, {len(vertices)}\\)"):
        Template(vertices, faces, polygons=wrong)
    with pytest.raises(ValueError, match="6 polygons triangulate to 12 triangles but there are 11 faces"):
        Template(vertices, faces[:-1], polygons=polygons)
