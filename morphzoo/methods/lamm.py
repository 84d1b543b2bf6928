"""LAMM: Locally Adaptive Neural 3D Morphable Models (Tarasiou, Potamias, O'Sullivan, Ploumpis, Zafeiriou; 2024).

The mesh is cut into K regions; each region becomes one token, so a Transformer (or MLP-Mixer) works on K + 1 tokens
whatever the mesh resolution (supplement §4). Paper names, as in the supplement and the notes:

- **Tokenisation** (per region, no weight sharing): :math:`x_i^0 = W^{in}_i \\operatorname{vec}(X_{R_i}) + b_i + e_i`
  with a learned region embedding :math:`e_i`; a learned identity token :math:`x_0^0` is prepended.
- **Encoder**: ``encoder_layers`` = 5 blocks (supplement §2.1), D = 512; **bottleneck**
  :math:`z = W_z \\mathrm{LN}(x_0^{L})`, ``latent_dim`` = 256.
- **Decoder** input: :math:`[y_0^0 = W_y z,\\; y_i^0 + f_{\\delta_i}(\\delta V_{C_i})]` with K learned decoder region
  tokens :math:`y_i^0` and the **manipulation branch** :math:`f_{\\delta_i}` (bias-free MLP 3|C_i| → 64 → 256 → D with
  GELUs, so :math:`f_{\\delta_i}(0) = 0` and zero control displacements change nothing: supplement §3.1);
  ``decoder_layers`` = 3 blocks.
- **Inverse tokenisation** :math:`W^{out}` (per region, D → 3|R_i|), shared by every layer's read-out.
- **Multilayer loss** (supplement §2.1, Table 1: :math:`L_{enc} + L_{dec}` best): on standardised data (mean shape 0),
  encoder layer :math:`l = 0..L_{enc}` reads out :math:`(1 - l/L_{enc}) X` and decoder layer :math:`l = 0..L_{dec}`
  reads out :math:`(l/L_{dec}) Y`, each an L1 term of weight 1 (ten terms for 5 + 3 layers).
- **Two stages**: ``stage="autoencoder"`` (Y = X, lr 1e-3 → 1e-6, batch 32) then ``stage="manipulation"`` from the AE
  checkpoint (``init_from``, lr 1e-4): the target :math:`V^t` is another mesh of the batch, :math:`\\alpha \\sim
  U(0.25, \\alpha_{max})` with :math:`\\alpha_{max}` ramping to 1, :math:`Y = \\alpha V^t + (1-\\alpha) V^s`,
  control input :math:`\\delta V_{C_i} = (Y - V^s)_{C_i}`; half of each batch keeps training the plain AE
  (:math:`\\delta = 0`). AdamW with a per-step cosine schedule in both.

Choices where the paper is silent, stated:

- Manipulation targets (stage 2): the papers do not say how sources and targets are paired. Ours is, with equal
  odds, a mesh of the batch of another identity or one of the same identity with another expression
  (:func:`~morphzoo.metrics.manipulation.manipulation_partners`), the two pairings the evaluation reports
  (:func:`morphzoo.zoo.evaluate.manipulation_metrics`). A neighbouring frame of the same sequence would ask for almost
  no edit; a row without a partner in its batch trains as a plain AE pair.
- The final LayerNorm of each backbone is applied to every layer's tokens before :math:`W^{out}` for the multilayer
  read-out, so each depth is read out exactly like the last.
- Control vertices: the same number n per region (default 10), by farthest-point sampling inside the region
  (:func:`morphzoo.mesh.regions.control_vertices`); every region has a branch. Equal counts let the K branches run as
  one batched einsum.
- Per-region (de)tokenisation runs as K dense GEMMs on zero-copy slices of one region-major weight (a block-diagonal
  product). The vectorised alternatives cost more here: padding to the largest region (one ``bmm``) must materialise a
  padded copy of the weight every call (measured ~20× slower at batch 1 on 4.2k-72k vertices on this CPU: 47 vs 2.6 ms
  at 4.2k, 1.07 s vs 64 ms at 72k vertices, D = 512), and a sparse block-diagonal matmul is ~10× slower; storing the
  weight padded would add parameters that never train. The loop is over K ≈ 11 regions, never over vertices.
- AdamW weight decay 0.01 (torch's default; the paper gives none). In the autoencoder stage the manipulation branch is
  left out of the optimiser (it receives no gradient there, and weight decay would still shrink it).
- ``init_from`` loads every weight and buffer of the AE checkpoint strictly except the manipulation branch, which
  starts fresh; it runs once, when fitting starts (resuming a run restores its own checkpoint instead).
- α_max ramps linearly from 0.25 to 1 over the first ``alpha_ramp`` fraction (default half) of the training steps.

Parameter counts (``parameter_counts``): at the supplement's UHM12k setting (11,916 vertices, K = 11, D = 512) the
decoder backbone has 9,453,568 parameters (Transformer) and 796,840 (MLP-Mixer), Table 3's 9.45M and 0.8M. The
inverse tokenisation :math:`W^{out}` has 3·11,916·(512 + 1) = 18,338,724 parameters against Table 3's 19.5M; the
table's 72k figure (110M) is exactly 3·71,926·512 = 110.5M, so the 12k entry is not 3VD: it would fit regions
padded to a largest region of ~1,154 vertices (11·1,154·3·512 = 19.5M), which we cannot confirm; ours is exact.

Bundling: W^in and W^out alone hold 2·3V·D parameters (12.9M on anny-face at D = 512; the whole paper-size model is
40.0M parameters, 160 MB in float32; the paper-size Mixer 17.0M, 68 MB). :data:`SETTINGS` ``"bundle"`` (D = 128,
latent 128: 5.4M parameters, 21.7 MB; the Mixer 4.0M, 15.9 MB) is the size for a checkpoint shipped in the repository.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from morphzoo.mesh import regions as region_tools
from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS, MorphableModel
from morphzoo.metrics.manipulation import manipulation_partners
from morphzoo.nn.transformer import TokenBackbone

SETTINGS = {
    "paper": {"dim": 512, "latent_dim": 256, "encoder_layers": 5, "decoder_layers": 3},
    "bundle": {"dim": 128, "latent_dim": 128, "encoder_layers": 5, "decoder_layers": 3},
}
CONTROL_HIDDEN = (64, 256)  # f_delta's hidden widths (notes: 3|C_i| -> 64 -> 256 -> D)
# State entries of the manipulation branch, its control vertices and their Gaussians: not taken from an AE checkpoint.
MANIPULATION = ("control_branch.", "control_index", "control_mean", "control_cholesky")


def _uniform_(weight: Tensor, fan_in: int) -> Tensor:
    """``nn.Linear``'s default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in)
    return nn.init.uniform_(weight, -bound, bound)


