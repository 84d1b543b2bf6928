"""The embedded "anny-heads" dataset: thousands of neutral heads on anny's quad head template.

The many-identity benchmarks hold one registered head per person: AFLW2000-3D (2,000 Basel Face Model fits, split
1,780 / 220 by the locally weighted NMF autoencoder paper, §4) and UHM12k (about 6,000 neutral heads registered to a
12k-vertex quad template, LAMM supplement §1). The other embedded datasets have at most 100 people. This one draws as
many plausible adults as wanted from anny with the anny-face identity sampler (notes ``shared/notes/anny-datasets.md``,
"Face identities"), on anny's head mesh with its **quad faces kept** (4,178 quads, the LAMM supplement's reason:
quads deform and subdivide more predictably) beside their triangulation, the 13 semantic regions, the UV layout and the
85 landmarks of anny-face.

Identities use their own random streams: head ``k`` is not anny-face's or anny-bu3dfe's subject ``k``, so models
trained here can be tested on those datasets' people as unseen identities (the topology is the same).

Presets: ``tiny`` and ``tiny-expr`` (tests), ``small`` (short CPU runs), ``aflw`` (2,000 heads, 220 test, the NMF
paper's protocol), ``uhm`` (6,000 heads, a seeded 10 % test: LAMM's split is not published) and ``uhm-expr`` (the same
people with mild random expressions, for LAMM's "UHM12k + expr." setting). Expressive heads activate each of the 52
ARKit actions with probability ``EXPRESSION_ACTIVE`` at U(0, ``expression_scale``), half of jawOpen through the jaw
bone as in anny-face; their ``neutral`` meshes are the same people at rest.

Output frame: metres, Z up, the subject faces -Y, the subject's left is +X, the base of the neck at the origin.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace

import numpy as np

from morphzoo.cache import cached_arrays, content_hash
from morphzoo.data.collection import MeshCollection, cached_collection
from morphzoo.data.synth import face
from morphzoo.data.synth.common import choose_preset, package_version
from morphzoo.data.synth.face import (
    JAW_BONE_SHARE,
    JAW_DEGREES_PER_UNIT,
    _Controls,
    _evaluate,
    _head_model,
    _local_target_response,
    _rest_controls,
    _sample_identity,
    anny_face_template,
)
from morphzoo.mesh.template import Template

GENERATOR_VERSION = 1  # bump on any change of the generated data: it is part of every cache key
IDENTITY_STREAM = 3  # random-stream tag of the identities (anny-face uses 0 with the same seed)
EXPRESSION_STREAM = 4
EXPRESSION_ACTIVE = 0.2  # share of the 52 actions an expressive head activates


@dataclass(frozen=True)
class HeadsPreset:
    """``identities`` heads (one mesh each), the first ``identities - test_size`` of a seeded permutation train;
    ``expression_scale`` > 0 gives each head a mild random expression."""

    identities: int
    test_size: int
    expression_scale: float = 0.0


PRESETS: dict[str, HeadsPreset] = {
    "tiny": HeadsPreset(identities=40, test_size=8),
    "tiny-expr": HeadsPreset(identities=40, test_size=8, expression_scale=0.4),
    "small": HeadsPreset(identities=500, test_size=50),
    "aflw": HeadsPreset(identities=2000, test_size=220),  # AFLW2000-3D's 1,780 / 220 (NMF paper §4)
    "uhm": HeadsPreset(identities=6000, test_size=600),
    "uhm-expr": HeadsPreset(identities=6000, test_size=600, expression_scale=0.4),
}


@functools.lru_cache(maxsize=1)
def _head_quads() -> np.ndarray:
    """anny's head polygons (4,178 quads), disk-cached: building anny's quad configuration takes ~50 s once.

    anny triangulates the same quads (shorter diagonal) into anny-face's 8,356 triangles over the same 4,200 vertices in
    the same order; :func:`anny_heads_template` checks that the two agree.
    """

    def build() -> dict[str, np.ndarray]:
        import anny

        model = anny.Anny(rig="makehuman-head", topology="head-noeyes-notongue-quads", local_changes="default",
                          facial_actions="all", skinning_method="lbs")
        return {"quads": model.faces.numpy().astype(np.int64)}

    key = content_hash("anny-head-quads", package_version("anny"))
    return cached_arrays("templates", key, build)["quads"]


def anny_heads_template() -> Template:
    """anny-face's template (same vertices, triangles, regions, UVs, landmarks) with anny's quads as its polygons."""
    template = anny_face_template()
    quads = _head_quads()
    quad_edges = np.sort(np.concatenate([quads[:, [0, 1]], quads[:, [1, 2]], quads[:, [2, 3]], quads[:, [3, 0]]]), 1)
    if len(template.faces) != 2 * len(quads) or len(np.setdiff1d(_edge_keys(quad_edges, len(template.vertices)),
                                                                 _edge_keys(template.edges(), len(template.vertices)))):
        raise RuntimeError("anny's head quads do not match its triangles: the installed anny changed its head mesh; "
                           "report it with `pip show anny`")
    return replace(template, polygons=quads, name="anny-heads")


def _edge_keys(edges: np.ndarray, count: int) -> np.ndarray:
    return edges[:, 0] * count + edges[:, 1]


def _expression_controls(rng: np.random.Generator, identity: tuple[np.ndarray, np.ndarray], scale: float,
                         action_count: int, jaw_open_index: int) -> _Controls:
    """One head with a mild random expression (see the module docstring)."""
    actions = np.where(rng.random(action_count) < EXPRESSION_ACTIVE, rng.uniform(0, scale, action_count), 0.0)
    jaw_degrees = JAW_BONE_SHARE * JAW_DEGREES_PER_UNIT * actions[jaw_open_index]
    actions[jaw_open_index] *= 1 - JAW_BONE_SHARE
    phenotypes, shape = identity
    return _Controls(phenotypes[None], shape[None], actions[None], np.array([jaw_degrees]), np.zeros((1, 3)),
                     np.zeros(1, dtype=np.int64), np.array([scale]))


def generate_anny_heads(size: str = "small", seed: int = 0, progress: bool = False) -> MeshCollection:
    """Generate the anny-heads dataset (see the module docstring); deterministic in ``seed``.

    Labels (int64): ``identity`` (the mesh's index: one head per person) and ``sex`` (0 = female, 1 = male; heads
    alternate). Head ``k`` is the same person in every preset. ``neutral`` holds the rest faces when heads are
    expressive (``uhm-expr``); for neutral presets it is None (the meshes themselves are the neutral faces).
    """
    preset = choose_preset(PRESETS, size, "anny-heads")
    model = _head_model()
    response = _local_target_response()
    labels, action_labels = model.local_change_labels, model.facial_action_labels
    identities = [_sample_identity(np.random.default_rng([seed, IDENTITY_STREAM, k]), k % 2 == 0, labels,
                                   model.phenotype_labels, response) for k in range(preset.identities)]
    rest = _rest_controls(model, np.stack([p for p, _ in identities]), np.stack([s for _, s in identities]))
    if preset.expression_scale > 0:
        controls = _Controls.concatenate([
            _expression_controls(np.random.default_rng([seed, EXPRESSION_STREAM, k]), identity,
                                 preset.expression_scale, len(action_labels), action_labels.index("jawOpen"))
            for k, identity in enumerate(identities)])
        vertices, neutral = _evaluate(model, controls, progress, "anny-heads"), _evaluate(model, rest)
    else:
        vertices, neutral = _evaluate(model, rest, progress, "anny-heads"), None
    return MeshCollection(
        vertices=vertices,
        template=anny_heads_template(),
        labels={"identity": np.arange(preset.identities, dtype=np.int64),
                "sex": (np.arange(preset.identities) % 2 == 1).astype(np.int64)},
        vocabularies={"identity": tuple(f"head_{k:05d}" for k in range(preset.identities)),
                      "sex": ("female", "male")},
        neutral=neutral,
        attributes={"generator": "anny-heads", "version": GENERATOR_VERSION, "face_version": face.GENERATOR_VERSION,
                    "preset": size, "seed": seed, "anny_version": package_version("anny")},
    )


def load_anny_heads(size: str = "small", seed: int = 0) -> MeshCollection:
    """The anny-heads dataset from morphzoo's cache (memory-mapped), generated and stored atomically on first use."""
    preset = choose_preset(PRESETS, size, "anny-heads")
    key = ("anny-heads", GENERATOR_VERSION, face.GENERATOR_VERSION, asdict(preset), seed, package_version("anny"))
    return cached_collection(f"anny-heads-{size}", key, lambda _: generate_anny_heads(size, seed))
