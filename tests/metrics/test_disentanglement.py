"""Disentanglement errors (IB-VAE Eq. 14, Jiang et al.), LAMM's manipulation error, Procrustes alignment and the aligned
VertexError. Tiny tensors, checked against independent NumPy implementations written here."""

import numpy as np
import pytest
import torch

from morphzoo.metrics.alignment import rigid_align, similarity_procrustes
from morphzoo.metrics.disentanglement import DisentanglementError, JiangDisentanglementError
from morphzoo.metrics.manipulation import ManipulationError, manipulation_partners
from morphzoo.metrics.vertex_error import VertexError

# ---------------------------------------------------------------------------------------------------------------------
# Independent NumPy references


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def np_kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Proper rotation + translation of source (V, 3) onto target, written from H = Sᵀ T = U Σ Vᵀ, R = V D Uᵀ."""
    s, t = source - source.mean(0), target - target.mean(0)
    u, _, vt = np.linalg.svd(s.T @ t)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return s @ rotation.T + target.mean(0)


def np_ibvae(x: np.ndarray) -> float:
    """Eq. 14 for one subject's (n, V, 3) predictions, in mm."""
    distances = np.linalg.norm(x - x.mean(0), axis=-1)
    return float(np.std(distances) * 1000)  # np.std: ddof=0


def np_jiang(x: np.ndarray, seed: int, iterations: int) -> float:
    aligned = np.stack([np_kabsch(p, x[seed]) for p in x])
    for _ in range(iterations):
        mean = aligned.mean(0)
        aligned = np.stack([np_kabsch(p, mean) for p in x])
    return float(np.sqrt((aligned.std(0) ** 2).sum(-1)).mean() * 1000)


def np_typical(x: np.ndarray) -> int:
    """The documented default reference: per-vertex distance-to-centroid profile closest to the subject's average."""
    profile = np.linalg.norm(x - x.mean(1, keepdims=True), axis=-1)
    return int(np.argmin(((profile - profile.mean(0)) ** 2).sum(1)))


def tiny_subjects(seed: int = 0, subjects: int = 2, per_subject: int = 3, vertices: int = 4, noise: float = 0.002,
                  rotate: bool = True):
    """(N, V, 3) predicted neutrals in metres, interleaved subject ids (N,), and the per-subject arrays."""
    rng = np.random.default_rng(seed)
    rows, ids = [], []
    for subject in range(subjects):
        base = rng.normal(size=(vertices, 3)) * 0.05
        for _ in range(per_subject):
            shape = base + rng.normal(size=base.shape) * noise
            if rotate:
                shape = shape @ random_rotation(rng).T + rng.normal(size=3) * 0.01
            rows.append(shape)
            ids.append(10 + 7 * subject)  # ids need not be 0..S-1
    order = rng.permutation(len(rows))  # interleave the subjects
    x = np.stack(rows)[order]
    ids = np.array(ids)[order]
    return x, ids


def per_subject(x: np.ndarray, ids: np.ndarray):
    return {int(s): x[ids == s] for s in np.unique(ids)}


# ---------------------------------------------------------------------------------------------------------------------
# DisentanglementError (IB-VAE Eq. 14)


def test_ibvae_by_hand_uses_population_std():
    # One subject, two predictions, two vertices, displacements along x only:
    # vertex 0 at 0 and 2 mm -> mean 1 mm, distances 1, 1; vertex 1 at 0 and 6 mm -> distances 3, 3.
    # std of {1, 1, 3, 3} with ddof=0 is exactly 1 mm (ddof=1 would give 1.1547).
    x = torch.zeros(2, 2, 3, dtype=torch.float64)
    x[1, 0, 0], x[1, 1, 0] = 0.002, 0.006
    metric = DisentanglementError()
    metric.update(x, torch.tensor([4, 4]))
    result = metric.compute()
    # one subject: torchmetrics squeezes one-element outputs to 0-d, hence the reshape
    assert result["per_subject"].reshape(-1).tolist() == pytest.approx([1.0], rel=1e-6)
    assert result["subjects"].reshape(-1).tolist() == [4]


