"""IB-VAE and IB-CVAE: the MWS estimate, the information bottleneck's parts, the stop-gradient, the conditional label,
and a model that learns neutral faces on tiny data. The metre-space contract is the method suite's."""

import itertools
import math

import numpy as np
import pytest
import torch
from lightning import Trainer, seed_everything
from scipy.stats import norm

from morphzoo import recipes
from morphzoo.data import raw
from morphzoo.data.export import export_collection
from morphzoo.methods import IBCVAE, IBVAE
from morphzoo.methods.ibvae import mutual_information_mws
from tests.synthetic import SphereDataModule, bu3dfe_like, sphere_collection

TINY = {"identity_dim": 2, "expression_dim": 2, "sample_counts": (64, 32), "neighbours": 8, "decoder_hidden": 32}


@pytest.fixture(scope="module")
def data():
    return SphereDataModule(frames=8, batch_size=8)


def batch_of(data, rows):
    rows = torch.as_tensor(rows)
    collection = data.collection
    return {"vertices": torch.from_numpy(collection.vertices[rows]),
            "neutral": torch.from_numpy(collection.neutral[collection.labels["identity"][rows]])}


def test_mws_equals_a_brute_force_computation():
    generator = torch.Generator().manual_seed(0)
    z, mu = torch.randn(5, 3, generator=generator, dtype=torch.float64), torch.randn(5, 3, generator=generator,
                                                                                     dtype=torch.float64)
    logvar, size = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 0.3, 100
    sigma = np.exp(0.5 * logvar.numpy())
    terms = []
    for i in range(5):
        own = sum(norm.logpdf(z[i, d].item(), mu[i, d].item(), sigma[i, d]) for d in range(3))
        pairs = [sum(norm.logpdf(z[i, d].item(), mu[j, d].item(), sigma[j, d]) for d in range(3)) for j in range(5)]
        terms.append(own - (math.log(sum(math.exp(p) for p in pairs)) - math.log(5 * size)))
    assert mutual_information_mws(z, mu, logvar, size).item() == pytest.approx(np.mean(terms), rel=1e-10)
    mask = torch.tensor([True, False, True, True, False])
    assert mutual_information_mws(z, mu, logvar, size, mask).item() == pytest.approx(
        np.mean([terms[i] for i in (0, 2, 3)]), rel=1e-10)
    assert mutual_information_mws(z, mu, logvar, size, torch.zeros(5, dtype=torch.bool)).item() == 0


def test_the_mi_term_grows_when_the_identity_code_carries_expression():
    generator = torch.Generator().manual_seed(1)
    identity, expression = torch.randn(3, 4, generator=generator), torch.randn(4, 4, generator=generator)
    pairs = list(itertools.product(range(3), range(4)))
    logvar = torch.full((12, 4), math.log(0.05**2))

    def estimate(mu):
        z = mu + 0.05 * torch.randn(mu.shape, generator=generator)
        return mutual_information_mws(z, mu, logvar, 1000).item()

    identity_only = torch.stack([identity[i] for i, _ in pairs])
    with_expression = torch.stack([identity[i] + expression[e] for i, e in pairs])
    assert estimate(with_expression) > estimate(identity_only) + 1.0  # about log(4): 4 expressions per identity


def test_the_identity_code_gets_no_gradient_from_the_full_face_loss(data):
    torch.manual_seed(0)
    model = IBVAE(template=data.template, mean=data.mean, std=data.std, **TINY)
    terms = model.loss_terms(batch_of(data, range(0, 40, 5)))
    terms["rec"].backward(retain_graph=True)
    weight = model.posterior.weight.grad  # rows: mu_id, mu_exp, logvar_id, logvar_exp
    identity_rows, expression_rows = [0, 1, 4, 5], [2, 3, 6, 7]
    assert weight[identity_rows].abs().max() == 0 and weight[expression_rows].abs().max() > 0
    assert all(p.grad is None for p in model.identity_decoder.parameters())
    model.zero_grad()
    terms["id"].backward()
    assert (model.posterior.weight.grad[[0, 1]].abs().amax(1) > 0).all()  # both mu_id rows learn
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.full_decoder.parameters())


