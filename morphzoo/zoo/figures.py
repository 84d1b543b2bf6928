"""Static renders of meshes with per-vertex scalar maps (error heat-maps) and cumulative error plots (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed (or available) on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

# anny meshes (and most face datasets) are Z-up with the subject looking down -Y: view from the front.
FRONT_VIEW = {"elev": 5.0, "azim": -90.0}


def _draw_mesh(ax, vertices: np.ndarray, faces: np.ndarray, face_colors, view: Mapping[str, float]) -> None:
    triangles = vertices[faces]
    # Lambert shading from a light at the camera, so the surface reads as 3D.
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    elev, azim = np.radians(view["elev"]), np.radians(view["azim"])
    to_camera = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    shade = 0.35 + 0.65 * np.abs(normals @ to_camera)
    colors = np.asarray(face_colors, dtype=float).copy()
    colors[:, :3] *= shade[:, None]
    # Painter's algorithm: matplotlib does not depth-test, so draw far triangles first.
    depth = triangles.mean(axis=1) @ to_camera
    order = np.argsort(depth)
    ax.add_collection3d(Poly3DCollection(triangles[order], facecolors=colors[order], edgecolors="none"))
    centre = (vertices.max(0) + vertices.min(0)) / 2
    radius = (vertices.max(0) - vertices.min(0)).max() / 2
    for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre, strict=True):
        setter(c - radius, c + radius)
    ax.view_init(**view)
    ax.set_box_aspect((1, 1, 1), zoom=1.4)
    ax.set_axis_off()


def render_error_map(
    path: Path,
    vertices: Sequence[np.ndarray],
    faces: np.ndarray,
    titles: Sequence[str],
    errors_mm: Sequence[np.ndarray | None],
    max_error_mm: float,
    view: Mapping[str, float] = FRONT_VIEW,
) -> Path:
    """Render meshes side by side; those with a per-vertex error (mm) are coloured by it, the others grey.

    Typical use: ground truth (grey) | reconstruction (coloured by its per-vertex error), with a shared colour bar.
    """
    cmap = plt.get_cmap("inferno")
    fig = plt.figure(figsize=(3.2 * len(vertices) + 0.8, 3.8), dpi=110)
    for i, (verts, title, err) in enumerate(zip(vertices, titles, errors_mm, strict=True)):
        ax = fig.add_subplot(1, len(vertices), i + 1, projection="3d")
        if err is None:
            face_colors = np.tile([0.8, 0.8, 0.8, 1.0], (len(faces), 1))
        else:
            face_colors = cmap(np.clip(np.asarray(err)[faces].mean(axis=1) / max_error_mm, 0, 1))
        _draw_mesh(ax, np.asarray(verts), faces, face_colors, view)
        ax.set_title(title, fontsize=9)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max_error_mm))
    fig.colorbar(mappable, ax=fig.axes, shrink=0.7, label="per-vertex error (mm)")
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def render_mesh_grid(path: Path, rows: Sequence[tuple[str, Sequence[np.ndarray]]], faces: np.ndarray,
                     view: Mapping[str, float] = FRONT_VIEW) -> Path:
    """Render rows of grey meshes, each row labelled on its left: e.g. a model's random samples and an
    interpolation between two test meshes, so that what specificity and diversity summarise can be seen."""
    columns = max(len(meshes) for _, meshes in rows)
    fig = plt.figure(figsize=(2.2 * columns + 0.6, 2.4 * len(rows)), dpi=100)
    grey = np.tile([0.8, 0.8, 0.8, 1.0], (len(faces), 1))
    for row, (label, meshes) in enumerate(rows):
        for column, vertices in enumerate(meshes):
            ax = fig.add_subplot(len(rows), columns, row * columns + column + 1, projection="3d")
            _draw_mesh(ax, np.asarray(vertices), faces, grey, view)
            if column == 0:
                ax.text2D(-0.05, 0.5, label, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=9)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_cumulative_error(path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Cumulative per-vertex error curves: ``curves[label] = (thresholds_mm, fraction_of_vertices)``."""
    fig, ax = plt.subplots(figsize=(4.8, 3.6), dpi=110)
    for label, (thresholds, fraction) in curves.items():
        ax.plot(thresholds, 100 * np.asarray(fraction), label=label)
    ax.set_xlabel("per-vertex error (mm)")
    ax.set_ylabel("vertices with smaller error (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_encoding_diversity(path: Path, codes: Mapping[str, np.ndarray], seed: int = 0) -> Path:
    """Latent codes of several sets (e.g. train, test, part-synthesised faces) in 2-D: PCA (left) and t-SNE
    (right), one colour per set, each summarised by its 2σ covariance ellipse (the locally weighted model's Fig. 6).

    ``codes[label]``: (N, Z) codes; both projections are fitted on all sets together.
    """
    from matplotlib.patches import Ellipse
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    labels = list(codes)
    stacked = np.concatenate([np.asarray(codes[label], dtype=np.float64).reshape(len(codes[label]), -1)
                              for label in labels])
    owner = np.repeat(np.arange(len(labels)), [len(codes[label]) for label in labels])
    perplexity = min(30.0, (len(stacked) - 1) / 3)
    projections = {"PCA": PCA(2, random_state=seed).fit_transform(stacked),
                   "t-SNE": TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(stacked)}
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.4), dpi=110)
    colours = plt.get_cmap("tab10")
    for ax, (title, points) in zip(axes, projections.items(), strict=True):
        for index, label in enumerate(labels):
            own = points[owner == index]
            ax.scatter(own[:, 0], own[:, 1], s=8, alpha=0.6, color=colours(index), label=label)
            if len(own) > 2:
                values, vectors = np.linalg.eigh(np.cov(own.T))
                angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
                width, height = 4 * np.sqrt(np.maximum(values[::-1], 0))  # 2σ along each principal axis
                ax.add_patch(Ellipse(own.mean(0), width, height, angle=angle, fill=False, lw=2, color=colours(index)))
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="best", fontsize=8)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
