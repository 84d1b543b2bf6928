"""Tests of the mesh toolkit: I/O, QEM sampling hierarchies, spirals and graph operators, on procedural meshes."""

from __future__ import annotations

import math

import fast_simplification
import numpy as np
import pytest
import scipy.sparse.csgraph
import torch
import trimesh
from torch_geometric.nn import ChebConv

import morphzoo.mesh.spirals as spirals_module
from morphzoo.mesh import (
    Template,
    adjacency_matrix,
    edge_index,
    mesh_hierarchy,
    neural3dmm_spirals,
    read_mesh,
    read_template,
    scaled_laplacian,
    sparse_to_torch,
    spiralnet_spirals,
    write_mesh,
)

# ----------------------------------------------------------------------------------------------------------------------
# Procedural meshes


def icosphere(subdivisions: int = 3) -> Template:
    """Closed genus-0 mesh with counter-clockwise (outward) faces; 642 vertices at 3 subdivisions."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    return Template(vertices=sphere.vertices, faces=sphere.faces, name=f"icosphere{subdivisions}")


def wavy_grid(n: int = 30) -> Template:
    """Open n × n grid over the unit square, gently curved, faces counter-clockwise seen from +z."""
    x, y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    z = 0.1 * np.sin(3 * x) * np.cos(2 * y)
    index = np.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, :-1].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], axis=1), np.stack([a, d, c], axis=1)])
    return Template(vertices=np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1), faces=faces, name="grid")


def hop_distances(template: Template) -> np.ndarray:
    """(V, V) graph distances in edges."""
    return scipy.sparse.csgraph.shortest_path(adjacency_matrix(template), unweighted=True)


def oriented_corners(faces: np.ndarray) -> set[tuple[int, int, int]]:
    """Every face in its three cyclic rotations: (v, a, b) is in the set iff a face turns v -> a -> b."""
    return {tuple(int(i) for i in np.roll(face, shift)) for face in faces for shift in range(3)}


def mean_edge_length(template: Template) -> float:
    edges = template.edges()
    return float(np.linalg.norm(template.vertices[edges[:, 0]] - template.vertices[edges[:, 1]], axis=1).mean())


# ----------------------------------------------------------------------------------------------------------------------
# QEM sampling hierarchy


@pytest.mark.parametrize("factors", [[4, 4, 4], [2, 3]])
def test_hierarchy_level_sizes_are_ceil_of_factor(factors):
    hierarchy = mesh_hierarchy(icosphere(), factors)
    expected = [642]
    for factor in factors:
        expected.append(math.ceil(expected[-1] / factor))
    assert hierarchy.sizes == tuple(expected)
    assert len(hierarchy.levels) == len(hierarchy.templates) - 1 == len(factors)


@pytest.mark.parametrize("template", [icosphere(), wavy_grid()], ids=["closed", "open"])
def test_down_sampling_selects_original_vertices(template):
    hierarchy = mesh_hierarchy(template, [4, 4])
    for fine, coarse, level in zip(hierarchy.templates, hierarchy.templates[1:], hierarchy.levels, strict=False):
        down = level.down_matrix()
        assert down.shape == (coarse.num_vertices, fine.num_vertices)
        assert np.array_equal(np.diff(down.indptr), np.ones(coarse.num_vertices))  # exactly one entry per row
        assert np.all(down.data == 1)
        assert len(np.unique(level.down_index)) == coarse.num_vertices
        assert np.array_equal(coarse.vertices, fine.vertices[level.down_index])
        assert np.allclose(down @ fine.vertices, coarse.vertices)


@pytest.mark.parametrize("template", [icosphere(), wavy_grid()], ids=["closed", "open"])
def test_coarse_meshes_are_valid_triangle_meshes(template):
    hierarchy = mesh_hierarchy(template, [4, 4])
    for fine, coarse in zip(hierarchy.templates, hierarchy.templates[1:], strict=False):
        faces = coarse.faces
        assert faces.min() >= 0 and faces.max() < coarse.num_vertices
        assert np.all((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0]))
        assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces)
        assert np.array_equal(np.unique(faces), np.arange(coarse.num_vertices))  # no stranded vertex
        # Collapses keep the winding and the surface closed or open as it was.
        fine_mesh = trimesh.Trimesh(fine.vertices, fine.faces, process=False)
        coarse_mesh = trimesh.Trimesh(coarse.vertices, coarse.faces, process=False)
        assert coarse_mesh.is_winding_consistent
        assert coarse_mesh.is_watertight == fine_mesh.is_watertight


def test_open_mesh_levels_reach_the_target_within_a_stranded_vertex():
    template = wavy_grid()
    sizes = mesh_hierarchy(template, [4, 4]).sizes
    for fine, coarse in zip(sizes, sizes[1:], strict=False):
        assert math.ceil(fine / 4) - 2 <= coarse <= math.ceil(fine / 4)


@pytest.mark.parametrize("template", [icosphere(), wavy_grid()], ids=["closed", "open"])
def test_up_sampling_is_barycentric_on_coarse_faces(template):
    hierarchy = mesh_hierarchy(template, [4, 4])
    for coarse, level in zip(hierarchy.templates[1:], hierarchy.levels, strict=False):
        assert np.all(level.up_weight >= 0)
        assert np.allclose(level.up_weight.sum(axis=1), 1, atol=1e-6)
        up = level.up_matrix()
        assert up.shape == (level.num_fine, level.num_coarse)
        assert np.allclose(np.asarray(up.sum(axis=1)).ravel(), 1, atol=1e-6)
        coarse_faces = {tuple(face) for face in np.sort(coarse.faces, axis=1).tolist()}
        assert all(tuple(row) in coarse_faces for row in np.sort(level.up_index, axis=1).tolist())
        # A vertex kept by the decimation is reproduced exactly.
        kept_rows = up[level.down_index].toarray()
        assert np.array_equal(kept_rows, np.eye(level.num_coarse, dtype=kept_rows.dtype))


@pytest.mark.parametrize("template", [icosphere(), wavy_grid()], ids=["closed", "open"])
def test_up_after_down_approximates_the_mesh(template):
    level = mesh_hierarchy(template, [4]).levels[0]
    reconstruction = level.up_matrix() @ (level.down_matrix() @ template.vertices)
    error = np.linalg.norm(reconstruction - template.vertices, axis=1)
    assert error.mean() < 0.25 * mean_edge_length(template)
    assert error.max() < 2.0 * mean_edge_length(template)


def test_hierarchy_carries_regions_along():
    base = icosphere()
    regions = (base.vertices[:, 2] > 0).astype(np.int64)
    template = Template(base.vertices, base.faces, regions=regions, region_names=("south", "north"))
    hierarchy = mesh_hierarchy(template, [4])
    coarse = hierarchy.templates[1]
    assert np.array_equal(coarse.regions, regions[hierarchy.levels[0].down_index])
    assert coarse.region_names == ("south", "north")


def test_hierarchy_rejects_bad_factors():
    with pytest.raises(ValueError, match="factors"):
        mesh_hierarchy(icosphere(), [4, 0])
    with pytest.raises(ValueError, match="decimat"):
        mesh_hierarchy(icosphere(1), [4, 4, 4])  # 42 -> 11 -> 3 -> 1 vertex: no triangle left


def test_hierarchy_is_cached_and_a_corrupt_entry_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    calls = []
    simplify = fast_simplification.simplify
    monkeypatch.setattr(fast_simplification, "simplify", lambda *a, **k: calls.append(1) or simplify(*a, **k))
    template = icosphere()

    first = mesh_hierarchy(template, [4, 4])
    assert len(calls) == 2  # one decimation per level
    entries = list((tmp_path / "sampling").glob("*.npz"))
    assert len(entries) == 1

    second = mesh_hierarchy(template, [4, 4])
    assert len(calls) == 2
    for a, b in zip(first.levels, second.levels, strict=True):
        assert np.array_equal(a.down_index, b.down_index) and np.array_equal(a.up_weight, b.up_weight)

    entries[0].write_bytes(b"not an npz archive")
    third = mesh_hierarchy(template, [4, 4])
    assert len(calls) == 4
    assert third.sizes == first.sizes
    assert np.array_equal(third.templates[2].faces, first.templates[2].faces)


def test_hierarchy_cache_key_depends_on_geometry(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    template = icosphere()
    moved = Template(template.vertices * [1.0, 1.0, 2.0], template.faces)
    mesh_hierarchy(template, [4])
    mesh_hierarchy(moved, [4])
    mesh_hierarchy(template, [2])
    assert len(list((tmp_path / "sampling").glob("*.npz"))) == 3


# ----------------------------------------------------------------------------------------------------------------------
# Spirals


def test_spiralnet_spirals_shape_centre_and_distinct_entries():
    template = icosphere()
    spirals = spiralnet_spirals(template, length=9)
    assert spirals.shape == (642, 9) and spirals.dtype == np.int64
    assert np.array_equal(spirals[:, 0], np.arange(642))
    assert spirals.min() >= 0 and spirals.max() < 642
    assert all(len(set(row)) == len(row) for row in spirals.tolist())


def test_spiral_first_ring_is_the_one_ring_in_face_order():
    template = icosphere()
    spirals = spiralnet_spirals(template, length=12)
    adjacency = adjacency_matrix(template).tolil()
    corners = oriented_corners(template.faces)
    for vertex, spiral in enumerate(spirals.tolist()):
        neighbours = adjacency.rows[vertex]
        ring = spiral[1 : 1 + len(neighbours)]
        assert set(ring) == set(neighbours)
        # consecutive neighbours (cyclically: the 1-ring of a closed mesh is a cycle) span a face turning like it
        assert all((vertex, a, b) in corners for a, b in zip(ring, ring[1:] + ring[:1], strict=True))


def test_spiral_rings_grow_outwards_turning_in_one_direction():
    template = icosphere()
    hops = hop_distances(template)
    adjacency = adjacency_matrix(template)
    positions = template.vertices
    normals = positions / np.linalg.norm(positions, axis=1, keepdims=True)
    for vertex, spiral in enumerate(spiralnet_spirals(template, length=16).tolist()):
        rings = hops[vertex, spiral]
        assert np.all(np.diff(rings) >= 0)  # ring by ring
        for a, b in zip(spiral[1:], spiral[2:], strict=False):
            if rings[spiral.index(a)] == rings[spiral.index(b)]:
                assert adjacency[a, b]  # each ring is walked without jumps ...
                turn = np.cross(positions[a] - positions[vertex], positions[b] - positions[vertex])
                assert turn @ normals[vertex] > 0  # ... counter-clockwise, like the faces


def test_spiral_first_ring_on_an_open_mesh_follows_the_fan():
    template = wavy_grid(8)
    adjacency = adjacency_matrix(template).tolil()
    corners = oriented_corners(template.faces)
    for vertex, spiral in enumerate(spiralnet_spirals(template, length=9).tolist()):
        neighbours = adjacency.rows[vertex]
        ring = spiral[1 : 1 + len(neighbours)]
        assert set(ring) == set(neighbours)
        steps_within_faces = sum((vertex, a, b) in corners for a, b in zip(ring, ring[1:], strict=False))
        assert steps_within_faces == len(ring) - 1  # a boundary fan is walked from one end to the other


def test_spiralnet_dilation_keeps_every_dilation_th_entry():
    template = icosphere()
    dilated = spiralnet_spirals(template, length=6, dilation=3)
    assert dilated.shape == (642, 6)
    assert np.array_equal(dilated, spiralnet_spirals(template, length=18)[:, ::3])


def test_spiralnet_completes_small_neighbourhoods_with_nearest_vertices():
    sphere = trimesh.creation.icosphere(subdivisions=0)  # 12 vertices: all rings together hold 12
    vertices = np.concatenate([sphere.vertices, sphere.vertices + [3.0, 0.0, 0.0]])
    template = Template(vertices, np.concatenate([sphere.faces, sphere.faces + 12]))
    spirals = spiralnet_spirals(template, length=16)
    for vertex, spiral in enumerate(spirals.tolist()):
        component = set(range(12)) if vertex < 12 else set(range(12, 24))
        assert set(spiral[:12]) == component
        distances = np.linalg.norm(vertices - vertices[vertex], axis=1)
        others = sorted(set(range(24)) - component, key=lambda other: distances[other])
        assert spiral[12:] == others[:4]


def test_spiralnet_on_a_mesh_smaller_than_the_spiral():
    template = icosphere(0)
    spirals = spiralnet_spirals(template, length=9, dilation=2)  # 18 > 12 vertices
    assert spirals.shape == (12, 9)
    assert np.array_equal(spirals[:, 0], np.arange(12))
    assert spirals.min() >= 0 and spirals.max() < 12


def test_neural3dmm_spirals_hold_the_rings_padded_at_the_end_with_gap_marks_only_where_the_boundary_cuts():
    template = wavy_grid(10)
    rings, n = 2, template.num_vertices
    spirals = neural3dmm_spirals(template, rings=rings)
    hops = hop_distances(template)
    adjacency = adjacency_matrix(template).toarray() > 0
    for vertex, spiral in enumerate(spirals.tolist()):
        real = [i for i in spiral if i != n]
        assert len(set(real)) == len(real) and np.all(hops[vertex, real] <= rings)
        # inside the spiral (before its padding) a dummy entry marks a cut: its neighbours share no edge
        last = max(i for i, entry in enumerate(spiral) if entry != n)
        for i in range(1, last):
            if spiral[i] == n:
                assert not adjacency[spiral[i - 1], spiral[i + 1]], (vertex, spiral)
        interior = not any(hops[vertex, b] <= rings for b in np.flatnonzero(boundary_vertices(template)))
        if interior:  # a spiral that never meets the boundary has no mark and holds its whole ball
            assert n not in spiral[:last] and len(real) == min((hops[vertex] <= rings).sum(), len(spiral))
    one_rings = spirals_module.ordered_one_rings(template.faces, n)
    marked = [v for v in np.flatnonzero(boundary_vertices(template)) if n in spirals[v, 1:len(one_rings[v]) + 1]]
    assert marked, "a boundary vertex whose 1-ring starts inside its fan carries a gap mark"


def boundary_vertices(template: Template) -> np.ndarray:
    edges = np.sort(template.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = np.zeros(template.num_vertices, dtype=bool)
    boundary[unique[counts == 1].ravel()] = True
    return boundary


def test_neural3dmm_spirals_start_on_the_shortest_path_to_the_reference_by_edge_length():
    template = icosphere()
    jitter = np.random.default_rng(0).normal(scale=0.03, size=template.vertices.shape)  # edges of unequal length
    template = Template(vertices=template.vertices + jitter, faces=template.faces, name="jittered")
    reference = 100
    spirals = neural3dmm_spirals(template, rings=2, reference_vertex=reference)
    edges = adjacency_matrix(template).tocoo()
    lengths = np.linalg.norm(template.vertices[edges.row] - template.vertices[edges.col], axis=1)
    weighted = scipy.sparse.csr_matrix((lengths, (edges.row, edges.col)), shape=edges.shape)
    distance = scipy.sparse.csgraph.dijkstra(weighted, indices=reference)
    hops = hop_distances(template)[reference]
    corners = oriented_corners(template.faces)
    off_hop_path = 0
    for vertex, spiral in enumerate(spirals.tolist()):
        first = spiral[1]
        if vertex != reference:
            step = np.linalg.norm(template.vertices[vertex] - template.vertices[first])
            assert math.isclose(distance[first] + step, distance[vertex], rel_tol=1e-9)
            off_hop_path += hops[first] != hops[vertex] - 1
        assert (vertex, first, spiral[2]) in corners
    assert off_hop_path > 0  # the test tells edge length from hop count


def test_neural3dmm_dilation_keeps_the_centre_the_first_neighbour_and_every_dilation_th_entry_after_it():
    template = icosphere()  # closed: no gap marks; each spiral fits its length, valence-5 ones padded at the end
    full = neural3dmm_spirals(template, rings=2)
    dilated = neural3dmm_spirals(template, rings=2, dilation=2)
    n = template.num_vertices
    for full_row, dilated_row in zip(full.tolist(), dilated.tolist(), strict=True):
        spiral = [i for i in full_row if i != n]
        expected = spiral[:1] + spiral[1::2]  # positions 0, 1, 3, 5, ...: the reference-direction neighbour stays
        assert [i for i in dilated_row if i != n] == expected[: len(dilated_row)]


def test_spirals_reject_bad_arguments():
    with pytest.raises(ValueError, match="length"):
        spiralnet_spirals(icosphere(1), length=0)
    with pytest.raises(ValueError, match="dilation"):
        neural3dmm_spirals(icosphere(1), rings=2, dilation=0)
    with pytest.raises(ValueError, match="reference_vertex"):
        neural3dmm_spirals(icosphere(1), rings=2, reference_vertex=42)


def test_spirals_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    calls = []
    compute = spirals_module._spiralnet_spirals
    monkeypatch.setattr(spirals_module, "_spiralnet_spirals", lambda *a: calls.append(1) or compute(*a))
    template = icosphere()
    first = spiralnet_spirals(template, 9)
    second = spiralnet_spirals(template, 9)
    assert len(calls) == 1
    assert np.array_equal(first, second)
    assert len(list((tmp_path / "spirals").glob("*.npz"))) == 1


# ----------------------------------------------------------------------------------------------------------------------
# Graph operators


def test_edge_index_holds_both_directions_of_every_edge_once():
    template = icosphere(2)
    edges = edge_index(template)
    edge_count = len(template.edges())
    assert edges.shape == (2, 2 * edge_count) and edges.dtype == np.int64
    assert np.all(edges[0] != edges[1])
    directed = set(map(tuple, edges.T.tolist()))
    assert len(directed) == 2 * edge_count
    assert directed == {(b, a) for a, b in directed}
    assert {tuple(sorted(pair)) for pair in directed} == set(map(tuple, template.edges().tolist()))


def test_scaled_laplacian_matches_pyg_chebconv():
    template = icosphere(2)
    torch.manual_seed(0)
    conv = ChebConv(4, 5, K=3, normalization="sym")
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(template.num_vertices, 4)
    expected = conv(x, torch.from_numpy(edge_index(template)), lambda_max=torch.tensor(2.0))

    laplacian = sparse_to_torch(scaled_laplacian(template))
    chebyshev = [x, laplacian @ x]
    chebyshev.append(2 * (laplacian @ chebyshev[1]) - chebyshev[0])
    # PyG keeps one bias-free Linear per order k (y = T_k W_k^T) and a shared bias.
    ours = sum(t @ lin.weight.T for t, lin in zip(chebyshev, conv.lins, strict=True)) + conv.bias
    assert torch.allclose(ours, expected, atol=1e-5)


def test_scaled_laplacian_is_symmetric_with_spectrum_in_range():
    template = icosphere(2)
    laplacian = scaled_laplacian(template)
    assert laplacian.dtype == np.float32 and laplacian.shape == (162, 162)
    assert abs(laplacian - laplacian.T).max() < 1e-7
    assert np.allclose(laplacian.diagonal(), 0)
    eigenvalues = np.linalg.eigvalsh(np.eye(162) + laplacian.toarray())  # L_sym = I + L~
    assert eigenvalues.min() > -1e-5 and eigenvalues.max() < 2 + 1e-5


def test_scaled_laplacian_of_an_isolated_vertex_is_zero():
    sphere = icosphere(1)
    template = Template(np.concatenate([sphere.vertices, [[5.0, 5.0, 5.0]]]), sphere.faces)
    laplacian = scaled_laplacian(template).toarray()
    assert np.isfinite(laplacian).all()
    assert not laplacian[-1].any() and not laplacian[:, -1].any()


def test_sparse_to_torch_keeps_the_entries():
    matrix = scaled_laplacian(icosphere(1))
    tensor = sparse_to_torch(matrix)
    assert tensor.is_sparse and tensor.is_coalesced() and tensor.dtype == torch.float32
    assert np.array_equal(tensor.to_dense().numpy(), matrix.toarray())


# ----------------------------------------------------------------------------------------------------------------------
# I/O


def mesh_with_duplicate_vertices() -> tuple[np.ndarray, np.ndarray]:
    """A float32 mesh whose last vertices repeat the first ones (trimesh would merge them), with tiny coordinates."""
    sphere = trimesh.creation.icosphere(subdivisions=1)
    rng = np.random.default_rng(0)
    vertices = (sphere.vertices * rng.uniform(1e-4, 1.0, size=(len(sphere.vertices), 1))).astype(np.float32)
    vertices = np.concatenate([vertices, vertices[:5]])
    faces = sphere.faces.copy()
    faces[:5, 0] = len(sphere.vertices) + np.arange(5)
    return vertices, faces


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_write_then_read_preserves_vertices_and_order_exactly(tmp_path, suffix):
    vertices, faces = mesh_with_duplicate_vertices()
    path = tmp_path / f"mesh{suffix}"
    write_mesh(path, vertices, faces)
    read_vertices, read_faces = read_mesh(path)
    assert read_vertices.dtype == np.float32 and read_faces.dtype == np.int64
    assert np.array_equal(read_vertices, vertices)
    assert np.array_equal(read_faces, faces)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_obj_material_groups_do_not_reorder_vertices(tmp_path):
    path = tmp_path / "groups.obj"
    path.write_text(
        "mtllib missing.mtl\no part\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 2 2\n"
        "usemtl skin\nf 1 2 3\ng other\nusemtl eyes\nf 1 3 4\nf 2 5 3\n"
    )
    vertices, faces = read_mesh(path)
    assert np.array_equal(vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 2, 2]])
    assert np.array_equal(faces, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])


def test_read_template_names_it_after_the_file(tmp_path):
    vertices, faces = mesh_with_duplicate_vertices()
    write_mesh(tmp_path / "head.ply", vertices, faces)
    assert read_template(tmp_path / "head.ply").name == "head"
    template = read_template(tmp_path / "head.ply", name="custom")
    assert template.name == "custom" and np.array_equal(template.faces, faces)


def test_read_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        read_mesh(tmp_path / "missing.ply")

    vertices, faces = mesh_with_duplicate_vertices()
    write_mesh(tmp_path / "whole.ply", vertices, faces)
    data = (tmp_path / "whole.ply").read_bytes()
    (tmp_path / "truncated.ply").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match="truncated.ply"):
        read_mesh(tmp_path / "truncated.ply")

    (tmp_path / "garbage.ply").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match="garbage.ply"):
        read_mesh(tmp_path / "garbage.ply")

    (tmp_path / "notes.obj").write_text("these are not\nthe vertices you are looking for\n")
    with pytest.raises(ValueError, match="notes.obj.*no triangle"):
        read_mesh(tmp_path / "notes.obj")

    (tmp_path / "quad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\n")
    with pytest.raises(ValueError, match="quad.obj.*triangle"):
        read_mesh(tmp_path / "quad.obj")

    (tmp_path / "outside.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\nf 1 2 7\n")
    with pytest.raises(ValueError, match="outside.obj"):
        read_mesh(tmp_path / "outside.obj")


def test_write_rejects_unknown_formats_and_bad_shapes(tmp_path):
    vertices, faces = mesh_with_duplicate_vertices()
    with pytest.raises(ValueError, match="format"):
        write_mesh(tmp_path / "mesh.stl", vertices, faces)
    with pytest.raises(ValueError, match="faces"):
        write_mesh(tmp_path / "mesh.ply", vertices, faces[:, :2])