def test_reconstruction_losses_are_eq4s_squared_norm_per_mesh(data):
    model = IBVAE(template=data.template, mean=data.mean, std=data.std, **TINY).eval()
    batch = batch_of(data, [2, 17, 33])
    x, neutral = model.normalise(batch["vertices"]), model.normalise(batch["neutral"])
    torch.manual_seed(3)
    terms = model.loss_terms(batch)
    torch.manual_seed(3)  # the same reparameterisation noise, to rebuild both decodings by hand
    mu, logvar = model.posterior_parameters(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    full, identity = model.decode_normalised(z), model.decode_identity_normalised(z[:, :2])
    by_hand = {"rec": sum(((full[i] - x[i]) ** 2).sum() for i in range(3)) / 3,
               "id": sum(((identity[i] - neutral[i]) ** 2).sum() for i in range(3)) / 3}
    for name, value in by_hand.items():
        torch.testing.assert_close(terms[name], value)
    mean_model = IBVAE(template=data.template, mean=data.mean, std=data.std, **TINY,
                       reconstruction_reduction="mean").eval()
    mean_model.load_state_dict(model.state_dict())
    torch.manual_seed(3)
    torch.testing.assert_close(mean_model.loss_terms(batch)["rec"] * x[0].numel(), terms["rec"])
    with pytest.raises(ValueError, match="reconstruction_reduction must be 'sum'"):
        IBVAE(template=data.template, **TINY, reconstruction_reduction="l1")


def test_neutral_meshes_are_left_out_of_the_mi_term(data):
    model = IBVAE(template=data.template, mean=data.mean, std=data.std, **TINY)
    neutral = torch.from_numpy(data.collection.neutral[[0, 1, 2, 0]])
    assert model.loss_terms({"vertices": neutral, "neutral": neutral})["mi"].item() == 0
    with pytest.raises(ValueError, match="needs .*neutral|batches need `neutral`"):
        model.loss_terms({"vertices": neutral})


@pytest.mark.parametrize("epoch, fraction", [(0, 1.0), (175, 0.5), (350, 0.0), (400, 0.0)])
def test_the_regularisation_weight_decays_linearly_over_350_epochs(data, epoch, fraction):
    model = IBVAE(template=data.template, **TINY, lambda_regularisation=0.02)
    assert model.regularisation_weight(epoch) == pytest.approx(0.02 * fraction)


def test_the_optimiser_is_the_papers_schedule(data):
    model = IBVAE(template=data.template, **TINY, learning_rate=3e-4, weight_decay=2e-3, lr_decay=0.5,
                  lr_decay_every=7)
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 3e-4 and optimizer.param_groups[0]["weight_decay"] == 2e-3
    assert (scheduler.step_size, scheduler.gamma, configured["lr_scheduler"]["interval"]) == (7, 0.5, "epoch")


def test_swapping_a_meshs_expression_with_itself_reconstructs_it(data):
    torch.manual_seed(0)
    model = IBVAE(template=data.template, mean=data.mean, std=data.std, **TINY).eval()
    with torch.no_grad():  # an untrained model barely tells meshes apart: make its codes and decoder sensitive
        for layer in (model.posterior, model.full_decoder[-1]):
            layer.weight.normal_(std=3.0)
    meshes = batch_of(data, [3, 30, 60])["vertices"]
    torch.testing.assert_close(model.swap_expression(meshes, meshes), model(meshes))
    swapped = model.swap_expression(meshes[0], meshes)  # one expression onto three identities
    identity, expression = model.split_latent(model.encode(meshes))
    torch.testing.assert_close(swapped, model.decode(torch.cat([identity, expression[[0, 0, 0]]], dim=-1)))
    assert not torch.allclose(swapped[1], model(meshes)[1], atol=1e-4)


@pytest.fixture(scope="module")
def faces():
    return bu3dfe_like(subjects=4, subdivisions=2)


def test_the_conditional_label_is_one_hot_times_level(faces):
    model = IBCVAE(template=faces.template, **TINY, expressions=6, levels=4)
    label = model.label(torch.tensor([0, 1, 6, 3]), torch.tensor([0, 4, 2, 1]))
    expected = torch.zeros(4, 6)
    expected[1, 0], expected[2, 5], expected[3, 2] = 1.0, 0.5, 0.25
    torch.testing.assert_close(label, expected)
    with pytest.raises(ValueError, match="expressions are 0 \\(neutral\\) .. 6 and levels 0 .. 4"):
        model.label(7, 1)


def test_a_cvae_generates_under_any_label_and_level_zero_is_neutral_for_every_expression(faces):
    model = IBCVAE(template=faces.template, **TINY, expressions=6, levels=4).eval()
    codes = torch.randn(3, TINY["identity_dim"])
    happy, sad = model.generate(codes, 4, 4), model.generate(codes, 5, 4)
    assert happy.shape == (3, faces.template.num_vertices, 3) and not torch.allclose(happy, sad)
    torch.testing.assert_close(model.generate(codes, 4, 0), model.generate(codes, 5, 0))
    assert model.generate(codes[0], 1, 2).shape == (faces.template.num_vertices, 3)
    mesh = torch.from_numpy(faces.vertices[:2])
    latent = model.encode(mesh, expression=torch.tensor([1, 2]), level=torch.tensor([4, 4]))
    assert latent.shape == (2, 2 * TINY["identity_dim"] + 6) and latent[0, -6:].tolist() == [1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="give both expression and level"):
        model.encode(mesh, expression=1)


def test_ibvae_learns_neutral_faces_on_tiny_data(data):
    seed_everything(0)  # also sets PL_GLOBAL_SEED, so the run does not depend on what earlier tests left in it
    model = IBVAE(template=data.template, mean=data.mean, std=data.std, **TINY, learning_rate=1e-3,
                  lambda_reconstruction=1.0, lambda_regularisation=1e-3)
    meshes = batch_of(data, range(0, len(data.collection), 3))

    def neutral_error() -> float:
        model.eval()
        return (model.predict_neutral(meshes["vertices"]) - meshes["neutral"]).norm(dim=-1).mean().item()

    before = neutral_error()
    model.train()
    # 80 epochs, not fewer: at 30 the outcome swung between 0.2x and 1.4x of `before` with the seed (and with the
    # floating-point summation order other tests leave behind); at 80 five seeds all ended at 0.11x-0.21x.
    Trainer(max_epochs=80, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(model, datamodule=data)
    after = neutral_error()
    assert after < 0.5 * before, (before, after)


# --- recipes ----------------------------------------------------------------------------------------------------------
RECIPES = ("ibvae", "ibvae-anny-bu3dfe", "ibvae-coma", "ibvae-bu3dfe", "ibcvae-anny-bu3dfe", "ibcvae-bu3dfe")
SMALL_ENCODER = ["--model.init_args.sample_counts=[64, 32]", "--model.init_args.neighbours=8"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_keeps_the_papers_schedule_and_the_cpu_overlay_only_compresses_it(recipe):
    paper, cpu = recipes.parse(recipe), recipes.parse([recipe, "schedules/ibvae-cpu"])
    arguments = paper.model.init_args
    assert (arguments.learning_rate, arguments.lr_decay_every, arguments.regularisation_decay_epochs) == (5e-5, 50, 350)
    assert (arguments.lambda_reconstruction, arguments.lambda_regularisation, arguments.beta_mi) == (6.6e-2, 3e-3, 50)
    assert arguments.beta_identity == (10.0 if recipe in ("ibvae", "ibvae-coma") else 1.0)  # CoMA 10, BU-3DFE 1
    assert paper.trainer.max_epochs == 300 and cpu.trainer.max_epochs == 6
    assert cpu.model.init_args.lr_decay_every == 1 and cpu.model.init_args.beta_identity == arguments.beta_identity


@pytest.mark.parametrize("recipe, format", [("ibvae-coma", "coma"), ("ibvae-bu3dfe", "bu3dfe"),
                                            ("ibcvae-bu3dfe", "bu3dfe")])
def test_real_data_recipes_run_once_on_data_in_the_datasets_format(recipe, format, tmp_path, monkeypatch):
    # CPython 3.11.7 can raise "AST constructor recursion depth mismatch" when several threads parse PLY files through
    # trimesh at once (seen once under load); one reader thread keeps this test about the recipe
    monkeypatch.setattr(raw, "READ_THREADS", 1)
    collection = bu3dfe_like(subjects=12, subdivisions=3) if format == "bu3dfe" else sphere_collection(3, 3, 12)
    root = export_collection(collection, format, tmp_path / "data")
    cli = recipes.instantiate(recipe, [f"--data.init_args.root={root}", "--trainer.fast_dev_run=true",
                                       f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
                                       "--data.init_args.batch_size=8", *SMALL_ENCODER])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["ibvae", "ibvae-anny-bu3dfe", "ibcvae-anny-bu3dfe"])
def test_anny_recipes_run_once(recipe, tmp_path):
    cli = recipes.instantiate([recipe, "schedules/ibvae-cpu"], [
        "--data.init_args.size=tiny", "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.batch_size=8"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
