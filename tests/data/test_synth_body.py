"""Tests of the anny-body generator (morphzoo.data.synth.body) on the tiny preset.

Expected magnitudes come from human anatomy, DFAUST and the measured notes (shared/notes/anny-datasets.md), not from
this generator's output.
"""

import numpy as np
import pytest
import torch

from morphzoo.data.synth import body
from tests.synthetic import cache_entries

pytestmark = pytest.mark.slow  # needs anny's body model (first build ~90-120 s)

SEQUENCE_NAMES = ("chicken_wings", "hips", "jiggle_on_toes", "jumping_jacks", "knees", "light_hopping_loose",
                  "light_hopping_stiff", "one_leg_jump", "one_leg_loose", "punching", "running_on_spot", "shake_arms",
                  "shake_hips", "shake_shoulders")  # DFAUST's motions


@pytest.fixture(scope="module")
def tiny():
    return body.generate_anny_body("tiny", seed=0)


def _region(collection, name):
    return collection.template.regions == collection.template.region_names.index(name)


def _rows(collection, sequence):
    return collection.labels["sequence"] == SEQUENCE_NAMES.index(sequence)


def _first_frames(collection):
    """(N,) index of the first mesh of each mesh's sequence (the relaxed stance it starts from)."""
    key = collection.labels["identity"] * len(SEQUENCE_NAMES) + collection.labels["sequence"]
    starts = np.flatnonzero(np.diff(key, prepend=-1))
    return starts[np.searchsorted(starts, np.arange(len(key)), side="right") - 1]


def _motion(collection):
    """(N, V) distance of each mesh's vertices to the first mesh of its sequence, metres."""
    vertices = np.asarray(collection.vertices, dtype=np.float64)
    return np.linalg.norm(vertices - vertices[_first_frames(collection)], axis=-1)


def test_unknown_size_names_the_valid_ones():
    with pytest.raises(ValueError, match="tiny.*small.*full"):
        body.generate_anny_body("huge")
    with pytest.raises(ValueError, match="tiny"):
        body.load_anny_body("huge")


def test_deterministic_in_seed(tiny):
    again = body.generate_anny_body("tiny", seed=0)
    other = body.generate_anny_body("tiny", seed=1)
    assert np.array_equal(again.vertices, tiny.vertices)
    assert np.array_equal(again.neutral, tiny.neutral)
    for name, values in tiny.labels.items():
        assert np.array_equal(again.labels[name], values)
    assert not np.allclose(other.neutral, tiny.neutral, atol=1e-3), "other subjects"
    assert not np.array_equal(other.labels["frame"], tiny.labels["frame"]), "other sequence lengths"


def test_subjects_do_not_depend_on_the_preset(tiny, monkeypatch):
    # A coarser preset with one more subject: its first two subjects' meshes are tiny's, at every other kept frame.
    stride = body.PRESETS["tiny"].frame_stride
    monkeypatch.setitem(body.PRESETS, "coarse", body.BodyPreset(subjects=3, frame_stride=2 * stride))
    coarse = body.generate_anny_body("coarse", seed=0)
    assert np.array_equal(coarse.neutral[:2], tiny.neutral)
    shared = coarse.labels["identity"] < 2
    subset = tiny.labels["frame"] % (2 * stride) == 0
    for name, values in tiny.labels.items():
        assert np.array_equal(coarse.labels[name][shared], values[subset])
    assert np.array_equal(coarse.vertices[shared], tiny.vertices[subset])


def test_labels_are_complete_and_sorted(tiny):
    preset = body.PRESETS["tiny"]
    n, vertex_count = len(tiny), tiny.template.num_vertices
    assert tiny.vertices.shape == (n, vertex_count, 3) and tiny.vertices.dtype == np.float32
    assert tiny.neutral.shape == (preset.subjects, vertex_count, 3) and tiny.neutral.dtype == np.float32
    assert tiny.vocabularies["sequence"] == SEQUENCE_NAMES
    assert tiny.vocabularies["identity"] == tuple(f"anny_{k:03d}" for k in range(preset.subjects))
    assert set(tiny.labels) == {"identity", "sequence", "frame", "sex"}
    identity, sequence, frame, sex = (tiny.labels[k] for k in ("identity", "sequence", "frame", "sex"))
    assert all(values.dtype == np.int64 for values in (identity, sequence, frame, sex))
    assert tiny.vocabularies["sex"] == ("f", "m")
    assert np.array_equal(sex, np.where(identity % 2 == 1, 0, 1)), "subjects alternate genders, men first"
    order = np.lexsort((frame, sequence, identity))
    assert np.array_equal(order, np.arange(n)), "meshes must be sorted by (identity, sequence, frame)"
    assert 200 <= n <= 450  # ~2 subjects × 14 motions × ~10 frames (150-300 frames at a stride of 22)
    for subject in range(preset.subjects):
        for s in range(len(SEQUENCE_NAMES)):
            frames = frame[(identity == subject) & (sequence == s)]
            assert frames[0] == 0 and np.all(np.diff(frames) == preset.frame_stride)
            assert 150 - preset.frame_stride <= frames[-1] < 300, "sequences of 150-300 frames at 60 fps"
    assert tiny.attributes["preset"] == "tiny" and tiny.attributes["seed"] == 0 and tiny.attributes["fps"] == 60


