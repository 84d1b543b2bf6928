"""Tests of the anny-bu3dfe generator (morphzoo.data.synth.bu3dfe) on the tiny preset.

Expected structure comes from BU-3DFE (Yin et al. 2006: 100 subjects, 56 female, 25 scans each) and the recipes of the
measured notes (shared/notes/anny-datasets.md, "BU-3DFE-like expressions"), not from this generator's output.
"""

import re

import numpy as np
import pytest

from morphzoo.data.synth import bu3dfe
from tests.synthetic import cache_entries

pytestmark = pytest.mark.slow  # needs anny's head model (first build ~90 s)

CODES = ("NE", "AN", "DI", "FE", "HA", "SA", "SU")
ETHNICITIES = ("WH", "BL", "AE", "AM", "LA", "IN")


@pytest.fixture(scope="module")
def tiny():
    return bu3dfe.generate_anny_bu3dfe("tiny", seed=0)


def _peak(collection, code):
    """(subjects, V, 3) displacement of each subject's level-4 ``code`` scan from its neutral face, by identity."""
    labels = collection.labels
    rows = (labels["expression"] == CODES.index(code)) & (labels["level"] == 4)
    order = np.argsort(labels["identity"][rows])
    meshes = np.asarray(collection.vertices[rows], dtype=np.float64)[order]
    return meshes - np.asarray(collection.neutral, dtype=np.float64)


def _region(template, name):
    return template.regions == template.region_names.index(name)


def test_unknown_size_names_the_valid_ones():
    with pytest.raises(ValueError, match="tiny.*small.*full"):
        bu3dfe.generate_anny_bu3dfe("huge")
    with pytest.raises(ValueError, match="tiny"):
        bu3dfe.load_anny_bu3dfe("huge")


def test_deterministic_in_seed(tiny):
    again = bu3dfe.generate_anny_bu3dfe("tiny", seed=0)
    other = bu3dfe.generate_anny_bu3dfe("tiny", seed=1)
    assert np.array_equal(again.vertices, tiny.vertices)
    assert np.array_equal(again.neutral, tiny.neutral)
    assert again.labels.keys() == tiny.labels.keys()
    for name, values in tiny.labels.items():
        assert np.array_equal(again.labels[name], values)
    assert again.vocabularies == tiny.vocabularies
    assert not np.allclose(other.neutral, tiny.neutral, atol=1e-4)
    assert not np.allclose(other.vertices, tiny.vertices, atol=1e-4)


def test_every_subject_has_bu3dfes_25_scans(tiny):
    subjects = len(tiny.vocabularies["identity"])
    assert subjects == 12 and len(tiny) == 300  # tiny: BU-3DFE's "first 10 subjects test" split leaves 2 for training
    assert tiny.vertices.shape == (300, tiny.template.num_vertices, 3) and tiny.vertices.dtype == np.float32
    identity, expression, level = (tiny.labels[k] for k in ("identity", "expression", "level"))
    for subject in range(subjects):
        own = identity == subject
        assert own.sum() == 25
        pairs = sorted(zip(expression[own].tolist(), level[own].tolist(), strict=True))
        assert pairs == [(0, 0)] + [(e, lv) for e in range(1, 7) for lv in range(1, 5)]
    assert np.array_equal(expression == 0, level == 0), "neutral scans, and only they, have level 0"


def test_labels_vocabularies_and_order(tiny):
    assert tiny.vocabularies["expression"] == CODES
    assert tiny.vocabularies["sex"] == ("F", "M")
    assert tiny.vocabularies["ethnicity"] == ETHNICITIES
    names = tiny.vocabularies["identity"]
    assert list(names) == sorted(names) and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[FM]\d{4}", name) for name in names)
    for sex in "FM":  # BU-3DFE numbers each sex separately, from 1
        assert [int(n[1:]) for n in names if n[0] == sex] == list(range(1, sum(n[0] == sex for n in names) + 1))
    females = sum(name[0] == "F" for name in names)
    assert abs(females - 0.56 * len(names)) <= 0.5, "BU-3DFE's 56% female, to the nearest subject"

    labels = tiny.labels
    for key in ("identity", "expression", "level", "sex", "ethnicity"):
        assert labels[key].dtype == np.int64
    assert labels["level"].min() == 0 and labels["level"].max() == 4
    assert labels["ethnicity"].min() >= 0 and labels["ethnicity"].max() < len(ETHNICITIES)
    for subject, name in enumerate(names):
        own = labels["identity"] == subject
        assert np.all(labels["sex"][own] == "FM".index(name[0]))
        assert len(np.unique(labels["ethnicity"][own])) == 1, "one ethnicity per subject"
    order = np.lexsort((labels["level"], labels["expression"], labels["identity"]))
    assert np.array_equal(order, np.arange(len(tiny))), "meshes must be sorted by (identity, expression, level)"
    intensity = labels["intensity"]
    assert intensity.dtype == np.float32 and np.all((intensity == 0) == (labels["level"] == 0))
    nominal = np.array([0, 0.25, 0.5, 0.75, 1.0])[labels["level"]]
    assert np.all(np.abs(intensity - nominal) <= 0.1 * nominal + 1e-6), "level scale ±10% (notes)"
    assert tiny.attributes["preset"] == "tiny" and tiny.attributes["seed"] == 0


