r"""IB-VAE: identity/expression disentanglement with an information bottleneck (Sun, Pears, Gu), and its conditional
variant (IB-CVAE).

The paper, section by section, and what this file does:

- **§3.1 Architecture.** One encoder, a Point Cloud Transformer (PCT, Guo et al. 2020;
  :class:`~morphzoo.nn.pointcloud.PointCloudTransformer`), predicts a Gaussian :math:`\mathcal N(\mu, \mathrm{diag}
  (\sigma^2))` over two codes, the identity code :math:`z_{id}` and the expression code :math:`z_{exp}`. Two decoders:
  the identity decoder :math:`z_{id} \mapsto \hat X^{id}` (the subject's neutral face) and the full-face decoder
  :math:`(z_{id}, z_{exp}) \mapsto \hat X`. The gradient of :math:`z_{id}` is stopped into the full-face decoder, so
  expression errors never update the identity code. The encoder reads points only; the topology is not used.
- **§3.2.3 Losses.** MSE reconstructions of the face and of the neutral face (Eq. 4); the KL divergence of both codes
  to :math:`\mathcal N(0, I)` (Eq. 3), with the reparameterisation trick.
- **§3.3 Mutual-information regulariser.** :math:`\mathcal L_{mi} = I_q(z_{id}; X)` (Eq. 10), the aggregated posterior
  estimated by minibatch weighted sampling (MWS, Chen et al. 2018; Eq. 11) with the training set's size :math:`N`:
  :func:`mutual_information_mws`. As in the official regulariser (the only public code of the paper) it is averaged
  over the batch's non-neutral meshes only.
- **§3.4 Loss (Eq. 12).** :math:`\lambda_1(\mathcal L_{rec} + \beta_{id}\mathcal L_{id}) + \lambda_2(\mathcal L_{KL}
  + \beta_{mi}\mathcal L_{mi})`.
- **§3.5 Implementation.** PCT with the original PCT attention, then fully connected layers 1024/256/64/2·(|z_id| +
  |z_exp|) for :math:`\mu` and :math:`\log\sigma^2`; decoders are MLPs with 256 hidden units; |z_id| = |z_exp| = 4 on
  CoMA; :math:`\lambda_1 = 6.6\times10^{-2}`, :math:`\lambda_2 = 3\times10^{-3}` decaying linearly to 0 over 350
  epochs, :math:`\beta_{id} = 10`, :math:`\beta_{mi} = 50` (BU-3DFE: :math:`\beta_{id} = 1`); Adam, learning rate
  5e-5, L2 weight decay 1e-4, learning rate ×0.7 every 50 epochs, 300 epochs. These are the defaults.
- **§3.2.4 Conditional VAE** (:class:`IBCVAE`): the label :math:`Y_{exp}`, a one-hot expression multiplied by its
  level in [0, 1], is concatenated after the encoder's penultimate fully connected layer and after :math:`z_{exp}`
  before the full-face decoder; :meth:`IBCVAE.generate` decodes an identity code under any expression and level.

Choices the paper leaves open, stated:

- **Encoder input.** The points in metres, centred on the template's centroid and divided by its RMS radius, so the
  PCT sees the geometry (farthest-point sampling and kNN need it) at unit scale. Decoders work in the per-vertex
  standardised coordinates every morphzoo autoencoder uses; their outputs are de-normalised to metres.
- **MSE reduction.** Eq. 4 as written: the squared L2 norm of each mesh's error, summed over its vertices and
  coordinates (in the standardised coordinates) and averaged over the batch, with :math:`\lambda_1, \lambda_2` as
  published; the KL is summed over latent dimensions and averaged over the batch, :math:`\mathcal L_{mi}` averaged.
  ``reconstruction_reduction="mean"`` (PyTorch's MSE default, ``3V`` times smaller) is the other reading of "MSE": on
  anny-face with the paper's weights it lets the KL and MI terms dominate, and the identity code collapses (measured:
  README, IB-VAE's ablation).
- **MLP details.** The head has ReLUs between its layers (no batch norm or dropout: the latent statistics must not
  depend on the batch); a decoder is Linear(z, 256) -> ReLU -> Linear(256, 3V).
- **Neutral meshes** (excluded from :math:`\mathcal L_{mi}`) are those equal to their subject's neutral face (within
  1 µm): the dataset's own neutral scans, whatever its labels are called.
- **The latent code** is one tensor: ``latent[:, :identity_dim]`` is :math:`z_{id}`, the rest :math:`z_{exp}` (and,
  for the IB-CVAE, the label :math:`Y_{exp}`), so interpolation, sampling and the zoo work as for every method.
  ``encode`` returns the posterior means; :meth:`IBVAE.split_latent` names the parts.
- **Sampling** (:meth:`~morphzoo.methods.base.MorphableModel.sample`) draws from the Gaussian fitted to the training
  latents, like every autoencoder here: with :math:`\lambda_2` decayed to 0 the prior no longer constrains the codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS, MorphableModel
from morphzoo.nn.pointcloud import PointCloudTransformer

# A mesh within this distance (metres, every vertex) of its subject's neutral face is a neutral scan.
NEUTRAL_TOLERANCE = 1e-6
PCT_FEATURES = 1024
HEAD_WIDTHS = (256, 64)


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    r""":math:`\log \mathcal N(z; \mu, e^{\mathrm{logvar}})` per dimension (broadcasting)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def mutual_information_mws(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int,
                           mask: Tensor | None = None) -> Tensor:
    r"""The minibatch-weighted-sampling estimate of :math:`I_q(z; X)` (IB-VAE Eq. 10-11; Chen et al. 2018, §C.1).

    .. math::
        \log q(z_i) \approx \operatorname{logsumexp}_j \sum_d \log q(z_{i,d} \mid x_j) - \log(B N), \qquad
        I \approx \tfrac{1}{|M|} \sum_{i \in M} \big[\log q(z_i \mid x_i) - \log q(z_i)\big]

    Shapes:
        z, mu, logvar: (B, D): a sample of each posterior and its parameters; mask: (B,) bool, the rows M averaged
        (default: all). Returns a scalar (0 when the mask is empty).
    """
    log_q_pairs = gaussian_log_density(z[:, None], mu[None], logvar[None]).sum(-1)  # [i, j] = log q(z_i | x_j)
    log_q_marginal = torch.logsumexp(log_q_pairs, dim=1) - math.log(len(z) * dataset_size)
    information = log_q_pairs.diagonal() - log_q_marginal
    if mask is not None:
        information = information[mask]
    return information.mean() if len(information) else z.new_zeros(())


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    r""":math:`KL(\mathcal N(\mu, e^{\mathrm{logvar}}) \,\|\, \mathcal N(0, I))`, summed over dimensions, averaged over
    the batch (Eq. 3)."""
    return (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)).mean()