def test_topology(tiny):
    template = tiny.template
    assert template.name == "anny-body"
    assert abs(template.num_vertices - 6890) <= 10, "DFAUST's vertex count"
    faces = template.faces
    assert faces.min() == 0 and faces.max() == template.num_vertices - 1, "every vertex is used"
    assert np.all((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0]))
    assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces), "no repeated triangle"
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    assert np.all(np.unique(edges, axis=0, return_counts=True)[1] == 2), "closed manifold, like anny's body"
    assert 2 * template.num_vertices - 40 <= len(faces) <= 2 * template.num_vertices  # closed: F = 2 (V - χ)


def test_frames_are_anny_restricted_to_the_kept_vertices():
    # Frames are skinned on the kept vertices only: they must equal anny's full-resolution output restricted to them.
    model = body._body_model()
    template, keep = body._topology()
    assert np.array_equal(keep, np.unique(keep)) and len(keep) == template.num_vertices
    phenotypes = np.array([[0.1, 0.8, 0.3, 0.7, 0.5, 0.5]])
    rest = body._rest(model, phenotypes)
    bones = [model.bone_labels.index(b) for b in ("upperarm01.L", "lowerarm01.L", "upperleg01.R", "spine03", "neck01")]
    vectors = 0.5 * torch.randn(4, len(bones), 3, generator=torch.Generator().manual_seed(0))
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    rotations = torch.linalg.matrix_exp(torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(4, -1, 3, 3))
    pose = torch.eye(4).repeat(4, len(model.bone_labels), 1, 1)
    pose[:, bones, :3, :3] = rotations
    with torch.no_grad():
        full = model(pose_parameters=pose, phenotype_kwargs=torch.tensor(phenotypes, dtype=torch.float32).expand(4, -1))
    ours = body._skin(model, rest, rotations, bones, torch.as_tensor(keep))
    expected = full["vertices"][:, keep]
    assert (expected - rest["vertices"][:, keep]).abs().max() > 0.05, "the pose moves the body"
    assert torch.allclose(ours, expected, atol=1e-5)


def test_template_is_an_upright_adult_in_metres(tiny):
    template = tiny.template
    extent = np.ptp(template.vertices, axis=0)
    assert 1.5 < extent[2] < 1.95, "an adult's height, Z up"
    assert 0.9 < extent[0] < 1.3 and extent[1] < 0.5, "A-pose: arms out sideways (X), thin along Y"
    identity_spread = np.linalg.norm(tiny.neutral - template.vertices, axis=-1).mean(axis=1)
    assert np.all((0.002 < identity_spread) & (identity_spread < 0.15)), "subjects differ, within human variation"


def test_regions(tiny):
    template = tiny.template
    names = template.region_names
    assert set(names) == {"head", "torso", "hips", "arm.L", "arm.R", "hand.L", "hand.R", "leg.L", "leg.R", "foot.L",
                          "foot.R"}
    counts = np.bincount(template.regions, minlength=len(names))
    assert template.regions.min() >= 0 and np.all(counts >= 50), "regions partition the body, none is tiny"

    def centre(name):
        return template.vertices[_region(tiny, name)].mean(axis=0)

    for part in ("arm", "hand", "leg", "foot"):  # the subject's left is +X, and the decimation keeps both sides alike
        assert centre(f"{part}.L")[0] > 0.05 and centre(f"{part}.R")[0] < -0.05
        left, right = counts[names.index(f"{part}.L")], counts[names.index(f"{part}.R")]
        assert abs(left - right) < 0.1 * max(left, right)
    assert centre("head")[2] > centre("torso")[2] > centre("hips")[2] > centre("leg.L")[2] > centre("foot.L")[2]
    assert abs(centre("hand.L")[0]) > abs(centre("arm.L")[0]) > abs(centre("torso")[0])
    assert centre("foot.L")[1] < centre("leg.L")[1] - 0.05, "the toes point forward (-Y)"


