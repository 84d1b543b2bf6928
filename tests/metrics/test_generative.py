"""Specificity and Diversity (generative-model metrics): checked against independent numpy loops on tiny inputs."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from morphzoo.metrics import specificity as specificity_module
from morphzoo.metrics.diversity import Diversity, sample_indices, triangular_pair
from morphzoo.metrics.specificity import Specificity


def mean_vertex_distance(a: np.ndarray, b: np.ndarray) -> float:
    """(V, 3), (V, 3) -> metres, by explicit loops in float64."""
    total = 0.0
    for v in range(len(a)):
        total += sum((float(a[v, c]) - float(b[v, c])) ** 2 for c in range(3)) ** 0.5
    return total / len(a)


def brute_force_specificity(samples: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample minimum distance (mm) and index of the nearest reference (the first among ties)."""
    table = np.array([[mean_vertex_distance(s, t) for t in reference] for s in samples])
    return 1000 * table.min(1), table.argmin(1)


def random_meshes(count: int, vertices: int, seed: int, scale: float = 0.01) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, vertices, 3)) * scale).astype(np.float32)


# -- Specificity -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prune", [True, False])
def test_specificity_matches_a_hand_computation(prune):
    reference, samples = random_meshes(4, 5, seed=0), random_meshes(3, 5, seed=1)
    expected, nearest = brute_force_specificity(samples, reference)

    metric = Specificity(torch.from_numpy(reference), prune=prune)
    metric.update(torch.from_numpy(samples))
    result = metric.compute()

    np.testing.assert_allclose(result["per_sample"].numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(result["nearest"].numpy(), nearest)
    assert result["mean"].item() == pytest.approx(expected.mean(), rel=1e-5)
    assert result["std"].item() == pytest.approx(expected.std(ddof=1), rel=1e-4)
    assert result["median"].item() == pytest.approx(np.sort(expected)[1], rel=1e-5)
    assert result["num_samples"].item() == 3


def test_specificity_nearest_finds_the_perturbed_reference():
    reference = random_meshes(6, 20, seed=2)
    picks = [4, 0, 4, 2]
    noise = random_meshes(len(picks), 20, seed=3, scale=1e-4)  # far smaller than the references' spread
    metric = Specificity(reference)
    metric.update(torch.from_numpy(reference[picks] + noise))
    result = metric.compute()
    np.testing.assert_array_equal(result["nearest"].numpy(), picks)
    expected = [1000 * mean_vertex_distance(n, np.zeros_like(n)) for n in noise]
    np.testing.assert_allclose(result["per_sample"].numpy(), expected, rtol=1e-3)


@pytest.mark.parametrize("prune", [True, False])
def test_specificity_of_the_training_set_is_zero(prune):
    reference = random_meshes(20, 30, seed=4) + 0.1  # positions away from the origin, as real meshes are
    metric = Specificity(torch.from_numpy(reference), prune=prune, sample_chunk=3, reference_chunk=7)
    metric.update(torch.from_numpy(reference[:11]))
    metric.update(torch.from_numpy(reference[11:]))
    result = metric.compute()
    assert result["mean"].item() == 0.0
    assert (result["per_sample"] == 0).all()
    np.testing.assert_array_equal(result["nearest"].numpy(), np.arange(20))


def test_specificity_in_float64():
    reference = random_meshes(6, 9, seed=18).astype(np.float64) + 0.2
    samples = reference[[2, 5]] + random_meshes(2, 9, seed=19, scale=1e-3)
    metric = Specificity(reference)
    metric.update(torch.from_numpy(np.concatenate([reference, samples])))
    result = metric.compute()
    expected, nearest = brute_force_specificity(samples, reference)
    assert result["per_sample"].dtype == torch.float64
    assert (result["per_sample"][:6] == 0).all()
    np.testing.assert_allclose(result["per_sample"][6:].numpy(), expected, rtol=1e-12)
    np.testing.assert_array_equal(result["nearest"].numpy(), [0, 1, 2, 3, 4, 5, *nearest])


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("block_bytes", [8 * 12, 2**30])  # one reference per block, or all in one block
def test_specificity_ties_go_to_the_lowest_index(prune, block_bytes, monkeypatch):
    monkeypatch.setattr(specificity_module, "BLOCK_BYTES", block_bytes)
    reference = random_meshes(5, 8, seed=5)
    reference[3] = reference[1]  # an exact duplicate
    metric = Specificity(torch.from_numpy(reference), prune=prune, reference_chunk=1)
    metric.update(torch.from_numpy(reference[[3, 1]] + 1e-4))
    assert metric.compute()["nearest"].tolist() == [1, 1]


@pytest.mark.parametrize("prune", [True, False])
def test_specificity_chunking_and_batching_do_not_change_results(prune, monkeypatch):
    reference, samples = random_meshes(37, 50, seed=6), random_meshes(23, 50, seed=7)
    expected, nearest = brute_force_specificity(samples, reference)

    results = []
    for sample_chunk, reference_chunk, block_bytes, batches in [
        (1, 1, 2**30, [23]),
        (3, 5, 6 * 50 * 12, [5, 1, 17]),  # blocks of 5 references, 3 updates
        (64, 64, 2**30, [23]),
    ]:
        monkeypatch.setattr(specificity_module, "BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(specificity_module, "BOUND_BYTES", 4 * 37 * 4 if block_bytes < 2**30 else 2**30)
        metric = Specificity(torch.from_numpy(reference), sample_chunk=sample_chunk, reference_chunk=reference_chunk,
                             prune=prune)
        for part in torch.from_numpy(samples).split(batches):
            metric.update(part)
        results.append(metric.compute())
    for result in results:
        np.testing.assert_allclose(result["per_sample"].numpy(), expected, rtol=1e-5)
        np.testing.assert_array_equal(result["nearest"].numpy(), nearest)


def clustered_meshes(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """References in 8 well-separated smooth clusters, samples near some of them: a case where pruning pays."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(0, 0.1, 6)] * 2, indexing="ij"), -1).reshape(-1, 2)
    template = np.concatenate([grid, np.zeros((len(grid), 1))], 1)  # (36, 3) a flat 10 cm patch
    centres = template + rng.standard_normal((8, 1, 3)) * 0.03  # clusters: rigid offsets of several cm
    bend = np.sin(template[:, :1] * 20)  # a smooth deformation field
    reference = centres[rng.integers(0, 8, 300)] + rng.standard_normal((300, 1, 3)) * 0.002 * bend
    samples = reference[rng.integers(0, 300, 40)] + rng.standard_normal((40, 36, 3)) * 0.0005
    return reference.astype(np.float32), samples.astype(np.float32)


def test_specificity_pruning_is_exact_and_skips_pairs():
    reference, samples = clustered_meshes(seed=8)
    exhaustive, pruned = Specificity(reference, prune=False), Specificity(reference, prune=True)
    for metric in (exhaustive, pruned):
        metric.update(torch.from_numpy(samples))
    a, b = exhaustive.compute(), pruned.compute()
    torch.testing.assert_close(a["per_sample"], b["per_sample"], rtol=1e-6, atol=0)
    assert torch.equal(a["nearest"], b["nearest"])
    assert exhaustive.pairs_evaluated == exhaustive.pairs_total == 40 * 300
    assert pruned.pairs_evaluated < exhaustive.pairs_total / 2


def test_specificity_pruning_is_exact_when_the_bound_is_tight():
    # samples = references translated rigidly: the lower bound equals the true distance, the worst case for a margin
    reference = random_meshes(30, 40, seed=9) + 0.5
    shifts = np.random.default_rng(10).standard_normal((30, 1, 3)).astype(np.float32) * 1e-3
    samples = torch.from_numpy(reference + shifts)
    exhaustive, pruned = Specificity(reference, prune=False), Specificity(reference, prune=True)
    for metric in (exhaustive, pruned):
        metric.update(samples)
    a, b = exhaustive.compute(), pruned.compute()
    torch.testing.assert_close(a["per_sample"], b["per_sample"], rtol=1e-6, atol=0)
    assert torch.equal(a["nearest"], b["nearest"])
    np.testing.assert_allclose(b["per_sample"].numpy(), 1000 * np.linalg.norm(shifts[:, 0], axis=1), rtol=1e-3)


def test_specificity_pruning_finds_a_nearest_mesh_with_a_worse_bound():
    # For each sample: B = sample + vertex noise (mean distance ~1.25 mm, but a small lower bound since the noise
    # averages out within the bound's vertex cells) and A = sample + a rigid 1 mm shift (bound = distance = 1 mm).
    # The bound ranks B first, yet A is the nearest: A must still be compared exactly.
    rng = np.random.default_rng(13)
    samples = random_meshes(10, 40, seed=14)
    direction = rng.standard_normal((10, 1, 3))
    shifted = samples + 0.001 * direction / np.linalg.norm(direction, axis=2, keepdims=True)
    noisy = samples + rng.standard_normal(samples.shape) * 0.00078
    reference = np.concatenate([noisy, random_meshes(20, 40, seed=15), shifted]).astype(np.float32)
    expected, nearest = brute_force_specificity(samples, reference)
    assert (nearest >= 30).all()  # the construction holds: the shifted copies are nearest
    metric = Specificity(reference, bound_groups=4)
    metric.update(torch.from_numpy(samples))
    result = metric.compute()
    np.testing.assert_allclose(result["per_sample"].numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(result["nearest"].numpy(), nearest)
    assert metric.pairs_evaluated < metric.pairs_total


@pytest.mark.parametrize("bound_groups", [1, 3, 7])
def test_specificity_pruning_keeps_near_ties(bound_groups):
    # Samples halfway between two references (rigid shifts): both at the same distance up to rounding, and equal to
    # their lower bound up to rounding. Which one wins depends on rounding; pruning must compare both (its safety
    # margin) and agree with the exhaustive search.
    rng = np.random.default_rng(16)
    base = random_meshes(200, 20, seed=17) + 0.3
    step = rng.standard_normal((200, 1, 3)).astype(np.float32) * 1e-3
    reference = np.concatenate([base, base + 2 * step]).astype(np.float32)
    samples = torch.from_numpy(base + step)
    exhaustive, pruned = Specificity(reference, prune=False), Specificity(reference, bound_groups=bound_groups)
    for metric in (exhaustive, pruned):
        metric.update(samples)
    a, b = exhaustive.compute(), pruned.compute()
    assert torch.equal(a["per_sample"], b["per_sample"])
    assert torch.equal(a["nearest"], b["nearest"])


def test_specificity_reads_a_read_only_memmap(tmp_path):
    reference, samples = random_meshes(25, 12, seed=11), random_meshes(6, 12, seed=12)
    np.save(tmp_path / "reference.npy", reference)
    mapped = np.load(tmp_path / "reference.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning on non-writable numpy arrays
        for source in (mapped, torch.from_numpy(reference)):
            for prune in (True, False):
                metric = Specificity(source, prune=prune, reference_chunk=4)
                metric.update(torch.from_numpy(samples))
                results.append(metric.compute())
    expected, nearest = brute_force_specificity(samples, reference)
    for result in results:
        np.testing.assert_allclose(result["per_sample"].numpy(), expected, rtol=1e-5)
        np.testing.assert_array_equal(result["nearest"].numpy(), nearest)


def test_specificity_rejects_bad_input():
    with pytest.raises(ValueError, match="Specificity"):
        Specificity(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="Specificity"):
        Specificity(torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match="Specificity"):
        Specificity(torch.zeros(0, 5, 3))
    metric = Specificity(torch.zeros(4, 5, 3))
    with pytest.raises(ValueError, match="Specificity"):
        metric.update(torch.zeros(2, 6, 3))
    with pytest.raises(ValueError, match="Specificity"):
        metric.update(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((1, 5, 3), torch.nan))
    with pytest.raises(ValueError, match="no samples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        metric.compute()


# -- Diversity ---------------------------------------------------------------------------------------------------------


def brute_force_diversity(samples: np.ndarray, groups=None) -> np.ndarray:
    """Distances (mm) of all pairs of distinct samples (within groups if given)."""
    groups = np.zeros(len(samples)) if groups is None else np.asarray(groups)
    return np.array([1000 * mean_vertex_distance(samples[i], samples[j])
                     for i, j in itertools.combinations(range(len(samples)), 2) if groups[i] == groups[j]])


def test_diversity_with_few_pairs_uses_all_of_them_exactly():
    samples = random_meshes(4, 5, seed=20)
    expected = brute_force_diversity(samples)
    metric = Diversity(pairs=10_000)
    metric.update(torch.from_numpy(samples))
    result = metric.compute()
    assert result["num_pairs"].item() == 6 == len(expected)
    assert result["num_samples"].item() == 4
    assert result["mean"].item() == pytest.approx(expected.mean(), rel=1e-5)
    assert result["std"].item() == pytest.approx(expected.std(ddof=1), rel=1e-4)


def test_diversity_of_identical_samples_is_zero():
    mesh = random_meshes(1, 30, seed=21) + 0.2
    metric = Diversity()
    metric.update(torch.from_numpy(np.repeat(mesh, 7, axis=0)))
    result = metric.compute()
    assert result["mean"].item() == 0.0
    assert result["std"].item() == 0.0


def test_diversity_groups_restrict_the_pairs():
    base = random_meshes(1, 10, seed=22)[0]
    shift = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    samples = np.stack([base, base + 0.001 * shift,  # group 7: 1 mm apart
                        base + 0.1 * shift, base + 0.103 * shift,  # group 3: 3 mm apart, 100 mm from group 7
                        base - 0.05 * shift])  # group 9: alone, in no pair
    groups = [7, 7, 3, 3, 9]

    grouped, everything = Diversity(), Diversity()
    grouped.update(torch.from_numpy(samples), torch.tensor(groups))
    everything.update(torch.from_numpy(samples))
    within, overall = grouped.compute(), everything.compute()

    assert within["num_pairs"].item() == 2
    assert within["mean"].item() == pytest.approx((1.0 + 3.0) / 2, rel=1e-4)
    assert within["mean"].item() == pytest.approx(brute_force_diversity(samples, groups).mean(), rel=1e-5)
    assert overall["num_pairs"].item() == 10
    assert overall["mean"].item() == pytest.approx(brute_force_diversity(samples).mean(), rel=1e-5)
    assert overall["mean"].item() > 10 * within["mean"].item()


def test_diversity_sampled_pairs_stay_within_groups():
    rng = np.random.default_rng(23)
    groups = np.repeat(np.arange(4), 10)  # 4 × 45 = 180 pairs within groups, 780 in all
    centres = rng.standard_normal((4, 1, 3)) * 0.5  # groups ~ 0.5 m apart
    samples = (centres[groups] + rng.standard_normal((40, 16, 3)) * 0.001).astype(np.float32)
    metric = Diversity(pairs=100)
    metric.update(torch.from_numpy(samples), groups)
    result = metric.compute()
    assert result["num_pairs"].item() == 100
    assert result["mean"].item() < brute_force_diversity(samples, groups).max() + 1e-3


def test_diversity_sampled_pairs_estimate_the_all_pairs_mean():
    samples = random_meshes(60, 40, seed=24)  # 1770 pairs
    exact = brute_force_diversity(samples)
    metric = Diversity(pairs=600)
    metric.update(torch.from_numpy(samples))
    result = metric.compute()
    assert result["num_pairs"].item() == 600
    # the standard error of a 600-pair mean is ~ std / sqrt(600); allow 5 of them
    assert abs(result["mean"].item() - exact.mean()) < 5 * exact.std() / 600**0.5


@pytest.mark.parametrize("grouped", [True, False])
def test_diversity_is_independent_of_sample_order_and_batching(grouped):
    rng = np.random.default_rng(25)
    samples = random_meshes(40, 25, seed=26)
    samples[5] = samples[17]  # identical samples, in different groups below: ties broken by group
    groups = rng.integers(0, 3, 40)
    groups[5], groups[17] = 0, 1
    pairs = 100  # fewer than the possible pairs: sampled

    def run(order, splits):
        metric = Diversity(pairs=pairs, seed=3)
        for part in np.split(order, splits):
            metric.update(torch.from_numpy(samples[part]), torch.from_numpy(groups[part]) if grouped else None)
        return metric.compute()

    reference = run(np.arange(40), [])
    assert reference["num_pairs"].item() == pairs
    for trial in range(3):
        shuffled = run(rng.permutation(40), sorted(rng.choice(np.arange(1, 40), 2 + trial, replace=False)))
        for key in ("mean", "std", "num_pairs"):
            assert torch.equal(reference[key], shuffled[key]), key


def test_diversity_pair_sampling_helpers():
    for count in (2, 3, 7):
        a, b = triangular_pair(torch.arange(count * (count - 1) // 2))
        assert list(zip(a.tolist(), b.tolist(), strict=True)) == sorted(
            itertools.combinations(range(count), 2), key=lambda pair: (pair[1], pair[0]))
    large = torch.tensor([10**12, 10**12 + 1, 5 * 10**13])
    a, b = triangular_pair(large)
    assert ((b * (b - 1) // 2 + a) == large).all() and (a < b).all() and (a >= 0).all()
    # uniform: over many seeds, each of 10 integers is drawn with frequency 3/10
    counts = np.zeros(10)
    for seed in range(2000):
        counts[sample_indices(10, 3, torch.Generator().manual_seed(seed)).numpy()] += 1
    np.testing.assert_allclose(counts / 2000, 0.3, atol=0.04)
    chosen = sample_indices(50, 30, torch.Generator().manual_seed(0))
    assert len(chosen) == len(set(chosen.tolist())) == 30 and 0 <= chosen.min() and chosen.max() < 50
    assert sample_indices(50, 50, torch.Generator().manual_seed(1)).tolist() == list(range(50))


def test_diversity_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        metric = Diversity()
        metric.update(torch.zeros(1, 5, 3))
        metric.compute()
    with pytest.raises(ValueError, match="no group"):
        metric = Diversity()
        metric.update(torch.rand(3, 5, 3), torch.tensor([0, 1, 2]))
        metric.compute()
    with pytest.raises(ValueError, match="at least 2"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        Diversity().compute()
    metric = Diversity()
    with pytest.raises(ValueError, match="Diversity"):
        metric.update(torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="groups"):
        metric.update(torch.zeros(2, 5, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="groups"):
        metric.update(torch.zeros(2, 5, 3), torch.tensor([0.0, 1.0]))
    metric.update(torch.zeros(2, 5, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="groups"):
        metric.update(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="vertices"):
        metric.update(torch.zeros(2, 6, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((2, 5, 3), torch.nan), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Diversity"):
        Diversity(pairs=0)
