"""Tests of the anny-hand generator (morphzoo.data.synth.hand) on the tiny preset.

Expected values come from SynHand (1193 vertices), hand anatomy and the measured notes (shared/notes/anny-datasets.md),
not from this generator's output.
"""

import numpy as np
import pytest

from morphzoo.data.synth import hand
from tests.synthetic import cache_entries

pytestmark = pytest.mark.slow  # needs anny's hand model (first build ~90 s)

FINGERS = ("index", "middle", "ring", "pinky")


@pytest.fixture(scope="module")
def tiny():
    return hand.generate_anny_hand("tiny", seed=0)


@pytest.fixture(scope="module")
def template():
    return hand.anny_hand_template()


def _edges(faces):
    """Directed edges (3F, 2) of the triangles."""
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def _wrist(template):
    """Indices of the wrist opening: the vertices of edges that belong to a single triangle."""
    edges, counts = np.unique(np.sort(_edges(template.faces), axis=1), axis=0, return_counts=True)
    return np.unique(edges[counts == 1])


def _centre(template, name):
    return template.vertices[template.regions == template.region_names.index(name)].mean(0)


def _fingertips(template):
    """Each finger's vertex farthest from the wrist in the open template hand, index to pinky."""
    wrist = template.vertices[_wrist(template)].mean(0)
    tips = []
    for name in FINGERS:
        members = np.flatnonzero(template.regions == template.region_names.index(name))
        tips.append(members[np.argmax(np.linalg.norm(template.vertices[members] - wrist, axis=1))])
    return np.array(tips)


def _palm_normal(template):
    """Unit normal pointing out of the palm of a right hand: (wrist -> middle finger) × (index -> pinky)."""
    wrist = template.vertices[_wrist(template)].mean(0)
    normal = np.cross(_centre(template, "middle") - wrist, _centre(template, "pinky") - _centre(template, "index"))
    return normal / np.linalg.norm(normal)


def _rotation_degrees(source, target):
    """Angle of the best rotation (Kabsch) mapping the centred ``source`` points onto the centred ``target``."""
    u, _, vt = np.linalg.svd((source - source.mean(0)).T @ (target - target.mean(0)))
    u[:, 2] *= np.sign(np.linalg.det(u @ vt))
    rotation = u @ vt
    return np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))


def test_unknown_size_names_the_valid_ones():
    with pytest.raises(ValueError, match="tiny.*small.*full"):
        hand.generate_anny_hand("huge")
    with pytest.raises(ValueError, match="tiny"):
        hand.load_anny_hand("huge")


def test_deterministic_in_seed(tiny):
    again = hand.generate_anny_hand("tiny", seed=0)
    other = hand.generate_anny_hand("tiny", seed=1)
    assert np.array_equal(again.vertices, tiny.vertices)
    assert np.array_equal(again.labels["grasp"], tiny.labels["grasp"])
    assert not np.allclose(other.vertices, tiny.vertices, atol=1e-3)
    assert not np.allclose(other.labels["grasp"], tiny.labels["grasp"])


def test_first_meshes_do_not_depend_on_the_count(tiny):
    vertices, grasp, _ = hand._generate(130, seed=0)  # another batch split: 130 rows instead of 256 + 44
    assert np.array_equal(vertices, tiny.vertices[:130])
    assert np.array_equal(grasp, tiny.labels["grasp"][:130])


def test_shapes_dtypes_and_labels(tiny, template):
    n = hand.PRESETS["tiny"].meshes
    assert 200 <= n <= 400 and hand.PRESETS["small"].meshes >= 4000 and hand.PRESETS["full"].meshes == 100_000
    assert tiny.vertices.shape == (n, template.num_vertices, 3) and tiny.vertices.dtype == np.float32
    assert set(tiny.labels) == {"grasp"} and tiny.neutral is None and tiny.vocabularies == {}
    grasp = tiny.labels["grasp"]
    assert grasp.dtype == np.float32 and grasp.shape == (n,)
    assert 0 <= grasp.min() < 0.05 and 0.95 < grasp.max() <= 1, "grasp ~ U(0, 1)"
    assert abs(grasp.mean() - 0.5) < 0.07 and len(np.unique(grasp)) == n
    assert tiny.attributes["generator"] == "anny-hand"
    assert tiny.attributes["preset"] == "tiny" and tiny.attributes["seed"] == 0
    assert tiny.template.fingerprint() == template.fingerprint() and tiny.template.name == "anny-hand"