def test_full_preset_has_bu3dfes_subjects():
    # The subject list alone (no meshes): BU-3DFE has F0001..F0056 and M0001..M0044.
    full = bu3dfe._subjects(bu3dfe.PRESETS["full"].subjects)
    names = [name for name, _, _ in full]
    assert sorted(names) == [f"F{k:04d}" for k in range(1, 57)] + [f"M{k:04d}" for k in range(1, 45)]
    assert all(name[0] == "FM"[not female] for name, female, _ in full)
    assert bu3dfe.PRESETS["small"].subjects * 25 >= 1000
    for size in ("tiny", "small"):  # the smaller presets are the first subjects of the full one
        assert bu3dfe._subjects(bu3dfe.PRESETS[size].subjects) == full[:bu3dfe.PRESETS[size].subjects]


def test_a_subject_is_the_same_in_every_preset(tiny, monkeypatch):
    monkeypatch.setitem(bu3dfe.PRESETS, "thirteen", bu3dfe.Bu3dfePreset(subjects=13))
    larger = bu3dfe.generate_anny_bu3dfe("thirteen", seed=0)
    assert set(tiny.vocabularies["identity"]) < set(larger.vocabularies["identity"])
    for subject, name in enumerate(tiny.vocabularies["identity"]):
        mine = tiny.labels["identity"] == subject
        theirs = larger.labels["identity"] == larger.vocabularies["identity"].index(name)
        for key in ("expression", "level", "sex", "ethnicity", "intensity"):
            assert np.array_equal(tiny.labels[key][mine], larger.labels[key][theirs])
        # Batches differ between presets: allow float32 round-off, nothing more (expressions move millimetres).
        assert np.allclose(tiny.vertices[mine], larger.vertices[theirs], atol=1e-6)


def test_neutral_is_each_subjects_ne00_scan(tiny):
    neutral_rows = tiny.labels["expression"] == 0
    assert tiny.neutral.shape == (12, tiny.template.num_vertices, 3) and tiny.neutral.dtype == np.float32
    assert np.array_equal(tiny.labels["identity"][neutral_rows], np.arange(12))
    assert np.array_equal(tiny.neutral, tiny.vertices[neutral_rows])
    others = np.linalg.norm(tiny.neutral[:, None] - tiny.neutral[None], axis=-1).mean(-1)
    assert others[~np.eye(len(others), dtype=bool)].min() > 0.001, "neutral faces must differ by subject (mm scale)"


def test_displacement_grows_with_level(tiny):
    labels = tiny.labels
    displacement = np.linalg.norm(tiny.vertices - tiny.neutral[labels["identity"]], axis=-1).mean(-1)
    for subject in range(12):
        for expression in range(1, 7):
            rows = (labels["identity"] == subject) & (labels["expression"] == expression)
            by_level = displacement[rows][np.argsort(labels["level"][rows])]
            assert np.all(np.diff(np.concatenate([[0.0], by_level])) > 0), (subject, CODES[expression], by_level)
            # Level 1 is 0.25 of the peak (±10%), level 4 the peak: far from equal even with the non-linearity.
            assert by_level[0] < 0.5 * by_level[3]


