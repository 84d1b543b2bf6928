"""Sparse-landmark fitting (Abrevaya et al. 2019, Table 2, Eq. 13) for any model with a decoder."""

import pytest
import torch

from morphzoo.fitting import fit_landmarks
from morphzoo.methods import PCA, DecoupledGAN
from tests.synthetic import SphereDataModule

LANDMARKS = list(range(0, 400, 10))  # 40 landmarks


@pytest.fixture(scope="module")
def data():
    return SphereDataModule(frames=8, batch_size=16, open_cap=True)


@pytest.fixture(scope="module")
def gan(data):
    torch.manual_seed(0)
    return DecoupledGAN(template=data.template, mean=data.mean, std=data.std, identities=3, expressions=3,
                        identity_dim=4, expression_dim=3, noise_dim=2, hidden=64, image_size=16).eval()


@pytest.fixture(scope="module")
def pca(data):
    model = PCA(template=data.template, mean=data.mean, std=data.std, latent_dim=6)
    model.fit(data.collection.vertices[data.split_indices["train"]])
    model.fit_latent_distribution(data.train_dataloader())
    return model.eval()


@pytest.mark.parametrize("name", ["gan", "pca"])
def test_fit_landmarks_recovers_a_decoded_mesh_from_its_landmarks(name, request):
    model = request.getfixturevalue(name)
    mean, cholesky = model.latent_mean, model.latent_cholesky
    true_codes = mean + torch.randn(3, len(mean), generator=torch.Generator().manual_seed(1)) @ cholesky.T
    truth = model.decode(true_codes)
    fit = fit_landmarks(model, LANDMARKS, truth[:, LANDMARKS], steps=1500, learning_rate=0.05)
    assert fit.vertices.shape == truth.shape and fit.latent.shape == true_codes.shape
    start = (model.decode(mean.expand(3, -1)) - truth).norm(dim=-1).mean(-1)  # the fit starts at the mean
    error = (fit.vertices - truth).norm(dim=-1).mean(-1)  # every vertex, not only the landmarks
    assert (error < 0.02 * start).all(), (error, start)
    assert (fit.landmark_rmse_mm < 0.05).all()


def test_the_prior_weight_pulls_the_code_to_the_mean(gan, data):
    target = torch.from_numpy(data.collection.vertices[[5]])[:, LANDMARKS]
    norms = [fit_landmarks(gan, LANDMARKS, target, prior_weight=weight, steps=300).latent.norm()
             for weight in (0.0, 1.0, 100.0)]
    assert norms[0] > norms[1] > norms[2]


def test_fitting_is_batched_and_each_target_is_fitted_independently(gan, data):
    targets = torch.from_numpy(data.collection.vertices[[5, 30]])[:, LANDMARKS]
    both = fit_landmarks(gan, LANDMARKS, targets, steps=100)
    alone = fit_landmarks(gan, LANDMARKS, targets[1], steps=100)
    torch.testing.assert_close(both.latent[1], alone.latent, atol=1e-4, rtol=1e-4)


def test_bad_landmark_input_names_the_problem(gan):
    with pytest.raises(ValueError, match=r"positions must be \(40, 3\) or \(B, 40, 3\)"):
        fit_landmarks(gan, LANDMARKS, torch.zeros(2, 39, 3))
    with pytest.raises(ValueError, match="landmark indices must be template vertices"):
        fit_landmarks(gan, [gan.num_vertices], torch.zeros(1, 3))
    nan = torch.zeros(40, 3)
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_landmarks(gan, LANDMARKS, nan)
    with pytest.raises(ValueError, match="start must be 'mean' or 'random'"):
        fit_landmarks(gan, LANDMARKS, torch.zeros(40, 3), start="zero")
