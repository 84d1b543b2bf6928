"""Spiral orderings of vertex neighbourhoods for spiral convolutions.

A spiral starts at a vertex, circles its 1-ring in the orientation of the face winding, and continues outwards ring
by ring in the same rotational direction: a fixed, consistently oriented serialisation of the neighbourhood that a
spiral convolution concatenates and feeds to one linear layer. Two variants:

- SpiralNet++ (Gong et al. 2019): fixed length, no padding; a neighbourhood too small for the length (tiny coarse
  meshes, open boundaries) is completed with the nearest remaining vertices by Euclidean distance.
- Neural3DMM (Bouritsas et al. 2019): a fixed number of rings, each spiral starting from the neighbour on the shortest
  path (by edge length) to a common reference vertex; a ring cut by the mesh boundary carries one gap mark; padded with
  the dummy index V (models append an all-zero vertex; gap marks point there too) or truncated to one length per
  mesh. This follows the reference implementation's spiral construction (the facts, not its code).

Spirals are computed by a Python loop over vertices (about 0.2 s for a 4k-vertex hierarchy) and cached on disk.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.csgraph

from morphzoo.cache import cached_arrays, content_hash
from morphzoo.mesh.graph import adjacency_matrix
from morphzoo.mesh.template import Template

SPIRALS_VERSION = 2
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
    """Neural3DMM spirals: the centre and its first ``rings`` rings, dilated as the reference implementation does.

    - **Start.** Every spiral enters its 1-ring at its neighbour on the shortest path to ``reference_vertex``, by edge
      length (Dijkstra), so spirals on the same mesh start in a consistent direction; the reference vertex itself
      starts at its nearest neighbour.
    - **Boundary.** A ring cut by the mesh boundary gets one gap entry (the dummy index V) between its two ends, as
      the reference marks the join of its forward and backward walks around the cut.
    - **Dilation** keeps the centre, the first neighbour (the one towards the reference) and every ``dilation``-th
      entry after it: positions 0, 1, 1 + d, 1 + 2d, ... of the spiral with its gap marks (``spiral[::d]`` would
      drop the reference-direction neighbour).
    - **Length.** All spirals are cut or padded to ``L = int(mean + 2·std)`` of their (dilated) lengths; padding uses
      the dummy index V.

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


def _rings(one_rings: list[list[int]], centre: int, max_rings: int, max_size: int, first: int | None = None
           ) -> list[list[int]]:
    """The rings of the spiral around ``centre``: its 1-ring (rotated to start at ``first`` if given), then further
    rings.

    Ring k + 1 is built by walking ring k in order and appending, for each of its vertices, the neighbours not yet in
    the spiral, in that vertex's circulation order starting where the spiral left it (after its run of visited
    neighbours), so the spiral keeps turning in one direction. Ring k + 1 is exactly the set of vertices at graph
    distance k + 1. Growth stops after ``max_rings`` rings or once the spiral holds ``max_size`` vertices.
    """
    ring = one_rings[centre]
    if first is not None:
        start = ring.index(first)
        ring = ring[start:] + ring[:start]
    rings, visited, size = [ring], {centre, *ring}, 1 + len(ring)
    for _ in range(max_rings - 1):
        if not ring or size >= max_size:
            break
        next_ring = []
        for vertex in ring:
            arc = _unvisited_arc(one_rings[vertex], visited)
            next_ring.extend(arc)
            visited.update(arc)
        rings.append(next_ring)
        ring, size = next_ring, size + len(next_ring)
    return [ring for ring in rings if ring]


def _rings_spiral(one_rings: list[list[int]], centre: int, max_rings: int, max_size: int) -> list[int]:
    """The spiral around ``centre``: itself, then its rings (:func:`_rings`) one after the other."""
    return [centre, *(vertex for ring in _rings(one_rings, centre, max_rings, max_size) for vertex in ring)]


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
    adjacency = adjacency_matrix(template).tocoo()
    lengths = np.linalg.norm(template.vertices[adjacency.row] - template.vertices[adjacency.col], axis=1)
    edge_lengths = scipy.sparse.csr_matrix((lengths, (adjacency.row, adjacency.col)), shape=adjacency.shape)
    # each vertex's predecessor on the shortest path (by edge length) from the reference: its neighbour towards it
    _, towards_reference = scipy.sparse.csgraph.dijkstra(edge_lengths, indices=reference_vertex,
                                                          return_predecessors=True)
    boundary = _boundary_vertices(template.faces, num_vertices)
    spirals = []
    for vertex, one_ring in enumerate(one_rings):
        first = None
        if one_ring:
            first = int(towards_reference[vertex])
            if vertex == reference_vertex or first not in one_ring:  # the reference itself: its nearest neighbour
                first = one_ring[int(np.argmin(edge_lengths[vertex, one_ring].toarray()))]
        spiral = [vertex]
        for ring in _rings(one_rings, vertex, max_rings=rings, max_size=num_vertices, first=first):
            spiral.extend(_with_gap_marker(ring, one_rings, boundary, gap=num_vertices))
        spirals.append(spiral[:1] + spiral[1::dilation])  # the centre, the neighbour towards the reference, ...
    lengths = np.array([len(spiral) for spiral in spirals])
    length = max(1, int(lengths.mean() + 2 * lengths.std()))
    padded = np.full((num_vertices, length), num_vertices, dtype=np.int64)
    for vertex, spiral in enumerate(spirals):
        kept = spiral[:length]
        padded[vertex, : len(kept)] = kept
    return padded


def _boundary_vertices(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(V,) bool: the vertices on an edge that only one face has."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = np.zeros(num_vertices, dtype=bool)
    boundary[unique[counts == 1].ravel()] = True
    return boundary


def _with_gap_marker(ring: list[int], one_rings: list[list[int]], boundary: np.ndarray, gap: int) -> list[int]:
    """``ring`` with the index ``gap`` (the dummy vertex) where the mesh boundary cuts it.

    The reference walks a ring until the boundary, then from the ring's start the other way, and marks the join of
    the two walks with one gap entry. Here a ring that meets the boundary gets the gap between the first two
    consecutive entries that share no edge (its two ends at the boundary); a ring that starts at its boundary end
    needs none, as the reference's backward walk then finds nothing.
    """
    if boundary[ring].any():
        for i in range(1, len(ring)):
            if ring[i] not in one_rings[ring[i - 1]]:
                return [*ring[:i], gap, *ring[i:]]
    return ring


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