def test_topology_is_a_valid_synhand_sized_hand(template):
    assert abs(template.num_vertices - 1193) <= 12, "SynHand has 1193 vertices"
    faces = template.faces
    a, b, c = faces.T
    assert np.all((a != b) & (b != c) & (c != a)), "degenerate triangles"
    assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces), "repeated triangles"
    assert np.array_equal(np.unique(faces), np.arange(template.num_vertices)), "every vertex is used"
    directed = _edges(faces)
    assert len(np.unique(directed, axis=0)) == len(directed), "consistent winding: each directed edge once"
    edges = np.unique(np.sort(directed, axis=1), axis=0)
    assert template.num_vertices - len(edges) + len(faces) == 1, "a closed surface with one opening (the wrist)"
    wrist = _wrist(template)
    assert 8 <= len(wrist) <= 60
    extent = template.vertices.max(0) - template.vertices.min(0)
    assert 0.15 < extent.max() < 0.25, "an adult hand (metres)"


def test_regions_are_the_palm_and_the_fingers(template):
    regions, names = template.regions, template.region_names
    assert names == ("palm", "thumb", "index", "middle", "ring", "pinky")
    assert regions.min() >= 0 and regions.max() < len(names)
    assert np.all(np.bincount(regions, minlength=len(names)) > 0.05 * template.num_vertices)
    assert np.all(regions[_wrist(template)] == names.index("palm")), "the wrist opening belongs to the palm"

    wrist = template.vertices[_wrist(template)].mean(0)
    centre = {name: _centre(template, name) for name in names}
    across = (centre["pinky"] - centre["index"]) / np.linalg.norm(centre["pinky"] - centre["index"])
    order = [centre[name] @ across for name in ("thumb", *FINGERS)]
    assert np.all(np.diff(order) > 0.005), "thumb, index, middle, ring, pinky side by side"
    assert np.linalg.norm(centre["thumb"] - centre["index"]) < np.linalg.norm(centre["thumb"] - centre["pinky"])
    distance = {name: np.linalg.norm(centre[name] - wrist) for name in names}
    assert distance["palm"] < min(distance[name] for name in ("thumb", *FINGERS))
    assert distance["thumb"] < min(distance[name] for name in FINGERS), "the thumb starts nearest the wrist"
    tips = dict(zip(FINGERS, np.linalg.norm(template.vertices[_fingertips(template)] - wrist, axis=1), strict=True))
    assert max(tips, key=tips.get) == "middle" and min(tips, key=tips.get) == "pinky"
    assert 0.16 < tips["middle"] < 0.22, "adult hand length, wrist to middle fingertip (metres)"
    assert (centre["thumb"] - centre["palm"]) @ _palm_normal(template) > 0.01, "the thumb sits on the palm side"


def test_grasp_closes_the_fingers_towards_the_palm(tiny, template):
    vertices = np.asarray(tiny.vertices, dtype=np.float64)
    grasp = tiny.labels["grasp"]
    tips = _fingertips(template)
    palm = vertices[:, template.regions == template.region_names.index("palm")].mean(1)
    reach = np.linalg.norm(vertices[:, tips] - palm[:, None], axis=-1).mean(1)
    assert np.corrcoef(reach, grasp)[0, 1] < -0.7, "fingertips near the palm as the grasp grows"
    assert reach[grasp > 0.8].mean() < 0.6 * reach[grasp < 0.2].mean()

    # Flexion, not hyperextension: half-closed hands' fingertips move out of the palm's side of the open hand.
    volar = (vertices[grasp < 0.5][:, tips] - template.vertices[tips]) @ _palm_normal(template)
    assert np.all(volar.mean(0) > 0.01)


