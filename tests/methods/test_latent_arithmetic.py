"""Latent arithmetic of every tensor-latent MorphableModel (Deep3DMM §4.7): interpolation, extrapolation, transfer."""

import pytest
import torch

from morphzoo.methods import PCA, CoMA, MorphableModel, SpiralNetPlusPlus
from tests.synthetic import sphere_collection

COLLECTION = sphere_collection(identities=3, expressions=3, frames=10)  # identity-major: 30 meshes per subject
MESHES = torch.from_numpy(COLLECTION.vertices)
NEUTRAL_A, SMILE_A, NEUTRAL_B, SMILE_B = MESHES[0], MESHES[5], MESHES[30], MESHES[35]  # frame 5 = peak expression


def build(name: str) -> MorphableModel:
    mean, std = MESHES.mean(0), MESHES.std(0).clamp_min(1e-5)
    if name == "pca":
        return PCA(template=COLLECTION.template, latent_dim=5).fit(MESHES)
    torch.manual_seed(0)  # untrained autoencoders: the identities below hold for any weights
    if name == "coma":
        return CoMA(template=COLLECTION.template, mean=mean, std=std, sampling_factors=(4, 4, 4),
                    encoder_channels=(16, 16, 32), decoder_channels=(32, 16, 16, 16)).eval()
    return SpiralNetPlusPlus(template=COLLECTION.template, mean=mean, std=std, sampling_factors=(4, 4, 4),
                             encoder_channels=(32, 32, 64), spiral_dilation=(1, 1, 1)).eval()


@pytest.fixture(scope="module", params=["pca", "coma", "spiralnet"])
def model(request):
    return build(request.param)


def test_interpolation_decodes_the_blended_codes(model):
    weights = torch.tensor([-0.5, 0.25, 1.5])  # extrapolation on both sides
    expected = model.decode(torch.stack([(1 - w) * model.encode(NEUTRAL_A) + w * model.encode(SMILE_B)
                                         for w in weights]))
    torch.testing.assert_close(model.interpolate(NEUTRAL_A, SMILE_B, weights), expected, atol=1e-6, rtol=1e-5)


def test_transfer_of_no_deformation_reconstructs_the_target(model):
    torch.testing.assert_close(model.transfer_deformation(NEUTRAL_A, NEUTRAL_A, NEUTRAL_B), model(NEUTRAL_B),
                               atol=1e-6, rtol=1e-5)


def test_shapes_and_broadcasting(model):
    v = NEUTRAL_A.shape[0]
    batch = MESHES[:4]
    assert model.interpolate(NEUTRAL_A, NEUTRAL_B, 0.3).shape == (v, 3)
    assert model.interpolate(NEUTRAL_A, batch, [0.0, 0.5, 1.0]).shape == (3, 4, v, 3)
    assert model.interpolate(batch, batch, torch.linspace(0, 1, 5)).shape == (5, 4, v, 3)
    # a single source pairs with every target of the batch
    torch.testing.assert_close(model.interpolate(NEUTRAL_A, batch, 0.0), model(NEUTRAL_A).expand(4, v, 3),
                               atol=1e-6, rtol=1e-5)
    assert model.transfer_deformation(NEUTRAL_A, SMILE_A, NEUTRAL_B).shape == (v, 3)
    transferred = model.transfer_deformation(NEUTRAL_A, SMILE_A, batch)  # one deformation, four targets
    assert transferred.shape == (4, v, 3)
    torch.testing.assert_close(transferred[2], model.transfer_deformation(NEUTRAL_A, SMILE_A, batch[2]))


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match=r"different batch sizes \(\(4, 642, 3\), \(3, 642, 3\)\)"):
        model.interpolate(MESHES[:4], MESHES[:3], 0.5)
    with pytest.raises(ValueError, match="weights must be a number or a 1-D sequence"):
        model.interpolate(NEUTRAL_A, NEUTRAL_B, [[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"expected vertices of shape \(B, 642, 3\)"):
        model.transfer_deformation(NEUTRAL_A, SMILE_A[:-1], NEUTRAL_B)


def test_pca_latent_arithmetic_is_exactly_linear():
    pca = build("pca")
    weights = torch.tensor([-1.0, 0.0, 0.3, 1.0, 2.0])
    lines = pca.interpolate(NEUTRAL_A, SMILE_B, weights)
    expected = (1 - weights[:, None, None]) * pca(NEUTRAL_A) + weights[:, None, None] * pca(SMILE_B)
    torch.testing.assert_close(lines, expected, atol=1e-7, rtol=1e-5)
    # decode is affine: the transferred mesh is T0_hat + (S1_hat - S0_hat)
    transferred = pca.transfer_deformation(NEUTRAL_A, SMILE_A, NEUTRAL_B)
    torch.testing.assert_close(transferred, pca(NEUTRAL_B) + pca(SMILE_A) - pca(NEUTRAL_A), atol=1e-7, rtol=1e-5)
    # the sphere data's expressions are additive bumps, so PCA transfers subject A's smile to subject B's rest shape
    assert (transferred - SMILE_B).norm(dim=-1).mean() < 0.1 * (NEUTRAL_B - SMILE_B).norm(dim=-1).mean()


def test_structured_latents_are_refused_clearly():
    class DictLatent(MorphableModel):
        def encode_normalised(self, x):
            return {"shape": x.flatten(1)}

    with pytest.raises(TypeError, match="interpolate needs a tensor latent code; this model encodes to dict"):
        DictLatent(template=COLLECTION.template).interpolate(NEUTRAL_A, NEUTRAL_B, 0.5)