def test_ibvae_matches_numpy_on_two_subjects():
    x, ids = tiny_subjects(rotate=False)
    metric = DisentanglementError()
    metric.update(torch.from_numpy(x).float(), torch.from_numpy(ids))
    result = metric.compute()
    groups = per_subject(x, ids)
    expected = np.array([np_ibvae(groups[s]) for s in sorted(groups)])
    assert result["subjects"].tolist() == sorted(groups)
    np.testing.assert_allclose(result["per_subject"].numpy(), expected, rtol=1e-5)
    assert result["mean"].item() == pytest.approx(expected.mean(), rel=1e-5)
    assert result["median"].item() == pytest.approx(np.median(expected), rel=1e-5)  # the average of the two middle ones


def test_median_of_subjects_is_numpy_median():
    x, ids = tiny_subjects(subjects=4, per_subject=3, seed=3, rotate=False)
    metric = DisentanglementError()
    metric.update(torch.from_numpy(x), torch.from_numpy(ids))
    values = metric.compute()["per_subject"].double().numpy()
    assert metric.compute()["median"].item() == pytest.approx(float(np.median(values)), rel=1e-6)
    assert len(set(values.round(9))) == 4  # distinct, so lower-middle and numpy medians would differ


# ---------------------------------------------------------------------------------------------------------------------
# JiangDisentanglementError


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_jiang_matches_numpy_with_flagged_references(iterations):
    x, ids = tiny_subjects(seed=1)
    groups = per_subject(x, ids)
    # flag the last prediction of each subject (in row order) as its alignment reference
    reference = np.zeros(len(ids), dtype=bool)
    for s in groups:
        reference[np.nonzero(ids == s)[0][-1]] = True
    metric = JiangDisentanglementError(iterations=iterations)
    metric.update(torch.from_numpy(x), torch.from_numpy(ids), reference=torch.from_numpy(reference))
    result = metric.compute()
    expected = np.array([np_jiang(groups[s], seed=len(groups[s]) - 1, iterations=iterations) for s in sorted(groups)])
    np.testing.assert_allclose(result["per_subject"].numpy(), expected, rtol=1e-5)
    assert result["mean"].item() == pytest.approx(expected.mean(), rel=1e-5)
    assert result["median"].item() == pytest.approx(np.median(expected), rel=1e-5)


@pytest.mark.parametrize("iterations", [0, 1])
def test_jiang_default_reference_is_the_most_typical_prediction(iterations):
    x, ids = tiny_subjects(seed=2, per_subject=5)
    groups = per_subject(x, ids)
    metric = JiangDisentanglementError(iterations=iterations)
    metric.update(torch.from_numpy(x), torch.from_numpy(ids))
    expected = [np_jiang(groups[s], seed=np_typical(groups[s]), iterations=iterations) for s in sorted(groups)]
    np.testing.assert_allclose(metric.compute()["per_subject"].numpy(), expected, rtol=1e-5)


