"""Regions and control vertices of a template, for region-based models (LAMM) and region-PCA.

Everything here is deterministic (no random numbers: seeds are picked by farthest-point sampling from fixed starts),
so the same template always gives the same partition and the same control vertices.

- :func:`cluster_regions`: K regions from vertex positions alone (k-means seeded by farthest points). Gives any K,
  e.g. the LAMM supplement's ablation over 29 / 17 / 13 / 11 head regions (§2.1, Fig. 2) on any template.
- :func:`merge_regions`: K regions from a template's semantic labels: unlabelled vertices join the nearest labelled
  vertex's region, then the smallest region is merged into the neighbour it shares the most mesh edges with until K
  remain (the supplement merged an artist's 29 head regions into 17, 13 and 11 the same way, by neighbours), or the
  largest is split in two by 2-means until there are K.
- :func:`control_vertices`: n control vertices per region by farthest-point sampling inside the region, starting at
  the vertex nearest the region's centroid: spread-out handles that cover the region.
- :func:`load_regions`: a ``regions.json`` file ``{"name": [vertex indices], ...}`` (the folder reader's format).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from morphzoo.errors import DataError
from morphzoo.mesh.template import Template

KMEANS_ITERATIONS = 50


def check_partition(labels: np.ndarray, num_vertices: int, source: str) -> np.ndarray:
    """``labels`` as int64 if they assign every one of ``num_vertices`` vertices to a region 0..K-1 with no empty
    region; else a ValueError that names the problem and the fix."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (num_vertices,):
        raise DataError(f"{source}: expected one region label per vertex ({num_vertices},), got {labels.shape}")
    unassigned = np.flatnonzero(labels < 0)
    if unassigned.size:
        raise DataError(f"{source}: {unassigned.size} vertices belong to no region (e.g. vertex {unassigned[0]}); "
                         "every vertex must be in exactly one region: list them in a region, or use "
                         "regions='merge' (unassigned vertices join the nearest region)")
    counts = np.bincount(labels)
    if (counts == 0).any():
        raise DataError(f"{source}: region labels must be 0..K-1 with no gaps; region {np.argmin(counts)} is empty")
    return labels


def farthest_points(points: np.ndarray, count: int, start: int) -> np.ndarray:
    """Indices of ``count`` points chosen greedily, each the farthest from those already chosen, from ``start``."""
    chosen = [start]
    distance = np.linalg.norm(points - points[start], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return np.array(chosen)


def _kmeans(points: np.ndarray, k: int) -> np.ndarray:
    """Lloyd's k-means seeded with farthest points (from the point nearest the centroid); returns (N,) labels."""
    start = int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))
    centres = points[farthest_points(points, k, start)]
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(KMEANS_ITERATIONS):
        labels = cKDTree(centres).query(points)[1]
        counts = np.bincount(labels, minlength=k)[:, None]
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    return labels


