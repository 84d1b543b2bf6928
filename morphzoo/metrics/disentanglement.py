"""Identity disentanglement errors: the spread of a model's predicted neutral faces over one subject's expressions.

Two metrics share the name "disentanglement error" in the literature and give different numbers; both are here, under
different names: :class:`DisentanglementError` (IB-VAE Eq. 14, Zhang et al.'s "decomposition error") and
:class:`JiangDisentanglementError` (Jiang et al. 2019, rigidly aligned per-vertex standard deviation).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from morphzoo.metrics.alignment import rigid_align
from morphzoo.metrics.vertex_error import MM_PER_METRE


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A ``cat`` state as one tensor: a list before DDP sync, already a tensor after it."""
    return state if isinstance(state, Tensor) else torch.cat(state)


class _PerSubjectSpread(Metric):
    """Shared bookkeeping: collects (predicted neutral, subject id) pairs; per-subject errors at :meth:`compute`.

    The statistics are computed per subject from the set of that subject's predictions, so they do not depend on the
    order of the predictions, hence not on how updates are split into batches or spread over processes (``cat``
    states, gathered by DDP sync).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("predictions", default=[], dist_reduce_fx="cat")
        self.add_state("identities", default=[], dist_reduce_fx="cat")

    def _check_and_store(self, predicted_neutral: Tensor, identity: Tensor) -> None:
        name = type(self).__name__
        identity = torch.as_tensor(identity, device=predicted_neutral.device)
        if predicted_neutral.dim() != 3 or predicted_neutral.shape[-1] != 3 or predicted_neutral.shape[1] == 0:
            raise ValueError(f"{name}: expected predicted_neutral of shape (B, V, 3), got "
                             f"{tuple(predicted_neutral.shape)}")
        if identity.shape != predicted_neutral.shape[:1]:
            raise ValueError(f"{name}: expected identity of shape (B,) = ({predicted_neutral.shape[0]},), got "
                             f"{tuple(identity.shape)}")
        if identity.dtype.is_floating_point or identity.dtype.is_complex or identity.dtype == torch.bool:
            raise ValueError(f"{name}: identity must hold integer subject ids, got dtype {identity.dtype}")
        if isinstance(self.predictions, list) and self.predictions \
                and self.predictions[0].shape[1] != predicted_neutral.shape[1]:
            raise ValueError(f"{name}: every update must have the same number of vertices, got "
                             f"{predicted_neutral.shape[1]} after {self.predictions[0].shape[1]}")
        self.predictions.append(predicted_neutral.detach())
        self.identities.append(identity.long())

    def _subject_error(self, x: Tensor, members: Tensor) -> Tensor:
        """The error (mm, float64 scalar) of one subject's predictions ``x`` (n, V, 3) float64 metres, n >= 2;
        ``members`` are their row indices in the concatenated states."""
        raise NotImplementedError

    def compute(self) -> dict[str, Tensor]:
        name = type(self).__name__
        if isinstance(self.predictions, list) and not self.predictions:
            raise ValueError(f"{name}: compute() before any update()")
        predictions, identities = _cat(self.predictions).double(), _cat(self.identities)
        subjects, inverse, counts = torch.unique(identities, return_inverse=True, return_counts=True)
        errors, kept = [], []
        for index, subject in enumerate(subjects):
            if counts[index] < 2:
                continue
            members = (inverse == index).nonzero().squeeze(1)
            errors.append(self._subject_error(predictions[members], members))
            kept.append(subject)
        dropped = subjects[counts < 2]
        if not kept:
            raise ValueError(f"{name}: no subject has two or more predictions (subjects {dropped.tolist()}); the "
                             f"spread over one prediction is undefined")
        if dropped.numel():
            rank_zero_warn(f"{name}: subjects {dropped.tolist()} have a single prediction and are left out of the "
                           f"result", UserWarning)
        per_subject = torch.stack(errors)
        return {
            "mean": per_subject.mean().float(),
            "median": per_subject.quantile(0.5).float(),
            "per_subject": per_subject.float(),
            "subjects": torch.stack(kept),
        }


class DisentanglementError(_PerSubjectSpread):
    r"""IB-VAE's identity disentanglement error (Sun et al., "Information Bottlenecked Variational Autoencoder for
    Disentangled 3D Facial Expression Modelling", §4.2, Eq. 14), in millimetres.

    Also Zhang et al.'s "decomposition error" (3DV 2020), which IB-VAE states is exactly the same metric. For each test
    subject :math:`d`, stack the model's predicted neutral (identity) faces :math:`X \in \mathbb{R}^{n \times V \times
    3}` over that subject's :math:`n` inputs (its expressions), take their mean face :math:`M_v = \frac1n \sum_n
    X_{n,v}` and the distances :math:`\delta_{n,v} = \lVert X_{n,v} - M_v \rVert_2`; then

    .. math::
        E_d = 1000\, \sigma\big(\{\delta_{n,v}\}_{n,v}\big),

    the standard deviation over all :math:`n \cdot V` distances (inputs in metres). :math:`\sigma` is the population
    standard deviation (ddof = 0, NumPy's ``np.std`` default; the paper does not say and no evaluation script is
    public). No alignment is applied, so a rigid motion of one prediction raises the error (unlike
    :class:`JiangDisentanglementError`). Note that :math:`E_d` measures the *spread* of the distances, not their size:
    predictions that all sit at one common distance from the mean face at every vertex score 0.

    :meth:`compute` returns the mean and median of :math:`E_d` over subjects (the median of an even number of subjects
    is the average of the two middle values, as NumPy's), the per-subject errors and the subject ids (sorted; with a
    single subject both come back 0-d, as torchmetrics squeezes one-element outputs).
    A subject with a single prediction has no spread to measure (:math:`E_d = 0` trivially, which would reward
    under-sampling): it is left out, with a warning; :meth:`compute` raises if no subject has two predictions.
    """

    def update(self, predicted_neutral: Tensor, identity: Tensor) -> None:
        """``predicted_neutral``: (B, V, 3) predicted identity (neutral) faces in metres; ``identity``: (B,) integer
        subject ids."""
        self._check_and_store(predicted_neutral, identity)

    def _subject_error(self, x: Tensor, members: Tensor) -> Tensor:
        distances = (x - x.mean(dim=0)).norm(dim=-1)  # (n, V)
        return distances.flatten().std(correction=0) * MM_PER_METRE


class JiangDisentanglementError(_PerSubjectSpread):
    r"""Jiang et al.'s identity disentanglement error (Jiang, Wu, Chen, Zhang, "Disentangled Representation Learning for
    3D Face Shape", CVPR 2019), in millimetres.

    Per test subject :math:`d` with predicted neutral faces :math:`X_n \in \mathbb{R}^{V \times 3}`, :math:`n = 1..N`:
    rigidly align each :math:`X_n` (Kabsch: proper rotation and translation, no scale, least squares over all
    vertices) to a reference shape, giving :math:`\tilde X_n`; then

    .. math::
        E_d = \frac{1000}{V} \sum_v \sigma_v, \qquad
        \sigma_v = \sqrt{\textstyle\sum_{c \in \{x,y,z\}} \operatorname{Var}_n \tilde X_{n,v,c}},

    the per-vertex standard deviation (population variance, ddof = 0) averaged over vertices (inputs in metres).
    :meth:`compute` returns the mean and median over subjects (NumPy's median), the per-subject errors and the
    subject ids, like :class:`DisentanglementError`; single-prediction subjects are handled the same way.

    Alignment. The authors' script (``cal_id_disentanglement_in_file`` in ``src/measurement.py`` of
    github.com/zihangJiang/DR-Learning-for-3D-Face) aligns every prediction of a subject onto the prediction made from
    that subject's expression 0 (FaceWarehouse's neutral) and stops there. This metric:

    1. takes a reference prediction per subject: the one flagged by ``update(..., reference=...)`` if any (flag the
       prediction from the neutral input to follow the script), otherwise the subject's most typical prediction, the
       one whose per-vertex distances to its own centroid are closest (L2) to the subject's average of those distances
       (a choice that depends on neither the order of the predictions nor their poses, except among exact ties:
       then the first is taken, which matters only for distinct shapes with identical profiles, e.g. mirror images);
    2. aligns every prediction onto that reference;
    3. ``iterations`` times: aligns every (original) prediction onto the mean of the currently aligned predictions
       (generalised-Procrustes refinement; 1 by default, so the predictions are aligned to the subject's mean shape
       rather than to one arbitrary prediction; ``iterations=0`` with the neutral prediction flagged reproduces the
       authors' script).

    The result is invariant to a rigid motion of any individual prediction (each step aligns the originals, and moving
    the reference moves every aligned prediction together, which leaves :math:`\sigma_v` unchanged) and to the order of
    the predictions, so to how updates are batched.

    Args:
        iterations: the number of refinement passes onto the mean shape (step 3), >= 0.
    """

    def __init__(self, iterations: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
            raise ValueError(f"JiangDisentanglementError: iterations must be an integer >= 0, got {iterations!r}")
        self.iterations = iterations
        self.add_state("references", default=[], dist_reduce_fx="cat")

    def update(self, predicted_neutral: Tensor, identity: Tensor, reference: Tensor | None = None) -> None:
        """``predicted_neutral``: (B, V, 3) predicted identity (neutral) faces in metres; ``identity``: (B,) integer
        subject ids; ``reference``: optional (B,) bool, True for the prediction each subject is first aligned to (at
        most one per subject over all updates)."""
        if reference is None:
            reference = torch.zeros(predicted_neutral.shape[:1], dtype=torch.bool, device=predicted_neutral.device)
        reference = torch.as_tensor(reference, device=predicted_neutral.device)
        if reference.dtype != torch.bool or reference.shape != predicted_neutral.shape[:1]:
            raise ValueError(f"JiangDisentanglementError: expected reference to be a (B,) = "
                             f"({predicted_neutral.shape[0]},) bool tensor, got {tuple(reference.shape)} "
                             f"{reference.dtype}")
        self._check_and_store(predicted_neutral, identity)
        self.references.append(reference.to(torch.uint8))  # uint8: all_gather-safe on every backend

    def _subject_error(self, x: Tensor, members: Tensor) -> Tensor:
        flagged = _cat(self.references)[members].nonzero().squeeze(1)
        if flagged.numel() > 1:
            subject = _cat(self.identities)[members[0]].item()
            raise ValueError(f"JiangDisentanglementError: subject {subject} has {flagged.numel()} predictions flagged "
                             f"as reference; at most one is allowed")
        if flagged.numel() == 1:
            seed = flagged.item()
        else:
            profile = (x - x.mean(dim=1, keepdim=True)).norm(dim=-1)  # (n, V), invariant to rigid motions
            seed = (profile - profile.mean(dim=0)).square().sum(dim=1).argmin().item()
        aligned = rigid_align(x, x[seed].expand_as(x))
        for _ in range(self.iterations):
            aligned = rigid_align(x, aligned.mean(dim=0).expand_as(x))
        sigma = aligned.var(dim=0, correction=0).sum(dim=-1).sqrt()  # (V,)
        return sigma.mean() * MM_PER_METRE
