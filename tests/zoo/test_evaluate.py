"""``evaluate_model``: every applicable metric for a model on its dataset, in one call."""

import dataclasses

import numpy as np
import pytest
import torch

from morphzoo.methods import PCA, DecoupledGAN, SpiralNetPlusPlus
from morphzoo.metrics import Roughness, VertexError
from morphzoo.zoo import evaluate_model
from morphzoo.zoo.evaluate import (
    data_diversity,
    factorised_diversity,
    landmark_fitting_errors,
    manipulation_pairs,
    middle_frames,
)
from tests.synthetic import SphereDataModule


@pytest.fixture(scope="module")
def data():
    return SphereDataModule(identities=3, expressions=3, frames=40)


def model_for(data):
    torch.manual_seed(0)
    return SpiralNetPlusPlus(template=data.template, mean=data.mean, std=data.std, latent_dim=8)


def test_a_row_has_every_applicable_metric(data):
    model = model_for(data)
    row = evaluate_model(model, data, samples=50, pairs=200)
    test = torch.from_numpy(np.asarray(data.collection.vertices[data.split_indices["test"]]))
    expected = VertexError()
    with torch.no_grad():
        expected.update(model.eval()(test), test)
    assert row["reconstruction/mean_mm"] == pytest.approx(float(expected.compute()["mean"]), rel=1e-5)
    assert row["reconstruction_aligned/mean_mm"] <= row["reconstruction/mean_mm"] * 1.01
    assert model.latent_mean.numel() == 8  # the autoencoder got its latent Gaussian from the training split
    assert row["generation/specificity_mm"] > 0 and row["generation/diversity_mm"] > 0
    # the spheres' identities are scalings, their expressions small bumps: same-identity pairs differ far less
    assert row["data/diversity_same_identity_mm"] < row["data/diversity_global_mm"]
    assert "disentanglement/mean_mm" not in row  # SpiralNet++ predicts no neutral face
    data_roughness = Roughness(data.template.faces)
    data_roughness.update(test)
    assert row["mesh_quality/roughness_data_mm"] == pytest.approx(float(data_roughness.compute()), rel=1e-5)
    assert row["mesh_quality/roughness_samples_mm"] > 0 and row["mesh_quality/roughness_reconstruction_mm"] > 0


class PerfectNeutral(SpiralNetPlusPlus):
    """A model whose neutral prediction is each subject's true neutral face (looked up by the closest one)."""

    neutral_faces: torch.Tensor

    def predict_neutral(self, vertices):
        distances = (vertices[:, None] - self.neutral_faces[None]).norm(dim=-1).mean(-1)
        return self.neutral_faces[distances.argmin(1)]