def cluster_regions(template: Template, num_regions: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """``num_regions`` spatial regions of the template's rest positions (k-means, farthest-point seeds)."""
    if not 1 <= num_regions <= template.num_vertices:
        raise DataError(f"cluster_regions: num_regions must be in [1, {template.num_vertices}], got {num_regions}")
    labels = _relabel(_kmeans(template.vertices, num_regions))
    return labels, tuple(f"region{k}" for k in range(labels.max() + 1))


def merge_regions(template: Template, num_regions: int | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """The template's semantic regions completed (every vertex assigned) and merged or split to ``num_regions``.

    Merged regions are named ``"a+b"``, split ones ``"a/0"`` and ``"a/1"``. ``num_regions=None`` keeps the count.
    """
    if template.regions is None:
        raise DataError(f"merge_regions: template '{template.name}' has no regions; use regions='cluster' with "
                         "num_regions=K, or give a regions.json")
    labels = template.regions.copy()
    names = list(template.region_names) or [f"region{k}" for k in range(labels.max() + 1)]
    missing = labels < 0
    if missing.all():
        raise DataError(f"merge_regions: template '{template.name}' assigns no vertex to any region")
    if missing.any():
        nearest = cKDTree(template.vertices[~missing]).query(template.vertices[missing])[1]
        labels[missing] = labels[~missing][nearest]
    target = len(names) if num_regions is None else num_regions
    if not 1 <= target <= template.num_vertices:
        raise DataError(f"merge_regions: num_regions must be in [1, {template.num_vertices}], got {num_regions}")
    edges = template.edges()
    while len(names) > target:
        counts = np.bincount(labels, minlength=len(names))
        small = int(np.argmin(counts))
        partner = _best_neighbour(template, labels, edges, small)
        names[partner] = f"{names[partner]}+{names[small]}"
        labels[labels == small] = partner
        labels[labels > small] -= 1
        del names[small]
    while len(names) < target:
        counts = np.bincount(labels, minlength=len(names))
        large = int(np.argmax(counts))
        members = np.flatnonzero(labels == large)
        halves = _kmeans(template.vertices[members], 2)
        labels[members[halves == 1]] = len(names)
        base = names[large]
        names[large] = f"{base}/0"
        names.append(f"{base}/1")
    return labels, tuple(names)


def _best_neighbour(template: Template, labels: np.ndarray, edges: np.ndarray, region: int) -> int:
    """The region sharing the most mesh edges with ``region`` (nearest centroid if it touches none)."""
    a, b = labels[edges[:, 0]], labels[edges[:, 1]]
    across = (a == region) ^ (b == region)
    others = np.where(a[across] == region, b[across], a[across])
    if others.size:
        return int(np.bincount(others).argmax())
    centroids = np.stack([template.vertices[labels == k].mean(0) for k in range(labels.max() + 1)])
    distance = np.linalg.norm(centroids - centroids[region], axis=1)
    distance[region] = np.inf
    return int(np.argmin(distance))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..K-1 in order of first appearance (drops empty clusters)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64)


def read_regions(path: str | Path, num_vertices: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Regions from a ``regions.json`` ``{"name": [vertex indices], ...}``: (V,) labels in file order, -1 where no
    region lists a vertex, and the names. Each region must be non-empty, inside [0, V) and disjoint from the others."""
    path = Path(path)
    try:
        listed = json.loads(path.read_text())
        members = {str(name): np.asarray(indices, dtype=np.int64).ravel() for name, indices in listed.items()}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
        raise DataError(f"{path}: expected a JSON file {{\"region name\": [vertex indices], ...}} ({error})") from None
    labels = np.full(num_vertices, -1, dtype=np.int64)
    for label, (name, indices) in enumerate(members.items()):
        if indices.size == 0 or indices.min() < 0 or indices.max() >= num_vertices:
            raise DataError(f"{path}: region '{name}' must list vertices in [0, {num_vertices})")
        if (labels[indices] >= 0).any():
            raise DataError(f"{path}: region '{name}' overlaps another region; a vertex belongs to one region")
        labels[indices] = label
    return labels, tuple(members)


def load_regions(path: str | Path, num_vertices: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """:func:`read_regions` for a file that must cover every vertex exactly once (a partition)."""
    labels, names = read_regions(path, num_vertices)
    return check_partition(labels, num_vertices, str(path)), names


def control_vertices(vertices: np.ndarray, labels: np.ndarray, per_region: int) -> np.ndarray:
    """(K, per_region) control vertex indices: farthest-point sampling inside each region (see module docstring)."""
    controls = []
    for region in range(labels.max() + 1):
        members = np.flatnonzero(labels == region)
        if len(members) < per_region:
            raise DataError(f"control_vertices: region {region} has {len(members)} vertices, fewer than the "
                             f"{per_region} control vertices asked for; ask for fewer or use larger regions")
        points = vertices[members]
        start = int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))
        controls.append(members[farthest_points(points, per_region, start)])
    return np.stack(controls)


def load_control_vertices(path: str | Path, labels: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """(K, n) control vertices from a JSON file ``{"region name": [vertex indices], ...}``: every region listed, the
    same number n of vertices in each, all inside their region."""
    path = Path(path)
    try:
        listed = {str(k): np.asarray(v, dtype=np.int64).ravel() for k, v in json.loads(path.read_text()).items()}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
        raise DataError(f"{path}: expected a JSON file {{\"region name\": [vertex indices], ...}} ({error})") from None
    if sorted(listed) != sorted(names):
        raise DataError(f"{path}: give control vertices for exactly the regions {list(names)}, got {list(listed)}")
    sizes = {len(v) for v in listed.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise DataError(f"{path}: every region needs the same (non-zero) number of control vertices, got "
                         f"{ {k: len(v) for k, v in listed.items()} }")
    controls = np.stack([listed[name] for name in names])
    for region, name in enumerate(names):
        if not ((controls[region] >= 0) & (controls[region] < len(labels))).all() or \
                (labels[controls[region]] != region).any():
            raise DataError(f"{path}: control vertices of region '{name}' must lie inside that region")
    return controls
