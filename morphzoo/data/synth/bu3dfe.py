"""The embedded "anny-bu3dfe" dataset: BU-3DFE-like static expressions generated with anny's head model.

BU-3DFE (Yin et al. 2006) holds 100 subjects (56 female, 44 male, 18-70 years, six ethnic groups), each scanned once
neutral and once for each of the six prototypic expressions (anger, disgust, fear, happiness, sadness, surprise) at four
intensity levels: 25 scans per subject, 2,500 in all. This module builds a stand-in from anny with the anny-face
machinery of :mod:`morphzoo.data.synth.face` (same head model, template, regions and identity sampler): random
plausible adult identities show the six expressions through anny's 52 ARKit facial actions. Distributions and recipes
come from the measured notes ``shared/notes/anny-datasets.md`` ("Face identities", "BU-3DFE-like expressions",
"Pitfall: blendshape data is too linear").

Subjects are named as in BU-3DFE, which numbers each sex separately: ``F0001``..``F0056`` and ``M0001``..``M0044`` in
``full``. Sexes are interleaved over the generation order so that every preset keeps BU-3DFE's 56/44 proportion (to
the nearest subject), and subject ``F0003`` is the same face in every preset (its random streams are keyed by seed,
sex and number). Each subject carries an ethnicity label drawn uniformly from BU-3DFE's six codes (the notes hold no
per-group counts of BU-3DFE); anny has no ethnicity control, so the label is a label only: it carries no geometric
information.

A scan is a static peak: level ``l`` (1-4) scales the expression's recipe by ``LEVEL_SCALES[l - 1]`` times a
per-(subject, expression, level) factor U(0.9, 1.1); neutral (``NE00``) is the subject's rest face, with no action.
Since every action is a blendshape, the data would otherwise be an exactly linear blendshape model (notes, "Pitfall:
blendshape data is too linear"). A modest, documented departure from linearity:

- each subject performs each expression in its own style: every recipe control is scaled by U(0.9, 1.1) (same at all
  four levels) and follows the level scale through its own exponent ``scale ** gamma``, gamma log-uniform in
  [0.8, 1.25] (the static counterpart of anny-face's staggered timings: the four levels are not collinear);
- every expressive scan adds small non-negative noise U(0, 0.02) to all 52 actions;
- half of jawOpen turns the jaw bone (LBS skinning is non-linear in the angle and depends on the identity).

The level and style factors keep every recipe control non-decreasing in the level (the level factors' ranges do not
overlap and ``gamma > 0``); only the action noise can reverse a weak control between adjacent levels. anny's action
blendshapes do not depend on the identity, so apart from the jaw bone, the style draws and the noise, all subjects
share the same expression displacements. There is no head motion (the scans are registered) and no registration-like
noise: it would put a floor under every method's error for a reason unrelated to the face's structure.

Measured on the tiny preset (12 subjects, 300 meshes): PCA with 32 components reconstructs it to 0.019 mm (0.00002 mm
without the departures above); with 64 components, which span all 52 action blendshapes and the 11 identity directions,
to 0.0014 mm (0.00002 mm without the jaw bone).

Output frame: metres, Z up, the subject faces -Y, the subject's left is +X, the base of the neck (anny's root bone) is
at the origin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from morphzoo.data.bu3dfe import ETHNICITIES, EXPRESSIONS, SEXES
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
    _recipe_controls,
    _rest_controls,
    _sample_identity,
    anny_face_template,
)

GENERATOR_VERSION = 1  # bump on any change of the generated data: with face.GENERATOR_VERSION, part of every cache key

# Peak controls of each expression (notes, "BU-3DFE-like expressions"). ARKit names without a side drive both the Left
# and the Right action (see face._recipe_controls).
EXPRESSION_RECIPES: dict[str, dict[str, float]] = {
    "AN": {"browDown": 1, "eyeSquint": .4, "eyeWide": .3, "mouthPress": .8, "noseSneer": .3, "mouthFrown": .3,
           "mouthRollUpper": .2},
    "DI": {"noseSneer": 1, "mouthUpperUp": .8, "browDown": .5, "mouthFrown": .4, "mouthShrugLower": .5,
           "cheekSquint": .4},
    "FE": {"browInnerUp": 1, "browOuterUp": .5, "eyeWide": 1, "mouthStretch": .8, "jawOpen": .25,
           "mouthLowerDown": .3},
    "HA": {"mouthSmile": 1, "cheekSquint": .7, "eyeSquint": .4, "jawOpen": .1, "mouthUpperUp": .2},
    "SA": {"browInnerUp": .9, "browDown": .2, "mouthFrown": 1, "mouthShrugLower": .6, "eyeSquint": .2,
           "mouthPress": .2},
    "SU": {"browInnerUp": 1, "browOuterUp": 1, "eyeWide": .8, "jawOpen": .6, "mouthFunnel": .2},
}

LEVEL_SCALES = (0.25, 0.5, 0.75, 1.0)  # levels 1-4 (notes)
LEVEL_JITTER = 0.10  # each (subject, expression, level) scales its level by U(0.9, 1.1): 1.1 / 0.9 < 0.5 / 0.25 ...
STYLE_JITTER = 0.10  # each (subject, expression, control) weight is scaled by U(0.9, 1.1) at every level
STYLE_EXPONENT = 1.25  # ... and follows scale ** gamma, log(gamma) ~ U(-log 1.25, log 1.25)
ACTION_NOISE = 0.02  # every expressive scan adds U(0, 0.02) to each of the 52 actions
FEMALE_SHARE = (56, 100)  # BU-3DFE: 56 of its 100 subjects are female


@dataclass(frozen=True)
class Bu3dfePreset:
    """Dataset size: ``subjects`` identities × 25 scans (neutral + 6 expressions × 4 levels)."""

    subjects: int


PRESETS: dict[str, Bu3dfePreset] = {
    "tiny": Bu3dfePreset(subjects=12),  # 300 meshes, for unit tests (BU-3DFE's "first 10 subjects" test split fits)
    "small": Bu3dfePreset(subjects=40),  # 1,000 meshes
    "full": Bu3dfePreset(subjects=100),  # 2,500 meshes, BU-3DFE's size
}


def _females(count: int) -> int:
    """How many of the first ``count`` subjects are female: BU-3DFE's proportion, rounded half up."""
    share, total = FEMALE_SHARE
    return (share * count + total // 2) // total


def _subjects(count: int) -> list[tuple[str, bool, int]]:
    """The first ``count`` subjects in generation order as (name, female, number within its sex): the sexes are
    interleaved so that every prefix keeps BU-3DFE's proportion, and each sex is numbered from 1 (F0001, M0001)."""
    subjects, numbers = [], {False: 0, True: 0}
    for k in range(count):
        female = _females(k + 1) > _females(k)
        numbers[female] += 1
        subjects.append((f"{SEXES[not female]}{numbers[female]:04d}", female, numbers[female]))
    return subjects


def _scan(rng: np.random.Generator, level: int, recipe: np.ndarray, style: tuple[np.ndarray, np.ndarray],
          identity: tuple[np.ndarray, np.ndarray], action_count: int, jaw_open_index: int) -> _Controls:
    """One expressive scan: ``recipe`` (52 actions then T local changes) at ``level`` (1-4) in the subject's style."""
    weights, gamma = style
    intensity = LEVEL_SCALES[level - 1] * rng.uniform(1 - LEVEL_JITTER, 1 + LEVEL_JITTER)
    controls = recipe * weights * intensity ** gamma
    actions, local = controls[:action_count], controls[action_count:]
    actions = np.clip(actions + rng.uniform(0, ACTION_NOISE, action_count), 0.0, 1.0)
    jaw_degrees = JAW_BONE_SHARE * JAW_DEGREES_PER_UNIT * actions[jaw_open_index]
    actions[jaw_open_index] *= 1 - JAW_BONE_SHARE
    phenotypes, shape = identity
    return _Controls(phenotypes[None], (shape + local)[None], actions[None], np.array([jaw_degrees]), np.zeros((1, 3)),
                     np.array([level]), np.array([intensity]))



def generate_anny_bu3dfe(size: str = "full", seed: int = 0, progress: bool = False) -> MeshCollection:
    """Generate the anny-bu3dfe dataset (see the module docstring); deterministic in ``seed``.

    Labels (int64 unless said): ``identity`` (index into the sorted subject names ``F0001``.., ``M0001``..),
    ``expression`` (index into :data:`EXPRESSIONS`, 0 = neutral), ``level`` (0 = neutral, 1-4), ``sex`` (index into
    :data:`SEXES`), ``ethnicity`` (index into :data:`ETHNICITIES`) and ``intensity`` (float32: the scan's level scale
    with its jitter, 0 = neutral, about 1 = the peak). Meshes are sorted by (identity, expression, level), so each
    subject's 25 scans start with its neutral one; ``neutral`` holds each subject's neutral scan (its ``NE00`` mesh).
    """
    preset = choose_preset(PRESETS, size, "anny-bu3dfe")
    model = _head_model()
    response = _local_target_response()
    labels, action_labels = model.local_change_labels, model.facial_action_labels
    recipes = [np.concatenate(_recipe_controls(EXPRESSION_RECIPES[code], action_labels, labels))
               for code in EXPRESSIONS[1:]]
    subjects = sorted(_subjects(preset.subjects))  # F before M, then by number: the identity vocabulary's order
    parts, rows = [], []
    for identity, (_, female, number) in enumerate(subjects):
        sex = int(not female)
        subject = _sample_identity(np.random.default_rng([seed, 0, sex, number]), female, labels,
                                   model.phenotype_labels, response)
        ethnicity = int(np.random.default_rng([seed, 1, sex, number]).integers(len(ETHNICITIES)))
        parts.append(_rest_controls(model, subject[0][None], subject[1][None]))
        rows.append((identity, 0, 0, sex, ethnicity))
        for expression, recipe in enumerate(recipes, start=1):
            rng = np.random.default_rng([seed, 2, sex, number, expression])
            style = (rng.uniform(1 - STYLE_JITTER, 1 + STYLE_JITTER, recipe.size),
                     np.exp(rng.uniform(-np.log(STYLE_EXPONENT), np.log(STYLE_EXPONENT), recipe.size)))
            for level in range(1, len(LEVEL_SCALES) + 1):
                parts.append(_scan(rng, level, recipe, style, subject, len(action_labels),
                                   action_labels.index("jawOpen")))
                rows.append((identity, expression, level, sex, ethnicity))
    controls = _Controls.concatenate(parts)
    vertices = _evaluate(model, controls, progress, name="anny-bu3dfe")
    identity, expression, level, sex, ethnicity = np.array(rows, dtype=np.int64).T
    return MeshCollection(
        vertices=vertices,
        template=anny_face_template(),
        labels={"identity": identity, "expression": expression, "level": level, "sex": sex, "ethnicity": ethnicity,
                "intensity": controls.intensity.astype(np.float32)},
        vocabularies={"identity": tuple(name for name, _, _ in subjects), "expression": EXPRESSIONS, "sex": SEXES,
                      "ethnicity": ETHNICITIES},
        neutral=vertices[expression == 0].copy(),  # the neutral scans, bitwise (one per subject, in identity order)
        attributes={"generator": "anny-bu3dfe", "version": GENERATOR_VERSION, "face_version": face.GENERATOR_VERSION,
                    "preset": size, "seed": seed, "anny_version": package_version("anny")},
    )


def load_anny_bu3dfe(size: str = "full", seed: int = 0) -> MeshCollection:
    """The anny-bu3dfe dataset from morphzoo's cache (memory-mapped), generated and stored atomically on first use."""
    preset = choose_preset(PRESETS, size, "anny-bu3dfe")
    key = ("anny-bu3dfe", GENERATOR_VERSION, face.GENERATOR_VERSION, asdict(preset), seed, package_version("anny"))
    return cached_collection(f"anny-bu3dfe-{size}", key, lambda _: generate_anny_bu3dfe(size, seed))