def test_jiang_iterations_change_the_result():
    # otherwise the refinement would be dead code and the parametrised comparisons above could not tell them apart
    x, ids = tiny_subjects(seed=1, noise=0.01)
    results = []
    for iterations in (0, 1):
        metric = JiangDisentanglementError(iterations=iterations)
        metric.update(torch.from_numpy(x), torch.from_numpy(ids))
        results.append(metric.compute()["per_subject"])
    assert not torch.allclose(results[0], results[1], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Properties shared by both disentanglement errors

BOTH = [DisentanglementError, JiangDisentanglementError]


@pytest.mark.parametrize("cls", BOTH)
def test_identical_predictions_give_zero(cls):
    rng = np.random.default_rng(5)
    faces = [rng.normal(size=(6, 3)) * 0.05 for _ in range(3)]
    x = torch.from_numpy(np.stack([faces[i % 3] for i in range(12)]))
    ids = torch.arange(12) % 3
    metric = cls()
    metric.update(x, ids)
    result = metric.compute()
    assert result["per_subject"].abs().max().item() < 1e-6
    assert result["mean"].item() < 1e-6


@pytest.mark.parametrize("cls", BOTH)
def test_error_grows_with_noise(cls):
    rng = np.random.default_rng(6)
    base = np.repeat(rng.normal(size=(1, 8, 3)) * 0.05, 5, axis=0)
    direction = rng.normal(size=base.shape)
    ids = torch.zeros(5, dtype=torch.long)
    values = []
    for scale in (0.0, 1e-4, 1e-3, 3e-3, 1e-2):
        metric = cls()
        metric.update(torch.from_numpy(base + scale * direction), ids)
        values.append(metric.compute()["mean"].item())
    assert values[0] < 1e-6
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


def test_only_jiang_is_invariant_to_rigid_motion_of_individual_predictions():
    x, ids = tiny_subjects(seed=7, per_subject=4, vertices=6, rotate=False)
    rng = np.random.default_rng(8)
    moved = np.stack([p @ random_rotation(rng).T + rng.normal(size=3) * 0.05 for p in x])  # every one, seeds included
    for iterations in (0, 1, 2):
        before, after = (JiangDisentanglementError(iterations=iterations) for _ in range(2))
        before.update(torch.from_numpy(x), torch.from_numpy(ids))
        after.update(torch.from_numpy(moved), torch.from_numpy(ids))
        torch.testing.assert_close(before.compute()["per_subject"], after.compute()["per_subject"], rtol=1e-6, atol=0)
    before, after = DisentanglementError(), DisentanglementError()
    before.update(torch.from_numpy(x), torch.from_numpy(ids))
    after.update(torch.from_numpy(moved), torch.from_numpy(ids))
    assert after.compute()["mean"].item() > 2 * before.compute()["mean"].item()


def test_ibvae_sees_a_rotated_copy_jiang_does_not():
    rng = np.random.default_rng(9)
    face = rng.normal(size=(10, 3)) * 0.05
    x = torch.from_numpy(np.stack([face, face @ random_rotation(rng).T + 0.01, face]))
    ids = torch.zeros(3, dtype=torch.long)
    ibvae, jiang = DisentanglementError(), JiangDisentanglementError()
    ibvae.update(x, ids)
    jiang.update(x, ids)
    assert ibvae.compute()["mean"].item() > 1.0  # mm
    assert jiang.compute()["mean"].item() < 1e-6


@pytest.mark.parametrize("cls", BOTH)
def test_results_do_not_depend_on_batching_or_order(cls):
    x, ids = tiny_subjects(seed=11, subjects=3, per_subject=5, vertices=7)
    x, ids = torch.from_numpy(x).float(), torch.from_numpy(ids)
    whole, parts = cls(), cls()
    whole.update(x, ids)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    for chunk in torch.tensor_split(order, [2, 3, 9]):
        parts.update(x[chunk], ids[chunk])
    a, b = whole.compute(), parts.compute()
    for key in ("mean", "median", "per_subject", "subjects"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-9)


def test_jiang_flags_survive_batching():
    x, ids = tiny_subjects(seed=12, per_subject=4)
    x, ids = torch.from_numpy(x), torch.from_numpy(ids)
    reference = torch.zeros(len(ids), dtype=torch.bool)
    reference[[int((ids == s).nonzero()[1]) for s in ids.unique()]] = True
    whole, parts = JiangDisentanglementError(iterations=0), JiangDisentanglementError(iterations=0)
    whole.update(x, ids, reference=reference)
    for chunk in torch.tensor_split(torch.arange(len(ids)).flip(0), [3, 5]):
        parts.update(x[chunk], ids[chunk], reference=reference[chunk])
    torch.testing.assert_close(whole.compute()["per_subject"], parts.compute()["per_subject"])
    unflagged = JiangDisentanglementError(iterations=0)
    unflagged.update(x, ids)
    assert not torch.allclose(whole.compute()["per_subject"], unflagged.compute()["per_subject"])


@pytest.mark.parametrize("cls", BOTH)
def test_single_prediction_subjects_are_left_out_with_a_warning(cls):
    x, ids = tiny_subjects(seed=13)
    x, ids = torch.from_numpy(x), torch.from_numpy(ids)
    reference = cls()
    reference.update(x, ids)
    metric = cls()
    metric.update(x, ids)
    metric.update(x[:1] + 0.01, torch.tensor([99]))
    with pytest.warns(UserWarning, match="99"):
        result = metric.compute()
    assert 99 not in result["subjects"].tolist()
    torch.testing.assert_close(result["per_subject"], reference.compute()["per_subject"])
    lonely = cls()
    lonely.update(x[:2], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="two or more"):
        lonely.compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # compute() before update() on purpose
@pytest.mark.parametrize("cls", BOTH)
def test_disentanglement_rejects_bad_inputs(cls):
    name = cls.__name__
    with pytest.raises(ValueError, match=name):
        cls().update(torch.zeros(2, 4), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=name):
        cls().update(torch.zeros(2, 4, 2), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=name):
        cls().update(torch.zeros(2, 4, 3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=f"{name}.*integer"):
        cls().update(torch.zeros(2, 4, 3), torch.tensor([0.0, 1.0]))
    metric = cls()
    metric.update(torch.zeros(2, 4, 3), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=f"{name}.*vertices"):
        metric.update(torch.zeros(2, 5, 3), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=f"{name}.*update"):
        cls().compute()


def test_jiang_rejects_bad_references_and_iterations():
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="at most one"):
        metric = JiangDisentanglementError()
        metric.update(x, torch.tensor([0, 0, 0]), reference=torch.tensor([True, False, True]))
        metric.compute()
    with pytest.raises(ValueError, match="reference"):
        JiangDisentanglementError().update(x, torch.tensor([0, 0, 0]), reference=torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="reference"):
        JiangDisentanglementError().update(x, torch.tensor([0, 0, 0]), reference=torch.tensor([True, False]))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="iterations"):
            JiangDisentanglementError(iterations=bad)


