"""The embedded "anny-hand" dataset: SynHand-like random hands generated with anny's right-hand model.

SynHand (Malik et al. 2018), the hand set of Deep3DMM, holds 5M synthetic hands of random shapes in random poses,
1193 vertices each, with no identity or pose labels. This module builds a stand-in from anny's hand model (Apache-2.0
code, CC0 MakeHuman assets, no network). All distributions, ranges and recipes come from the measured notes
``shared/notes/anny-datasets.md`` ("Models and topology", "Face identities", "SynHand-like hands").

Every mesh is an independent hand. Its shape: a random plausible adult (the phenotype distributions of anny-face's
identities) plus anny's local hand targets, each ~ N(0, 0.15) clipped to ±2σ. Its pose: a global grasp g ~ U(0, 1)
plus N(0, 0.25) per finger gives each finger a curl; the curl sets the finger's joint angles, clamped to the anatomical
ranges of :data:`JOINT_RANGES_DEGREES` (MCP, PIP, DIP = 2/3 PIP, spread; thumb CMC, MCP, IP). Each joint flexes about
an axis of the rest skeleton: ``d × palm_normal`` for the fingers and ``d × (index -> pinky)`` for the thumb, ``d``
the finger's direction. The wrist (anny's root bone) never moves: there is no global rotation or translation, so the
data is about shape and articulation only.

anny's hand has 1609 vertices; it is decimated once, on the template, to SynHand's 1193 with quadric edge collapses
that keep original vertices (:func:`morphzoo.mesh.sampling.qem_decimate`), and every mesh is anny's full-resolution
output restricted to the kept vertices.

Output frame: metres, anny's root-bone frame: the wrist at the origin, the fingers along +Y, the palm faces -X, the
thumb is on the +Z side.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from morphzoo.data.collection import MeshCollection, cached_collection
from morphzoo.data.synth.common import cached_decimated_template, choose_preset, package_version
from morphzoo.data.synth.face import IDENTITY_PHENOTYPES, TEMPLATE_PHENOTYPES, _rotation_matrices
from morphzoo.mesh.sampling import qem_decimate
from morphzoo.mesh.template import Template

GENERATOR_VERSION = 1  # bump on any change of the generated data: it is part of every cache key

# anny's local targets that reshape the right hand. Left out: r-hand-trans-out (moves the hand rigidly) and the
# forearm targets (they reshape the arm above the wrist stub).
HAND_TARGETS = ("r-hand-scale-incr", "r-hand-fingers-length-incr", "r-hand-fingers-diameter-incr",
                "r-hand-fingers-distance-incr", "measure-wrist-circ-incr")
TARGET_SIGMA = 0.15  # each hand target ~ N(0, 0.15), clipped to ±2σ: ±1 moves the fingertips by up to 56 mm

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
FINGER_BONES = {  # anny's bones whose heads are the finger's three joints: CMC, MCP, IP (thumb); MCP, PIP, DIP
    "thumb": ("finger1-1.R", "finger1-2.R", "finger1-3.R"),
    "index": ("finger2-1.R", "finger2-2.R", "finger2-3.R"),
    "middle": ("finger3-1.R", "finger3-2.R", "finger3-3.R"),
    "ring": ("finger4-1.R", "finger4-2.R", "finger4-3.R"),
    "pinky": ("finger5-1.R", "finger5-2.R", "finger5-3.R"),
}
FINGER_JOINTS = {"thumb": ("thumb_cmc", "thumb_mcp", "thumb_ip")} | dict.fromkeys(FINGERS[1:], ("mcp", "pip", "dip"))
PALM_BONES = ("root", "wrist.R", "metacarpal1.R", "metacarpal2.R", "metacarpal3.R", "metacarpal4.R")
REGIONS = ("palm", *FINGERS)  # each vertex belongs to the group of bones that carries most of its skinning weight

JOINT_RANGES_DEGREES: dict[str, tuple[float, float]] = {  # notes, "SynHand-like hands"; flexion > 0
    "mcp": (-15.0, 90.0),
    "pip": (0.0, 105.0),
    "dip": (0.0, 80.0),
    "spread": (-12.0, 12.0),  # abduction at the MCP, about the palm normal
    "thumb_cmc": (-10.0, 45.0),
    "thumb_mcp": (0.0, 55.0),
    "thumb_ip": (-10.0, 80.0),
}
DIP_PER_PIP = 2 / 3  # the DIP follows the PIP
CURL_NOISE = 0.25  # each finger's curl is the global grasp plus N(0, 0.25)

TARGET_VERTICES = 1193  # SynHand's vertex count
BATCH = 256  # meshes per anny call
CONTROL_BLOCK = 1000  # meshes drawn from one random stream, keyed by (seed, block)


@dataclass(frozen=True)
class HandPreset:
    """Dataset size: ``meshes`` independent random hands. Mesh ``i`` does not depend on the preset."""

    meshes: int


PRESETS: dict[str, HandPreset] = {
    "tiny": HandPreset(meshes=300),  # for unit tests
    "small": HandPreset(meshes=5000),  # for the 20-minute CPU job
    "full": HandPreset(meshes=100_000),  # the Deep3DMM SynHand protocol samples 100K hands (~1.4 GB float32)
}


@dataclass
class _Controls:
    """anny's inputs for a run of meshes (one row per mesh) and the pose's truth."""

    phenotypes: np.ndarray  # (N, P) in model.phenotype_labels order
    local_changes: np.ndarray  # (N, T) in model.local_change_labels order
    grasp: np.ndarray  # (N,) global grasp in [0, 1]
    curl: np.ndarray  # (N, 5) per-finger curl, thumb first
    spread: np.ndarray  # (N, 4) MCP abduction of index..pinky, degrees

    def __getitem__(self, rows: slice) -> _Controls:
        return _Controls(**{f.name: getattr(self, f.name)[rows] for f in fields(_Controls)})

    @staticmethod
    def concatenate(parts: list[_Controls]) -> _Controls:
        return _Controls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Controls)})


@functools.lru_cache(maxsize=1)
def _hand_model() -> torch.nn.Module:
    """anny's right hand (1609 vertices, 3196 triangles, 21 bones) with the hand targets, float32, loaded once.

    The first build of this configuration takes ~90 s and is cached by anny in ``~/.cache/anny``; later loads take
    a few seconds. Skinning is anny's dense PyTorch LBS (see ``face._head_model``).
    """
    import anny

    model = anny.Anny(rig="anny-hand.R", topology="hand.R", local_changes=list(HAND_TARGETS), skinning_method="lbs")
    return model.to(dtype=torch.float32).eval()



def _flexion(joint: str, curl: np.ndarray) -> np.ndarray:
    low, high = JOINT_RANGES_DEGREES[joint]
    return np.clip(curl * high, low, high)


def joint_angles(curl: np.ndarray, spread: np.ndarray) -> dict[str, np.ndarray]:
    """Joint angles in degrees from finger curls (N, 5; thumb first) and spreads (N, 4; index..pinky, degrees).

    A curl of 0 is anny's rest (open) hand and 1 flexes each joint of the finger to its range's maximum; negative
    curls extend it, down to the range's minimum. The DIP bends ``DIP_PER_PIP`` as much as the PIP. Every angle is
    clamped to :data:`JOINT_RANGES_DEGREES`. Returns (N,) thumb angles and (N, 4) finger angles.
    """
    thumb, fingers = curl[:, 0], curl[:, 1:]
    pip = _flexion("pip", fingers)
    return {
        "thumb_cmc": _flexion("thumb_cmc", thumb),
        "thumb_mcp": _flexion("thumb_mcp", thumb),
        "thumb_ip": _flexion("thumb_ip", thumb),
        "mcp": _flexion("mcp", fingers),
        "pip": pip,
        "dip": np.clip(DIP_PER_PIP * pip, *JOINT_RANGES_DEGREES["dip"]),
        "spread": np.clip(spread, *JOINT_RANGES_DEGREES["spread"]),
    }


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=1)
def _rest_axes() -> tuple[torch.Tensor, torch.Tensor]:
    """(5, 3) flexion axes (thumb..pinky) and (3,) palm normal, unit vectors in anny's rest (world) frame.

    They come from the rest skeleton of the mean adult hand (notes, "SynHand-like hands"): ``d`` is a finger's
    direction (first to third joint); the palm normal ``(wrist -> middle MCP) × (index MCP -> pinky MCP)`` points out of
    the palm of a right hand, so a positive rotation about ``d × palm_normal`` flexes a finger. The thumb flexes about
    ``d × (index -> pinky)``, across the palm (the notes' ``d × -(index -> pinky)`` extends it: checked here, its tip
    then moves away from the pinky). anny's 'local-ref' pose parameters rotate each bone about these rest axes, carried
    along by its parents' rotations. Per-hand skeletons would tilt the axes by ~1° (measured), so one set serves all.
    """
    model = _hand_model()
    heads = _forward(model, _template_controls(model), with_pose=False)["rest_bone_heads"][0].double().numpy()
    head = {label: heads[i] for i, label in enumerate(model.bone_labels)}
    across = head["finger5-1.R"] - head["finger2-1.R"]  # index MCP -> pinky MCP
    normal = _unit(np.cross(head["finger3-1.R"] - head["wrist.R"], across))
    axes = []
    for finger in FINGERS:
        first, _, third = FINGER_BONES[finger]
        direction = head[third] - head[first]
        axes.append(_unit(np.cross(direction, across if finger == "thumb" else normal)))
    return torch.as_tensor(np.array(axes), dtype=torch.float32), torch.as_tensor(normal, dtype=torch.float32)


def _poses(model: torch.nn.Module, controls: _Controls) -> torch.Tensor:
    """(B, bones, 4, 4) anny 'local-ref' pose parameters: every finger joint rotated, the root and palm at rest."""
    axes, normal = _rest_axes()
    angles = joint_angles(controls.curl, controls.spread)
    bone = model.bone_labels.index

    def rotations(axis: torch.Tensor, degrees: np.ndarray) -> torch.Tensor:
        radians = torch.deg2rad(torch.as_tensor(degrees, dtype=torch.float32))
        return _rotation_matrices(radians[:, None] * axis)

    pose = torch.eye(4).repeat(len(controls.grasp), len(model.bone_labels), 1, 1)
    for f, finger in enumerate(FINGERS):
        for joint_bone, joint in zip(FINGER_BONES[finger], FINGER_JOINTS[finger], strict=True):
            degrees = angles[joint] if finger == "thumb" else angles[joint][:, f - 1]
            pose[:, bone(joint_bone), :3, :3] = rotations(axes[f], degrees)
        if finger != "thumb":  # the MCP also abducts, about the palm normal
            mcp = bone(FINGER_BONES[finger][0])
            pose[:, mcp, :3, :3] = rotations(normal, angles["spread"][:, f - 1]) @ pose[:, mcp, :3, :3]
    return pose


def _forward(model: torch.nn.Module, controls: _Controls, with_pose: bool = True) -> dict[str, torch.Tensor]:
    as_tensor = functools.partial(torch.as_tensor, dtype=torch.float32)
    with torch.no_grad():
        return model(pose_parameters=_poses(model, controls) if with_pose else None,
                     phenotype_kwargs=as_tensor(controls.phenotypes),
                     local_changes_kwargs=as_tensor(controls.local_changes))


def _evaluate(model: torch.nn.Module, controls: _Controls, keep: np.ndarray, progress: bool = False) -> np.ndarray:
    """Run anny on every row of ``controls`` in batches of ``BATCH``; returns (N, len(keep), 3) float32 vertices.

    The output is preallocated and filled batch by batch: the full preset never holds more than one batch of anny's
    full-resolution meshes besides it.
    """
    count = len(controls.grasp)
    vertices = np.empty((count, len(keep), 3), dtype=np.float32)
    keep_index = torch.as_tensor(keep)
    for start in range(0, count, BATCH):
        rows = slice(start, start + BATCH)
        vertices[rows] = _forward(model, controls[rows])["vertices"][:, keep_index].numpy()
        if progress:
            print(f"\ranny-hand: {min(start + BATCH, count)}/{count} meshes", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return vertices


def _template_controls(model: torch.nn.Module) -> _Controls:
    """The template's hand: the mean adult (``face.TEMPLATE_PHENOTYPES``), no hand target, open (curl 0)."""
    phenotypes = np.array([[TEMPLATE_PHENOTYPES[name] for name in model.phenotype_labels]])
    return _Controls(phenotypes, np.zeros((1, len(model.local_change_labels))), np.zeros(1), np.zeros((1, 5)),
                     np.zeros((1, 4)))


