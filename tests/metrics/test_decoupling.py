"""The decoupling metric's pieces (Abrevaya et al. 2019, §5.3): threshold selection against a brute-force search, and
the pair counting of :class:`Decoupling` with a hand-made embedder."""

import numpy as np
import pytest
import torch

from morphzoo.metrics.decoupling import Decoupling, choose_threshold


def rates(positive: np.ndarray, negative: np.ndarray, threshold: float) -> tuple[float, float]:
    """(accuracy, FAR) of the rule "same when distance < threshold", by direct counting."""
    true_accepts, false_accepts = np.sum(positive < threshold), np.sum(negative < threshold)
    accuracy = (true_accepts + len(negative) - false_accepts) / (len(positive) + len(negative))
    return float(accuracy), float(false_accepts / len(negative))


def brute_force_best_accuracy(positive: np.ndarray, negative: np.ndarray, max_far: float) -> float:
    """The best accuracy with FAR < max_far over a dense set of thresholds: every distance, every midpoint, a fine
    grid and values outside the range."""
    values = np.unique(np.concatenate([positive, negative]))
    grid = np.linspace(values.min() - 1, values.max() + 1, 2001)
    candidates = np.concatenate([values, (values[:-1] + values[1:]) / 2, grid, np.nextafter(values, np.inf)])
    best = -1.0
    for threshold in candidates:
        accuracy, far = rates(positive, negative, threshold)
        if far < max_far:
            best = max(best, accuracy)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_far", [0.1, 0.02, 0.5])
def test_choose_threshold_matches_a_brute_force_search(seed, max_far):
    rng = np.random.default_rng(seed)
    positive = np.abs(rng.normal(1.0, 0.5, rng.integers(5, 60)))
    negative = np.abs(rng.normal(1.6, 0.5, rng.integers(5, 60)))
    if seed % 2:  # coarse values: many ties, within and across the two sets
        positive, negative = np.round(positive, 1), np.round(negative, 1)
    threshold, accuracy, far = choose_threshold(torch.from_numpy(positive), negative, max_far)
    assert far < max_far
    assert (accuracy, far) == pytest.approx(rates(positive, negative, threshold), abs=1e-12)
    assert accuracy == pytest.approx(brute_force_best_accuracy(positive, negative, max_far), abs=1e-12)


def test_choose_threshold_separates_separable_pairs_at_the_midpoint():
    threshold, accuracy, far = choose_threshold([0.1, 0.3, 0.2], [0.7, 0.5, 0.9])
    assert (threshold, accuracy, far) == pytest.approx((0.4, 1.0, 0.0))


def test_choose_threshold_respects_the_far_bound_at_a_cost_in_accuracy():
    positive, negative = [0.1, 0.6, 0.7], [0.5, 0.9, 1.0]
    # the most accurate threshold, 0.8 (5 of 6 right), accepts the negative at 0.5: FAR 1/3
    assert choose_threshold(positive, negative, max_far=0.5) == pytest.approx((0.8, 5 / 6, 1 / 3))
    # below 10 % FAR nothing beyond 0.5 may be accepted: 0.3 (midway between 0.1 and 0.5), 4 of 6 right
    assert choose_threshold(positive, negative, max_far=0.1) == pytest.approx((0.3, 4 / 6, 0.0))


@pytest.mark.parametrize(("positive", "negative", "max_far", "message"), [
    ([], [1.0], 0.1, "positive_distances is empty"),
    ([1.0], [float("nan")], 0.1, "NaN or infinite"),
    ([1.0], [2.0], 0.0, "max_far must lie in"),
])
def test_choose_threshold_rejects_bad_input(positive, negative, max_far, message):
    with pytest.raises(ValueError, match=message):
        choose_threshold(positive, negative, max_far)


def first_vertex_xy(meshes: torch.Tensor) -> torch.Tensor:
    """A hand-made embedder: the (x, y) of each mesh's first vertex."""
    return meshes[:, 0, :2]


def meshes_at(points: list[list[float]], vertices: int = 4) -> torch.Tensor:
    """(len(points), V, 3) meshes whose first vertex is at (x, y, 0) and whose other vertices are random."""
    meshes = torch.randn(len(points), vertices, 3, generator=torch.Generator().manual_seed(0))
    meshes[:, 0] = torch.tensor([[x, y, 0.0] for x, y in points])
    return meshes


def test_decoupling_counts_the_pairs_below_the_threshold():
    metric = Decoupling(first_vertex_xy, threshold=0.3)
    # reference 0 at the origin: samples at distances 0.1, 0.29, 0.31, 2 -> 2 same
    # reference 1 at (1, 1): samples at distances 0, 0.2, 0.5, 0.35 -> 2 same
    reference = meshes_at([[0, 0], [1, 1]])
    samples = torch.stack([meshes_at([[0.1, 0], [0, 0.29], [0.31, 0], [2, 0]]),
                           meshes_at([[1, 1], [1.2, 1], [1, 1.5], [1.35, 1]])])
    metric.update(reference, samples)
    values = metric.compute()
    assert float(values["percent_same"]) == pytest.approx(50.0)
    assert int(values["num_pairs"]) == 8
    metric.update(meshes_at([[5, 5]]), meshes_at([[5, 5], [5, 5.1]])[None])  # two more "same": 6 of 10
    assert float(metric.compute()["percent_same"]) == pytest.approx(60.0)
    metric.reset()
    metric.update(meshes_at([[0, 0]]), meshes_at([[9, 9]])[None])
    assert float(metric.compute()["percent_same"]) == 0.0


def test_decoupling_works_with_a_module_embedder_without_gradients():
    embedder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    metric = Decoupling(embedder, threshold=1e-6)
    reference = meshes_at([[0, 0], [1, 0]])
    metric.update(reference, reference[:, None].expand(2, 3, 4, 3))  # exact copies: distance 0
    assert float(metric.compute()["percent_same"]) == 100.0
    assert all(parameter.grad is None for parameter in embedder.parameters())


@pytest.mark.parametrize(("reference", "samples", "message"), [
    (torch.zeros(2, 4), torch.zeros(2, 1, 4, 3), "references"),
    (torch.zeros(2, 4, 3), torch.zeros(3, 1, 4, 3), "samples"),
    (torch.zeros(2, 4, 3), torch.zeros(2, 1, 5, 3), "samples"),
])
def test_decoupling_rejects_bad_shapes(reference, samples, message):
    with pytest.raises(ValueError, match=message):
        Decoupling(first_vertex_xy, 0.3).update(reference, samples)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric Decoupling was called before")
def test_decoupling_rejects_bad_arguments_and_embedders():
    with pytest.raises(ValueError, match="threshold must be a positive"):
        Decoupling(first_vertex_xy, 0.0)
    with pytest.raises(ValueError, match="callable"):
        Decoupling("not an embedder", 0.3)
    with pytest.raises(ValueError, match="must return"):
        Decoupling(lambda meshes: meshes[:1, 0], 0.3).update(torch.zeros(2, 4, 3), torch.zeros(2, 1, 4, 3))
    with pytest.raises(ValueError, match="no pairs"):
        Decoupling(first_vertex_xy, 0.3).compute()