def test_disentanglement_is_evaluated_for_models_that_predict_neutral_faces(data):
    model = PerfectNeutral(template=data.template, mean=data.mean, std=data.std, latent_dim=8)
    model.neutral_faces = torch.from_numpy(data.collection.neutral)
    row = evaluate_model(model, data, samples=0)
    assert row["disentanglement/mean_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["disentanglement_jiang/mean_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["neutral/mean_mm"] == pytest.approx(0.0, abs=1e-6)
    assert "generation/specificity_mm" not in row


def test_a_constant_neutral_offset_is_a_neutral_error_but_no_disentanglement_error(data):
    model = PerfectNeutral(template=data.template, mean=data.mean, std=data.std, latent_dim=8)
    model.neutral_faces = torch.from_numpy(data.collection.neutral) + torch.tensor([0.001, 0.0, 0.0])  # 1 mm
    row = evaluate_model(model, data, samples=0, intersection_meshes=0)
    assert row["neutral/mean_mm"] == pytest.approx(1.0, rel=1e-4)
    assert row["disentanglement/mean_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["disentanglement_jiang/mean_mm"] == pytest.approx(0.0, abs=1e-5)
    assert "mesh_quality/self_intersections_data" not in row


def test_mesh_quality_counts_self_intersections_of_data_and_reconstructions(data):
    row = evaluate_model(model_for(data), data, samples=0, intersection_meshes=10)
    assert row["mesh_quality/self_intersections_data"] == 0  # deformed spheres do not cross themselves
    assert "mesh_quality/self_intersections_reconstruction" in row


def test_middle_frames_pick_one_frame_per_test_sequence(data):
    chosen = middle_frames(data)
    labels = data.collection.labels
    sequences = {(labels["identity"][i], labels["expression"][i]) for i in data.split_indices["test"]}
    assert len(chosen) == len(sequences) and set(chosen) <= set(data.split_indices["test"])
    for index in chosen:
        same = [i for i in data.split_indices["test"] if (labels["identity"][i], labels["expression"][i])
                == (labels["identity"][index], labels["expression"][index])]
        frames = sorted(labels["frame"][same])
        assert labels["frame"][index] == frames[len(frames) // 2]


def test_landmark_fitting_errors_fit_the_landmarks_of_the_test_meshes(data):
    model = PCA(template=data.template, mean=data.mean, std=data.std, latent_dim=6)
    with pytest.raises(ValueError, match="needs landmarks on the template"):
        landmark_fitting_errors(model, data)
    model.fit(data.collection.vertices[data.split_indices["train"]])
    landmarked = SphereDataModule(identities=3, expressions=3, frames=40)
    collection = landmarked.collection
    landmarked.collection = dataclasses.replace(
        collection, template=dataclasses.replace(collection.template, landmarks=np.arange(0, 640, 8)))
    errors = landmark_fitting_errors(model, landmarked, prior_weights=(0.0, 1e6), steps=300)
    mean_error = np.sqrt(((np.asarray(collection.vertices[landmarked.split_indices["test"]])
                           - data.mean.numpy()) ** 2).sum(-1).mean()) * 1000
    assert errors["landmark_fit/lambda_0/rmse_mm"] < 0.5 * mean_error  # fitting beats the mean face
    assert errors["landmark_fit/lambda_1e+06/rmse_mm"] > errors["landmark_fit/lambda_0/rmse_mm"]  # λ pulls to it


def test_factorised_models_report_identity_and_expression_diversity():
    data = SphereDataModule(frames=8, open_cap=True)
    torch.manual_seed(0)
    gan = DecoupledGAN(template=data.template, mean=data.mean, std=data.std, identities=3, expressions=3,
                       identity_dim=4, expression_dim=3, noise_dim=2, hidden=32, image_size=16).eval()
    with torch.no_grad():  # make the generator ignore the expression code: sharing the identity code = same mesh
        gan.generator[0].weight[:, gan.latent_factors()["expression"]] = 0
        gan.generator[0].weight[:, gan.latent_factors()["noise"]] = 0
    row = factorised_diversity(gan, pairs=500)
    assert row["generation/diversity_same_identity_code_mm"] < 1e-4
    assert row["generation/diversity_same_expression_code_mm"] > 0.1


def test_data_diversity_skips_a_label_that_names_every_mesh(data):
    # anny-heads: one head per person, so "within the same identity" has no pair; the others are still measured
    unique = SphereDataModule(frames=8)
    unique.collection.labels["identity"] = np.arange(len(unique.collection))
    row = data_diversity(unique, pairs=200)
    assert "data/diversity_same_identity_mm" not in row
    assert row["data/diversity_global_mm"] > 0 and row["data/diversity_same_expression_mm"] > 0


def test_manipulation_pairs_change_the_person_or_the_expression_never_the_frame(data):
    """LAMM's evaluation pairs: on the sorted test split the next mesh is almost always the next frame of the same
    sequence; the pairs must instead change the identity, or keep it and change the expression."""
    labels = data.collection.labels
    test = data.split_indices["test"]
    sequence = labels["identity"] * 100 + labels["expression"]
    assert (sequence[test][1:] == sequence[test][:-1]).mean() > 0.9  # what roll(-1) of the sorted split pairs
    for change in ("identity", "expression"):
        sources, targets = manipulation_pairs(data, change, seed=0)
        assert np.isin(sources, test).all() and np.isin(targets, test).all() and len(sources) > 0
        if change == "identity":
            np.testing.assert_array_equal(sources, test)  # every test mesh has another person to go to
        same_identity = labels["identity"][sources] == labels["identity"][targets]
        assert (~same_identity).all() if change == "identity" else same_identity.all()
        assert (sequence[sources] != sequence[targets]).all()
        np.testing.assert_array_equal(manipulation_pairs(data, change, seed=0)[1], targets)  # seeded
        assert (manipulation_pairs(data, change, seed=1)[1] != targets).any()