def _skinning_regions(model: torch.nn.Module) -> np.ndarray:
    """(V,) index into ``REGIONS`` of the bone group (palm or a finger) carrying most of each vertex's weight."""
    weights = np.zeros((len(model.template_vertices), len(model.bone_labels)))
    rows = np.arange(len(weights))[:, None].repeat(model.vertex_bone_indices.shape[1], axis=1)
    np.add.at(weights, (rows, model.vertex_bone_indices.numpy()), model.vertex_bone_weights.double().numpy())
    groups = [PALM_BONES, *(FINGER_BONES[finger] for finger in FINGERS)]
    share = np.stack([weights[:, [model.bone_labels.index(b) for b in group]].sum(1) for group in groups], axis=1)
    return share.argmax(axis=1)


def _build_topology() -> tuple[Template, np.ndarray]:
    model = _hand_model()
    full = _forward(model, _template_controls(model))["vertices"][0].numpy()
    keep, faces = qem_decimate(full.astype(np.float64), model.faces.numpy(), TARGET_VERTICES)
    template = Template(vertices=full[keep], faces=faces, regions=_skinning_regions(model)[keep], region_names=REGIONS,
                        name="anny-hand")
    return template, keep


def _topology() -> tuple[Template, np.ndarray]:
    """The decimated template and the (1193,) increasing indices of the anny vertices it keeps (disk-cached)."""
    return cached_decimated_template("anny-hand", GENERATOR_VERSION, TARGET_VERTICES, _build_topology)


