"""QEM mesh hierarchies: the down- and up-sampling between template resolutions of CoMA (Ranjan et al. 2018).

Each level decimates the previous one with quadric-error edge collapses (fast-simplification). Down-sampling *selects*
the vertices that survive the collapses (their positions never move); up-sampling puts every fine vertex at the
barycentric coordinates of its projection onto the coarse mesh. Spiral, spectral and attention-based models share these
matrices, so they are computed once per template and factors and cached on disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import fast_simplification
import numpy as np
import scipy.sparse
import trimesh

from morphzoo.cache import cached_arrays, content_hash
from morphzoo.mesh.template import Template

SAMPLING_VERSION = 1
"""Bump when the algorithm changes: cached hierarchies of older versions are then recomputed."""


@dataclass(frozen=True)
class SamplingLevel:
    """The maps between a fine mesh (level i, ``Vf`` vertices) and its decimation (level i + 1, ``Vc`` vertices).

    Attributes:
        down_index: (Vc,) int64; coarse vertex ``c`` *is* fine vertex ``down_index[c]`` (increasing indices).
        up_index: (Vf, 3) int64; the coarse triangle each fine vertex projects onto.
        up_weight: (Vf, 3) float32; barycentric coordinates of that projection, >= 0, rows summing to 1. A fine vertex
            that survives the decimation has weight 1 on itself.
    """

    down_index: np.ndarray
    up_index: np.ndarray
    up_weight: np.ndarray

    @property
    def num_fine(self) -> int:
        return len(self.up_index)

    @property
    def num_coarse(self) -> int:
        return len(self.down_index)

    def down_matrix(self) -> scipy.sparse.csr_matrix:
        """(Vc, Vf) 0/1 selection matrix ``D``: ``x_coarse = D @ x_fine``."""
        rows = np.arange(self.num_coarse)
        values = np.ones(self.num_coarse, dtype=np.float32)
        return scipy.sparse.csr_matrix((values, (rows, self.down_index)), shape=(self.num_coarse, self.num_fine))

    def up_matrix(self) -> scipy.sparse.csr_matrix:
        """(Vf, Vc) barycentric interpolation matrix ``U``: ``x_fine = U @ x_coarse``; rows sum to 1."""
        rows = np.repeat(np.arange(self.num_fine), 3)
        matrix = scipy.sparse.csr_matrix(
            (self.up_weight.ravel(), (rows, self.up_index.ravel())), shape=(self.num_fine, self.num_coarse)
        )
        matrix.eliminate_zeros()
        return matrix


@dataclass(frozen=True)
class MeshHierarchy:
    """Templates from fine to coarse and the sampling levels between consecutive ones.

    Attributes:
        templates: level 0 is the input template; level i + 1 holds the vertices of level i selected by
            ``levels[i].down_index`` (original positions, regions carried along) and the decimated faces.
        levels: ``len(templates) - 1`` sampling levels; ``levels[i]`` maps level i to level i + 1.
    """

    templates: tuple[Template, ...]
    levels: tuple[SamplingLevel, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Vertex count of every level, fine to coarse."""
        return tuple(template.num_vertices for template in self.templates)


def mesh_hierarchy(template: Template, factors: Sequence[int]) -> MeshHierarchy:
    """Decimate ``template`` repeatedly, level i + 1 keeping ``ceil(V_i / factors[i])`` vertices of level i.

    The result is cached on disk under the template's geometry hash, the factors and :data:`SAMPLING_VERSION`.
    CoMA's template with factors [4, 4, 4, 4] gives 5023 / 1256 / 314 / 79 / 20 vertices.

    Raises:
        ValueError: a factor below 1, or a level that cannot be decimated that far (too few vertices left).
    """
    factors = [int(factor) for factor in factors]
    if any(factor < 1 for factor in factors):
        raise ValueError(f"mesh_hierarchy: down-sampling factors must be integers >= 1, got {factors}")
    key = content_hash(template.geometry_hash(), factors, SAMPLING_VERSION)
    arrays = cached_arrays("sampling", key, lambda: _hierarchy_arrays(template, factors))
    return _hierarchy_from_arrays(template, arrays, len(factors))


