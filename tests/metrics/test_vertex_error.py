import numpy as np
import pytest
import torch

from morphzoo.metrics import VertexError


def test_vertex_error_matches_a_hand_computation():
    truth = torch.zeros(2, 3, 3)
    prediction = truth.clone()
    prediction[0, 0, 0] = 0.003  # 3 mm along x
    prediction[0, 1] = torch.tensor([0.0, 0.003, 0.004])  # 5 mm
    prediction[1, 2, 2] = -0.001  # 1 mm
    errors = np.array([3.0, 5.0, 0.0, 0.0, 0.0, 1.0])  # mm, by hand

    metric = VertexError(curve_max_mm=5.0, curve_points=6)
    metric.update(prediction, truth)
    result = metric.compute()

    assert result["mean"].item() == pytest.approx(errors.mean(), rel=1e-5)
    assert result["std"].item() == pytest.approx(errors.std(ddof=1), rel=1e-5)
    assert result["median"].item() == pytest.approx(0.0)  # the lower middle value of 0,0,0,1,3,5
    np.testing.assert_allclose(result["per_vertex"].numpy(), [1.5, 2.5, 0.5], rtol=1e-5)
    np.testing.assert_allclose(result["per_mesh"].numpy(), [8 / 3, 1 / 3], rtol=1e-5)
    # thresholds 0,1,...,5 mm: fraction of the six errors at or below each
    np.testing.assert_allclose(result["curve_fraction"].numpy(), [3 / 6, 4 / 6, 4 / 6, 5 / 6, 5 / 6, 1.0], rtol=1e-6)


def test_vertex_error_is_independent_of_how_updates_are_batched():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(10, 50, 3, generator=generator) * 0.01
    prediction = truth + torch.randn(10, 50, 3, generator=generator) * 0.001
    whole, parts = VertexError(), VertexError()
    whole.update(prediction, truth)
    for chunk in (slice(0, 3), slice(3, 4), slice(4, 10)):
        parts.update(prediction[chunk], truth[chunk])
    a, b = whole.compute(), parts.compute()
    for key in ("mean", "std", "median", "per_vertex", "curve_fraction"):
        torch.testing.assert_close(a[key], b[key])


def test_vertex_error_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="VertexError"):
        VertexError().update(torch.zeros(2, 5, 3), torch.zeros(2, 6, 3))
