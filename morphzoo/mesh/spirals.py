"""Spiral orderings of vertex neighbourhoods for spiral convolutions.

A spiral starts at a vertex, circles its 1-ring in the orientation of the face winding, and continues outwards ring
by ring in the same rotational direction: a fixed, consistently oriented serialisation of the neighbourhood that a
spiral convolution concatenates and feeds to one linear layer. Two variants:

- SpiralNet++ (Gong et al. 2019): fixed length, no padding; a neighbourhood too small for the length (tiny coarse
  meshes, open boundaries) is completed with the nearest remaining vertices by Euclidean distance.
- Neural3DMM (Bouritsas et al. 2019): a fixed number of rings, each spiral starting from the neighbour towards a
  common reference vertex; padded with the dummy index V (models append an all-zero vertex) or truncated to one
  length per mesh.

Spirals are computed by a Python loop over vertices (about 0.2 s for a 4k-vertex hierarchy) and cached on disk.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.csgraph

from morphzoo.cache import cached_arrays, content_hash
from morphzoo.mesh.graph import adjacency_matrix
from morphzoo.mesh.template import Template

SPIRALS_VERSION = 1
"""Bump when the spiral construction changes: cached spirals of older versions are then recomputed."""


def spiralnet_spirals(template: Template, length: int, dilation: int = 1) -> np.ndarray:
    """SpiralNet++ spirals: ``spiral[: length * dilation][::dilation]`` of every vertex.

    The 1-ring starts at the first neighbour of the vertex's circulation (:func:`ordered_one_rings`). When the rings
    hold fewer than ``length * dilation`` vertices the spiral continues with the nearest other vertices by Euclidean
    distance (and repeats itself on a mesh smaller than that).

    Returns:
        (V, length) int64; column 0 is the vertex itself; no padding.
    """
    _check_positive(length=length, dilation=dilation)
    key = content_hash("spiralnet", template.geometry_hash(), length, dilation, SPIRALS_VERSION)
    return cached_arrays("spirals", key, lambda: {"spirals": _spiralnet_spirals(template, length, dilation)})["spirals"]


def neural3dmm_spirals(template: Template, rings: int, dilation: int = 1, reference_vertex: int = 0) -> np.ndarray:
    """Neural3DMM spirals: the centre and its first ``rings`` rings, every spiral keeping ``spiral[::dilation]``.

    Every spiral enters its 1-ring at the neighbour closest (in edges) to ``reference_vertex``, so spirals on the same
    mesh start in a consistent direction. All spirals are cut or padded to ``L = int(mean + 2·std)`` of their (dilated)
    lengths; padding uses the dummy index V.

    Returns:
        (V, L) int64 with entries in [0, V]; column 0 is the vertex itself.
    """
    _check_positive(rings=rings, dilation=dilation)
    if not 0 <= reference_vertex < template.num_vertices:
        raise ValueError(f"reference_vertex must lie in [0, {template.num_vertices}), got {reference_vertex}")
    key = content_hash("neural3dmm", template.fingerprint(), rings, dilation, reference_vertex, SPIRALS_VERSION)
    arrays = cached_arrays(
        "spirals", key, lambda: {"spirals": _neural3dmm_spirals(template, rings, dilation, reference_vertex)}
    )
    return arrays["spirals"]


def ordered_one_rings(faces: np.ndarray, num_vertices: int) -> list[list[int]]:
    """Every vertex's neighbours in circulation order: counter-clockwise around the normal of counter-clockwise faces.

    Face ``(a, b, c)`` tells that, around ``a``, ``c`` follows ``b`` (and around ``b``, ``a`` follows ``c``; around
    ``c``, ``b`` follows ``a``); chaining these successors walks around the vertex. An interior vertex's chain is a
    cycle, started at its lowest-index neighbour; a boundary vertex's is a path, started at the neighbour that no face
    precedes, so the order runs across the fan. A non-manifold vertex's chains are concatenated.
    """
    centre = faces.ravel()
    previous = faces[:, [1, 2, 0]].ravel()
    following = faces[:, [2, 0, 1]].ravel()
    order = np.argsort(centre, kind="stable")
    splits = np.cumsum(np.bincount(centre, minlength=num_vertices))[:-1]
    previous_by_vertex = np.split(previous[order], splits)
    following_by_vertex = np.split(following[order], splits)
    return [
        _circulate(dict(zip(before.tolist(), after.tolist(), strict=True)))
        for before, after in zip(previous_by_vertex, following_by_vertex, strict=True)
    ]


def _circulate(successor: dict[int, int]) -> list[int]:
    """Chain ``successor`` links (neighbour -> next neighbour around the vertex) into one ordering of the neighbours."""
    ring: list[int] = []
    remaining = set(successor) | set(successor.values())
    while remaining:
        path_starts = remaining - {successor[n] for n in remaining if n in successor}
        neighbour = min(path_starts) if path_starts else min(remaining)
        while neighbour in remaining:
            ring.append(neighbour)
            remaining.discard(neighbour)
            neighbour = successor.get(neighbour, -1)
    return ring


def _rings_spiral(
    one_rings: list[list[int]], centre: int, max_rings: int, max_size: int, first: int | None = None
) -> list[int]:
    """The spiral around ``centre``: itself, its 1-ring (rotated to start at ``first`` if given), then further rings.

    Ring k + 1 is built by walking ring k in order and appending, for each of its vertices, the neighbours not yet in
    the spiral, in that vertex's circulation order starting where the spiral left it (after its run of visited
    neighbours), so the spiral keeps turning in one direction. Ring k + 1 is exactly the set of vertices at graph
    distance k + 1. Growth stops after ``max_rings`` rings or once the spiral holds ``max_size`` vertices.
    """
    ring = one_rings[centre]
    if first is not None:
        start = ring.index(first)
        ring = ring[start:] + ring[:start]
    spiral, visited = [centre, *ring], {centre, *ring}
    for _ in range(max_rings - 1):
        if not ring or len(spiral) >= max_size:
            break
        next_ring = []
        for vertex in ring:
            arc = _unvisited_arc(one_rings[vertex], visited)
            next_ring.extend(arc)
            visited.update(arc)
        spiral.extend(next_ring)
        ring = next_ring
    return spiral


def _unvisited_arc(neighbours: list[int], visited: set[int]) -> list[int]:
    """The unvisited ``neighbours`` in circulation order, starting right after a visited one."""
    start = next((i for i, n in enumerate(neighbours) if n not in visited and neighbours[i - 1] in visited), 0)
    return [n for n in neighbours[start:] + neighbours[:start] if n not in visited]


def _spiralnet_spirals(template: Template, length: int, dilation: int) -> np.ndarray:
    size = length * dilation
    one_rings = ordered_one_rings(template.faces, template.num_vertices)
    spirals = np.empty((template.num_vertices, size), dtype=np.int64)
    for vertex in range(template.num_vertices):
        spiral = _rings_spiral(one_rings, vertex, max_rings=size, max_size=size)
        if len(spiral) < size:
            spiral = _extend_with_nearest(template.vertices, spiral, size)
        spirals[vertex] = spiral[:size]
    return spirals[:, ::dilation]


def _extend_with_nearest(vertices: np.ndarray, spiral: list[int], size: int) -> np.ndarray:
    """Complete ``spiral`` to ``size`` entries with the vertices closest to its centre that it lacks (k-NN fallback).

    On a mesh with fewer than ``size`` vertices the completed sequence repeats from its start.
    """
    distances = np.linalg.norm(vertices - vertices[spiral[0]], axis=1)
    missing = np.ones(len(vertices), dtype=bool)
    missing[spiral] = False
    candidates = np.flatnonzero(missing)
    nearest = candidates[np.argsort(distances[candidates], kind="stable")]
    return np.resize(np.concatenate([spiral, nearest]), size)


def _neural3dmm_spirals(template: Template, rings: int, dilation: int, reference_vertex: int) -> np.ndarray:
    num_vertices = template.num_vertices
    one_rings = ordered_one_rings(template.faces, num_vertices)
    hops = scipy.sparse.csgraph.shortest_path(adjacency_matrix(template), unweighted=True, indices=reference_vertex)
    spirals = []
    for vertex, one_ring in enumerate(one_rings):
        # enter the 1-ring at the first neighbour on a shortest path to the reference vertex
        first = one_ring[int(np.argmin(hops[one_ring]))] if one_ring else None
        spiral = _rings_spiral(one_rings, vertex, max_rings=rings, max_size=num_vertices, first=first)
        spirals.append(spiral[::dilation])
    lengths = np.array([len(spiral) for spiral in spirals])
    length = max(1, int(lengths.mean() + 2 * lengths.std()))
    padded = np.full((num_vertices, length), num_vertices, dtype=np.int64)
    for vertex, spiral in enumerate(spirals):
        kept = spiral[:length]
        padded[vertex, : len(kept)] = kept
    return padded


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