def _hierarchy_arrays(template: Template, factors: Sequence[int]) -> dict[str, np.ndarray]:
    """Every level's ``down_index``, ``up_index``, ``up_weight`` and coarse ``faces``, keyed ``<name>_<level>``."""
    arrays = {}
    vertices, faces = template.vertices, template.faces
    for level, factor in enumerate(factors):
        kept, coarse_faces = qem_decimate(vertices, faces, math.ceil(len(vertices) / factor))
        up_index, up_weight = barycentric_upsampling(vertices, kept, coarse_faces)
        arrays |= {
            f"down_index_{level}": kept,
            f"up_index_{level}": up_index,
            f"up_weight_{level}": up_weight,
            f"faces_{level}": coarse_faces,
        }
        vertices, faces = vertices[kept], coarse_faces
    return arrays


def _hierarchy_from_arrays(template: Template, arrays: dict[str, np.ndarray], num_levels: int) -> MeshHierarchy:
    templates, levels = [template], []
    for level in range(num_levels):
        sampling = SamplingLevel(
            down_index=arrays[f"down_index_{level}"],
            up_index=arrays[f"up_index_{level}"],
            up_weight=arrays[f"up_weight_{level}"],
        )
        fine = templates[-1]
        templates.append(
            Template(
                vertices=fine.vertices[sampling.down_index],
                faces=arrays[f"faces_{level}"],
                regions=None if fine.regions is None else fine.regions[sampling.down_index],
                region_names=fine.region_names,
                name=f"{template.name}/level{level + 1}",
            )
        )
        levels.append(sampling)
    return MeshHierarchy(templates=tuple(templates), levels=tuple(levels))


