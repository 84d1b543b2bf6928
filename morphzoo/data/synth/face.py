"""The embedded "anny-face" dataset: CoMA-like expression sequences generated with anny's head model.

CoMA (Ranjan et al. 2018) holds 12 subjects performing 12 extreme expressions, each a sequence neutral -> peak ->
neutral. This module builds a stand-in from anny (Apache-2.0 code, CC0 MakeHuman assets, no network): random plausible
adult identities (phenotypes + local facial shape targets) perform the 12 expressions through anny's 52 ARKit facial
actions. All distributions and recipes come from the measured notes ``shared/notes/anny-datasets.md`` ("Face
identities", "CoMA-like expressions", "Pitfall: blendshape data is too linear", "Regions").

Blendshape data is too linear: ``neutral + w(t) · recipe`` is rank 1 per sequence and PCA with 32 components
reconstructs it to 0.01 mm. Following the notes' measured fix, each sequence staggers its actions' timings, adds slow
small noise to all 52 actions, opens the jaw partly through the jaw bone (skinning is non-linear) and wobbles the head
by up to 3°. No registration-like noise is added: it would make PCA fail for a reason unrelated to the face's
structure and put an irreducible floor under every method's error.

Output frame: metres, Z up, the subject faces -Y, the subject's left is +X, the base of the neck (anny's root bone) is
at the origin.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from morphzoo.cache import cached_arrays, content_hash
from morphzoo.data.collection import MeshCollection, cached_collection
from morphzoo.data.synth.common import choose_preset, package_version
from morphzoo.mesh.template import Template

GENERATOR_VERSION = 1  # bump on any change of the generated data: it is part of every cache key

EXPRESSIONS = ("bareteeth", "cheeks_in", "eyebrow", "high_smile", "lips_back", "lips_up", "mouth_down",
               "mouth_extreme", "mouth_middle", "mouth_open", "mouth_side", "mouth_up")  # CoMA's names and order

# Peak controls of each expression (notes, "CoMA-like expressions"). ARKit names without a side drive both the Left and
# the Right action; hyphenated names are anny local changes (both sides when anny has l-/r- variants).
EXPRESSION_RECIPES: dict[str, dict[str, float]] = {
    "bareteeth": {"mouthUpperUp": 1, "mouthLowerDown": 1, "mouthStretch": .6, "noseSneer": .4, "jawOpen": .08},
    "cheeks_in": {"mouthPucker": .6, "mouthFunnel": .2, "jawOpen": .1, "mouthClose": .1,
                  "cheek-volume-incr": -1, "cheek-inner-incr": -1},
    "eyebrow": {"browInnerUp": 1, "browOuterUp": 1, "eyeWide": .6},
    "high_smile": {"mouthSmile": 1, "cheekSquint": .8, "eyeSquint": .5, "mouthUpperUp": .3, "jawOpen": .15},
    "lips_back": {"mouthRollLower": 1, "mouthRollUpper": 1, "mouthPress": .6, "mouthStretch": .3},
    "lips_up": {"mouthShrugLower": 1, "mouthShrugUpper": 1, "mouthPucker": .3, "noseSneer": .3},
    "mouth_down": {"mouthFrown": 1, "mouthLowerDown": .6, "mouthShrugLower": .4, "mouthStretch": .3},
    "mouth_extreme": {"jawOpen": 1, "mouthStretch": .6, "mouthLowerDown": .6, "mouthUpperUp": .5, "browInnerUp": .6,
                      "browOuterUp": .5, "eyeWide": .6},
    "mouth_middle": {"mouthPucker": 1, "mouthFunnel": .5},
    "mouth_open": {"jawOpen": .55, "mouthLowerDown": .3},
    "mouth_side": {"mouthLeft": 1, "jawLeft": .6, "mouthSmileLeft": .2},
    "mouth_up": {"mouthUpperUp": 1, "noseSneer": .7, "mouthShrugUpper": .5, "cheekSquint": .3},
}

# The unseen-expression protocol (``expressions="novel"``): the same people performing expressions that no CoMA-like
# recipe contains, driven mostly by actions the training expressions never use (brow lowering, blinks, cheek puffs, the
# jaw thrust, dimples) and, as ``mouth_right``, the mirror image of ``mouth_side``.
NOVEL_EXPRESSION_RECIPES: dict[str, dict[str, float]] = {
    "brow_frown": {"browDown": 1, "eyeSquint": .4, "noseSneer": .2},
    "cheek_puff": {"cheekPuff": 1, "mouthClose": .3, "mouthPucker": .2},
    "dimple_smile": {"mouthDimple": 1, "mouthSmile": .3, "cheekSquint": .3},
    "eyes_closed": {"eyeBlink": 1, "browDown": .3},
    "jaw_forward": {"jawForward": 1, "jawOpen": .1, "mouthClose": .2},
    "mouth_right": {"mouthRight": 1, "jawRight": .6, "mouthSmileRight": .2},
}
EXPRESSION_SETS = {"coma": EXPRESSION_RECIPES, "novel": NOVEL_EXPRESSION_RECIPES}

# Plausible adults (notes, "Face identities"): (distribution, a, b) for men and for women; subjects alternate genders
# so that every preset is balanced. anny's age 0.70-0.88 is about 17-70 years.
IDENTITY_PHENOTYPES: dict[str, tuple[tuple[str, float, float], tuple[str, float, float]]] = {
    "gender": (("uniform", 0.0, 0.2), ("uniform", 0.8, 1.0)),
    "age": (("uniform", 0.70, 0.88),) * 2,
    "muscle": (("uniform", 0.0, 1.0),) * 2,
    "weight": (("uniform", 0.0, 1.0),) * 2,
    "height": (("beta", 16.5, 25.7), ("beta", 13.7, 25.7)),
    "proportions": (("uniform", 0.5, 0.5),) * 2,
}
TEMPLATE_PHENOTYPES = {"gender": 0.5, "age": 0.79, "muscle": 0.5, "weight": 0.5, "height": 0.37, "proportions": 0.5}
"""The template's face: the centre of the identity distributions above (height: mean of the two Beta means)."""