def test_joint_angles_respect_the_ranges():
    notes = {"mcp": (-15, 90), "pip": (0, 105), "dip": (0, 80), "spread": (-12, 12), "thumb_cmc": (-10, 45),
             "thumb_mcp": (0, 55), "thumb_ip": (-10, 80)}  # the notes' ranges (degrees)
    assert hand.JOINT_RANGES_DEGREES == notes
    curl = np.repeat(np.linspace(-3, 3, 601)[:, None], 5, axis=1)
    spread = np.repeat(np.linspace(-40, 40, 601)[:, None], 4, axis=1)
    angles = hand.joint_angles(curl, spread)
    assert set(angles) == set(notes)
    for joint, (low, high) in notes.items():
        assert angles[joint].min() == pytest.approx(low if joint != "dip" else 0)
        assert angles[joint].max() == pytest.approx(high if joint != "dip" else 105 * 2 / 3)
        assert np.all(np.diff(angles[joint], axis=0) >= 0), f"{joint} grows with the curl"
    np.testing.assert_allclose(angles["dip"], angles["pip"] * 2 / 3)
    rest = hand.joint_angles(np.zeros((1, 5)), np.zeros((1, 4)))
    assert all(np.all(value == 0) for value in rest.values()), "curl 0 is the open rest hand"


def test_the_wrist_stays_fixed(tiny, template):
    vertices = np.asarray(tiny.vertices, dtype=np.float64)
    wrist = _wrist(template)

    def scatter(points):  # (N, K, 3) -> mean distance of each point to its average over the meshes
        return np.linalg.norm(points - points.mean(0), axis=-1).mean()

    assert scatter(vertices[:, wrist]) < 0.1 * scatter(vertices[:, _fingertips(template)])
    opening = vertices[:, wrist].mean(1)
    assert np.linalg.norm(opening - template.vertices[wrist].mean(0), axis=1).max() < 0.01
    # No global rotation: the proximal half of the palm (far from the knuckles) turns only with the hand's shape.
    palm = np.flatnonzero(template.regions == template.region_names.index("palm"))
    distance = np.linalg.norm(template.vertices[palm] - template.vertices[wrist].mean(0), axis=1)
    proximal = palm[distance < np.median(distance)]
    angles = np.array([_rotation_degrees(mesh[proximal], template.vertices[proximal]) for mesh in vertices])
    assert np.median(angles) < 3 and angles.max() < 12


def test_shapes_vary(tiny, template):
    vertices = np.asarray(tiny.vertices, dtype=np.float64)
    palm = vertices[:, template.regions == template.region_names.index("palm")]
    size = np.sqrt(((palm - palm.mean(1, keepdims=True)) ** 2).sum(-1).mean(1))  # the palm is not articulated
    assert size.std() / size.mean() > 0.03, "hands of different sizes"
    assert size.max() / size.min() < 2, "all adult hands"
    similar = np.argsort(np.abs(tiny.labels["grasp"] - 0.5))[:2]  # two hands in about the same pose
    assert np.abs(palm[similar[0]] - palm[similar[1]]).max() > 0.002


def test_load_caches_the_collection(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    first = hand.load_anny_hand("tiny", seed=0)
    (entry,) = cache_entries(tmp_path / "datasets")
    assert entry.name.startswith("anny-hand-tiny-")
    assert np.array_equal(first.vertices, tiny.vertices)
    assert np.array_equal(first.labels["grasp"], tiny.labels["grasp"])

    def fail(*args, **kwargs):
        raise AssertionError("the cached collection should have been reused")

    monkeypatch.setattr(hand, "generate_anny_hand", fail)
    second = hand.load_anny_hand("tiny", seed=0)
    assert isinstance(second.vertices, np.memmap)
    assert np.array_equal(second.vertices, first.vertices)
    assert np.array_equal(second.template.faces, tiny.template.faces)
    assert np.array_equal(second.template.regions, tiny.template.regions)
    assert second.neutral is None and second.attributes == first.attributes
    with pytest.raises(AssertionError, match="reused"):
        hand.load_anny_hand("tiny", seed=1)  # another seed is another entry
