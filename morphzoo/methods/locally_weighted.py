"""The locally weighted autoencoder (Kim & Kim, "Locally weighted 3D face generative model", arXiv 2107.08737).

A CoMA autoencoder (§3) whose whole-face code is factorised into K part codes by learned projection matrices (§3.2,
after Dubrovina et al. 2019), with pre-computed local weights from a sparse NMF of the training data (§3.1) applied to
the part codes, so that each part code steers its own area of the face. No public code exists; every choice the paper
leaves open is stated here and in the README.

§3.1 Local weights. A non-negative feature matrix X (V × N) is factorised as X ≈ W H with W (V × K) the local weights.
- Feature matrix (our choice; the paper does not say which): X[v, n] = ‖x_n,v − x̄_v‖, each training mesh's
  per-vertex displacement from the training mean, each column scaled to unit L2 norm (every mesh weighs the same).
  Vertices that vary together across people land in one part. The data is registered without pose (AFLW2000-3D's BFM
  fits are; so are the embedded heads), so no alignment is applied first.
- Sparse NMF: scikit-learn's ``NMF`` (coordinate descent, NNDSVDa initialisation, seeded) with an L1 penalty on both
  factors (``l1_ratio=1``, ``alpha_W = sparsity / V``, ``alpha_H`` the same): that is, ``sparsity·(N/V·‖W‖₁ +
  ‖H‖₁)`` added to ½‖X − WH‖². The paper applies Kim & Park's SNMF, whose β penalises the squared L1 norms of H's
  columns and needs a Frobenius term on W to fix NMF's scale ambiguity. scikit-learn has neither: a penalty on H alone
  lets W grow and H shrink without bound, so the L1 term is put on both factors, which fixes the scale. The paper's
  "sparsity constraint 7.5" is not a value of this penalty (nor a Hoyer sparseness, which lies in [0, 1]): at 7.5 every
  factor is zero. :data:`DEFAULT_SPARSITY` (0.04) is the largest value that leaves the fit's relative error within
  0.005 of the unpenalised fit on anny-heads (measured: 0.198 vs 0.197 at 500 heads; 38 % of W and 11 % of H zero).
- W is computed once per training set in ``on_fit_start`` (cached by content hash) and stored as a buffer, so a saved
  model carries it. Its columns are scaled to a maximum of 1 (the paper's Fig. 2 shows them so).

§3.2 Projection and local weights.
- Projection: K bias-free Z × Z matrices P_k (one parameter tensor), part codes p_k = P_k z. Initialised to I/K plus
  N(0, 0.01²) noise (our choice), so that the parts recompose to the whole code, Σ_k p_k = z, from the start.
- Applying the local weights (our reading of "each pre-computed local weight is multiplied by each latent vector",
  after Li et al.'s sketch W·h): the outer products W_k p_kᵀ summed over parts give a per-vertex code field
  F = Σ_k W_k p_kᵀ (V × Z), the part codes blended by the local weights, which the decoder decodes. CoMA's decoder
  starts with a linear layer from the code to the coarsest mesh level; applied per coarsest vertex to F, it is
  ``h[v] = Σ_k w_k[v] · (A p_k)[v] + b[v]``. So W is pooled to the coarsest level (each coarse vertex averages the
  fine vertices that interpolate from it, level by level) and its rows are normalised to sum to one; one holistic
  decoder pass follows (the paper computes no per-part transforms, §2). With uniform weights (``local_weights=False``,
  the ablation) this is CoMA decoding the recomposed code Σ_k p_k (scaled by 1/K).

§4 Training. L1 reconstruction plus Dubrovina et al.'s cycle loss: for every part, a random permutation of the batch
swaps that part's codes across faces; the mixed codes are decoded, re-encoded and factorised, the parts are swapped
back, and the faces they decode must be the inputs (L1; weight ``cycle_weight`` = 1, the paper gives none). Optional:
Dubrovina et al.'s partition-of-identity constraints on the P_k (``partition_weight``, default 0: the paper does not use
them). 300 epochs, batch 32, latent 64, K = 4; "CoMA's other hyper-parameters": Chebyshev K = 6, QEM factors
(4, 4, 4, 4), channels of the "simple" setting, SGD 8e-3 with momentum 0.9, ×0.99 per epoch, weight decay 5e-4.

Applications (§5.1): :meth:`LocallyWeightedAutoencoder.interpolate_part` (Fig. 5) and
:meth:`~LocallyWeightedAutoencoder.combine_parts` (synthesis from parts of several faces);
:meth:`~LocallyWeightedAutoencoder.part_swap_locality` measures how much of a part swap's displacement stays inside that
part's local-weight support.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from morphzoo.mesh.local_weights import DEFAULT_SPARSITY, local_weights_for
from morphzoo.mesh.template import Template
from morphzoo.methods.base import DATA_ARGUMENTS
from morphzoo.methods.coma import SETTINGS, chebyshev_convolutions
from morphzoo.methods.mesh_autoencoder import MeshAutoencoder
from morphzoo.nn.sparse import exporting

PROJECTION_NOISE = 0.01


def cycle_loss(vertices: Tensor, parts: Tensor, decode: Callable[[Tensor], Tensor],
               factorise: Callable[[Tensor], Tensor], permutations: Tensor) -> Tensor:
    """Dubrovina et al.'s cycle loss: swap parts across the batch, decode, re-factorise, swap back, decode, compare.

    Args:
        vertices: (B, ...) the inputs that ``parts`` encode.
        parts: (B, K, Z) their part codes.
        decode: part codes (B, K, Z) -> meshes like ``vertices``.
        factorise: meshes -> part codes (encoder then projection).
        permutations: (K, B) a permutation of the batch per part: mixed face i takes part k from face
            ``permutations[k, i]``.

    Returns the mean absolute difference between the inputs and the faces decoded from the swapped-back parts: zero
    when ``factorise`` inverts ``decode`` exactly.
    """
    part_index = torch.arange(parts.shape[1], device=parts.device)
    mixed = parts[permutations.T, part_index]  # (B, K, Z): mixed[i, k] = parts[permutations[k, i], k]
    recovered = factorise(decode(mixed))
    inverse = torch.argsort(permutations, dim=1)
    restored = recovered[inverse.T, part_index]  # restored[j, k] = recovered[inverse[k, j], k]
    return F.l1_loss(decode(restored), vertices)


def partition_loss(projections: Tensor) -> Tensor:
    """Dubrovina et al.'s partition of the identity for (K, Z, Z) projections: Σ‖P_i² − P_i‖² + Σ_{i≠j}‖P_i P_j‖² +
    ‖Σ P_i − I‖² (squared Frobenius norms)."""
    products = torch.einsum("iab,jbc->ijac", projections, projections)
    diagonal = torch.arange(len(projections))
    idempotent = (products[diagonal, diagonal] - projections).square().sum()
    cross = products.square().sum() - products[diagonal, diagonal].square().sum()
    identity = torch.eye(projections.shape[-1], device=projections.device, dtype=projections.dtype)
    return idempotent + cross + (projections.sum(0) - identity).square().sum()


class LocallyWeightedAutoencoder(MeshAutoencoder):
    """The locally weighted autoencoder (see the module docstring for the paper's settings and our choices).

    ``encode`` returns the whole code z (B, Z) (so sampling, interpolation and fitting work as for every model);
    :meth:`part_codes` factorises it and :meth:`decode_parts` decodes part codes.

    Args:
        template, mean, std: see :class:`~morphzoo.methods.base.MorphableModel` (linked from the DataModule).
        latent_dim: Z, the whole code's size (64 in the paper).
        parts: K, the number of parts (4).
        local_weights: apply the NMF local weights (False: uniform weights, the ablation; W is still computed and
            stored, so that the ablation's part swaps are measured on the same supports).
        sparsity: the NMF's L1 weight (see :func:`morphzoo.mesh.local_weights.sparse_nmf`).
        cycle_weight: weight of :func:`cycle_loss`.
        partition_weight: weight of :func:`partition_loss` (0: off, as in the paper).
        encoder_channels, decoder_channels, cheb_order, sampling_factors, activation: CoMA's (see :class:`CoMA`).
        learning_rate, momentum, weight_decay, lr_decay: CoMA's SGD schedule.
    """

    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.SGD

    def __init__(
        self,
        template: Template | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        latent_dim: int = 64,
        parts: int = 4,
        local_weights: bool = True,
        sparsity: float = DEFAULT_SPARSITY,
        cycle_weight: float = 1.0,
        partition_weight: float = 0.0,
        encoder_channels: Sequence[int] = SETTINGS["simple"]["encoder_channels"],
        decoder_channels: Sequence[int] = SETTINGS["simple"]["decoder_channels"],
        cheb_order: int = 6,
        sampling_factors: Sequence[int] = (4, 4, 4, 4),
        activation: str = "elu",
        learning_rate: float = 8e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_decay: float = 0.99,
    ) -> None:
        super().__init__(template, mean, std, latent_dim, encoder_channels, decoder_channels, sampling_factors,
                         activation, chebyshev_convolutions(cheb_order), output_bias=False)
        self.save_hyperparameters(ignore=DATA_ARGUMENTS)
        if parts < 1:
            raise ValueError(f"LocallyWeightedAutoencoder: parts must be at least 1, got {parts}")
        self.parts = parts
        eye = torch.eye(latent_dim).expand(parts, latent_dim, latent_dim)
        self.projections = torch.nn.Parameter(eye / parts + PROJECTION_NOISE * torch.randn(parts, latent_dim,
                                                                                             latent_dim))
        # NaN until on_fit_start (or set_local_weights) fills it from the training data; saved with the weights.
        self.register_buffer("local_weights", torch.full((self.num_vertices, parts), float("nan")))
        # coarsest_weights() frozen by prepare_inference: they depend on fixed buffers only
        self.register_buffer("frozen_coarsest_weights", None, persistent=False)

    # ------------------------------------------------------------------------------------------------ local weights
    def set_local_weights(self, weights: Tensor | np.ndarray) -> None:
        """Use ``weights`` (V, K), non-negative, as the local weights (``on_fit_start`` computes them from the data)."""
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != self.local_weights.shape or not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"LocallyWeightedAutoencoder: local weights must be finite, non-negative and of shape "
                             f"{tuple(self.local_weights.shape)}, got {tuple(weights.shape)}")
        self.local_weights.copy_(weights)
        self.frozen_coarsest_weights = None

    @property
    def has_local_weights(self) -> bool:
        return bool(torch.isfinite(self.local_weights).all())

    def on_fit_start(self) -> None:
        """Compute the local weights from the training split (cached by its content) unless already set."""
        if self.has_local_weights:
            return
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data, "split_indices"):
            raise ValueError("LocallyWeightedAutoencoder: its local weights come from the training data; fit it with "
                             "a MeshDataModule, or call set_local_weights(local_weights_for(train_vertices, K)) first")
        train = np.sort(data.split_indices["train"])
        self.set_local_weights(local_weights_for(data.collection.vertices[train], self.parts, self.hparams.sparsity))

    def supports(self) -> Tensor:
        """(V,) the part each vertex belongs to most (the argmax of its local weights)."""
        self._require_local_weights()
        return self.local_weights.argmax(dim=1)

    def _require_local_weights(self) -> None:
        if not exporting() and not self.has_local_weights:  # the exporter decodes eagerly, with checks, first
            raise RuntimeError("LocallyWeightedAutoencoder: no local weights yet; fit the model (they come from the "
                               "training data) or call set_local_weights")

    def prepare_inference(self) -> LocallyWeightedAutoencoder:
        """Evaluation mode with :meth:`coarsest_weights` computed once (the ONNX export then has no scatter-adds)."""
        super().prepare_inference()
        if self.has_local_weights or not self.hparams.local_weights:
            self.frozen_coarsest_weights = self.coarsest_weights()
        return self

    def coarsest_weights(self) -> Tensor:
        """(V_coarsest, K) the local weights pooled to the decoder's first level, rows summing to one (uniform 1/K
        with ``local_weights=False``)."""
        if not self.hparams.local_weights:
            return self.local_weights.new_full((self.level_sizes[-1], self.parts), 1 / self.parts)
        self._require_local_weights()
        weights = self.local_weights
        for level, up in enumerate(self.up):  # fine to coarse: each coarse vertex averages the fine vertices that
            index, share = up.up_index.flatten(), up.up_weight.flatten()  # interpolate from it, by their weights
            contributions = (up.up_weight[..., None] * weights[:, None]).flatten(0, 1)
            coarse = self.level_sizes[level + 1]
            pooled = weights.new_zeros(coarse, self.parts).index_add_(0, index, contributions)
            weights = pooled / weights.new_zeros(coarse).index_add_(0, index, share).clamp_min(1e-12)[:, None]
        total = weights.sum(dim=1, keepdim=True)
        return torch.where(total > 0, weights / total.clamp_min(1e-12), torch.full_like(weights, 1 / self.parts))

    # ------------------------------------------------------------------------------------------- codes and decoding
    def part_codes(self, latent: Tensor) -> Tensor:
        """Whole codes (B, Z) -> part codes (B, K, Z), p_k = P_k z."""
        return torch.einsum("kyz,bz->bky", self.projections, latent)

    def decode_parts_normalised(self, parts: Tensor) -> Tensor:
        """Part codes (B, K, Z) -> (B, V, 3) standardised coordinates (module docstring, §3.2)."""
        weight = self.decoder_linear.weight.view(self.level_sizes[-1], self.decoder_channels[0], -1)
        frozen = self.frozen_coarsest_weights
        features = torch.einsum("vcz,bkz,vk->bvc", weight, parts, self.coarsest_weights() if frozen is None else frozen)
        bias = self.decoder_linear.bias.view(self.level_sizes[-1], self.decoder_channels[0])
        return self.decode_coarsest(features + bias)

    def decode_normalised(self, latent: Tensor) -> Tensor:
        return self.decode_parts_normalised(self.part_codes(latent))

    def decode_parts(self, parts: Tensor) -> Tensor:
        """Meshes in metres from part codes (B, K, Z)."""
        return self.denormalise(self.decode_parts_normalised(parts))

    def encode_parts(self, vertices: Tensor | np.ndarray) -> Tensor:
        """Part codes (B, K, Z) (or (K, Z) for one mesh) of meshes in metres."""
        vertices, single = self._as_batch(vertices)
        parts = self.part_codes(self.encode_normalised(self.normalise(vertices)))
        return parts[0] if single else parts

    # --------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = self.normalise(batch["vertices"])
        parts = self.part_codes(self.encode_normalised(x))
        reconstruction = F.l1_loss(self.decode_parts_normalised(parts), x)
        loss = reconstruction
        if self.hparams.cycle_weight > 0 and len(x) > 1:
            permutations = torch.stack([torch.randperm(len(x), device=x.device) for _ in range(self.parts)])
            cycle = cycle_loss(x, parts, self.decode_parts_normalised,
                               lambda meshes: self.part_codes(self.encode_normalised(meshes)), permutations)
            loss = loss + self.hparams.cycle_weight * cycle
            self.log("train/cycle", cycle, batch_size=len(x))
        if self.hparams.partition_weight > 0:
            partition = partition_loss(self.projections)
            loss = loss + self.hparams.partition_weight * partition
            self.log("train/partition", partition, batch_size=len(x))
        self.log("train/reconstruction", reconstruction, batch_size=len(x))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    # ------------------------------------------------------------------------------------------------ applications
    def interpolate_part(self, source: Tensor | np.ndarray, target: Tensor | np.ndarray, part: int,
                         alphas: Sequence[float] | Tensor) -> Tensor:
        """Fig. 5: move ``part``'s code from ``source``'s (α = 0) to ``target``'s (α = 1), the other parts kept.

        ``source``, ``target``: (V, 3) meshes in metres; returns (len(alphas), V, 3).
        """
        self._check_part(part)
        parts = self.encode_parts(torch.stack([torch.as_tensor(source), torch.as_tensor(target)]).float())
        alphas = torch.as_tensor(alphas, dtype=parts.dtype, device=parts.device)
        codes = parts[0].expand(len(alphas), -1, -1).clone()
        codes[:, part] = torch.lerp(parts[0, part].expand(len(alphas), -1), parts[1, part].expand(len(alphas), -1),
                                    alphas[:, None])
        return self.decode_parts(codes)

    def combine_parts(self, faces: Tensor | np.ndarray, assignment: Sequence[int] | Tensor) -> Tensor:
        """Synthesis from parts of several faces: part ``k`` of output ``b`` comes from ``faces[assignment[b, k]]``.

        ``faces``: (N, V, 3) in metres; ``assignment``: (K,) or (B, K) indices into ``faces``; returns (B, V, 3)
        (or (V, 3) for a (K,) assignment).
        """
        assignment = torch.as_tensor(assignment, dtype=torch.long)
        single = assignment.ndim == 1
        assignment = assignment[None] if single else assignment
        if assignment.ndim != 2 or assignment.shape[1] != self.parts:
            raise ValueError(f"combine_parts: assignment must be ({self.parts},) or (B, {self.parts}) face indices, "
                             f"got shape {tuple(assignment.shape)}")
        parts = self.encode_parts(torch.as_tensor(faces).float())
        if parts.ndim != 3 or assignment.min() < 0 or assignment.max() >= len(parts):
            raise ValueError(f"combine_parts: assignment indexes faces 0..{len(parts) - 1} of a (N, V, 3) batch")
        meshes = self.decode_parts(parts[assignment.to(parts.device), torch.arange(self.parts, device=parts.device)])
        return meshes[0] if single else meshes

    def part_swap_displacements(self, faces: Tensor | np.ndarray) -> Tensor:
        """(K, N, V) per-vertex displacement in metres, ``‖decode(face i with face i+1's part k) − decode(face i)‖``,
        of every part swap between consecutive faces of ``faces`` (N, V, 3) (the last takes the first's part)."""
        parts = self.encode_parts(torch.as_tensor(faces).float())
        base = self.decode_parts(parts)
        displacements = []
        for part in range(self.parts):
            swapped = parts.clone()
            swapped[:, part] = parts.roll(-1, dims=0)[:, part]
            displacements.append((self.decode_parts(swapped) - base).norm(dim=-1))
        return torch.stack(displacements)

    def part_swap_locality(self, faces: Tensor | np.ndarray, supports: Tensor | None = None) -> Tensor:
        """How local part swaps are: for each part k, the share of a swap's displacement
        (:meth:`part_swap_displacements`) summed over the vertices that falls inside part k's support, averaged over
        the swaps. ``supports`` (V,) defaults to :meth:`supports`. Returns (K,)."""
        displacement = self.part_swap_displacements(faces)
        supports = self.supports() if supports is None else torch.as_tensor(supports, device=displacement.device)
        inside = displacement * (supports == torch.arange(self.parts, device=supports.device)[:, None])[:, None]
        return (inside.sum(dim=2) / displacement.sum(dim=2).clamp_min(1e-12)).mean(dim=1)

    def _check_part(self, part: int) -> None:
        if not 0 <= part < self.parts:
            raise ValueError(f"{type(self).__name__}: part must be in [0, {self.parts}), got {part}")
