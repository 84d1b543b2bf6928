r"""The decoupled 3D face GAN (Fernández Abrevaya, Boukhayma, Wuhrer, Boyer: *A Decoupled 3D Facial Shape Model by
Adversarial Training*, ICCV 2019). No public code exists: this is a reference implementation, and every choice the
paper leaves open is stated here and in the README.

The paper, section by section, and what this file does:

- **§4.1 Geometry mapping.** The generator makes a 3D mesh; a fixed UV parameterisation turns it into an
  :math:`n \times n` geometry image (Eq. 5) that a 2D CNN discriminates:
  :class:`~morphzoo.nn.geometry_mapping.GeometryMapping` over
  :func:`~morphzoo.mesh.geometry_image.geometry_image_gather` (64 × 64).
- **§4.2 Architecture** (supplement, Figure 11). Generator: :math:`z = (z_{id}, z_{exp}, z_{noise})` of sizes (65, 15,
  5) -> Linear 512 -> LReLU(0.2) -> Linear :math:`3 n_v`: displacements from the reference mesh. Discriminator: two
  shared 3 × 3 stride-2 conv blocks (16, 32 channels), then three branches of two conv blocks (64, 128) and a linear
  layer: real/fake (1), identity (:math:`n_{id}`) and expression (:math:`n_{exp}`) classifiers.
- **§4.3 Losses.** The critic maximises :math:`\mathcal L_D = \mathcal L_{GAN} + \lambda_C(\mathcal L_{ID} +
  \mathcal L_{EXP})` (Eq. 6) with WGAN-GP's gradient penalty (:func:`gradient_penalty`, λ = 10); the classification
  losses use labelled real meshes only (Eq. 7). The generator minimises
  :math:`\mathcal L_G = \lambda_1 \mathcal L_{GAN} - \lambda_2(\mathcal L_{CL}^{id} + \mathcal L_{CL}^{exp})
  + \lambda_3(\mathcal L_{FEAT}^{id} + \mathcal L_{FEAT}^{exp}) + \lambda_4 \lVert \mathbf L \mathbf v \rVert^2`
  (Eq. 8-12). One code per label is drawn once and fixed
  (:math:`\mathcal T^{id}, \mathcal T^{exp}`; buffers ``identity_codes``, ``expression_codes``). Generator steps
  alternate between labelled identity codes with random expression codes (identity classification; the expression
  feature loss on pairs sharing an expression code) and the converse.
- **§5.1 Implementation.** :math:`\lambda_C = 0.1, \lambda_1 = \lambda_2 = 1, \lambda_3 = 0.5, \lambda_4 = 100`; Adam
  lr 2e-4, β = (0.9, 0.999), batch 64, 200 epochs; instance noise σ = 0.1 on the discriminator's input; 3 critic
  steps per generator step; classification losses weighted for unbalanced labels. These are the defaults.
- **§5.4 Ablations** are flags: ``laplacian_weight=0`` (w/o mesh regularisation), ``classify_expression=False``
  (identity classifier only), ``feature_loss=False`` (w/o feature loss).

Choices the paper leaves open, stated:

- **Units.** The generator works in the per-vertex standardised coordinates of every morphzoo model: its output *is* the
  displacement from the training mean divided by the training std, and the discriminator sees geometry images of those
  coordinates, so instance noise σ = 0.1 is a tenth of a typical vertex's spread.
- **Laplacian term.** libigl's cotangent matrix of the template (scale-free, not mass-normalised) applied to the
  displacements in metres divided by the data's mean std; :math:`\lVert \mathbf L \mathbf v \rVert^2` is summed over
  coordinates and averaged over vertices and meshes.
- **Activations.** The supplement's table (LReLU 0.2 everywhere) over §5.1's "ReLU" for the generator; no
  normalisation layers in the critic (WGAN-GP's advice).
- **One epoch** is one pass of the training meshes through the critic: every batch is a critic step, and every third
  also a generator step at the same batch size.
- **Label balance** (King & Zeng, as cited): the critic's cross-entropy on real meshes weights each class by the
  inverse of its training frequency (normalised to mean 1), from the DataModule at the start of training; the
  generator's labels are drawn uniformly, so its classification losses are balanced by construction. Unlabelled meshes
  (label −1, e.g. from the DataModule's ``expression_label_fraction``) count in the adversarial loss only.
- **Encoding.** A GAN has no encoder. :meth:`encode` fits the code to the mesh (all vertices, Adam from the prior's mean
  :math:`z = 0`, ``fit_steps`` steps, :func:`morphzoo.fitting.optimise_latent`), so ``forward``, the reconstruction
  metrics and the validation error (used for checkpoint selection) measure how well the generator covers a mesh.
- **Sampling** draws from the prior :math:`\mathcal N(0, I)`; :meth:`sample_sharing` fixes one factor's code per group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from morphzoo.fitting import optimise_latent
from morphzoo.mesh.geometry_image import cotangent_laplacian, geometry_image_gather
from morphzoo.mesh.graph import sparse_to_torch
from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS, MorphableModel
from morphzoo.nn.geometry_mapping import GeometryMapping
from morphzoo.nn.sparse import float32_sparse_mm

LEAKY_SLOPE = 0.2
SHARED_CHANNELS = (16, 32)
BRANCH_CHANNELS = (64, 128)
FACTORS = ("identity", "expression")


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv 3 × 3, stride 2 (halves the image), LReLU 0.2: the discriminator's block (supplement, Figure 11b)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE))


class GeometryImageDiscriminator(nn.Module):
    """The critic and auxiliary classifiers on geometry images (supplement, Figure 11b).

    Args:
        identities, expressions: classes of the identity and expression classifiers (``expressions=0``: no
            expression branch, the "identity classifier only" ablation).
        image_size: the geometry image's side (a multiple of 16).

    Shapes:
        input (B, 3, n, n) -> ``score`` (B,), and for each classifier ``{factor}_logits`` (B, classes) and
        ``{factor}_features`` (B, 128 · (n / 16)²: 2048 at n = 64, the paper's feature size).
    """

    def __init__(self, identities: int, expressions: int, image_size: int = 64) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"the discriminator halves the image four times: image_size must be a multiple of 16, "
                             f"got {image_size}")
        self.shared = nn.Sequential(conv_block(3, SHARED_CHANNELS[0]), conv_block(*SHARED_CHANNELS))
        features = BRANCH_CHANNELS[-1] * (image_size // 16) ** 2
        classes = {"critic": 1, "identity": identities, "expression": expressions}
        self.branches = nn.ModuleDict({
            name: nn.Sequential(conv_block(SHARED_CHANNELS[-1], BRANCH_CHANNELS[0]), conv_block(*BRANCH_CHANNELS),
                                nn.Flatten())
            for name, count in classes.items() if count > 0})
        self.heads = nn.ModuleDict({name: nn.Linear(features, count) for name, count in classes.items() if count > 0})

    def score(self, image: Tensor) -> Tensor:
        """The critic's score (B,) alone (what the gradient penalty differentiates)."""
        return self.heads["critic"](self.branches["critic"](self.shared(image)))[:, 0]

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        shared = self.shared(image)
        out = {"score": self.heads["critic"](self.branches["critic"](shared))[:, 0]}
        for factor in FACTORS:
            if factor in self.branches:
                features = self.branches[factor](shared)
                out[f"{factor}_features"], out[f"{factor}_logits"] = features, self.heads[factor](features)
        return out


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, mix: Tensor) -> Tensor:
    r"""WGAN-GP's penalty (Gulrajani et al. 2017): :math:`\mathbb E[(\lVert \nabla_{\hat x} D(\hat x) \rVert_2 - 1)^2]`
    at :math:`\hat x = \epsilon x + (1 - \epsilon)\tilde x`.

    Shapes:
        real, fake: (B, ...); mix: (B,) values ε in [0, 1]; returns a scalar (differentiable in the critic).
    """
    mix = mix.view(-1, *[1] * (real.dim() - 1))
    mixed = (mix * real + (1 - mix) * fake).detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()


