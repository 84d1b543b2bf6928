"""The decoupled GAN's parts (Abrevaya et al. 2019): gradient penalty, classification and feature losses, the
generator's code sampling, the ablation flags, and learning on tiny data."""

import types

import numpy as np
import pytest
import torch
from lightning import Trainer

from morphzoo.methods import DecoupledGAN
from morphzoo.methods.decoupled_gan import classification_loss, gradient_penalty, pair_feature_loss
from tests.synthetic import SphereDataModule

TINY = {"identities": 3, "expressions": 3, "identity_dim": 4, "expression_dim": 3, "noise_dim": 2, "hidden": 64,
        "image_size": 16, "fit_steps": 50}


@pytest.fixture(scope="module")
def data():
    return SphereDataModule(frames=8, batch_size=8, open_cap=True)


def make_gan(data, **overrides) -> DecoupledGAN:
    torch.manual_seed(0)
    return DecoupledGAN(template=data.template, mean=data.mean, std=data.std, **{**TINY, **overrides})


def test_gradient_penalty_matches_a_hand_computation():
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    mix = torch.rand(5)
    w = torch.randn(3, 4, 4, requires_grad=True)
    # A linear critic: the gradient is w everywhere, so the penalty is (‖w‖ - 1)².
    penalty = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, mix)
    torch.testing.assert_close(penalty, (w.norm() - 1) ** 2)
    penalty.backward()  # differentiable in the critic's parameters (create_graph)
    torch.testing.assert_close(w.grad, 2 * (w.norm() - 1) * w / w.norm())
    # A quadratic critic ½‖x‖²: the gradient is the interpolate itself.
    mixed = mix.view(-1, 1, 1, 1) * real + (1 - mix.view(-1, 1, 1, 1)) * fake
    quadratic = gradient_penalty(lambda x: 0.5 * x.pow(2).flatten(1).sum(1), real, fake, mix)
    torch.testing.assert_close(quadratic, (mixed.flatten(1).norm(dim=1) - 1).pow(2).mean())


def test_classification_losses_ignore_unlabelled_samples():
    logits, labels = torch.randn(6, 4), torch.tensor([2, -1, 0, -1, 3, 1])
    weight = torch.tensor([0.5, 1.0, 2.0, 0.5])
    labelled = labels >= 0
    expected = torch.nn.functional.cross_entropy(logits[labelled], labels[labelled], weight=weight)
    torch.testing.assert_close(classification_loss(logits, labels, weight), expected)
    changed = logits.clone()
    changed[~labelled] = 100 * torch.randn(2, 4)  # what unlabelled rows say does not matter
    torch.testing.assert_close(classification_loss(changed, labels, weight), expected)
    assert classification_loss(logits, torch.full((6,), -1)) == 0


def test_the_critic_loss_uses_only_labelled_real_meshes(data):
    gan = make_gan(data)
    batch = next(iter(data.train_dataloader()))
    real = gan.normalise(batch["vertices"])
    batch["expression"] = torch.full_like(batch["expression"], -1)
    terms = gan.critic_loss(real, batch)
    assert terms["expression_classification"] == 0 and terms["identity_classification"] > 0