def test_root_translation_is_removed(tiny):
    # The pelvis would carry any root translation: across every motion, jumps included, it stays where it is in the
    # first frame and where the neutral body has it, while the feet and hands move by tens of centimetres (DFAUST's
    # jumps lift the whole body by ~10 cm).
    hips = _region(tiny, "hips")
    centre = tiny.vertices[:, hips].mean(axis=1)
    assert np.linalg.norm(centre - centre[_first_frames(tiny)], axis=-1).max() < 0.015
    neutral = tiny.neutral[:, hips].mean(axis=1)[tiny.labels["identity"]]
    assert np.linalg.norm(centre - neutral, axis=-1).max() < 0.015
    assert np.abs(centre).max() < 0.15, "the root bone is at the origin"
    motion = _motion(tiny)
    feet = _region(tiny, "foot.L") | _region(tiny, "foot.R")
    for sequence in ("jumping_jacks", "light_hopping_loose", "light_hopping_stiff", "one_leg_jump"):
        assert motion[_rows(tiny, sequence)][:, feet].max() > 0.08, sequence


def test_motions_move_the_body_plausibly(tiny):
    motion = _motion(tiny)
    hands = _region(tiny, "hand.L") | _region(tiny, "hand.R")
    feet = _region(tiny, "foot.L") | _region(tiny, "foot.R")
    arm, hand = (tiny.template.vertices[_region(tiny, name)] for name in ("arm.L", "hand.L"))
    arm_length = np.linalg.norm(hand[:, None] - arm[None], axis=-1).max()  # top of the upper arm -> fingertip
    assert 0.55 < arm_length < 0.9
    assert motion.max() < 2 * arm_length, "no vertex moves farther than a hand swung end to end"
    assert 0.01 < motion.mean() < 0.3

    def peak(sequence, part):
        return motion[_rows(tiny, sequence)][:, part].max()

    assert peak("jumping_jacks", hands) > 0.8, "the hands go from the thighs to overhead"
    for sequence in ("knees", "running_on_spot", "one_leg_jump", "one_leg_loose"):
        assert 0.2 < peak(sequence, feet) < 1.0, f"{sequence}: a knee is raised"
    for sequence in ("shake_arms", "chicken_wings", "punching", "running_on_spot"):
        assert peak(sequence, hands) > 0.3, f"{sequence}: the arms swing"
    for sequence in ("shake_arms", "shake_shoulders", "chicken_wings", "punching"):
        assert peak(sequence, feet) < 0.15, f"{sequence}: arm motions leave the feet (nearly) in place"
    for sequence in SEQUENCE_NAMES:
        assert peak(sequence, slice(None)) > 0.05, f"{sequence}: the body moves"

    # Linear blend skinning compresses the inside of bent elbows and knees, but most of the surface keeps its size.
    edges = tiny.template.edges()
    neutral = np.asarray(tiny.neutral, dtype=np.float64)[tiny.labels["identity"]]

    def lengths(meshes):
        return np.linalg.norm(meshes[:, edges[:, 0]] - meshes[:, edges[:, 1]], axis=-1)

    stretch = np.abs(np.log(lengths(np.asarray(tiny.vertices, dtype=np.float64)) / lengths(neutral)))
    assert np.quantile(stretch, 0.99) < np.log(1.5) and np.median(stretch) < 0.02


def test_sides_in_motion(tiny):
    # one_leg_jump stands on the left leg and holds the right one up; running alternates the legs.
    def foot_height_difference(sequence):  # right minus left foot height, per mesh
        meshes = tiny.vertices[_rows(tiny, sequence)]
        return meshes[:, _region(tiny, "foot.R"), 2].mean(1) - meshes[:, _region(tiny, "foot.L"), 2].mean(1)

    frames = tiny.labels["frame"][_rows(tiny, "one_leg_jump")]
    held = (frames >= 30) & (frames <= 119)  # after the 0.5 s ease-in, before a 150-frame sequence eases out
    assert np.all(foot_height_difference("one_leg_jump")[held] > 0.05)
    running = foot_height_difference("running_on_spot")
    assert running.max() > 0.1 and running.min() < -0.1


def test_load_caches_the_collection(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    first = body.load_anny_body("tiny", seed=0)
    (entry,) = cache_entries(tmp_path / "datasets")
    assert entry.name.startswith("anny-body-tiny-")
    assert isinstance(first.vertices, np.memmap)
    assert np.array_equal(first.vertices, tiny.vertices)
    assert np.array_equal(first.neutral, tiny.neutral)
    assert np.array_equal(first.template.faces, tiny.template.faces)
    assert np.array_equal(first.template.regions, tiny.template.regions)
    for name, values in tiny.labels.items():
        assert np.array_equal(first.labels[name], values)

    def fail(*args, **kwargs):
        raise AssertionError("the cached collection should have been reused")

    monkeypatch.setattr(body, "generate_anny_body", fail)
    second = body.load_anny_body("tiny", seed=0)
    assert isinstance(second.vertices, np.memmap)
    assert np.array_equal(second.vertices, first.vertices)
    assert second.vocabularies == first.vocabularies == tiny.vocabularies
    assert second.attributes == first.attributes
    with pytest.raises(AssertionError, match="reused"):
        body.load_anny_body("tiny", seed=1)  # another seed is another entry
