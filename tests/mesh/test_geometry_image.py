"""The geometry image (Abrevaya et al. 2019, Eq. 5), UV parameterisations and the cotangent Laplacian."""

import numpy as np
import pytest
import scipy.spatial
import torch

from morphzoo.mesh.geometry_image import (
    cotangent_laplacian,
    geometry_image_gather,
    geometry_image_matrix,
    harmonic_uv,
    pixel_centres,
)
from morphzoo.mesh.template import Template
from morphzoo.nn.geometry_mapping import GeometryMapping
from tests.synthetic import cache_entries, sphere_template

SIZE = 8


def grid_template(vertices_per_side: int, with_uv: bool = True, jitter: float = 0.0, seed: int = 0) -> Template:
    """A flat grid over [0, 1]² (z = 0), Delaunay-triangulated; UVs = its (x, y). ``jitter`` moves interior vertices."""
    axis = np.linspace(0, 1, vertices_per_side)
    xy = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    interior = (xy > 0).all(1) & (xy < 1).all(1)
    xy[interior] += np.random.default_rng(seed).uniform(-jitter, jitter, (interior.sum(), 2)) / vertices_per_side
    faces = scipy.spatial.Delaunay(xy).simplices
    vertices = np.column_stack([xy, np.zeros(len(xy))])
    uv = dict(uv=xy, uv_faces=faces) if with_uv else {}
    return Template(vertices=vertices, faces=faces, name="grid", **uv)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))


@pytest.mark.parametrize("uv_source", ["template", "harmonic"])
def test_pixels_on_vertices_reproduce_the_vertex_positions(uv_source):
    # 2·SIZE + 1 vertices per side put a vertex at every pixel centre (odd grid points); the harmonic map of a flat
    # square with its boundary on the unit square is the identity.
    template = grid_template(2 * SIZE + 1, with_uv=uv_source == "template")
    values = np.random.default_rng(1).standard_normal((template.num_vertices, 3))
    image = geometry_image_matrix(template, SIZE, uv_source) @ values
    centres = pixel_centres(SIZE)
    on_vertex = np.argmin(np.linalg.norm(template.vertices[None, :, :2] - centres[:, None], axis=-1), axis=1)
    assert np.allclose(template.vertices[on_vertex, :2], centres, atol=1e-9)  # the construction is right
    np.testing.assert_allclose(image, values[on_vertex], atol=1e-7)


def test_the_mapping_layer_is_linear_and_matches_the_matrix():
    template = grid_template(7, jitter=0.3)
    matrix = geometry_image_matrix(template, SIZE)
    layer = GeometryMapping(*geometry_image_gather(template, SIZE))
    a, b = torch.randn(2, 4, template.num_vertices, 3, dtype=torch.float64)
    combined = layer(2.5 * a - 0.5 * b)
    torch.testing.assert_close(combined, 2.5 * layer(a) - 0.5 * layer(b))
    expected = torch.from_numpy(np.stack([matrix @ mesh.numpy() for mesh in a]))  # (B, n², 3)
    torch.testing.assert_close(layer(a), expected.transpose(1, 2).reshape(4, 3, SIZE, SIZE))
    rows = np.asarray(matrix.sum(1)).ravel()
    assert np.allclose(rows, 1)  # the grid covers every pixel: each row is a partition of unity


def test_the_mapping_is_differentiable():
    template = grid_template(5)
    layer = GeometryMapping(*geometry_image_gather(template, SIZE))
    x = torch.randn(2, template.num_vertices, 3, requires_grad=True)
    layer(x).sum().backward()
    matrix = geometry_image_matrix(template, SIZE)
    expected = np.asarray(matrix.sum(0)).ravel()  # d(sum of pixels)/d(vertex) = its column sum
    torch.testing.assert_close(x.grad[0, :, 0], torch.from_numpy(expected).float())


def test_harmonic_uv_puts_the_boundary_on_the_unit_square():
    template = sphere_template(3, open_cap=True)
    uv = harmonic_uv(template)
    assert uv.min() >= 0 and uv.max() <= 1
    face_edges = np.sort(np.concatenate([template.faces[:, [0, 1]], template.faces[:, [1, 2]],
                                         template.faces[:, [2, 0]]]), axis=1)
    edges, uses = np.unique(face_edges, axis=0, return_counts=True)
    boundary = np.unique(edges[uses == 1])  # an edge of one face only
    on_square = np.isclose(uv[boundary], 0, atol=1e-9) | np.isclose(uv[boundary], 1, atol=1e-9)
    assert on_square.any(1).all()
    interior = np.setdiff1d(np.arange(template.num_vertices), boundary)
    assert ((uv[interior] > 0) & (uv[interior] < 1)).all()
    covered = np.diff(geometry_image_matrix(template, 32, "harmonic").indptr) > 0
    assert covered.mean() > 0.95


def test_a_closed_template_without_uvs_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="no boundary.*uv_source='template'"):
        geometry_image_matrix(sphere_template(1), SIZE, "harmonic")
    with pytest.raises(ValueError, match="has no UVs"):
        geometry_image_matrix(sphere_template(1), SIZE, "template")


def test_the_matrix_is_cached_by_content(tmp_path):
    template = grid_template(5)
    first = geometry_image_matrix(template, SIZE)
    assert len(cache_entries(tmp_path / "geometry-images")) == 1
    moved = Template(vertices=template.vertices * 2, faces=template.faces, uv=template.uv, uv_faces=template.uv_faces)
    geometry_image_matrix(moved, SIZE)
    assert len(cache_entries(tmp_path / "geometry-images")) == 2
    assert (geometry_image_matrix(template, SIZE) != first).nnz == 0


def test_the_cotangent_laplacian_of_a_linear_field_vanishes_inside_a_flat_mesh():
    template = grid_template(9, jitter=0.35)
    laplacian = cotangent_laplacian(template)
    field = template.vertices[:, :2] @ [0.7, -1.3] + 0.2  # linear in x, y
    result = laplacian @ field
    interior = ((template.vertices[:, :2] > 0) & (template.vertices[:, :2] < 1)).all(1)
    np.testing.assert_allclose(result[interior], 0, atol=1e-12)
    assert np.abs(result[~interior]).max() > 1e-3  # the boundary does not: the test could fail
    bumpy = np.sin(5 * template.vertices[:, 0])
    assert np.abs((laplacian @ bumpy)[interior]).max() > 1e-3