def mlp_decoder(in_features: int, hidden: int, num_vertices: int) -> nn.Sequential:
    """The paper's decoder: an MLP with one hidden layer (§3.5) to (B, 3V)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 3 * num_vertices))


class IBVAE(MorphableModel):
    """IB-VAE: a PCT-encoded VAE with an identity decoder and an information bottleneck on the identity code.

    See the module docstring for the paper's design and our choices.

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        identity_dim, expression_dim: |z_id| and |z_exp| (4 and 4 on CoMA, §3.5).
        sample_counts, neighbours: the PCT's two sample-and-group stages (512 and 256 points, 32 neighbours); smaller
            meshes need smaller counts.
        decoder_hidden: hidden units of both decoders (256).
        lambda_reconstruction, lambda_regularisation: λ1 and λ2 of Eq. 12.
        regularisation_decay_epochs: λ2 decays linearly to 0 over this many epochs (350).
        beta_identity, beta_mi: β_id and β_mi (10 and 50 on CoMA; β_id = 1 on BU-3DFE). The paper's ablation: "no IB"
            is β_id = 1, β_mi = 0; "β_mi = 0" is β_id = 10, β_mi = 0.
        learning_rate, weight_decay, lr_decay, lr_decay_every: Adam with L2 weight decay; the learning rate is
            multiplied by ``lr_decay`` every ``lr_decay_every`` epochs.
        reconstruction_reduction: ``"sum"`` (Eq. 4's squared norm per mesh) or ``"mean"`` (per coordinate).
    """

    # The PCT encoder's farthest-point sampling is a loop of data-dependent steps: ONNX tracing unrolls it (5 min on
    # 2 cores, thousands of nodes), so the export writes the decoder only.
    onnx_encoder = False

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        identity_dim: int = 4,
        expression_dim: int = 4,
        sample_counts: Sequence[int] = (512, 256),
        neighbours: int = 32,
        decoder_hidden: int = 256,
        lambda_reconstruction: float = 6.6e-2,
        lambda_regularisation: float = 3e-3,
        regularisation_decay_epochs: int = 350,
        beta_identity: float = 10.0,
        beta_mi: float = 50.0,
        learning_rate: float = 5e-5,
        weight_decay: float = 1e-4,
        lr_decay: float = 0.7,
        lr_decay_every: int = 50,
        reconstruction_reduction: str = "sum",
    ) -> None:
        super().__init__(template, mean, std)
        if reconstruction_reduction not in ("sum", "mean"):
            raise ValueError(f"reconstruction_reduction must be 'sum' (Eq. 4's squared norm) or 'mean', "
                             f"not {reconstruction_reduction!r}")
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
        self.identity_dim, self.expression_dim = identity_dim, expression_dim
        centre = self.template_vertices.mean(0)
        self.register_buffer("point_centre", centre)
        self.register_buffer("point_scale", (self.template_vertices - centre).norm(dim=1).pow(2).mean().sqrt())
        self.encoder = PointCloudTransformer(sample_counts=sample_counts, neighbours=neighbours)
        self.head = nn.Sequential(nn.Linear(PCT_FEATURES, HEAD_WIDTHS[0]), nn.ReLU(),
                                  nn.Linear(HEAD_WIDTHS[0], HEAD_WIDTHS[1]), nn.ReLU())
        self.condition_dim = self._condition_dim()
        self.posterior = nn.Linear(HEAD_WIDTHS[1] + self.condition_dim, 2 * (identity_dim + expression_dim))
        self.identity_decoder = mlp_decoder(identity_dim, decoder_hidden, self.num_vertices)
        self.full_decoder = mlp_decoder(identity_dim + expression_dim + self.condition_dim, decoder_hidden,
                                        self.num_vertices)

    def _condition_dim(self) -> int:
        return 0  # the IB-CVAE adds its label

    # ----------------------------------------------------------------------------------------------------- the model
    def posterior_parameters(self, x: Tensor, condition: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q(z_id, z_exp | X), each (B, |z_id| + |z_exp|), from standardised coordinates ``x``."""
        points = (self.denormalise(x) - self.point_centre) / self.point_scale
        features = self.head(self.encoder(points))
        if condition is not None:
            features = torch.cat([features, condition], dim=-1)
        mu, logvar = self.posterior(features).chunk(2, dim=-1)
        return mu, logvar

    def encode_normalised(self, x: Tensor) -> Tensor:
        return self.posterior_parameters(x)[0]

    def decode_normalised(self, latent: Tensor) -> Tensor:
        return self.full_decoder(latent).view(latent.shape[0], self.num_vertices, 3)

    def decode_identity_normalised(self, identity: Tensor) -> Tensor:
        return self.identity_decoder(identity).view(identity.shape[0], self.num_vertices, 3)

    def latent_factors(self) -> dict[str, slice]:
        """z_id and z_exp (for the IB-CVAE the label follows z_exp and stays at its mean when sampling by factor)."""
        return {"identity": slice(0, self.identity_dim),
                "expression": slice(self.identity_dim, self.identity_dim + self.expression_dim)}

    def split_latent(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """(z_id, the rest): the identity code and the expression code (and, for the IB-CVAE, its label)."""
        return latent[..., : self.identity_dim], latent[..., self.identity_dim:]

    # -------------------------------------------------------------------------------------------- metre-space extras
    @torch.no_grad()
    def predict_neutral(self, vertices: Tensor) -> Tensor:
        """The neutral faces (B, V, 3) in metres of meshes (B, V, 3) in metres: the identity decoder of z_id."""
        vertices, single = self._as_batch(vertices)
        identity, _ = self.split_latent(self.encode_normalised(self.normalise(vertices)))
        neutral = self.denormalise(self.decode_identity_normalised(identity))
        return neutral[0] if single else neutral

    @torch.no_grad()
    def swap_expression(self, source: Tensor, target: Tensor) -> Tensor:
        """``target``'s identity with ``source``'s expression: decode (z_id of target, z_exp of source).

        Single (V, 3) meshes pair with every mesh of a batch; returns (B, V, 3) metres, or (V, 3) for two meshes.
        """
        (z_source, z_target), single = self._encode_for("swap_expression", source, target)
        identity, _ = self.split_latent(z_target)
        _, expression = self.split_latent(z_source)
        meshes = self.decode(torch.cat([identity, expression], dim=-1))
        return meshes[0] if single else meshes

    # ------------------------------------------------------------------------------------------------------ training
    def condition(self, batch: dict[str, Tensor]) -> Tensor | None:
        return None

    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The four terms of Eq. 12 on a batch (``vertices`` and each mesh's ``neutral``, metres)."""
        if "neutral" not in batch:
            raise ValueError(f"{type(self).__name__} learns the identity decoder from each mesh's neutral face: the "
                             "batches need `neutral` (anny-face, anny-bu3dfe, BU-3DFE and CoMA's reader provide it)")
        x, neutral = self.normalise(batch["vertices"]), self.normalise(batch["neutral"])
        condition = self.condition(batch)
        mu, logvar = self.posterior_parameters(x, condition)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # the reparameterisation trick
        identity, expression = self.split_latent(z)
        full_input = [identity.detach(), expression] + ([] if condition is None else [condition])  # stop-gradient
        is_expressive = (batch["vertices"] - batch["neutral"]).abs().flatten(1).amax(1) > NEUTRAL_TOLERANCE
        return {
            "rec": self.squared_error(self.decode_normalised(torch.cat(full_input, dim=-1)), x),
            "id": self.squared_error(self.decode_identity_normalised(identity), neutral),
            "kl": kl_to_standard_normal(mu, logvar),
            "mi": mutual_information_mws(identity, mu[:, : self.identity_dim], logvar[:, : self.identity_dim],
                                         self.dataset_size, is_expressive),
        }

    def squared_error(self, prediction: Tensor, target: Tensor) -> Tensor:
        """L_rec / L_id of Eq. 4 between (B, V, 3) batches, reduced as ``reconstruction_reduction`` says."""
        if self.hparams.reconstruction_reduction == "sum":
            return (prediction - target).pow(2).flatten(1).sum(1).mean()
        return F.mse_loss(prediction, target)

    @property
    def dataset_size(self) -> int:
        """N of the MWS estimate: the number of training meshes (the batch size outside a fit)."""
        trainer = self._trainer
        if trainer is not None and trainer.train_dataloader is not None:
            return len(trainer.train_dataloader.dataset)
        return 1

    def regularisation_weight(self, epoch: int) -> float:
        """λ2 at ``epoch``: linear decay to 0 over ``regularisation_decay_epochs`` (§3.5)."""
        hp = self.hparams
        return hp.lambda_regularisation * max(0.0, 1.0 - epoch / hp.regularisation_decay_epochs)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hp, terms = self.hparams, self.loss_terms(batch)
        loss = (hp.lambda_reconstruction * (terms["rec"] + hp.beta_identity * terms["id"])
                + self.regularisation_weight(self.current_epoch) * (terms["kl"] + hp.beta_mi * terms["mi"]))
        size = len(batch["vertices"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, batch_size=size)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.lr_decay_every, gamma=hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class IBCVAE(IBVAE):
    """IB-CVAE (§3.2.4): IB-VAE conditioned on the expression label Y_exp = one-hot(expression) × level / levels.

    Expression 0 of the dataset's vocabulary is the neutral face (BU-3DFE's ``NE``): its label is the zero vector,
    which is also the label ``encode`` assumes when none is given. The latent code carries the label after z_exp, so
    ``decode(encode(x, expression, level))`` reconstructs under the same label. The prior P(z_exp | Y_exp) of Eq. 5 is
    taken as N(0, I) for every label (the paper does not say otherwise; the label enters through the decoder).

    Args:
        expressions: non-neutral expressions (6 in BU-3DFE).
        levels: expression levels (4 in BU-3DFE); a label's level is divided by it to lie in [0, 1].
        the rest: see :class:`IBVAE`.
    """

    def __init__(self, template: Template | None = None, mean: Tensor | None = None, std: Tensor | None = None,
                 expressions: int = 6, levels: int = 4, **kwargs) -> None:
        self._expressions = expressions
        super().__init__(template, mean, std, **kwargs)
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)

    def _condition_dim(self) -> int:
        return self._expressions

    def label(self, expression: Tensor | int, level: Tensor | float) -> Tensor:
        """Y_exp (B, expressions): one-hot of ``expression`` (1..expressions; 0 = neutral) × ``level`` / levels."""
        expression = torch.as_tensor(expression, device=self.mean.device).long().reshape(-1)
        level = torch.as_tensor(level, dtype=self.mean.dtype, device=self.mean.device).reshape(-1)
        if ((expression < 0) | (expression > self._expressions)).any() or ((level < 0)
                                                                            | (level > self.hparams.levels)).any():
            raise ValueError(f"{type(self).__name__}: expressions are 0 (neutral) .. {self._expressions} and levels "
                             f"0 .. {self.hparams.levels}; got {expression.tolist()} and {level.tolist()}")
        one_hot = F.one_hot(expression, self._expressions + 1)[:, 1:].to(level)
        return one_hot * (level / self.hparams.levels)[:, None]

    def condition(self, batch: dict[str, Tensor]) -> Tensor:
        missing = [key for key in ("expression", "level") if key not in batch]
        if missing:
            raise ValueError(f"{type(self).__name__} is conditioned on expression and level labels; the batches lack "
                             f"{missing} (BU-3DFE and anny-bu3dfe provide both)")
        return self.label(batch["expression"], batch["level"])

    def encode(self, vertices: Tensor, expression: Tensor | int | None = None,
               level: Tensor | float | None = None) -> Tensor:
        """Latent codes (B, |z_id| + |z_exp| + expressions) of meshes in metres under their label (default: none)."""
        vertices, single = self._as_batch(vertices)
        if (expression is None) != (level is None):
            raise ValueError(f"{type(self).__name__}.encode: give both expression and level, or neither (neutral)")
        label = torch.zeros(len(vertices), self._expressions, device=vertices.device) if expression is None else \
            self.label(expression, level).expand(len(vertices), -1)
        mu, _ = self.posterior_parameters(self.normalise(vertices), label)
        latent = torch.cat([mu, label], dim=-1)
        return latent[0] if single else latent

    def encode_normalised(self, x: Tensor) -> Tensor:
        label = x.new_zeros(len(x), self._expressions)
        return torch.cat([self.posterior_parameters(x, label)[0], label], dim=-1)

    @torch.no_grad()
    def generate(self, identity_code: Tensor, expression: Tensor | int, level: Tensor | float) -> Tensor:
        """Faces (B, V, 3) in metres of identity codes (B, |z_id|) or (|z_id|,) under an expression label, with z_exp
        at the prior's mean."""
        identity_code = torch.as_tensor(identity_code, dtype=self.mean.dtype, device=self.mean.device)
        single = identity_code.dim() == 1
        identity_code = identity_code.reshape(-1, self.identity_dim)
        label = self.label(expression, level).expand(len(identity_code), -1)
        expression_code = identity_code.new_zeros(len(identity_code), self.expression_dim)
        meshes = self.decode(torch.cat([identity_code, expression_code, label], dim=-1))
        return meshes[0] if single else meshes