# ---------------------------------------------------------------------------------------------------------------------
# Procrustes


def random_similarity(rng, batch: int):
    rotations = np.stack([random_rotation(rng) for _ in range(batch)])
    scales = rng.uniform(0.5, 2.0, size=batch)
    translations = rng.normal(size=(batch, 3))
    return rotations, scales, translations


def apply(points, rotations, scales, translations):
    return scales[:, None, None] * points @ rotations.transpose(0, 2, 1) + translations[:, None, :]


def test_procrustes_recovers_a_known_similarity_transform():
    rng = np.random.default_rng(20)
    source = rng.normal(size=(5, 30, 3))
    target = apply(source, *random_similarity(rng, 5))
    aligned = similarity_procrustes(torch.from_numpy(source), torch.from_numpy(target))
    assert aligned.dtype == torch.float64
    assert np.abs(aligned.numpy() - target).max() < 1e-9
    # float32 inputs: float64 inside, float32 out, still ~exact
    aligned32 = similarity_procrustes(torch.from_numpy(source).float(), torch.from_numpy(target).float())
    assert aligned32.dtype == torch.float32
    assert np.abs(aligned32.numpy() - target).max() < 1e-5
    # and a single (V, 3) set
    single = similarity_procrustes(torch.from_numpy(source[0]), torch.from_numpy(target[0]))
    assert np.abs(single.numpy() - target[0]).max() < 1e-9


