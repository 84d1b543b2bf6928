"""Decoupling of identity and expression in a generative face model (Abrevaya et al. 2019, §5.3 "Decoupling", after
the protocol of Donahue et al. 2018, *Semantically Decomposing the Latent Spaces of Generative Adversarial Networks*).

An embedding network per factor decides whether two meshes are the "same" identity (or expression): their embedding
distance is below a threshold τ, chosen on labelled pairs by :func:`choose_threshold`. :class:`Decoupling` then counts
how often a model's meshes that share a factor's code are judged the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric


def _distances(values: Tensor | np.ndarray, name: str) -> Tensor:
    distances = torch.as_tensor(values).detach().to("cpu", torch.float64).reshape(-1)
    if len(distances) == 0:
        raise ValueError(f"choose_threshold: {name} is empty; the validation set needs positive and negative pairs")
    if not torch.isfinite(distances).all():
        raise ValueError(f"choose_threshold: {name} contain NaN or infinite values")
    return distances


def choose_threshold(positive_distances: Tensor | np.ndarray, negative_distances: Tensor | np.ndarray,
                     max_far: float = 0.10) -> tuple[float, float, float]:
    r"""The verification threshold τ of highest accuracy whose false acceptance rate is below ``max_far``.

    A pair is judged "same" when its distance is below τ (:math:`d < \tau`). For :math:`P` positive pairs (same
    label) with distances :math:`d^+` and :math:`N` negative pairs with distances :math:`d^-`,

    .. math::
        \mathrm{FAR}(\tau) = \frac{|\{d^- < \tau\}|}{N}, \qquad
        \mathrm{accuracy}(\tau) = \frac{|\{d^+ < \tau\}| + |\{d^- \ge \tau\}|}{P + N},

    and τ maximises the accuracy subject to :math:`\mathrm{FAR}(\tau) < \text{max\_far}` (the supplement's
    "Decoupling Evaluation - Implementation Details": FAR below 10 %). Both only change where τ crosses a distance,
    so every way of splitting the sorted distinct distances :math:`u_1 < \dots < u_K` is tried: τ = :math:`u_1`
    (nothing accepted), the midpoints :math:`(u_k + u_{k+1}) / 2` (:math:`u_k` and below accepted), and the float
    just above :math:`u_K` (everything accepted). Ties in accuracy go to the smallest τ (the lowest FAR).

    Args:
        positive_distances: (P,) distances of the positive pairs.
        negative_distances: (N,) distances of the negative pairs.
        max_far: the bound on the FAR, in (0, 1].

    Returns:
        (threshold, accuracy, far), accuracy and FAR as fractions in [0, 1].
    """
    if not 0 < max_far <= 1:
        raise ValueError(f"choose_threshold: max_far must lie in (0, 1], got {max_far}")
    positive = torch.sort(_distances(positive_distances, "positive_distances")).values
    negative = torch.sort(_distances(negative_distances, "negative_distances")).values
    distinct = torch.unique(torch.cat([positive, negative]))  # sorted
    just_above = torch.from_numpy(np.nextafter(distinct.numpy(), np.inf))  # d < just_above[k] iff d <= u_k
    midpoints = torch.maximum((distinct[:-1] + distinct[1:]) / 2, just_above[:-1])  # exact even for adjacent floats
    candidates = torch.cat([distinct[:1], midpoints, just_above[-1:]])
    true_accepts = torch.searchsorted(positive, candidates, side="left")  # number of d+ < tau
    false_accepts = torch.searchsorted(negative, candidates, side="left")
    far = false_accepts.double() / len(negative)
    accuracy = (true_accepts + len(negative) - false_accepts).double() / (len(positive) + len(negative))
    best = int(torch.argmax(accuracy.masked_fill(far >= max_far, -1.0)))  # tau = u_1 has FAR 0: always feasible
    return float(candidates[best]), float(accuracy[best]), float(far[best])


class Decoupling(Metric):
    r"""The percentage of (reference, sample) pairs that an embedding judges to share a factor (Abrevaya et al. 2019,
    §5.3, "Decoupling").

    For identity decoupling a model generates references :math:`x_i = G(z^i_{id}, z^i_{exp}, z^i_{noise})` and, for
    each, samples :math:`\mathcal Y(x_i) = \{G(z^i_{id}, z^j_{exp}, z^j_{noise})\}_{j=1..m}` that keep its identity
    code; with the identity embedding :math:`e` and its threshold τ,

    .. math::
        \mathrm{Dec} = \frac{100}{n m} \sum_{i=1}^{n} \sum_{j=1}^{m}
                       \bigl[\, \lVert e(x_i) - e(y_{ij}) \rVert_2 < \tau \,\bigr] \quad (\%),

    and analogously for expression. Higher is better: changing the other factor's code did not change this one.

    Args:
        embedder: any callable mapping (K, V, 3) meshes in metres to (K, D) embeddings (e.g. a trained
            :class:`~morphzoo.nn.mesh_embedding.MeshEmbeddingNet` in eval mode); called without gradients, once per
            update on the references and once on all the samples.
        threshold: τ, the distance below which two meshes count as the same (from :func:`choose_threshold`).

    :meth:`compute` returns ``percent_same`` (%) and ``num_pairs``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, embedder: Callable[[Tensor], Tensor], threshold: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if not callable(embedder):
            raise ValueError(f"Decoupling: embedder must be callable (meshes -> embeddings), got {type(embedder)}")
        if not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"Decoupling: threshold must be a positive distance, got {threshold}")
        self.embedder, self.threshold = embedder, float(threshold)
        self.add_state("same", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pairs", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _embed(self, meshes: Tensor, count: int) -> Tensor:
        embeddings = self.embedder(meshes)
        if embeddings.ndim != 2 or len(embeddings) != count:
            raise ValueError(f"Decoupling: the embedder must return ({count}, D) embeddings for {count} meshes, got "
                             f"{tuple(embeddings.shape)}")
        return embeddings

    @torch.no_grad()
    def update(self, reference: Tensor, samples: Tensor) -> None:
        """``reference``: (B, V, 3) meshes :math:`x_i`; ``samples``: (B, M, V, 3), row ``i`` the meshes
        :math:`\\mathcal Y(x_i)` that share ``reference[i]``'s code of the factor; metres."""
        if reference.ndim != 3 or reference.shape[-1] != 3:
            raise ValueError(f"Decoupling: expected (B, V, 3) references, got {tuple(reference.shape)}")
        if samples.ndim != 4 or samples.shape[0] != reference.shape[0] or samples.shape[2:] != reference.shape[1:]:
            raise ValueError(f"Decoupling: expected (B, M, V, 3) = ({reference.shape[0]}, M, {reference.shape[1]}, "
                             f"3) samples for (B, V, 3) references, got {tuple(samples.shape)}")
        count, per_reference = samples.shape[:2]
        anchors = self._embed(reference, count)
        others = self._embed(samples.reshape(-1, *samples.shape[2:]), count * per_reference)
        distances = torch.linalg.vector_norm(others.reshape(count, per_reference, -1) - anchors[:, None], dim=-1)
        self.same += (distances < self.threshold).sum().to(self.same.device)
        self.pairs += distances.numel()

    def compute(self) -> dict[str, Tensor]:
        if int(self.pairs) == 0:
            raise ValueError("Decoupling: no pairs; call update with at least one reference and one sample")
        return {"percent_same": 100.0 * self.same.double() / self.pairs, "num_pairs": self.pairs.clone()}