def classification_loss(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted cross-entropy over the labelled samples (label ≥ 0); 0 when none is labelled (Eq. 7: unlabelled real
    samples are ignored)."""
    labelled = labels >= 0
    if not labelled.any():
        return logits.new_zeros(())
    return F.cross_entropy(logits[labelled], labels[labelled], weight=weight)


def pair_feature_loss(features: Tensor) -> Tensor:
    r"""Eq. 10-11: :math:`\frac{2}{N}\sum_{pairs} (1 - \cos(f_1, f_2))` over consecutive pairs (rows 2k, 2k + 1) that
    share a code. Shapes: features (N, C), N even -> scalar."""
    return (1 - F.cosine_similarity(features[0::2], features[1::2], dim=1)).mean()


class DecoupledGAN(MorphableModel):
    """The decoupled 3D face GAN: an MLP generator of meshes, a CNN critic on geometry images, identity and expression
    classifiers. See the module docstring for the paper's design and our choices.

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        identities, expressions: the dataset's identity and expression classes (n_id, n_exp).
        identity_dim, expression_dim, noise_dim: |z_id|, |z_exp|, |z_noise| (65, 15, 5).
        hidden: the generator's hidden units (512).
        image_size: the geometry image's side (64).
        uv_source: ``"template"`` (its UVs), ``"harmonic"`` (the paper's), or ``"auto"``: the template's UVs where it
            has them.
        classify_expression, feature_loss: the ablation flags of §5.4.
        lambda_classification, lambda_adversarial, lambda_generator_classification, lambda_feature,
            laplacian_weight: λ_C, λ1, λ2, λ3, λ4 (0.1, 1, 1, 0.5, 100).
        gradient_penalty_weight: WGAN-GP's λ (10).
        instance_noise: σ of the Gaussian noise added to the discriminator's input (0.1).
        critic_steps: critic steps per generator step (3).
        learning_rate, betas: Adam's (2e-4, (0.9, 0.999)), for both networks.
        code_seed: seeds the fixed per-label codes T_id, T_exp.
        fit_steps, fit_learning_rate: the Adam fit that :meth:`encode` runs.
    """

    samples_from_prior = True
    onnx_encoder = False  # encode fits the code with Adam

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        identities: int = 1,
        expressions: int = 1,
        identity_dim: int = 65,
        expression_dim: int = 15,
        noise_dim: int = 5,
        hidden: int = 512,
        image_size: int = 64,
        uv_source: str = "auto",
        classify_expression: bool = True,
        feature_loss: bool = True,
        lambda_classification: float = 0.1,
        lambda_adversarial: float = 1.0,
        lambda_generator_classification: float = 1.0,
        lambda_feature: float = 0.5,
        laplacian_weight: float = 100.0,
        gradient_penalty_weight: float = 10.0,
        instance_noise: float = 0.1,
        critic_steps: int = 3,
        learning_rate: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        code_seed: int = 0,
        fit_steps: int = 300,
        fit_learning_rate: float = 0.05,
    ) -> None:
        super().__init__(template, mean, std)
        if identities < 1 or expressions < 1:
            raise ValueError(f"DecoupledGAN needs at least one identity and one expression class, got {identities} "
                             f"and {expressions}: set model.init_args.identities / expressions to the dataset's")
        if critic_steps < 1:
            raise ValueError(f"critic_steps must be positive, got {critic_steps}")
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
        self.automatic_optimization = False
        self.dims = {"identity": identity_dim, "expression": expression_dim, "noise": noise_dim}
        latent_dim = sum(self.dims.values())
        self.generator = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(LEAKY_SLOPE),
                                       nn.Linear(hidden, 3 * self.num_vertices))
        self.discriminator = GeometryImageDiscriminator(identities, expressions if classify_expression else 0,
                                                        image_size)
        self.mapping = GeometryMapping(*geometry_image_gather(self.template, image_size, uv_source))
        self.register_buffer("laplacian", sparse_to_torch(cotangent_laplacian(self.template)), persistent=False)
        # The prior N(0, I) is the latent distribution `sample` draws from.
        self.latent_mean = torch.zeros(latent_dim)
        self.latent_cholesky = torch.eye(latent_dim)
        generator = torch.Generator().manual_seed(code_seed)
        self.register_buffer("identity_codes", torch.randn(identities, identity_dim, generator=generator))
        self.register_buffer("expression_codes", torch.randn(expressions, expression_dim, generator=generator))
        self.register_buffer("identity_class_weight", torch.ones(identities))
        self.register_buffer("expression_class_weight", torch.ones(expressions))

    # ----------------------------------------------------------------------------------------------------- the model
    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (sum(self.dims.values()),)

    def latent_factors(self) -> dict[str, slice]:
        start, parts = 0, {}
        for name, width in self.dims.items():
            parts[name], start = slice(start, start + width), start + width
        return parts

    def decode_normalised(self, latent: Tensor) -> Tensor:
        return self.generator(latent).view(latent.shape[0], self.num_vertices, 3)

    def encode_normalised(self, x: Tensor) -> Tensor:
        """The code whose mesh fits ``x`` best (module docstring, "Encoding")."""
        initial = x.new_zeros(len(x), *self.latent_shape)
        return optimise_latent(self.decode_normalised, x, initial, self.hparams.fit_steps,
                               self.hparams.fit_learning_rate)

    def compose(self, identity: Tensor, expression: Tensor, noise: Tensor) -> Tensor:
        """The code (B, |z|) of given factor codes (B, |z_id|), (B, |z_exp|), (B, |z_noise|)."""
        return torch.cat([identity, expression, noise], dim=-1)

    @torch.no_grad()
    def transfer_expression(self, source: Tensor, target: Tensor, mode: str = "replace") -> Tensor:
        """The supplement's latent expression manipulation on codes (B, |z|) (``encode`` real meshes first).

        ``"replace"``: G(z_id^target, z_exp^source, z_noise^target); ``"add"``: G(z_id^target, z_exp^source +
        z_exp^target, z_noise^target). Returns (B, V, 3) meshes in metres.
        """
        if mode not in ("replace", "add"):
            raise ValueError(f"transfer_expression: mode must be 'replace' or 'add', not {mode!r}")
        part = self.latent_factors()["expression"]
        latent = target.clone()
        latent[..., part] = source[..., part] + (target[..., part] if mode == "add" else 0)
        return self.decode(latent)

    def critic_input(self, x: Tensor) -> Tensor:
        """Geometry images (B, 3, n, n) of standardised meshes (B, V, 3), with instance noise while training."""
        image = self.mapping(x)
        if self.training and self.hparams.instance_noise > 0:
            image = image + self.hparams.instance_noise * torch.randn_like(image)
        return image

    def laplacian_energy(self, x: Tensor) -> Tensor:
        r""":math:`\lVert \mathbf L \mathbf v \rVert^2` of the displacements (module docstring, "Laplacian term")."""
        displacement = (x * self.std / self.std.mean()).permute(1, 0, 2).reshape(self.num_vertices, -1)
        return float32_sparse_mm(self.laplacian, displacement).pow(2).sum() / (len(x) * self.num_vertices)

    # ------------------------------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        """Class weights from the training split's label frequencies (module docstring, "Label balance")."""
        if str(self.trainer.precision).startswith("16"):
            # The gradient penalty's inner gradient would run unscaled in float16 and may underflow to zero.
            raise ValueError(f"{type(self).__name__}: float16 training ('{self.trainer.precision}') is not supported: "
                             "the gradient penalty's gradient is not loss-scaled. Use --trainer.precision=bf16-mixed "
                             "(or 32)")
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data, "training_labels"):
            return
        for factor, weight in (("identity", self.identity_class_weight),
                               ("expression", self.expression_class_weight)):
            labels = data.training_labels(factor)
            labels = labels[labels >= 0]
            if len(labels) and labels.max() >= len(weight):
                setting = {"identity": "identities", "expression": "expressions"}[factor]
                raise ValueError(f"DecoupledGAN: the data has {factor} labels up to {labels.max()}, but the model "
                                 f"has {len(weight)} {factor} classes: set model.init_args.{setting} to at least "
                                 f"{labels.max() + 1}")
            counts = torch.as_tensor(np.bincount(labels, minlength=len(weight)), dtype=weight.dtype)
            balanced = torch.where(counts > 0, 1 / counts.clamp_min(1), torch.zeros_like(counts))
            if balanced.sum() > 0:
                weight.copy_(balanced * (counts > 0).sum() / balanced.sum())

    def prior_codes(self, count: int) -> Tensor:
        return torch.randn(count, *self.latent_shape, device=self.mean.device)

    def critic_loss(self, real: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Eq. 6 negated (the critic minimises it) plus the gradient penalty, on standardised real meshes."""
        hp = self.hparams
        with torch.no_grad():
            fake = self.decode_normalised(self.prior_codes(len(real)))
        real_image, fake_image = self.critic_input(real), self.critic_input(fake)
        real_out, fake_score = self.discriminator(real_image), self.discriminator.score(fake_image)
        terms = {"wasserstein": real_out["score"].mean() - fake_score.mean()}
        mix = torch.rand(len(real), device=real.device)
        terms["gradient_penalty"] = gradient_penalty(self.discriminator.score, real_image, fake_image, mix)
        classification = real.new_zeros(())
        for factor, weight in (("identity", self.identity_class_weight),
                               ("expression", self.expression_class_weight)):
            if f"{factor}_logits" in real_out and factor in batch:
                terms[f"{factor}_classification"] = classification_loss(real_out[f"{factor}_logits"],
                                                                        batch[factor], weight)
                classification = classification + terms[f"{factor}_classification"]
        terms["loss"] = (-terms["wasserstein"] + hp.gradient_penalty_weight * terms["gradient_penalty"]
                         + hp.lambda_classification * classification)
        return terms

    def generator_codes(self, count: int, labelled: str) -> tuple[Tensor, Tensor]:
        """Codes for a generator step (§4.3): the ``labelled`` factor from its fixed per-label codes (labels drawn
        uniformly), the other factor in pairs of rows that share it, noise afresh. Returns (codes, labels)."""
        device = self.mean.device
        table = {"identity": self.identity_codes, "expression": self.expression_codes}
        labels = torch.randint(len(table[labelled]), (count,), device=device)
        other = "expression" if labelled == "identity" else "identity"
        parts = {labelled: table[labelled][labels],
                 other: torch.randn(count // 2, self.dims[other], device=device).repeat_interleave(2, 0),
                 "noise": torch.randn(count, self.dims["noise"], device=device)}
        return self.compose(parts["identity"], parts["expression"], parts["noise"]), labels

    def generator_loss(self, count: int, labelled: str) -> dict[str, Tensor]:
        """Eq. 8 for one generator step that labels ``labelled`` (``count`` is rounded down to an even number)."""
        hp = self.hparams
        codes, labels = self.generator_codes(count - count % 2, labelled)
        fake = self.decode_normalised(codes)
        out = self.discriminator(self.critic_input(fake))
        other = "expression" if labelled == "identity" else "identity"
        zero = fake.new_zeros(())
        terms = {"adversarial": -out["score"].mean(), "laplacian": self.laplacian_energy(fake)}
        terms[f"{labelled}_classification"] = (F.cross_entropy(out[f"{labelled}_logits"], labels)
                                               if f"{labelled}_logits" in out else zero)
        terms[f"{other}_feature"] = (pair_feature_loss(out[f"{other}_features"])
                                     if hp.feature_loss and f"{other}_features" in out else zero)
        terms["loss"] = (hp.lambda_adversarial * terms["adversarial"]
                         + hp.lambda_generator_classification * terms[f"{labelled}_classification"]
                         + hp.lambda_feature * terms[f"{other}_feature"]
                         + hp.laplacian_weight * terms["laplacian"])
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        critic_optimiser, generator_optimiser = self.optimizers()
        real = self.normalise(batch["vertices"])
        self.discriminator.requires_grad_(True)
        critic = self.critic_loss(real, batch)
        critic_optimiser.zero_grad(set_to_none=True)
        self.manual_backward(critic["loss"])
        critic_optimiser.step()
        logged = {f"train/critic_{name}": value.detach() for name, value in critic.items()}
        if (batch_idx + 1) % self.hparams.critic_steps == 0:
            labelled = FACTORS[(batch_idx // self.hparams.critic_steps) % 2]  # alternate the labelled factor
            self.discriminator.requires_grad_(False)  # the generator step does not accumulate critic gradients
            generator = self.generator_loss(len(real), labelled)
            generator_optimiser.zero_grad(set_to_none=True)
            self.manual_backward(generator["loss"])
            generator_optimiser.step()
            self.discriminator.requires_grad_(True)
            logged.update({f"train/generator_{name}": value.detach() for name, value in generator.items()})
        self.log_dict(logged, batch_size=len(real))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        return [torch.optim.Adam(self.discriminator.parameters(), lr=hp.learning_rate, betas=tuple(hp.betas)),
                torch.optim.Adam(self.generator.parameters(), lr=hp.learning_rate, betas=tuple(hp.betas))]
