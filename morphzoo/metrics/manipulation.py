"""Mesh-manipulation error on control and non-control vertices (LAMM, Tarasiou et al. 2024, main paper Table 2), and
the rule that pairs each source mesh with a target of another shape."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from morphzoo.metrics.vertex_error import MM_PER_METRE

MANIPULATION_CHANGES = ("identity", "expression")
PARTNER_CHUNK = 1024  # rows of the (chunk, N) score matrix drawn at a time: memory stays bounded on large splits


def manipulation_partners(change: str, count: int, identity: Tensor | None = None, expression: Tensor | None = None,
                          generator: torch.Generator | None = None) -> Tensor:
    """For each of ``count`` meshes, the index of its manipulation target among the same meshes, or -1 if none
    qualifies; drawn uniformly among the qualifying meshes (seeded by ``generator``).

    LAMM edits a mesh towards a *different* shape. Two pairings test the two kinds of change:

    - ``change="identity"``: the target is a mesh of another identity (any expression). Without identity labels
      (one shape per mesh, e.g. anny-hand) any other mesh qualifies.
    - ``change="expression"``: the target is a mesh of the same identity with another expression. Needs expression
      labels; an unlabelled mesh (label -1) never qualifies, nor does a mesh without identity labels.

    Args:
        change: one of :data:`MANIPULATION_CHANGES`.
        count: the number of meshes N.
        identity, expression: (N,) integer labels, or None where the data has none.
    Returns: (N,) long tensor of partner indices in [0, N), -1 where no mesh qualifies.
    """
    if change not in MANIPULATION_CHANGES:
        raise ValueError(f"manipulation_partners: change must be one of {MANIPULATION_CHANGES}, got {change!r}")
    for name, labels in (("identity", identity), ("expression", expression)):
        if labels is not None and tuple(labels.shape) != (count,):
            raise ValueError(f"manipulation_partners: {name} labels must have shape ({count},), got "
                             f"{tuple(labels.shape)}")
    device = next((labels.device for labels in (identity, expression) if labels is not None), torch.device("cpu"))
    if change == "expression" and (identity is None or expression is None):
        return torch.full((count,), -1, dtype=torch.long, device=device)
    identity, expression = (None if labels is None else labels.cpu() for labels in (identity, expression))
    partners = []
    for start in range(0, count, PARTNER_CHUNK):
        rows = torch.arange(start, min(start + PARTNER_CHUNK, count))
        if change == "identity":
            allowed = torch.ones(len(rows), count, dtype=torch.bool) if identity is None else \
                identity[rows, None] != identity[None, :]
        else:
            allowed = (identity[rows, None] == identity[None, :]) & (expression[rows, None] != expression[None, :]) \
                & (expression[rows, None] >= 0) & (expression[None, :] >= 0)
        allowed[torch.arange(len(rows)), rows] = False
        scores = torch.rand(len(rows), count, generator=generator).masked_fill(~allowed, -1.0)
        best, index = scores.max(dim=1)
        partners.append(torch.where(best >= 0, index, -1))
    return (torch.cat(partners) if partners else torch.empty(0, dtype=torch.long)).to(device)


class ManipulationError(Metric):
    r"""Reconstruction error of manipulated meshes against their targets, split by control / non-control vertices.

    LAMM (Tarasiou et al., "Locally Adaptive Neural 3D Morphable Models": main paper Table 2; supplement §2.3, e.g.
    18.47 and 26.03 ×10⁻² mm for control and non-control vertices on UHM12k) drives a mesh by displacing a set
    :math:`C` of control vertices and reports the per-vertex Euclidean error of the resulting mesh against the target
    mesh separately on :math:`C` and on the remaining vertices :math:`\bar C`. With
    :math:`e_{n,v} = 1000\, \lVert \hat x_{n,v} - x_{n,v} \rVert_2` (inputs in metres),

    .. math::
        E_C = \frac{1}{N |C|} \sum_n \sum_{v \in C} e_{n,v}, \qquad
        E_{\bar C} = \frac{1}{N |\bar C|} \sum_n \sum_{v \notin C} e_{n,v},

    and :math:`E_\text{all}` the same over all vertices. The states are sums and counts (``dist_reduce_fx="sum"``),
    so the result does not depend on how updates are batched or spread over processes.

    Args:
        control: the control vertices, a (V,) bool mask or an integer index array (duplicates are ignored). With an
            index array V is only known at :meth:`update`, where the indices are checked against it.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, control: Tensor | np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        control = torch.as_tensor(control)
        if control.dim() != 1:
            raise ValueError(f"ManipulationError: control must be a (V,) bool mask or a 1-D index array, got shape "
                             f"{tuple(control.shape)}")
        if control.dtype == torch.bool:
            if not control.any():
                raise ValueError("ManipulationError: the control mask selects no vertex")
            if control.all():
                raise ValueError("ManipulationError: the control mask selects every vertex; the non-control error "
                                 "is undefined")
        elif control.dtype.is_floating_point or control.dtype.is_complex:
            raise ValueError(f"ManipulationError: control indices must be integers, got dtype {control.dtype}")
        else:
            if control.numel() == 0:
                raise ValueError("ManipulationError: the control index array is empty")
            if (control < 0).any():
                raise ValueError("ManipulationError: control indices must be >= 0")
            control = control.long().unique()
        self.register_buffer("control", control, persistent=False)
        for region in ("control", "non_control"):
            self.add_state(f"{region}_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{region}_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _mask(self, num_vertices: int) -> Tensor:
        if self.control.dtype == torch.bool:
            if self.control.numel() != num_vertices:
                raise ValueError(f"ManipulationError: the control mask has {self.control.numel()} entries but the "
                                 f"meshes have {num_vertices} vertices")
            return self.control
        if self.control.max() >= num_vertices:
            raise ValueError(f"ManipulationError: control index {self.control.max().item()} out of range for "
                             f"{num_vertices} vertices")
        if self.control.numel() == num_vertices:
            raise ValueError("ManipulationError: the control indices cover every vertex; the non-control error is "
                             "undefined")
        mask = torch.zeros(num_vertices, dtype=torch.bool, device=self.control.device)
        mask[self.control] = True
        return mask

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """``prediction``: (B, V, 3) manipulated meshes, ``target``: (B, V, 3) their targets, in metres."""
        if prediction.shape != target.shape or prediction.dim() != 3 or prediction.shape[-1] != 3:
            raise ValueError(f"ManipulationError: expected two (B, V, 3) tensors, got {tuple(prediction.shape)} "
                             f"and {tuple(target.shape)}")
        mask = self._mask(prediction.shape[1]).to(prediction.device)
        errors = (prediction.detach() - target.detach()).double().norm(dim=-1) * MM_PER_METRE  # (B, V)
        self.control_sum += errors[:, mask].sum()
        self.control_count += errors.shape[0] * int(mask.sum())
        self.non_control_sum += errors[:, ~mask].sum()
        self.non_control_count += errors.shape[0] * int((~mask).sum())

    def compute(self) -> dict[str, Tensor]:
        if self.control_count == 0:
            raise ValueError("ManipulationError: compute() before any update()")
        total = (self.control_sum + self.non_control_sum) / (self.control_count + self.non_control_count)
        return {
            "control": (self.control_sum / self.control_count).float(),
            "non_control": (self.non_control_sum / self.non_control_count).float(),
            "all": total.float(),
        }