def qem_decimate(vertices: np.ndarray, faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Decimate by quadric-error edge collapses (Garland & Heckbert 1997) to at most ``num_vertices`` vertices.

    fast-simplification records its collapse history; replaying its shortest prefix that leaves ``num_vertices``
    vertices in the mesh makes the count exact (each collapse removes one vertex), except where a collapse also
    strands a vertex (all its triangles degenerate, e.g. a grid corner with a single triangle): that vertex leaves the
    mesh with the collapsed one, and the level keeps one vertex fewer.

    Args:
        vertices: (V, 3) float positions.
        faces: (F, 3) int triangles.
        num_vertices: the wanted vertex count of the coarse mesh.

    Returns:
        kept: (Vc,) int64 increasing indices of the surviving vertices, ``Vc <= num_vertices``.
        coarse_faces: (Fc, 3) int64 triangles indexing ``kept``, winding preserved, no degenerate or repeated ones.
    """
    collapses = _collapse_history(vertices, faces)

    def decimation(num_collapses: int) -> tuple[np.ndarray, np.ndarray]:
        survivor = _collapse_targets(len(vertices), collapses[:num_collapses])
        return _coarse_mesh(survivor[faces])

    # The vertex count never grows with more collapses: binary-search the shortest prefix reaching the target.
    shortest, longest = 0, len(collapses)
    smallest = len(decimation(longest)[0])
    if smallest > num_vertices:
        raise ValueError(
            f"cannot decimate a mesh of {len(vertices)} vertices to {num_vertices}: the quadric decimation stops "
            f"at {smallest}; use smaller down-sampling factors or fewer levels"
        )
    while shortest < longest:
        middle = (shortest + longest) // 2
        if len(decimation(middle)[0]) <= num_vertices:
            longest = middle
        else:
            shortest = middle + 1
    kept, coarse_faces = decimation(shortest)
    if len(coarse_faces) == 0:
        raise ValueError(f"decimating a mesh of {len(vertices)} vertices to {num_vertices} leaves no triangle")
    return kept, coarse_faces


def _collapse_history(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(K, 2) edge collapses ``[keep, remove]`` of a decimation down to the smallest mesh fast-simplification reaches.

    The decimation runs on positions centred and scaled to unit size: fast-simplification collapses edges whose
    quadric error is under a threshold growing on a fixed schedule, so the unit scale makes the collapse order
    independent of the mesh's units. The collapse order does not depend on the target count (only where it stops), so
    every prefix of this history is a decimation to a larger target.
    """
    centred = vertices - vertices.mean(axis=0)
    extent = np.ptp(centred, axis=0).max()
    normalised = centred / extent if extent > 0 else centred
    _, _, collapses = fast_simplification.simplify(
        np.ascontiguousarray(normalised, dtype=np.float64),
        np.ascontiguousarray(faces, dtype=np.int64),
        target_count=0,
        return_collapses=True,
    )
    return np.asarray(collapses, dtype=np.int64).reshape(-1, 2)


def _collapse_targets(num_vertices: int, collapses: np.ndarray) -> np.ndarray:
    """(V,) the vertex each vertex ends up merged into after ``collapses`` (itself if it survives).

    Collapse ``[keep, remove]`` points ``remove`` at ``keep``; the pointers form a forest (a removed vertex never takes
    part in a later collapse) whose roots are the survivors, found by pointer jumping in O(log depth) vectorised steps.
    """
    target = np.arange(num_vertices)
    target[collapses[:, 1]] = collapses[:, 0]
    while True:
        jumped = target[target]
        if np.array_equal(jumped, target):
            return target
        target = jumped


def _coarse_mesh(merged_faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop degenerate and repeated triangles of ``merged_faces``, then renumber the vertices they still use."""
    a, b, c = merged_faces.T
    merged_faces = merged_faces[(a != b) & (b != c) & (c != a)]
    _, first = np.unique(np.sort(merged_faces, axis=1), axis=0, return_index=True)
    merged_faces = merged_faces[np.sort(first)]
    kept, coarse_faces = np.unique(merged_faces, return_inverse=True)
    return kept.astype(np.int64), coarse_faces.reshape(-1, 3).astype(np.int64)


def barycentric_upsampling(
    fine_vertices: np.ndarray, kept: np.ndarray, coarse_faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Express every fine vertex in barycentric coordinates of its closest point on the coarse mesh.

    The coarse mesh has vertices ``fine_vertices[kept]`` and faces ``coarse_faces``. Coordinates are clipped to >= 0
    and renormalised (the closest point lies in its triangle up to rounding); a kept vertex gets weight 1 on itself,
    within one of its own triangles.

    Returns:
        up_index: (Vf, 3) int64 coarse vertices of the triangle each fine vertex projects onto.
        up_weight: (Vf, 3) float32 barycentric weights, >= 0, rows summing to 1.
    """
    coarse = trimesh.Trimesh(fine_vertices[kept], coarse_faces, process=False)
    closest, _, triangle = trimesh.proximity.closest_point(coarse, fine_vertices)
    weights = trimesh.triangles.points_to_barycentric(coarse.triangles[triangle], closest)
    weights[~np.isfinite(weights)] = 0.0
    weights = np.clip(weights, 0.0, None)
    degenerate = weights.sum(axis=1) <= 0  # zero-area triangle: fall back to its nearest corner
    if degenerate.any():
        corners = coarse.triangles[triangle[degenerate]]
        nearest = np.linalg.norm(corners - closest[degenerate, None], axis=2).argmin(axis=1)
        weights[degenerate] = np.eye(3)[nearest]
    weights /= weights.sum(axis=1, keepdims=True)
    up_index = coarse_faces[triangle]

    # Surviving vertices interpolate exactly themselves, from a triangle they belong to.
    incident_face = np.empty(len(kept), dtype=np.int64)
    incident_face[coarse_faces.ravel()] = np.repeat(np.arange(len(coarse_faces)), 3)
    up_index[kept] = coarse_faces[incident_face]
    weights[kept] = up_index[kept] == np.arange(len(kept))[:, None]
    return up_index.astype(np.int64), weights.astype(np.float32)