def anny_hand_template() -> Template:
    """The anny-hand template: the mean adult's open right hand, decimated to SynHand's size, with finger regions."""
    return _topology()[0]


def _draws(rng: np.random.Generator, distribution: tuple[str, float, float], count: int) -> np.ndarray:
    kind, a, b = distribution
    return rng.uniform(a, b, count) if kind == "uniform" else rng.beta(a, b, count)


def _sample_block(rng: np.random.Generator, first: int, count: int, phenotype_labels: list[str],
                  target_count: int) -> _Controls:
    """``count`` independent hands (mesh indices ``first``, ``first + 1``, ...): shape, grasp and finger pose."""
    female = np.arange(first, first + count) % 2 == 1  # genders alternate, as anny-face's subjects
    phenotypes = np.empty((count, len(phenotype_labels)))
    for column, name in enumerate(phenotype_labels):
        men, women = (_draws(rng, distribution, count) for distribution in IDENTITY_PHENOTYPES[name])
        phenotypes[:, column] = np.where(female, women, men)
    local_changes = TARGET_SIGMA * np.clip(rng.standard_normal((count, target_count)), -2, 2)
    grasp = rng.uniform(0, 1, count)
    curl = grasp[:, None] + CURL_NOISE * rng.standard_normal((count, len(FINGERS)))
    spread = rng.uniform(*JOINT_RANGES_DEGREES["spread"], (count, len(FINGERS) - 1))
    return _Controls(phenotypes, local_changes, grasp, curl, spread)