IDENTITY_TARGET_PREFIXES = ("cheek", "chin", "ear", "eyebrows", "eye", "forehead", "head", "mouth", "nose")
RIGID_TARGET_PREFIXES = ("head-trans-",)  # they move the whole head: no identity information
TARGET_SHIFT_M = 0.004  # each local target's std moves its peak vertex by 4 mm ...
TARGET_SIGMA_MAX = 0.35  # ... capped at 0.35; draws are clipped to ±2σ
TARGET_ASYMMETRY = 0.10  # left/right targets share a draw plus 10% independent noise

REGION_PREFIXES = ("mouth", "eye", "ear", "chin", "nose", "eyebrows", "forehead", "neck", "cheek")
REGION_THRESHOLD = 0.15  # a vertex belongs to the region whose targets move it most, if by >= 15% of their peak
GLOBAL_TARGET_COVERAGE = 0.25  # targets moving more of the head than this (neck length, ...) define no region
REST_REGION = "rest"  # vertices no local target claims (mostly inside the eye sockets, some at the back of the skull)

HOLD_FRACTION = 0.15  # the peak is held for 15% of the sequence
INTENSITY_JITTER = 0.15  # each sequence's peak is scaled by U(0.85, 1.15)
STAGGER = 0.10  # each control's peak window is shifted by U(-0.1, 0.1) of the sequence
ACTION_NOISE = 0.05  # every one of the 52 actions gets slow noise of amplitude U(0, 0.05) ...
ACTION_NOISE_CYCLES = (0.5, 2.0)  # ... at 0.5-2 cycles per sequence
JAW_BONE_SHARE = 0.5  # half of jawOpen is a rotation of the jaw bone, half the blendshape
JAW_DEGREES_PER_UNIT = 22.0  # measured: 20° about X moves the chin 35 mm, jawOpen = 1 moves it 39 mm
WOBBLE_DEGREES = 3.0  # head rotation about each axis: amplitude U(0, 3°) ...
WOBBLE_CYCLES = (0.3, 1.2)  # ... at 0.3-1.2 cycles per sequence
BATCH = 256  # meshes per anny call


@dataclass(frozen=True)
class FacePreset:
    """Dataset size: ``subjects`` identities × 12 expressions, sequences of ``frames`` (inclusive range) frames at full
    rate, of which every ``frame_stride``-th is kept. A subject's sequences do not depend on the preset."""

    subjects: int
    frame_stride: int
    frames: tuple[int, int] = (60, 120)


PRESETS: dict[str, FacePreset] = {
    "tiny": FacePreset(subjects=3, frame_stride=11),  # ~300 meshes, for unit tests
    "small": FacePreset(subjects=8, frame_stride=3),  # ~2900 meshes, for the 20-minute CPU job
    "full": FacePreset(subjects=18, frame_stride=1),  # ~19.4k meshes, CoMA's size (20,465)
}