def np_umeyama(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Umeyama 1991, Eq. 40-42, for one (V, 3) pair: returns the aligned source."""
    mu_x, mu_y = source.mean(0), target.mean(0)
    sigma = (target - mu_y).T @ (source - mu_x) / len(source)
    u, d, vt = np.linalg.svd(sigma)
    s = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[2, 2] = -1
    rotation = u @ s @ vt
    c = np.trace(np.diag(d) @ s) / ((source - mu_x) ** 2).sum(1).mean()
    return c * (source - mu_x) @ rotation.T + mu_y


def test_procrustes_matches_numpy_umeyama_including_the_reflection_case():
    rng = np.random.default_rng(24)
    source = rng.normal(size=(5, 15, 3)) * np.array([3.0, 2.0, 1.0])
    target = rng.normal(size=(5, 15, 3))  # unrelated shapes: a general least-squares problem
    target[0] = apply(source[:1] * np.array([-1.0, 1.0, 1.0]), *random_similarity(rng, 1))[0]  # a mirrored copy
    target[1] = source[1] * np.array([1.0, -1.0, 1.0]) + rng.normal(size=(15, 3)) * 0.1  # a noisy mirrored copy
    u, _, vt = np.linalg.svd((target[0] - target[0].mean(0)).T @ (source[0] - source[0].mean(0)))
    assert np.linalg.det(u) * np.linalg.det(vt) < 0  # the case the determinant correction is for
    aligned = similarity_procrustes(torch.from_numpy(source), torch.from_numpy(target)).numpy()
    expected = np.stack([np_umeyama(a, b) for a, b in zip(source, target, strict=True)])
    np.testing.assert_allclose(aligned, expected, rtol=1e-9, atol=1e-12)


def test_procrustes_is_the_least_squares_optimum():
    rng = np.random.default_rng(21)
    source = rng.normal(size=(4, 20, 3))
    truth = random_similarity(rng, 4)
    target = apply(source, *truth) + rng.normal(size=source.shape) * 0.1
    aligned = similarity_procrustes(torch.from_numpy(source), torch.from_numpy(target)).numpy()
    residual = ((aligned - target) ** 2).sum(axis=(1, 2))
    assert np.all(residual <= ((apply(source, *truth) - target) ** 2).sum(axis=(1, 2)))
    for _ in range(20):  # and no nearby similarity transform does better
        rotations, scales, translations = truth
        nudged = (np.stack([r @ random_rotation_small(rng) for r in rotations]), scales * rng.uniform(0.98, 1.02, 4),
                  translations + rng.normal(size=translations.shape) * 0.01)
        assert np.all(residual <= ((apply(source, *nudged) - target) ** 2).sum(axis=(1, 2)) + 1e-12)


def random_rotation_small(rng, angle: float = 0.02) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def test_procrustes_never_reflects():
    rng = np.random.default_rng(22)
    shape = rng.normal(size=(40, 3)) * np.array([3.0, 2.0, 1.0])  # no symmetry
    mirrored = shape * np.array([-1.0, 1.0, 1.0])
    aligned = similarity_procrustes(torch.from_numpy(mirrored), torch.from_numpy(shape)).numpy()
    size = np.sqrt(((shape - shape.mean(0)) ** 2).sum(1).mean())
    assert np.sqrt(((aligned - shape) ** 2).sum(1).mean()) > 0.1 * size
    # the test can fail: an orthogonal fit that allows reflections aligns the mirrored copy exactly
    u, _, vt = np.linalg.svd((shape - shape.mean(0)).T @ (mirrored - mirrored.mean(0)))
    reflected = (mirrored - mirrored.mean(0)) @ (u @ vt).T + shape.mean(0)
    assert np.abs(reflected - shape).max() < 1e-9
    # the rotation used is proper and the scale positive: the aligned mirror keeps the mirror's handedness

    def handedness(points):
        return np.sign(np.linalg.det(points[1:4] - points[0]))

    assert handedness(aligned) == handedness(mirrored) == -handedness(shape)


def test_rigid_align_keeps_scale():
    rng = np.random.default_rng(23)
    source = rng.normal(size=(3, 25, 3))
    rotations, _, translations = random_similarity(rng, 3)
    rigid_target = apply(source, rotations, np.ones(3), translations)
    aligned = rigid_align(torch.from_numpy(source), torch.from_numpy(rigid_target)).numpy()
    assert np.abs(aligned - rigid_target).max() < 1e-9
    torch.testing.assert_close(rigid_align(torch.from_numpy(source), torch.from_numpy(rigid_target)),
                               similarity_procrustes(torch.from_numpy(source), torch.from_numpy(rigid_target),
                                                     scale=False))
    scaled_target = apply(source, rotations, np.full(3, 1.5), translations)
    rigid = rigid_align(torch.from_numpy(source), torch.from_numpy(scaled_target)).numpy()
    # a rigid motion keeps every pairwise distance: the aligned source has the source's size, not the target's
    np.testing.assert_allclose(np.linalg.norm(rigid[:, 0] - rigid[:, 1], axis=-1),
                               np.linalg.norm(source[:, 0] - source[:, 1], axis=-1), rtol=1e-9)
    assert np.abs(rigid - scaled_target).max() > 0.1
    assert np.abs(similarity_procrustes(torch.from_numpy(source), torch.from_numpy(scaled_target)).numpy()
                  - scaled_target).max() < 1e-9


def test_procrustes_rejects_bad_shapes():
    with pytest.raises(ValueError, match="similarity_procrustes"):
        similarity_procrustes(torch.zeros(2, 5, 3), torch.zeros(2, 6, 3))
    with pytest.raises(ValueError, match="similarity_procrustes"):
        similarity_procrustes(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2))


# ---------------------------------------------------------------------------------------------------------------------
# VertexError(align="procrustes")


def rms(result) -> float:
    """Root-mean-square error from VertexError's mean and (ddof=1) std over its N·V errors."""
    n = result["per_mesh"].numel() * result["per_vertex"].numel()
    return float(np.sqrt(result["mean"].item() ** 2 + result["std"].item() ** 2 * (n - 1) / n))


def test_aligned_vertex_error_is_zero_for_a_similar_copy():
    rng = np.random.default_rng(30)
    target = rng.normal(size=(4, 50, 3)) * 0.05
    prediction = apply(target, *random_similarity(rng, 4))
    raw, aligned = VertexError(), VertexError(align="procrustes")
    raw.update(torch.from_numpy(prediction).float(), torch.from_numpy(target).float())
    aligned.update(torch.from_numpy(prediction).float(), torch.from_numpy(target).float())
    assert aligned.compute()["mean"].item() < 1e-3  # mm; float32 inputs
    assert raw.compute()["mean"].item() > 10.0


def test_aligned_vertex_error_is_not_larger():
    rng = np.random.default_rng(31)
    target = rng.normal(size=(6, 40, 3)) * 0.05
    prediction = apply(target, *random_similarity(rng, 6)) * 0.2 + target * 0.8 + rng.normal(size=target.shape) * 0.002
    raw, aligned = VertexError(), VertexError(align="procrustes")
    for metric in (raw, aligned):
        metric.update(torch.from_numpy(prediction), torch.from_numpy(target))
    a, r = aligned.compute(), raw.compute()
    assert rms(a) <= rms(r)
    assert a["mean"].item() <= r["mean"].item()
    assert torch.all(a["per_mesh"] <= r["per_mesh"])


def test_aligned_mean_error_can_exceed_raw_mean_with_one_outlier():
    """What the docstring says: only the RMS is guaranteed not to grow, the alignment minimises squared error."""
    rng = np.random.default_rng(32)
    target = rng.normal(size=(1, 20, 3)) * 0.05
    prediction = target.copy()
    prediction[0, 0] += 0.5
    raw, aligned = VertexError(), VertexError(align="procrustes")
    for metric in (raw, aligned):
        metric.update(torch.from_numpy(prediction), torch.from_numpy(target))
    a, r = aligned.compute(), raw.compute()
    assert rms(a) <= rms(r)
    assert a["mean"].item() > r["mean"].item()


def test_aligned_vertex_error_is_independent_of_batching_and_rejects_unknown_modes():
    rng = np.random.default_rng(33)
    target = torch.from_numpy(rng.normal(size=(7, 30, 3)) * 0.05).float()
    prediction = target * 1.1 + torch.from_numpy(rng.normal(size=(7, 30, 3)) * 0.001).float()
    whole, parts = VertexError(align="procrustes"), VertexError(align="procrustes")
    whole.update(prediction, target)
    for chunk in (slice(0, 2), slice(2, 3), slice(3, 7)):
        parts.update(prediction[chunk], target[chunk])
    a, b = whole.compute(), parts.compute()
    for key in ("mean", "std", "median", "per_vertex", "per_mesh", "curve_fraction"):
        torch.testing.assert_close(a[key], b[key])
    with pytest.raises(ValueError, match="VertexError.*align"):
        VertexError(align="rigid")


# ---------------------------------------------------------------------------------------------------------------------
# ManipulationError


def manipulation_example():
    """B=2 meshes, V=4 vertices, control = {0, 2}; displacements chosen so each error is a whole number of mm."""
    target = torch.zeros(2, 4, 3, dtype=torch.float64)
    prediction = target.clone()
    prediction[0, 0] = torch.tensor([0.003, 0.004, 0.0])  # 5 mm, control
    prediction[0, 1, 0] = 0.001  # 1 mm, non-control
    prediction[1, 2, 2] = -0.002  # 2 mm, control
    prediction[1, 3, 1] = 0.006  # 6 mm, non-control
    prediction[1, 1, 0] = 0.004  # 4 mm, non-control
    # control errors 5, 0 (mesh 0) and 0, 2 (mesh 1): 7/4; non-control 1, 0 and 4, 6: 11/4; all eight: 18/8
    return prediction, target, {"control": 7 / 4, "non_control": 11 / 4, "all": 18 / 8}


@pytest.mark.parametrize("control", [torch.tensor([0, 2]), np.array([2, 0, 2]),
                                     torch.tensor([True, False, True, False]), np.array([True, False, True, False])])
def test_manipulation_error_by_hand(control):
    prediction, target, expected = manipulation_example()
    metric = ManipulationError(control)
    metric.update(prediction, target)
    result = metric.compute()
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, rel=1e-6), key