class RegionTokeniser(nn.Module):
    r"""Per-region linear tokenisation :math:`x_i = W_i \operatorname{vec}(X_{R_i}) + b_i`, (B, V, 3) -> (B, K, D).

    ``order`` lists the vertices region by region (``sizes[i]`` of region i); :math:`W_i` is the i-th row block of one
    (3V, D) weight, so the K products run on zero-copy slices (see the module docstring for why not a padded bmm).

    Args:
        order: (V,) vertex indices grouped by region.
        sizes: vertices per region, summing to V.
        dim: token features D.
    """

    def __init__(self, order: Tensor, sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.register_buffer("order", order, persistent=False)
        self.splits = [3 * n for n in sizes]
        self.weight = nn.Parameter(torch.empty(3 * len(order), dim))
        self.bias = nn.Parameter(torch.empty(len(sizes), dim))
        with torch.no_grad():
            for weight, bias, fan_in in zip(self.weight.split(self.splits), self.bias, self.splits, strict=True):
                _uniform_(weight, fan_in)
                _uniform_(bias, fan_in)

    def forward(self, x: Tensor) -> Tensor:
        chunks = x[:, self.order].flatten(1).split(self.splits, dim=1)
        return torch.stack([c @ w for c, w in zip(chunks, self.weight.split(self.splits), strict=True)], 1) + self.bias


class RegionDetokeniser(nn.Module):
    r"""Per-region inverse tokenisation :math:`\operatorname{vec}(\hat X_{R_i}) = W^{out}_i y_i + b^{out}_i`,
    (N, K, D) -> (N, V, 3): :math:`W^{out}` of the paper, one (3V, D) weight in row blocks as in
    :class:`RegionTokeniser`.

    Args:
        order: (V,) vertex indices grouped by region.
        sizes: vertices per region.
        dim: token features D.
    """

    def __init__(self, order: Tensor, sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        self.splits = [3 * n for n in sizes]
        self.weight = nn.Parameter(torch.empty(3 * len(order), dim))
        self.bias = nn.Parameter(torch.empty(3 * len(order)))
        _uniform_(self.weight, dim)
        _uniform_(self.bias, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        weights = self.weight.split(self.splits)
        flat = torch.cat([F.linear(tokens[:, i], w) for i, w in enumerate(weights)], 1) + self.bias
        return flat.view(tokens.shape[0], -1, 3)[:, self.inverse]


class ControlBranch(nn.Module):
    r"""The manipulation branches :math:`f_{\delta_i}`, one bias-free MLP per region, run together:

    .. math::
        f_{\delta_i}(\delta) = W^3_i\, \mathrm{GELU}(W^2_i\, \mathrm{GELU}(W^1_i \operatorname{vec}(\delta))),
        \qquad f_{\delta_i}(0) = 0,

    (B, K, n, 3) control displacements -> (B, K, D) offsets of the decoder region tokens.

    Args:
        num_regions: K.
        num_controls: control vertices per region n.
        dim: token features D.
        hidden: the two hidden widths (64 and 256).
    """

    def __init__(self, num_regions: int, num_controls: int, dim: int, hidden: Sequence[int] = CONTROL_HIDDEN) -> None:
        super().__init__()
        widths = [3 * num_controls, *hidden, dim]
        self.weights = nn.ParameterList(
            _uniform_(nn.Parameter(torch.empty(num_regions, fan_out, fan_in)), fan_in)
            for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, delta: Tensor) -> Tensor:
        h = delta.flatten(2)
        for i, weight in enumerate(self.weights):
            h = torch.einsum("bki,koi->bko", F.gelu(h) if i else h, weight)
        return h


class LAMM(MorphableModel):
    """LAMM autoencoder with local manipulation (see the module docstring for the paper and our choices).

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        backbone: ``"transformer"`` or ``"mixer"``.
        dim: token features D (512 in the paper; :data:`SETTINGS`).
        encoder_layers, decoder_layers: depths (5 and 3).
        heads: attention heads (Transformer).
        multiplier: feed-forward width multiple (default ×4 Transformer, ×0.5 Mixer).
        latent_dim: bottleneck size (256).
        regions: where the regions come from: ``"template"`` (the template's labels as they are; every vertex must
            have one), ``"merge"`` (the template's labels completed and merged/split to ``num_regions``),
            ``"cluster"`` (k-means of the template into ``num_regions``) or a path to a ``regions.json``.
        num_regions: K for ``"merge"`` and ``"cluster"`` (``None``: the template's count).
        control_vertices: control vertices per region (farthest-point sampling), a JSON file
            ``{"region": [indices]}``, or a (K, n) list of indices.
        stage: ``"autoencoder"`` or ``"manipulation"``.
        loss: ``"multilayer"`` (:math:`L_{enc} + L_{dec}`) or ``"output"`` (L1 on the output only, as the
            supplement's Fig. 3 models).
        learning_rate, min_learning_rate, weight_decay: AdamW with a cosine schedule from ``learning_rate`` to
            ``min_learning_rate`` over the run.
        alpha_min, alpha_ramp: manipulation stage: α ~ U(alpha_min, α_max), α_max ramping from alpha_min to 1 over
            the first ``alpha_ramp`` fraction of the training steps.
        init_from: manipulation stage: the autoencoder's Lightning checkpoint to start from.
    """

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        backbone: str = "transformer",
        dim: int = 512,
        encoder_layers: int = 5,
        decoder_layers: int = 3,
        heads: int = 8,
        multiplier: float | None = None,
        latent_dim: int = 256,
        regions: str = "merge",
        num_regions: int | None = 11,
        control_vertices: int | str | Sequence[Sequence[int]] = 10,
        stage: str = "autoencoder",
        loss: str = "multilayer",
        learning_rate: float = 1e-3,
        min_learning_rate: float = 1e-6,
        weight_decay: float = 0.01,
        alpha_min: float = 0.25,
        alpha_ramp: float = 0.5,
        init_from: str | None = None,
    ) -> None:
        super().__init__(template, mean, std)
        for name, value, allowed in (("stage", stage, ("autoencoder", "manipulation")),
                                     ("loss", loss, ("multilayer", "output")),
                                     ("backbone", backbone, ("transformer", "mixer"))):
            if value not in allowed:
                raise ValueError(f"LAMM: {name} must be one of {allowed}, got {value!r}")
        if min(encoder_layers, decoder_layers) < 1:
            raise ValueError(f"LAMM: encoder_layers and decoder_layers must be >= 1, got "
                             f"{encoder_layers} and {decoder_layers}")
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
        labels, self.region_names = _resolve_regions(self.template, regions, num_regions)
        controls = _resolve_controls(self.template, labels, self.region_names, control_vertices)
        num, sizes = len(self.region_names), np.bincount(labels).tolist()
        order = torch.from_numpy(np.argsort(labels, kind="stable"))
        self.register_buffer("region_labels", torch.from_numpy(labels))
        self.register_buffer("control_index", torch.from_numpy(controls))

        self.tokeniser = RegionTokeniser(order, sizes, dim)
        self.region_embedding = nn.Parameter(torch.randn(num, dim) * 0.02)
        self.identity_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.encoder = TokenBackbone.build(backbone, encoder_layers, num + 1, dim, heads, multiplier)
        self.to_latent = nn.Linear(dim, latent_dim)
        self.from_latent = nn.Linear(latent_dim, dim)
        self.decoder_tokens = nn.Parameter(torch.randn(num, dim) * 0.02)
        self.control_branch = ControlBranch(num, controls.shape[1], dim)
        self.decoder = TokenBackbone.build(backbone, decoder_layers, num + 1, dim, heads, multiplier)
        self.detokeniser = RegionDetokeniser(order, sizes, dim)

        # Per-region Gaussians of the control vertices (standardised coordinates) behind `sample_regions`.
        self.register_buffer("control_mean", torch.empty(0))
        self.register_buffer("control_cholesky", torch.empty(0))

    @property
    def num_regions(self) -> int:
        return len(self.region_names)

    # ----------------------------------------------------------------------------------------------------- the model
    def _encoder_tokens(self, x: Tensor) -> Tensor:
        regions = self.tokeniser(x) + self.region_embedding
        return torch.cat([self.identity_token.expand(x.shape[0], 1, -1), regions], 1)

    def _decoder_input(self, latent: Tensor, offsets: Tensor | None) -> Tensor:
        regions = self.decoder_tokens.expand(latent.shape[0], -1, -1)
        if offsets is not None:
            regions = regions + offsets
        return torch.cat([self.from_latent(latent)[:, None], regions], 1)

    def encode_normalised(self, x: Tensor) -> Tensor:
        return self.to_latent(self.encoder(self._encoder_tokens(x))[:, 0])

    def decode_normalised(self, latent: Tensor, offsets: Tensor | None = None) -> Tensor:
        """Standardised meshes (B, V, 3) from latents (B, latent_dim); ``offsets`` (B, K, D) are added to the decoder
        region tokens (the manipulation branch's output, or the noise of :meth:`corrupt_region_token`)."""
        return self.detokeniser(self.decoder(self._decoder_input(latent, offsets))[:, 1:])

    def control_offsets(self, displacements: Tensor) -> Tensor:
        """(B, K, n, 3) standardised control displacements -> (B, K, D) decoder token offsets :math:`f_\\delta`."""
        return self.control_branch(displacements)

    # ------------------------------------------------------------------------------------------------- applications
    def control_displacements(self, source: Tensor, target: Tensor) -> Tensor:
        """(B, K, n, 3) metres: how far each control vertex moves from ``source`` to ``target`` meshes (metres)."""
        return (target - source)[:, self.control_index]

    def edit(self, vertices: Tensor | np.ndarray, control_displacements: Tensor) -> Tensor:
        """Move the control vertices of meshes by ``control_displacements`` and let LAMM deform the rest.

        Args:
            vertices: (B, V, 3) or (V, 3) source meshes in metres.
            control_displacements: (B, K, n, 3) or (K, n, 3) displacements of the control vertices
                (``self.control_index``) in metres; zeros leave a region as the autoencoder reconstructs it.
        Returns: the edited meshes in metres, shaped like ``vertices``.
        """
        vertices, single = self._as_batch(vertices)
        displacements = torch.as_tensor(control_displacements, dtype=vertices.dtype, device=vertices.device)
        if displacements.dim() == 3:
            displacements = displacements[None]
        expected = (*self.control_index.shape, 3)
        if displacements.shape[1:] != expected or len(displacements) not in (1, len(vertices)):
            raise ValueError(f"LAMM.edit: control_displacements must be (B, {expected[0]}, {expected[1]}, 3) or "
                             f"{expected} in metres (regions × control vertices, see model.control_index), got "
                             f"{tuple(displacements.shape)}")
        offsets = self.control_offsets(displacements / self.std[self.control_index])
        edited = self.denormalise(self.decode_normalised(self.encode_normalised(self.normalise(vertices)), offsets))
        return edited[0] if single else edited

    def corrupt_region_token(self, latent: Tensor, region: int, noise: float = 1.0,
                             generator: torch.Generator | None = None) -> Tensor:
        """Supplement §3.1: decode (metres) with learned token i corrupted, :math:`y_i^{0\\prime} = y_i^0 + n`,
        :math:`n \\sim \\mathcal N(0, (\\text{noise} \\cdot \\operatorname{std}(y^0))^2 I)`."""
        offsets = torch.zeros(len(latent), self.num_regions, self.hparams.dim, device=latent.device)
        offsets[:, region] = torch.randn(len(latent), self.hparams.dim, generator=generator).to(latent) \
            * noise * self.decoder_tokens.std()
        return self.denormalise(self.decode_normalised(latent, offsets))

    @torch.no_grad()
    def locality_ratios(self, vertices: Tensor, noise: float = 1.0, seed: int = 0) -> Tensor:
        """(K,) for each region i: mean vertex change inside :math:`R_i` over mean change outside it when token i is
        corrupted (:meth:`corrupt_region_token`); large ratios mean corruption stays in its region (Fig. 3)."""
        latent = self.encode(vertices)
        clean = self.decode(latent)
        ratios = []
        for region in range(self.num_regions):
            generator = torch.Generator().manual_seed(seed)
            change = (self.corrupt_region_token(latent, region, noise, generator) - clean).norm(dim=-1).mean(0)
            inside = self.region_labels == region
            ratios.append(change[inside].mean() / change[~inside].mean().clamp_min(1e-12))
        return torch.stack(ratios)

    @torch.no_grad()
    def fit_control_distribution(self, meshes: Iterable[Tensor | dict[str, Tensor]] | Tensor | np.ndarray,
                                 batch_size: int = 256) -> None:
        """Fit per-region Gaussians (full covariance) of the control vertices' standardised positions over the
        training meshes (same inputs as :meth:`fit_latent_distribution`); stored with the model, used by
        :meth:`sample_regions`."""
        if isinstance(meshes, (Tensor, np.ndarray)):
            meshes = [meshes[start:start + batch_size] for start in range(0, len(meshes), batch_size)]
        controls = torch.cat([
            self.normalise(self._as_batch(batch["vertices"] if isinstance(batch, dict) else batch)[0])
            [:, self.control_index].flatten(2).double() for batch in meshes])  # (N, K, 3n)
        if len(controls) <= controls.shape[-1]:
            raise ValueError(f"LAMM.fit_control_distribution: a {controls.shape[-1]}-dimensional Gaussian per region "
                             f"needs more than {controls.shape[-1]} meshes, got {len(controls)}")
        centred = controls - controls.mean(0)
        covariance = torch.einsum("nki,nkj->kij", centred, centred) / (len(controls) - 1)
        ridge = 1e-9 * covariance.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-12)
        covariance.diagonal(dim1=1, dim2=2).add_(ridge[:, None])
        self.control_mean = controls.mean(0).to(self.mean)
        self.control_cholesky = torch.linalg.cholesky(covariance).to(self.mean)

    @torch.no_grad()
    def sample_regions(self, regions: Sequence[int | str], vertices: Tensor | None = None, n: int = 1,
                       generator: torch.Generator | None = None) -> Tensor:
        """Region sampling (paper §3-4 applications): new random shapes for the chosen ``regions`` only.

        The base is ``vertices`` (B, V, 3) in metres, or ``n`` global samples from the latent Gaussian
        (:meth:`fit_latent_distribution`). For each chosen region, control vertex positions are drawn from the region's
        Gaussian (:meth:`fit_control_distribution`) and the base is edited towards them; other regions get zero
        displacement. Meaningful after the manipulation stage. Returns metres.
        """
        if self.control_mean.numel() == 0:
            raise RuntimeError("LAMM has no control distribution yet: call model.fit_control_distribution("
                               "data.train_dataloader()) once (it is saved with the model)")
        if vertices is not None:
            latent = self.encode_normalised(self.normalise(self._as_batch(vertices)[0]))
        elif self.latent_mean.numel():
            latent = self.sample_latent(n, generator)
        else:
            raise RuntimeError("LAMM.sample_regions: pass vertices, or call model.fit_latent_distribution(...) first")
        base = self.decode_normalised(latent)[:, self.control_index]  # (B, K, n, 3)
        chosen = [self.region_names.index(r) if isinstance(r, str) else int(r) for r in regions]
        noise = torch.randn(len(latent), len(chosen), self.control_mean.shape[-1], generator=generator).to(base)
        drawn = self.control_mean[chosen] + torch.einsum("kij,bkj->bki", self.control_cholesky[chosen], noise)
        displacements = torch.zeros_like(base)
        displacements[:, chosen] = drawn.view(len(latent), len(chosen), -1, 3) - base[:, chosen]
        return self.denormalise(self.decode_normalised(latent, self.control_offsets(displacements)))

    # ------------------------------------------------------------------------------------------------------- training
    def multilayer_loss(self, x: Tensor, y: Tensor, displacements: Tensor | None = None) -> dict[str, Tensor]:
        """L1 losses on standardised data: source ``x``, target ``y`` (B, V, 3), standardised control displacements
        (B, K, n, 3) or None. ``"encoder"``: Σ_l |read-out(x^l) - (1 - l/L_enc) x|; ``"decoder"``: Σ_l |read-out(y^l)
        - (l/L_dec) y|; ``"output"``: the last decoder term; ``"loss"``: what the configured ``loss`` trains."""
        encoder_states = self.encoder(self._encoder_tokens(x), all_layers=True)  # (L_enc + 1, B, K + 1, D)
        latent = self.to_latent(encoder_states[-1][:, 0])
        offsets = None if displacements is None else self.control_offsets(displacements)
        if self.hparams.loss == "output":
            output = F.l1_loss(self.decode_normalised(latent, offsets), y)
            return {"output": output, "loss": output}
        decoder_states = self.decoder(self._decoder_input(latent, offsets), all_layers=True)
        terms = {}
        for name, states, target, weights in (
            ("encoder", encoder_states, x, 1 - torch.linspace(0, 1, len(encoder_states))),
            ("decoder", decoder_states, y, torch.linspace(0, 1, len(decoder_states))),
        ):
            readout = self.detokeniser(states[:, :, 1:].flatten(0, 1)).view(len(states), *target.shape)
            per_layer = (readout - weights.to(target)[:, None, None, None] * target).abs().mean(dim=(1, 2, 3))
            terms[name] = per_layer.sum()
            if name == "decoder":
                terms["output"] = per_layer[-1]
        terms["loss"] = terms["encoder"] + terms["decoder"]
        return terms

    def manipulation_batch(self, x: Tensor, alpha_max: float, identity: Tensor | None = None,
                           expression: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Self-supervised manipulation pairs from a standardised batch ``x`` and its (B,) labels (None where the data
        has none): returns the targets Y and the standardised control displacements. Each mesh's :math:`V^t` is, with
        equal odds, a mesh of the batch of another identity or of the same identity with another expression (the
        other kind where the drawn one has none); the first half of the batch, and rows with no partner at all, are
        plain AE pairs (α = 0)."""
        count = len(x)
        # labels may be absent: the partners are then made on the CPU
        by_identity = manipulation_partners("identity", count, identity, expression).to(x.device)
        by_expression = manipulation_partners("expression", count, identity, expression).to(x.device)
        prefer_expression = torch.rand(count, device=x.device) < 0.5
        first = torch.where(prefer_expression, by_expression, by_identity)
        partner = torch.where(first >= 0, first, torch.where(prefer_expression, by_identity, by_expression))
        alpha = self.hparams.alpha_min + (alpha_max - self.hparams.alpha_min) * torch.rand(count, device=x.device)
        alpha[: count // 2] = 0
        alpha = torch.where(partner >= 0, alpha, 0.0)
        y = x + alpha[:, None, None] * (x[partner.clamp(min=0)] - x)  # α V^t + (1 - α) V^s
        return y, (y - x)[:, self.control_index]

    def alpha_max(self) -> float:
        ramp = self.hparams.alpha_ramp * self.trainer.estimated_stepping_batches
        progress = 1.0 if ramp <= 0 else min(1.0, self.global_step / ramp)
        return self.hparams.alpha_min + (1 - self.hparams.alpha_min) * progress

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = self.normalise(batch["vertices"])
        if self.hparams.stage == "autoencoder":
            losses = self.multilayer_loss(x, x)
        else:
            pairs = self.manipulation_batch(x, self.alpha_max(), batch.get("identity"), batch.get("expression"))
            losses = self.multilayer_loss(x, *pairs)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(x))
        return losses["loss"]

    def configure_optimizers(self):
        hp = self.hparams
        parameters = [p for name, p in self.named_parameters()
                      if hp.stage == "manipulation" or not name.startswith(MANIPULATION)]
        optimizer = torch.optim.AdamW(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(self.trainer.estimated_stepping_batches)), eta_min=hp.min_learning_rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from:
            self.load_autoencoder(self.hparams.init_from)

    def load_autoencoder(self, path: str) -> None:
        """Load an autoencoder checkpoint strictly, except the manipulation branch: a Lightning ``.ckpt``, or a zoo
        checkpoint folder (``model.safetensors`` + ``config.json``, e.g. the bundled ``zoo/lamm-anny-face``, whose
        float16 weights are loaded as float32)."""
        weights = Path(path) / "model.safetensors"
        if Path(path).is_dir() and weights.is_file():
            checkpoint = {key: value.float() if value.is_floating_point() else value
                          for key, value in load_file(weights, device=str(self.mean.device)).items()}
        elif Path(path).is_file():
            checkpoint = torch.load(path, map_location=self.mean.device, weights_only=False)
        else:
            raise FileNotFoundError(f"LAMM: init_from checkpoint {path!r} does not exist; train the autoencoder "
                                    "stage first (recipes/lamm.yaml) and point init_from at its checkpoint (a "
                                    "Lightning .ckpt or a zoo folder such as zoo/lamm-anny-face)")
        state = {k: v for k, v in checkpoint.get("state_dict", checkpoint).items() if not k.startswith(MANIPULATION)}
        if "region_labels" in state and not torch.equal(state["region_labels"].to(self.region_labels),
                                                        self.region_labels):
            raise ValueError(f"LAMM: {path} was trained with other regions; use the same regions and num_regions "
                             "as the autoencoder")
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(MANIPULATION)]
        if missing or unexpected:
            raise ValueError(f"LAMM: {path} is not an autoencoder checkpoint of this architecture: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")

    # --------------------------------------------------------------------------------------------------- bookkeeping
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: tokenisation (W^in, embeddings, identity token), encoder, bottleneck, decoder
        tokens, decoder (the backbone: Table 3's "decoder"), detokenisation (W^out: Table 3's "token⁻¹"),
        manipulation branch, and the total."""
        def count(*modules) -> int:
            return sum(p.numel() for m in modules for p in ([m] if isinstance(m, nn.Parameter) else m.parameters()))

        counts = {
            "tokeniser": count(self.tokeniser, self.region_embedding, self.identity_token),
            "encoder": count(self.encoder), "bottleneck": count(self.to_latent, self.from_latent),
            "decoder_tokens": count(self.decoder_tokens), "decoder": count(self.decoder),
            "detokeniser": count(self.detokeniser), "control_branch": count(self.control_branch),
        }
        counts["total"] = count(self)
        return counts

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Control Gaussians exist only once fitted: take their size from the checkpoint (as the latent Gaussian).
        for name in ("control_mean", "control_cholesky"):
            state_dict.setdefault(prefix + name, torch.empty(0))
            setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.mean.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["region_names"] = list(self.region_names)

    @classmethod
    def restore_arguments(cls, template: Template, state: dict[str, Tensor], init_args: dict,
                          extra: dict | None = None) -> tuple[Template, dict]:
        """Regions and control vertices come from the saved buffers (no dataset or region file needed)."""
        labels = state["region_labels"].cpu().numpy()
        names = (extra or {}).get("region_names") or [f"region{k}" for k in range(labels.max() + 1)]
        template = dataclasses.replace(template, regions=labels, region_names=tuple(names))
        init_args = {**init_args, "regions": "template", "num_regions": None, "init_from": None,
                     "control_vertices": state["control_index"].tolist()}
        return template, init_args


def _resolve_regions(template: Template, source: str, num_regions: int | None) -> tuple[np.ndarray, tuple[str, ...]]:
    if source == "template":
        if template.regions is None:
            raise ValueError(f"LAMM: template '{template.name}' has no regions; use regions='cluster' with "
                             "num_regions=K, or a regions.json path")
        labels = region_tools.check_partition(template.regions, template.num_vertices, f"template '{template.name}'")
        names = template.region_names or tuple(f"region{k}" for k in range(labels.max() + 1))
        return labels, tuple(names)
    if source == "merge":
        return region_tools.merge_regions(template, num_regions)
    if source == "cluster":
        if num_regions is None:
            raise ValueError("LAMM: regions='cluster' needs num_regions (the supplement uses 11 for heads)")
        return region_tools.cluster_regions(template, num_regions)
    if Path(source).suffix == ".json":
        return region_tools.load_regions(source, template.num_vertices)
    raise ValueError(f"LAMM: regions must be 'template', 'merge', 'cluster' or a path to a regions.json, "
                     f"got {source!r}")


def _resolve_controls(template: Template, labels: np.ndarray, names: tuple[str, ...],
                      controls: int | str | Sequence[Sequence[int]]) -> np.ndarray:
    if isinstance(controls, int):
        return region_tools.control_vertices(template.vertices, labels, controls)
    if isinstance(controls, str):
        return region_tools.load_control_vertices(controls, labels, names)
    controls = np.asarray(controls, dtype=np.int64)
    if controls.ndim != 2 or len(controls) != len(names) or (labels[controls] != np.arange(len(names))[:, None]).any():
        raise ValueError(f"LAMM: control_vertices must be (K={len(names)}, n) vertex indices, row i inside region i")
    return controls