@dataclass
class _Controls:
    """anny's inputs for a run of meshes (one row per mesh) and their labels."""

    phenotypes: np.ndarray  # (N, P) in model.phenotype_labels order
    local_changes: np.ndarray  # (N, T) identity shape plus expression local changes
    actions: np.ndarray  # (N, 52) facial actions in [0, 1]
    jaw_degrees: np.ndarray  # (N,) jaw bone opening
    head_rotation: np.ndarray  # (N, 3) head bone rotation vector (radians, world axes)
    frame: np.ndarray  # (N,) labels
    intensity: np.ndarray  # (N,)

    @staticmethod
    def concatenate(parts: list[_Controls]) -> _Controls:
        return _Controls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Controls)})


@functools.lru_cache(maxsize=1)
def _head_model() -> torch.nn.Module:
    """anny's head model (4200 vertices, 8356 triangles), float32, loaded once per process.

    The first build of this configuration takes ~90 s and is cached by anny in ``~/.cache/anny``; later loads take
    < 0.1 s. Skinning is anny's dense PyTorch LBS: the default Warp kernel is up to ~1.7× faster here, but importing
    Warp prints a banner and a CUDA warning (from C) that cannot be silenced cleanly, and skinning is no bottleneck.
    """
    import anny

    model = anny.Anny(rig="makehuman-head", topology="head-noeyes-notongue", local_changes="default",
                      facial_actions="all", skinning_method="lbs")
    return model.to(dtype=torch.float32).eval()



def _rotation_matrices(rotation_vectors: torch.Tensor) -> torch.Tensor:
    """(B, 3) axis-angle vectors -> (B, 3, 3) rotation matrices (exponential of the skew matrix)."""
    x, y, z = rotation_vectors.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    return torch.linalg.matrix_exp(skew)