def test_manipulation_error_ignores_duplicate_indices():
    prediction, target, _ = manipulation_example()
    duplicated = ManipulationError(torch.tensor([0, 0, 1, 2]))
    mask = ManipulationError(torch.tensor([True, True, True, False]))
    for metric in (duplicated, mask):  # four indices for four vertices, but vertex 3 is still non-control
        metric.update(prediction, target)
    a, b = duplicated.compute(), mask.compute()
    for key in ("control", "non_control", "all"):
        torch.testing.assert_close(a[key], b[key])
    assert a["non_control"].item() == pytest.approx(6 / 2, rel=1e-6)  # vertex 3's errors: 0 and 6 mm


def test_manipulation_error_is_independent_of_batching():
    rng = np.random.default_rng(40)
    target = torch.from_numpy(rng.normal(size=(9, 12, 3)) * 0.05).float()
    prediction = target + torch.from_numpy(rng.normal(size=(9, 12, 3)) * 0.002).float()
    control = torch.tensor([1, 4, 5, 11])
    whole, parts = ManipulationError(control), ManipulationError(control)
    whole.update(prediction, target)
    for chunk in (slice(0, 1), slice(1, 5), slice(5, 9)):
        parts.update(prediction[chunk], target[chunk])
    a, b = whole.compute(), parts.compute()
    for key in ("control", "non_control", "all"):
        torch.testing.assert_close(a[key], b[key])
    errors = (prediction - target).double().norm(dim=-1).numpy() * 1000
    mask = np.zeros(12, dtype=bool)
    mask[control.numpy()] = True
    assert a["control"].item() == pytest.approx(errors[:, mask].mean(), rel=1e-6)
    assert a["non_control"].item() == pytest.approx(errors[:, ~mask].mean(), rel=1e-6)
    assert a["all"].item() == pytest.approx(errors.mean(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # compute() before update() on purpose
def test_manipulation_error_rejects_bad_inputs():
    with pytest.raises(ValueError, match="ManipulationError.*no vertex"):
        ManipulationError(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="ManipulationError.*every vertex"):
        ManipulationError(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="ManipulationError.*empty"):
        ManipulationError(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="ManipulationError.*>= 0"):
        ManipulationError(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="ManipulationError.*integers"):
        ManipulationError(np.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="ManipulationError.*1-D"):
        ManipulationError(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="ManipulationError.*every vertex"):
        ManipulationError(torch.tensor([0, 1, 2, 3])).update(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="ManipulationError.*out of range"):
        ManipulationError(torch.tensor([0, 4])).update(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="ManipulationError.*entries"):
        ManipulationError(torch.tensor([True, False, False])).update(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="ManipulationError.*\\(B, V, 3\\)"):
        ManipulationError(torch.tensor([0])).update(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="ManipulationError.*update"):
        ManipulationError(torch.tensor([0])).compute()


# --------------------------------------------------------------------------------------- manipulation pairs
def _labels():
    # identity 0: expressions 0 and 1; identity 1: expression 0 only; identity 2: one mesh, unlabelled expression
    identity = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    expression = torch.tensor([0, 0, 1, 1, 0, 0, -1])
    return identity, expression


def test_identity_partners_are_other_people_and_cover_them_all():
    identity, expression = _labels()
    chosen = torch.stack([manipulation_partners("identity", 7, identity, expression, torch.Generator().manual_seed(s))
                          for s in range(200)])
    assert (identity[chosen] != identity).all()
    for i in range(7):  # uniform over the qualifying meshes: every one of them is drawn
        assert set(chosen[:, i].tolist()) == set(torch.nonzero(identity != identity[i]).flatten().tolist())


def test_expression_partners_keep_the_person_and_change_the_expression():
    identity, expression = _labels()
    partners = manipulation_partners("expression", 7, identity, expression, torch.Generator().manual_seed(0))
    assert (partners[:4] >= 0).all()
    assert (identity[partners[:4]] == identity[:4]).all() and (expression[partners[:4]] != expression[:4]).all()
    assert (partners[4:] == -1).all()  # one expression only / unlabelled: no partner, never a fallback
    assert (manipulation_partners("expression", 7, identity, None) == -1).all()


def test_partners_without_labels_are_any_other_mesh_and_are_seeded():
    draw = lambda seed: manipulation_partners("identity", 3000, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    first = draw(0)
    assert (first != torch.arange(3000)).all() and (first >= 0).all()  # spans several chunks of rows
    torch.testing.assert_close(first, draw(0))
    assert (first != draw(1)).any()


def test_manipulation_partners_reject_bad_arguments():
    with pytest.raises(ValueError, match="change must be one of"):
        manipulation_partners("pose", 3)
    with pytest.raises(ValueError, match=r"identity labels must have shape \(3,\)"):
        manipulation_partners("identity", 3, torch.zeros(4, dtype=torch.long))
