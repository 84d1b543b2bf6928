"""``MorphableModel.sample`` (Gaussian of the training latents) and the linear-model metrics (compactness,
generalisation), against independent numpy computations on small data."""

import numpy as np
import pytest
import torch

from morphzoo.methods import SpiralNetPlusPlus
from morphzoo.metrics.compactness import Compactness, PCAGeneralisation
from tests.synthetic import sphere_collection


@pytest.fixture(scope="module")
def collection():
    return sphere_collection(identities=3, expressions=3, frames=20, subdivisions=3)


def model_for(collection, **kwargs):
    vertices = torch.from_numpy(collection.vertices)
    return SpiralNetPlusPlus(template=collection.template, mean=vertices.mean(0), std=vertices.std(0) + 1e-4,
                             latent_dim=8, **kwargs).eval()


def test_latent_gaussian_is_the_mean_and_covariance_of_the_training_codes(collection):
    torch.manual_seed(0)
    model = model_for(collection)
    loader = [{"vertices": torch.from_numpy(collection.vertices[i:i + 50])} for i in range(0, len(collection), 50)]
    model.fit_latent_distribution(loader)
    with torch.no_grad():
        codes = model.encode(collection.vertices).double().numpy()
    np.testing.assert_allclose(model.latent_mean.numpy(), codes.mean(0), rtol=1e-4, atol=1e-5)
    covariance = (model.latent_cholesky @ model.latent_cholesky.T).double().numpy()
    np.testing.assert_allclose(covariance, np.cov(codes.T), rtol=1e-3, atol=1e-6)


def test_samples_follow_the_gaussian_and_are_reproducible(collection):
    model = model_for(collection)
    model.fit_latent_distribution(collection.vertices)
    first = model.sample(4, generator=torch.Generator().manual_seed(1))
    again = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert first.shape == (4, collection.template.num_vertices, 3)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, model.sample(4, generator=torch.Generator().manual_seed(2)))
    # decoding the Gaussian's mean code gives the mesh the samples scatter around
    centre = model.decode(model.latent_mean[None])[0]
    spread = (model.sample(200, generator=torch.Generator().manual_seed(3)) - centre).norm(dim=-1).mean()
    assert 0 < spread < 10 * (torch.from_numpy(collection.vertices) - centre).norm(dim=-1).mean()


def test_sampling_needs_a_fitted_distribution_which_is_saved_with_the_model(collection, tmp_path):
    model = model_for(collection)
    with pytest.raises(RuntimeError, match="fit_latent_distribution"):
        model.sample(1)
    with pytest.raises(ValueError, match="needs more than 8 meshes, got 5"):
        model.fit_latent_distribution(collection.vertices[:5])
    model.fit_latent_distribution(collection.vertices)
    fresh = model_for(collection)
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh.sample(3, torch.Generator().manual_seed(0)),
                               model.sample(3, torch.Generator().manual_seed(0)))


def low_rank_meshes(count, rank, seed, vertices=30):
    """Meshes exactly in a ``rank``-dimensional affine subspace, plus the subspace's basis."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(vertices * 3)
    basis = np.linalg.qr(rng.standard_normal((vertices * 3, rank)))[0].T
    scales = np.array([0.03, 0.01, 0.003][:rank])
    coefficients = rng.standard_normal((count, rank)) * scales
    return (mean + coefficients @ basis).reshape(count, vertices, 3).astype(np.float32), mean, basis


def test_compactness_matches_numpy_and_saturates_at_the_rank():
    meshes, _, _ = low_rank_meshes(40, 3, seed=0)
    metric = Compactness(max_components=5)
    for part in np.array_split(meshes, 3):
        metric.update(torch.from_numpy(part))
    result = metric.compute()
    flat = meshes.reshape(40, -1).astype(np.float64)
    eigenvalues = np.linalg.svd(flat - flat.mean(0), compute_uv=False) ** 2 / 39
    np.testing.assert_allclose(result["cumulative"].numpy(), (np.cumsum(eigenvalues) / eigenvalues.sum())[:5],
                               rtol=1e-4)
    assert result["cumulative"][2] == pytest.approx(1.0, abs=1e-5)  # three components explain everything
    assert result["components_for"]["99%"] <= 3


def test_generalisation_is_zero_in_the_subspace_and_equals_numpy_projection():
    train, _, _ = low_rank_meshes(60, 3, seed=1)
    held_out, _, _ = low_rank_meshes(10, 3, seed=1)  # the same subspace (same seed), other coefficients
    held_out = held_out[::-1].copy()
    metric = PCAGeneralisation(train, components=(0, 1, 3))
    metric.update(torch.from_numpy(held_out[:4]))
    metric.update(torch.from_numpy(held_out[4:]))
    result = metric.compute()
    assert result[3] < 1e-3  # mm: the held-out meshes lie in the training subspace
    flat = train.reshape(60, -1).astype(np.float64)
    mean = flat.mean(0)
    _, _, right = np.linalg.svd(flat - mean, full_matrices=False)
    centred = held_out.reshape(10, -1) - mean
    projected = (centred @ right[:1].T) @ right[:1]
    expected = np.linalg.norm((centred - projected).reshape(10, -1, 3), axis=-1).mean() * 1000
    assert float(result[1]) == pytest.approx(expected, rel=1e-4)
    assert float(result[0]) > float(result[1]) > float(result[3])


def test_linear_metrics_reject_bad_input():
    train, _, _ = low_rank_meshes(5, 2, seed=2)
    with pytest.raises(ValueError, match="at most 4 components"):
        PCAGeneralisation(train, components=(8,))
    with pytest.raises(ValueError, match=r"expected \(B, V, 3\)"):
        Compactness().update(torch.zeros(3, 4))


def test_checkpoints_without_a_latent_distribution_load_unfitted(collection):
    state = model_for(collection).state_dict()
    del state["latent_mean"], state["latent_cholesky"]  # as written before models could sample
    model = model_for(collection)
    model.load_state_dict(state, strict=True)
    assert model.latent_mean.numel() == 0
    state["unexpected"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unexpected"):
        model.load_state_dict(state, strict=True)  # strictness is otherwise intact