def _evaluate(model: torch.nn.Module, controls: _Controls, progress: bool = False,
              name: str = "anny-face") -> np.ndarray:
    """Run anny on every row of ``controls`` in batches of ``BATCH``; returns (N, V, 3) float32 vertices. ``name``
    labels the progress line."""
    count = len(controls.frame)
    vertices = np.empty((count, len(model.template_vertices), 3), dtype=np.float32)
    jaw, head = model.bone_labels.index("jaw"), model.bone_labels.index("head")
    as_tensor = functools.partial(torch.as_tensor, dtype=torch.float32)
    for start in range(0, count, BATCH):
        rows = slice(start, start + BATCH)
        jaw_rotation = torch.zeros(len(controls.frame[rows]), 3)
        jaw_rotation[:, 0] = torch.deg2rad(as_tensor(controls.jaw_degrees[rows]))  # +X opens the jaw
        pose = torch.eye(4).repeat(len(jaw_rotation), len(model.bone_labels), 1, 1)
        pose[:, jaw, :3, :3] = _rotation_matrices(jaw_rotation)
        pose[:, head, :3, :3] = _rotation_matrices(as_tensor(controls.head_rotation[rows]))
        with torch.no_grad():
            output = model(pose_parameters=pose, phenotype_kwargs=as_tensor(controls.phenotypes[rows]),
                           local_changes_kwargs=as_tensor(controls.local_changes[rows]),
                           facial_actions=as_tensor(controls.actions[rows]))
        vertices[rows] = output["vertices"].numpy()
        if progress:
            print(f"\r{name}: {min(start + BATCH, count)}/{count} meshes", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return vertices


def _rest_controls(model: torch.nn.Module, phenotypes: np.ndarray, local_changes: np.ndarray) -> _Controls:
    """Controls of expressionless, unposed faces: one row per (phenotypes, local_changes) row."""
    count = len(phenotypes)
    return _Controls(phenotypes, local_changes, np.zeros((count, len(model.facial_action_labels))), np.zeros(count),
                     np.zeros((count, 3)), np.zeros(count, dtype=np.int64), np.zeros(count))


def _region_name(prefix: str, side: str) -> str:
    return f"{prefix}.{side}" if side else prefix


def _split_label(label: str) -> tuple[str, str, str]:
    """anny local-change label -> (prefix, side, mirror key): 'l-ear-lobe-incr' -> ('ear', 'L', 'ear-lobe-incr')."""
    side = {"l-": "L", "r-": "R"}.get(label[:2], "")
    body = label[2:] if side else label
    return body.removeprefix("measure-").split("-")[0], side, body


@functools.lru_cache(maxsize=1)
def _local_target_response() -> np.ndarray:
    """(T, V) how far each local target moves each vertex at ±1 (the larger of the two), in metres."""
    model = _head_model()
    count = len(model.local_change_labels)
    unit = np.concatenate([np.eye(count), -np.eye(count)])
    rest = _rest_controls(model, np.full((2 * count + 1, len(model.phenotype_labels)), 0.5),
                          np.concatenate([np.zeros((1, count)), unit]))
    vertices = _evaluate(model, rest)
    moved = np.linalg.norm(vertices[1:] - vertices[:1], axis=-1)
    response = np.maximum(moved[:count], moved[count:])
    response.setflags(write=False)  # shared by every caller through the cache
    return response


def _semantic_regions(labels: list[str], response: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Face regions from anny's local targets (notes, "Regions").

    Each target's response is normalised by its peak; a vertex's score for a region is the highest normalised response
    of that region's targets (label prefix and side); it joins the best region if that score reaches
    ``REGION_THRESHOLD``, else ``REST_REGION``. Global targets (neck length, neck height) move the whole head and would
    claim every vertex, so they are left out.
    """
    split = [_split_label(label) for label in labels]
    names = [_region_name(prefix, side) for prefix in REGION_PREFIXES
             for side in sorted({s for p, s, _ in split if p == prefix})]
    peaks = response.max(axis=1, keepdims=True)
    normalised = np.divide(response, peaks, out=np.zeros_like(response), where=peaks > 0)
    local = (normalised >= REGION_THRESHOLD).mean(axis=1) <= GLOBAL_TARGET_COVERAGE
    scores = np.zeros((len(names), response.shape[1]))
    for target, (prefix, side, _) in enumerate(split):
        name = _region_name(prefix, side)
        if name in names and local[target]:
            scores[names.index(name)] = np.maximum(scores[names.index(name)], normalised[target])
    regions = np.where(scores.max(axis=0) >= REGION_THRESHOLD, scores.argmax(axis=0), len(names))
    return regions, (*names, REST_REGION)


# 85 sparse landmarks over the face's outer skin (the decoupled GAN's Table 2 count), chosen once by
# scripts/choose_anny_face_landmarks.py (farthest-point sampling over forward-facing facial vertices).
LANDMARKS = (
    1409, 1909, 3043, 679, 2401, 262, 1579, 3709, 2776, 975, 1351, 1507, 3629, 693, 776, 2995, 923, 97, 3481,
    1613,              2493, 707, 2326, 3594, 183, 2807, 714, 486, 927, 184, 3657, 1655, 870, 2948, 176, 2780,
    683, 2359,              3587, 1570, 3741, 228, 3422, 2458, 2370, 2584, 257, 1584, 3642, 729, 1659, 250,
    1231, 3299, 4182, 1910,              285, 3632, 3743, 2368, 2384, 2395, 2793, 698, 3956, 198, 82, 704, 1620,
    2280, 251, 247, 2378, 3570,              1706, 2928, 1643, 1533, 3730, 2144, 226, 1580, 2821, 2418, 2387,
)


def _build_template_arrays() -> dict[str, np.ndarray]:
    model = _head_model()
    phenotypes = np.array([[TEMPLATE_PHENOTYPES[name] for name in model.phenotype_labels]])
    vertices = _evaluate(model, _rest_controls(model, phenotypes, np.zeros((1, len(model.local_change_labels)))))[0]
    regions, region_names = _semantic_regions(model.local_change_labels, _local_target_response())
    corners = model.face_texture_coordinate_indices.numpy()
    used, uv_faces = np.unique(corners, return_inverse=True)  # keep only the head's texture coordinates
    template = Template(vertices=vertices, faces=model.faces.numpy(), regions=regions, region_names=region_names,
                        uv=model.texture_coordinates.numpy()[used], uv_faces=uv_faces.reshape(corners.shape),
                        name="anny-face")
    return template.to_arrays()


def anny_face_template() -> Template:
    """The anny head template: the mean adult face, semantic regions, the head mesh's UV layout (disk-cached) and the
    85 :data:`LANDMARKS`."""
    key = content_hash("anny-face-template", GENERATOR_VERSION, package_version("anny"))
    arrays = cached_arrays("templates", key, _build_template_arrays)
    return Template.from_arrays({**arrays, "landmarks": np.array(LANDMARKS)})


def _draw(rng: np.random.Generator, distribution: tuple[str, float, float]) -> float:
    kind, a, b = distribution
    return float(rng.uniform(a, b) if kind == "uniform" else rng.beta(a, b))


def _sample_identity(rng: np.random.Generator, female: bool, labels: list[str], phenotype_labels: list[str],
                     response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One adult's phenotypes (P,) and local facial changes (T,), as in the notes' "Face identities"."""
    phenotypes = np.array([_draw(rng, IDENTITY_PHENOTYPES[name][female]) for name in phenotype_labels])
    split = [_split_label(label) for label in labels]
    peaks = response.max(axis=1)
    facial = np.array([prefix in IDENTITY_TARGET_PREFIXES and not label.startswith(RIGID_TARGET_PREFIXES)
                       for label, (prefix, _, _) in zip(labels, split, strict=True)]) & (peaks > 0)
    sigma = np.minimum(TARGET_SIGMA_MAX, TARGET_SHIFT_M / np.maximum(peaks, 1e-12))
    _, mirror = np.unique([key for _, _, key in split], return_inverse=True)  # l-/r- pairs share a draw
    sided = np.array([side != "" for _, side, _ in split])
    shared = rng.standard_normal(mirror.max() + 1)[mirror]
    asymmetric = TARGET_ASYMMETRY * rng.standard_normal(len(labels)) * sided
    return phenotypes, np.where(facial, sigma * np.clip(shared + asymmetric, -2, 2), 0.0)


def _indices(name: str, labels: list[str], sided: tuple[str, str]) -> list[int]:
    """Indices of control ``name`` in ``labels``: itself if anny has it, else its two sided variants."""
    return [labels.index(name)] if name in labels else [labels.index(n) for n in sided if n in labels]


def _recipe_controls(recipe: dict[str, float], action_labels: list[str],
                     local_labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """An expression recipe as peak facial actions (52,) and peak local changes (T,)."""
    actions, local = np.zeros(len(action_labels)), np.zeros(len(local_labels))
    for name, weight in recipe.items():
        if index := _indices(name, action_labels, (name + "Left", name + "Right")):
            actions[index] = weight
        elif index := _indices(name, local_labels, ("l-" + name, "r-" + name)):
            local[index] = weight
        else:
            raise KeyError(f"expression control {name!r} is neither an anny facial action nor a local change")
    return actions, local


def _ease(x: np.ndarray) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def _envelope(t: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(F,) times in [0, 1], (C,) peak shifts -> (F, C): cosine ease 0 -> 1, hold, -> 0, peak centred at 0.5 + shift."""
    rise_end = 0.5 - HOLD_FRACTION / 2 + shift
    fall_start = 0.5 + HOLD_FRACTION / 2 + shift
    return _ease(t[:, None] / rise_end) * (1 - _ease((t[:, None] - fall_start) / (1 - fall_start)))


def _sequence(rng: np.random.Generator, preset: FacePreset, recipe_actions: np.ndarray, recipe_local: np.ndarray,
              identity: tuple[np.ndarray, np.ndarray], jaw_open_index: int) -> _Controls:
    """One expression sequence, neutral -> peak -> neutral, drawn at full rate then subsampled.

    The non-linearity fix of the notes: every control reaches its peak at its own time (``STAGGER``), all actions carry
    slow small noise, half of jawOpen turns the jaw bone and the head wobbles (both through LBS skinning).
    """
    length = int(rng.integers(preset.frames[0], preset.frames[1] + 1))
    frames = np.arange(0, length, preset.frame_stride)
    t = frames / (length - 1)
    peak = rng.uniform(1 - INTENSITY_JITTER, 1 + INTENSITY_JITTER) * np.concatenate([recipe_actions, recipe_local])
    activation = peak * _envelope(t, rng.uniform(-STAGGER, STAGGER, peak.size))
    actions, local = np.split(activation, [recipe_actions.size], axis=1)
    count = recipe_actions.size
    amplitude, cycles = rng.uniform(0, ACTION_NOISE, count), rng.uniform(*ACTION_NOISE_CYCLES, count)
    phase = rng.random(count)  # the noise is non-negative (actions live in [0, 1]) and starts anywhere in its cycle
    actions = actions + amplitude * 0.5 * (1 - np.cos(2 * np.pi * (cycles * t[:, None] + phase)))
    jaw_degrees = JAW_BONE_SHARE * JAW_DEGREES_PER_UNIT * actions[:, jaw_open_index]
    actions[:, jaw_open_index] *= 1 - JAW_BONE_SHARE
    amplitude, cycles = rng.uniform(0, WOBBLE_DEGREES, 3), rng.uniform(*WOBBLE_CYCLES, 3)  # nod (X), tilt (Y), turn (Z)
    head_rotation = np.deg2rad(amplitude * np.sin(2 * np.pi * (cycles * t[:, None] + rng.random(3))))
    phenotypes, shape = identity
    return _Controls(np.tile(phenotypes, (len(t), 1)), shape + local, np.clip(actions, 0.0, 1.0), jaw_degrees,
                     head_rotation, frames, _envelope(t, np.zeros(1))[:, 0])



def generate_anny_face(size: str = "small", seed: int = 0, progress: bool = False,
                       expressions: str = "coma") -> MeshCollection:
    """Generate the anny-face dataset (see the module docstring); deterministic in ``seed``.

    ``expressions``: ``"coma"``, the 12 CoMA-like expressions, or ``"novel"``, the same people performing the six
    :data:`NOVEL_EXPRESSION_RECIPES` (the unseen-expression protocol; their timings are drawn from another stream).

    Meshes are sorted by (identity, expression, frame); ``frame`` is the frame's index in its full-rate sequence and
    ``intensity`` the sequence's envelope (0 = neutral, 1 = peak). ``neutral`` holds each subject's expressionless,
    unposed face. Subject ``k`` and its sequences are the same in every preset (random streams keyed by seed and index).
    """
    preset = choose_preset(PRESETS, size, "anny-face")
    if expressions not in EXPRESSION_SETS:  # before anny's model is built
        raise ValueError(f"anny-face: unknown expression set {expressions!r}; choose one of "
                         f"{', '.join(EXPRESSION_SETS)}")
    model = _head_model()
    response = _local_target_response()
    labels, action_labels = model.local_change_labels, model.facial_action_labels
    names = tuple(EXPRESSION_SETS[expressions])
    stream = 1 if expressions == "coma" else 2
    recipes = [_recipe_controls(EXPRESSION_SETS[expressions][name], action_labels, labels) for name in names]
    identities = [_sample_identity(np.random.default_rng([seed, 0, subject]), subject % 2 == 1, labels,
                                   model.phenotype_labels, response) for subject in range(preset.subjects)]
    parts, identity_labels, expression_labels = [], [], []
    for subject, identity in enumerate(identities):
        for expression, (recipe_actions, recipe_local) in enumerate(recipes):
            rng = np.random.default_rng([seed, stream, subject, expression])
            parts.append(_sequence(rng, preset, recipe_actions, recipe_local, identity, action_labels.index("jawOpen")))
            identity_labels.append(np.full(len(parts[-1].frame), subject))
            expression_labels.append(np.full(len(parts[-1].frame), expression))
    controls = _Controls.concatenate(parts)
    neutral_controls = _rest_controls(model, np.stack([p for p, _ in identities]), np.stack([s for _, s in identities]))
    return MeshCollection(
        vertices=_evaluate(model, controls, progress),
        template=anny_face_template(),
        labels={"identity": np.concatenate(identity_labels), "expression": np.concatenate(expression_labels),
                "frame": controls.frame.astype(np.int64), "intensity": controls.intensity.astype(np.float32)},
        vocabularies={"identity": tuple(f"anny_{subject:03d}" for subject in range(preset.subjects)),
                      "expression": names},
        neutral=_evaluate(model, neutral_controls),
        attributes={"generator": "anny-face", "version": GENERATOR_VERSION, "preset": size, "seed": seed,
                    "anny_version": package_version("anny")},
    )


def load_anny_face(size: str = "small", seed: int = 0, expressions: str = "coma") -> MeshCollection:
    """The anny-face dataset from morphzoo's cache (memory-mapped), generated and stored atomically on first use."""
    preset = choose_preset(PRESETS, size, "anny-face")
    if expressions == "coma":  # the key of the original set is unchanged: existing caches stay valid
        name, key = f"anny-face-{size}", (GENERATOR_VERSION, asdict(preset), seed, package_version("anny"))
    else:
        name = f"anny-face-{expressions}-{size}"
        key = (GENERATOR_VERSION, asdict(preset), seed, package_version("anny"), expressions)
    collection = cached_collection(name, key, lambda _: generate_anny_face(size, seed, expressions=expressions))
    # the landmarks are annotations, not generated data: attached on load, so older cache entries get them too
    return replace(collection, template=replace(collection.template, landmarks=np.array(LANDMARKS)))