def _sample(model: torch.nn.Module, count: int, seed: int) -> _Controls:
    """Controls of meshes 0..count-1: block ``k`` (meshes ``k * CONTROL_BLOCK`` onwards) is drawn whole from the
    random stream (seed, k), so mesh ``i`` is the same for every ``count > i``."""
    blocks = [_sample_block(np.random.default_rng([seed, block]), block * CONTROL_BLOCK, CONTROL_BLOCK,
                            model.phenotype_labels, len(model.local_change_labels))
              for block in range(math.ceil(count / CONTROL_BLOCK))]
    return _Controls.concatenate(blocks)[:count]



def _generate(count: int, seed: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray, Template]:
    """(count, 1193, 3) vertices, (count,) grasp and the template of the first ``count`` hands of ``seed``."""
    model = _hand_model()
    template, keep = _topology()
    controls = _sample(model, count, seed)
    return _evaluate(model, controls, keep, progress), controls.grasp.astype(np.float32), template


def generate_anny_hand(size: str = "small", seed: int = 0, progress: bool = False) -> MeshCollection:
    """Generate the anny-hand dataset (see the module docstring); deterministic in ``seed``.

    Meshes are in generation order, each an independent hand (no identities, so no ``neutral`` meshes). The one label,
    ``grasp`` (float32 in [0, 1]), is the generator's global grasp, kept for analysis (SynHand has no labels). Mesh
    ``i`` is the same in every preset: the first meshes of a larger preset are a smaller preset's.
    """
    preset = choose_preset(PRESETS, size, "anny-hand")
    vertices, grasp, template = _generate(preset.meshes, seed, progress)
    return MeshCollection(
        vertices=vertices,
        template=template,
        labels={"grasp": grasp},
        attributes={"generator": "anny-hand", "version": GENERATOR_VERSION, "preset": size, "seed": seed,
                    "anny_version": package_version("anny")},
    )


def load_anny_hand(size: str = "small", seed: int = 0) -> MeshCollection:
    """The anny-hand dataset from morphzoo's cache (memory-mapped), generated and stored atomically on first use."""
    preset = choose_preset(PRESETS, size, "anny-hand")
    key = (GENERATOR_VERSION, asdict(preset), seed, package_version("anny"), package_version("fast-simplification"))
    return cached_collection(f"anny-hand-{size}", key, lambda _: generate_anny_hand(size, seed))
