"""Mesh-manipulation error on control and non-control vertices (LAMM, Tarasiou et al. 2024, main paper Table 2)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from morphzoo.metrics.vertex_error import MM_PER_METRE


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