def test_feature_loss_is_zero_for_aligned_pairs_and_two_for_opposite_ones():
    f = torch.randn(3, 10)
    aligned = torch.stack([f, 2 * f], 1).reshape(6, 10)
    opposite = torch.stack([f, -f], 1).reshape(6, 10)
    torch.testing.assert_close(pair_feature_loss(aligned), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(pair_feature_loss(opposite), torch.tensor(2.0))


@pytest.mark.parametrize("labelled", ["identity", "expression"])
def test_generator_codes_label_one_factor_and_pair_the_other(data, labelled):
    gan = make_gan(data)
    codes, labels = gan.generator_codes(8, labelled)
    parts = {name: codes[:, part] for name, part in gan.latent_factors().items()}
    table = gan.identity_codes if labelled == "identity" else gan.expression_codes
    torch.testing.assert_close(parts[labelled], table[labels])
    other = parts["expression" if labelled == "identity" else "identity"]
    torch.testing.assert_close(other[0::2], other[1::2])  # rows 2k, 2k+1 share the unlabelled factor's code
    assert torch.unique(other, dim=0).shape[0] == 4
    assert torch.unique(parts["noise"], dim=0).shape[0] == 8


def test_the_ablation_flags_remove_their_terms(data):
    no_expression = make_gan(data, classify_expression=False)
    assert "expression" not in no_expression.discriminator.branches
    terms = no_expression.generator_loss(8, "expression")
    assert terms["expression_classification"] == 0 and terms["identity_feature"] > 0
    no_feature = make_gan(data, feature_loss=False).generator_loss(8, "identity")
    assert no_feature["expression_feature"] == 0
    full = make_gan(data).generator_loss(8, "identity")
    assert full["expression_feature"] > 0 and full["laplacian"] > 0


def test_class_weights_balance_the_training_labels(data):
    gan = make_gan(data)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(gan, datamodule=data)
    labels = data.training_labels("identity")
    counts = np.bincount(labels, minlength=3)
    expected = (1 / counts) / (1 / counts).mean()
    np.testing.assert_allclose(gan.identity_class_weight.numpy(), expected, rtol=1e-6)


def test_too_few_classes_for_the_data_is_an_error_naming_the_setting(data):
    gan = make_gan(data, identities=2)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="set model.init_args.identities to at least 3"):
        trainer.fit(gan, datamodule=data)


def test_expression_transfer_replaces_or_adds_the_expression_code(data):
    gan = make_gan(data).eval()
    source, target = torch.randn(2, 9), torch.randn(2, 9)
    expression = gan.latent_factors()["expression"]
    replaced = target.clone()
    replaced[:, expression] = source[:, expression]
    torch.testing.assert_close(gan.transfer_expression(source, target), gan.decode(replaced))
    added = target.clone()
    added[:, expression] += source[:, expression]
    torch.testing.assert_close(gan.transfer_expression(source, target, "add"), gan.decode(added))


def test_sampling_sharing_a_factor_keeps_its_code(data):
    gan = make_gan(data).eval()
    meshes = gan.sample_sharing("identity", 2, 3, torch.Generator().manual_seed(0))
    assert meshes.shape == (2, 3, gan.num_vertices, 3)
    with pytest.raises(ValueError, match="no 'viseme' part"):
        gan.sample_sharing("viseme", 2, 3)


def test_the_gan_learns_its_identity_codes_on_tiny_data(data):
    """Adversarial training with the auxiliary classifiers makes the fixed identity codes generate their identities:
    the critic's identity classifier recognises the label of generated meshes far above chance (1/3). Measured over
    seeds 0-2: 0.32-0.48 before, 0.72-0.82 after."""
    gan = make_gan(data, learning_rate=1e-3)

    def generated_identity_accuracy() -> float:
        with torch.no_grad():
            codes, labels = gan.eval().generator_codes(60, "identity")
            logits = gan.discriminator(gan.mapping(gan.decode_normalised(codes)))["identity_logits"]
        return float((logits.argmax(1) == labels).float().mean())

    assert generated_identity_accuracy() < 0.55
    trainer = Trainer(max_epochs=90, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(gan.train(), datamodule=data)
    assert generated_identity_accuracy() > 0.6


@pytest.mark.parametrize("precision", ["16-mixed", "16-true"])
def test_float16_training_is_refused_with_the_fix(data, precision):
    """The gradient penalty's inner gradient is not loss-scaled, so float16 could underflow it to zero; a CPU trainer
    turns 16-mixed into bf16, so a stand-in trainer carries the setting."""
    model = make_gan(data)
    model._trainer = types.SimpleNamespace(precision=precision)
    with pytest.raises(ValueError, match="bf16-mixed"):
        model.on_fit_start()