def test_expressions_differ_where_expected(tiny):
    template = tiny.template

    def mean_dz(code, region):
        return _peak(tiny, code)[:, region, 2].mean(1)  # (subjects,) metres, +Z is up

    # Mouth opening (jawOpen: SU .6, FE .25, SA 0): the chin drops most in surprise. The notes measured 39 mm of chin
    # motion for jawOpen = 1, so 0.6 of it is far above 2 mm even averaged over the chin region.
    chin = _region(template, "chin")
    assert np.all(-mean_dz("SU", chin) > -mean_dz("FE", chin))
    assert np.all(-mean_dz("FE", chin) > -mean_dz("SA", chin))
    assert np.all(-mean_dz("SU", chin) > -mean_dz("SA", chin) + 0.002)

    # Mouth corners (the mouth region's most lateral vertices): happiness (mouthSmile 1) pulls them up and outwards
    # more than any other expression; sadness (mouthFrown 1) pulls them down.
    mouth = _region(template, "mouth")
    lateral_x = np.abs(template.vertices[:, 0])
    corners = mouth & (lateral_x >= np.quantile(lateral_x[mouth], 0.9))
    outward = np.sign(template.vertices[corners, 0])
    assert np.all(mean_dz("HA", corners) > 0) and np.all(mean_dz("SA", corners) < 0)
    widening = {code: (_peak(tiny, code)[:, corners, 0] * outward).mean(1) for code in CODES[1:]}
    for code in CODES[1:]:
        if code != "HA":
            assert np.all(widening["HA"] > widening[code]), code

    # Brows: raised in surprise and fear (browInnerUp/browOuterUp), lowered in anger and disgust (browDown).
    brows = _region(template, "eyebrows")
    for code in ("SU", "FE"):
        assert np.all(mean_dz(code, brows) > 0), code
    for code in ("AN", "DI"):
        assert np.all(mean_dz(code, brows) < 0), code

    # Nose: disgust has the strongest noseSneer (1 vs anger's 0.3) and wrinkles the nose upwards the most.
    nose = _region(template, "nose")
    for code in CODES[1:]:
        if code != "DI":
            assert np.all(mean_dz("DI", nose) > mean_dz(code, nose)), code


def test_scans_are_not_a_linear_blendshape_model(tiny):
    # Without the style exponents and the action noise, a subject's four levels of an expression are multiples of one
    # displacement (rank 1: the second singular value is float32 round-off, measured 6e-6 of the first).
    labels = tiny.labels
    displacement = np.asarray(tiny.vertices - tiny.neutral[labels["identity"]], dtype=np.float64)
    for subject in range(12):
        for expression in range(1, 7):
            rows = displacement[(labels["identity"] == subject) & (labels["expression"] == expression)]
            singular = np.linalg.svd(rows.reshape(len(rows), -1), compute_uv=False)
            assert singular[1] > 0.004 * singular[0], (subject, CODES[expression])  # measured >= 0.013

    # anny's 52 action blendshapes do not depend on the identity: without the jaw bone the 300 scans lie in the span of
    # 52 action directions and 11 identity directions, and PCA-64 reconstructs them to round-off (measured 0.00002 mm).
    flat = np.asarray(tiny.vertices, dtype=np.float64).reshape(len(tiny), -1)
    centred = flat - flat.mean(0)
    _, eigenvectors = np.linalg.eigh(centred @ centred.T)  # PCA through the (N, N) Gram matrix: same subspace
    scores = eigenvectors[:, -64:]
    residual = centred - scores @ (scores.T @ centred)
    assert np.linalg.norm(residual.reshape(len(tiny), -1, 3), axis=-1).mean() > 0.0003 / 1000  # measured 0.0014 mm


def test_load_caches_the_collection(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path))
    first = bu3dfe.load_anny_bu3dfe("tiny", seed=0)
    (entry,) = cache_entries(tmp_path / "datasets")
    assert entry.name.startswith("anny-bu3dfe-tiny-")
    assert np.array_equal(first.vertices, tiny.vertices)
    assert np.array_equal(first.neutral, tiny.neutral)
    for name, values in tiny.labels.items():
        assert np.array_equal(first.labels[name], values)

    def fail(*args, **kwargs):
        raise AssertionError("the cached collection should have been reused")

    monkeypatch.setattr(bu3dfe, "generate_anny_bu3dfe", fail)
    second = bu3dfe.load_anny_bu3dfe("tiny", seed=0)
    assert isinstance(second.vertices, np.memmap)
    assert np.array_equal(second.vertices, first.vertices)
    assert second.vocabularies == first.vocabularies == tiny.vocabularies
    assert second.attributes == first.attributes
    with pytest.raises(AssertionError, match="reused"):
        bu3dfe.load_anny_bu3dfe("tiny", seed=1)  # another seed is another entry
