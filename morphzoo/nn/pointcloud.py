"""Point Cloud Transformer encoder (PCT, Guo et al. 2020) as IB-VAE uses it (IB-VAE §3.2.2 and §3.5).

IB-VAE takes "the original PCT paper's architecture" (§3.5) without listing its sizes; they are PCT's full model:

- input embedding: two LBRs 3 -> 64 -> 64 on every point;
- neighbour embedding: two :class:`SampleAndGroup` layers, 512 centres × 32 neighbours -> 128 channels, then 256
  centres × 32 neighbours -> 256 channels;
- four :class:`OffsetAttention` layers on the 256 centres, their outputs (4 × 256) concatenated with their input (256);
- an LBR 1280 -> 1024 (LeakyReLU 0.2) and a max over points: the (B, 1024) global feature, which is the input width
  of IB-VAE's fully connected head {1024/256/64/...} (§3.5).

"LBR" is PCT's and IB-VAE's (Fig. 2) name for Linear + BatchNorm + ReLU; a 1×1 convolution is a per-point linear
map, so the layers here are ``nn.Linear`` on points-last tensors ``(B, N, C)``, the layout of the rest of morphzoo.

Choices the two papers leave open (taken from PCT's public reference implementation where it settles them):

- FPS and kNN run on xyz, at both groupings; grouped features are features only (no relative xyz is appended).
- The second grouping samples from the first one's centres and starts at its first centre, so the whole encoder
  depends on one start point, which is point 0 unless the caller passes ``start`` or ``generator`` (see
  :func:`farthest_point_sampling`).
- The fusing LBR uses LeakyReLU with slope 0.2; the global feature is the max over points only (PCT's text
  describes a max-and-average "MA-pool", which would give 2048 features, not IB-VAE's 1024).
- PCT's reference code runs two extra LBRs (256 -> 256) between the second grouping and the first attention layer.
  Neither paper describes them, so they are not here.
- Linear maps followed by BatchNorm have no bias (BatchNorm removes it). The attention's value map has none either:
  attention columns sum to 1, so a value bias passes unchanged into :math:`x_r`, becomes a constant per channel in
  the offset :math:`x - x_r`, and the BatchNorm after the next linear map removes that too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from morphzoo.nn.sparse import exporting


def _start_indices(start: int | Tensor | None, generator: torch.Generator | None, batch: int, num_points: int,
                   device: torch.device) -> Tensor:
    if generator is not None:
        if start is not None:
            raise ValueError("farthest_point_sampling: pass either start or generator, not both")
        # Drawn on the generator's device (a plain torch.Generator() is a CPU one) and then moved, so one seed picks
        # the same start on every device.
        return torch.randint(num_points, (batch,), generator=generator, device=generator.device).to(device)
    index = torch.as_tensor(0 if start is None else start, dtype=torch.long, device=device).expand(batch)
    if not exporting() and ((index < 0) | (index >= num_points)).any():  # a trace cannot branch on values
        raise ValueError(f"farthest_point_sampling: start must lie in [0, {num_points}), got {start}")
    return index


@torch.no_grad()  # indices carry no gradient; without this, a points tensor that requires grad would build a graph
def farthest_point_sampling(points: Tensor, count: int, start: int | Tensor | None = None,
                            generator: torch.Generator | None = None) -> Tensor:
    r"""Farthest point sampling: greedily pick the point farthest from those already picked.

    .. math:: s_0 = \text{start}, \qquad s_t = \arg\max_i \min_{u < t} \lVert p_i - p_{s_u} \rVert

    Runs over the whole batch at once; the only loop is over the ``count`` selection steps, each of which needs the
    previous one. Ties go to the lowest index (``torch.argmax``), so the result is a function of the geometry and the
    start point only, except on clouds with duplicate points.

    Args:
        points: (B, N, 3) coordinates.
        count: points to select, 1 <= count <= N.
        start: index of the first point, one for all clouds (int) or one per cloud ((B,) tensor). Default 0, as in
            PCT's reference CUDA operator. (That operator also never picks points within √1e-3 ≈ 0.03 of the origin,
            a PointNet++ heritage; not reproduced, since on face clouds in metres those are real points.)
        generator: draw the first point of each cloud uniformly from this generator instead (use a CPU generator:
            the same seed then gives the same indices on CPU and CUDA). Exclusive with ``start``.

    Returns:
        (B, count) long indices into ``points``, in selection order.

    Shapes:
        ``points`` (B, N, 3) -> (B, count)
    """
    batch, num_points, _ = points.shape
    if not 1 <= count <= num_points:
        raise ValueError(f"farthest_point_sampling: cannot select {count} of {num_points} points")
    last = _start_indices(start, generator, batch, num_points, points.device)
    rows = torch.arange(batch, device=points.device)
    selected = torch.empty(batch, count, dtype=torch.long, device=points.device)
    selected[:, 0] = last
    # Coordinate-major (B, 3, N): the per-step distance update then runs over contiguous rows of N values, 2-5× faster
    # on a CPU than over (B, N, 3) with its innermost dimension of 3 (measured at B=64, N=5023, one thread).
    coordinates = points.transpose(1, 2).contiguous()
    nearest = torch.full((batch, num_points), torch.inf, dtype=points.dtype, device=points.device)
    for step in range(1, count):
        # Squared distances: same argmax as distances, no square root.
        distance = (coordinates - points[rows, last].unsqueeze(2)).square_().sum(1)
        torch.minimum(nearest, distance, out=nearest)
        last = nearest.argmax(1)
        selected[:, step] = last
    return selected


@torch.no_grad()
def knn(query: Tensor, points: Tensor, k: int) -> Tensor:
    r"""The ``k`` nearest ``points`` of every ``query`` point (Euclidean), nearest first.

    One ``torch.cdist`` and one ``topk`` over the batch. Among equally distant points the order (and, at the k-th
    place, the choice) is whatever ``topk`` returns; PyTorch does not specify it. Beyond 25 points ``cdist`` uses the
    matrix-product form :math:`\lVert q\rVert^2 - 2 q \cdot p + \lVert p\rVert^2`, whose float32 rounding (~1e-7 of
    the squared norms) can also swap neighbours that are nearly equally distant, so a query point that is also in
    ``points`` is its own first neighbour unless another point lies within that rounding.

    Shapes:
        ``query`` (B, M, 3), ``points`` (B, N, 3) -> (B, M, k) long indices into ``points``
    """
    if not 1 <= k <= points.shape[1]:
        raise ValueError(f"knn: cannot take {k} neighbours among {points.shape[1]} points")
    return torch.cdist(query, points).topk(k, dim=-1, largest=False, sorted=True).indices


def gather_points(values: Tensor, index: Tensor) -> Tensor:
    """Per-cloud gather: ``out[b, ...] = values[b, index[b, ...]]``.

    Shapes:
        ``values`` (B, N, C), ``index`` (B, ...) -> (B, ..., C)
    """
    batch, num_points, channels = values.shape
    offset = torch.arange(batch, device=index.device).view(-1, *[1] * (index.dim() - 1)) * num_points
    return values.reshape(batch * num_points, channels)[index + offset]


class LBR(nn.Module):
    r"""PCT's "LBR": per-point linear map, BatchNorm over all points, (leaky) ReLU.

    .. math:: y = \sigma_a(\mathrm{BN}(W x)), \qquad \sigma_a(t) = \max(t, a t)

    Works on any number of leading dimensions; BatchNorm statistics are taken over all of them (batch, points and,
    in a grouping, neighbours), as PCT's 1×1 convolutions with BatchNorm do.

    Args:
        in_channels: input features per point.
        out_channels: output features per point.
        negative_slope: :math:`a`; 0 is ReLU.

    Shapes:
        (..., C_in) -> (..., C_out)
    """

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.normalise(self.linear(x)))

    def normalise(self, x: Tensor) -> Tensor:
        return self.norm(x.reshape(-1, x.shape[-1])).view(x.shape)

    def activate(self, x: Tensor) -> Tensor:
        # In place: x is BatchNorm's fresh output, which BatchNorm's backward does not need; on the grouped tensors
        # (up to B·512·32 × 128 values) a second copy is a large share of the encoder's memory traffic.
        return F.leaky_relu(x, self.negative_slope, inplace=True) if self.negative_slope else F.relu(x, inplace=True)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" if self.negative_slope else ""


class SampleAndGroup(nn.Module):
    r"""PCT's sample-and-group (SG) layer: FPS centres, kNN groups, a shared two-LBR map, max over each group.

    .. math::
        y_c = \max_{j \in \mathrm{kNN}(c)} \mathrm{LBR}_2\big(\mathrm{LBR}_1([\, f_j - f_c \,\Vert\, f_c \,])\big)

    for every centre :math:`c` picked by farthest point sampling on xyz; the neighbours :math:`\mathrm{kNN}(c)` are the
    ``neighbours`` points nearest to it in xyz (itself included) and :math:`f` are the input features.

    Args:
        in_channels: input features C per point (the grouped vector has 2C).
        out_channels: output features per centre.
        sample_count: centres to sample (PCT: 512, then 256).
        neighbours: neighbours per centre (PCT: 32).

    Shapes:
        ``xyz`` (B, N, 3), ``features`` (B, N, C_in) -> (``centres`` (B, sample_count, 3),
        ``features`` (B, sample_count, C_out))
    """

    def __init__(self, in_channels: int, out_channels: int, sample_count: int, neighbours: int) -> None:
        super().__init__()
        self.in_channels, self.sample_count, self.neighbours = in_channels, sample_count, neighbours
        self.lbr1 = LBR(2 * in_channels, out_channels)
        self.lbr2 = LBR(out_channels, out_channels)

    def forward(self, xyz: Tensor, features: Tensor, start: int | Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``start``/``generator``: the first FPS centre, as in :func:`farthest_point_sampling`."""
        num_points = xyz.shape[1]
        if num_points < self.sample_count or num_points < self.neighbours:
            raise ValueError(f"SampleAndGroup: {num_points} points cannot give {self.sample_count} centres with "
                             f"{self.neighbours} neighbours each; pass smaller sample_counts / neighbours "
                             "(PointCloudTransformer(sample_counts=..., neighbours=...)) for small clouds")
        centre_index = farthest_point_sampling(xyz, self.sample_count, start, generator)
        centres = gather_points(xyz, centre_index)
        neighbours = knn(centres, xyz, self.neighbours)
        # W [f_j - f_c || f_c] = W_d f_j + (W_c - W_d) f_c: the difference half of the first linear map is applied to
        # the N points before gathering, not to the sample_count·neighbours grouped copies (5023 vs 512·32 points in
        # the first grouping), and the (B, sample_count, neighbours, 2C) concatenation is never built.
        weight_difference, weight_centre = self.lbr1.linear.weight.split(self.in_channels, dim=1)
        centre_features = gather_points(features, centre_index)
        grouped = (gather_points(F.linear(features, weight_difference), neighbours)
                   + F.linear(centre_features, weight_centre - weight_difference).unsqueeze(2))
        grouped = self.lbr2(self.lbr1.activate(self.lbr1.normalise(grouped)))
        return centres, grouped.amax(dim=2)

    def extra_repr(self) -> str:
        return f"sample_count={self.sample_count}, neighbours={self.neighbours}"


class OffsetAttention(nn.Module):
    r"""PCT's offset-attention layer: self-attention with column re-normalisation and an LBR on the offset.

    .. math::
        Q = X W_{qk}, \quad V = X W_v, \quad
        \tilde A = \mathrm{softmax}_{\text{row}}(Q Q^\top), \quad
        A_{ij} = \frac{\tilde A_{ij}}{10^{-9} + \sum_{i'} \tilde A_{i'j}}, \quad
        X_r = A^\top V, \qquad
        Y = X + \mathrm{LBR}(X - X_r)

    Query and key share :math:`W_{qk}` (C -> C/4), so the energy :math:`QQ^\top` is symmetric; there is no
    :math:`1/\sqrt{d}` scale, the column normalisation takes its place. Every column of :math:`A` sums to 1, so
    :math:`(X_r)_j` is a convex combination of values and :math:`X - X_r` acts like a discrete Laplacian (PCT §3.3).

    Args:
        channels: features C per point (divisible by 4).

    Shapes:
        (B, N, C) -> (B, N, C)
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"OffsetAttention: channels {channels} must be divisible by 4")
        self.query_key = nn.Linear(channels, channels // 4, bias=False)
        self.value = nn.Linear(channels, channels, bias=False)
        self.offset = LBR(channels, channels)

    def attention(self, x: Tensor) -> Tensor:
        """The (B, N, N) attention :math:`A`: row ``i`` is the point whose value is passed on, column ``j`` receives."""
        query = self.query_key(x)
        attention = torch.softmax(query @ query.transpose(1, 2), dim=-1)
        return attention / (1e-9 + attention.sum(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        attended = self.attention(x).transpose(1, 2) @ self.value(x)
        return x + self.offset(x - attended)


class PointCloudTransformer(nn.Module):
    r"""PCT encoder (Guo et al. 2020, full model with neighbour embedding) up to the global feature, as in IB-VAE.

    .. math::
        F_0 = \mathrm{LBR}(\mathrm{LBR}(P)), \quad
        (P_1, F_1) = \mathrm{SG}_{512}(P, F_0), \quad
        (P_2, F_2) = \mathrm{SG}_{256}(P_1, F_1), \quad
        A_l = \mathrm{OA}_l(A_{l-1}),\; A_0 = F_2, \\
        g = \max_{\text{points}} \mathrm{LBR}_{0.2}([A_1 \Vert A_2 \Vert A_3 \Vert A_4 \Vert F_2])

    Widths 3 -> 64 -> 64, SG 128 and 256, attention 256, fused 4·256 + 256 = 1280 -> ``out_channels`` (1024).
    The result is invariant to the order of the input points provided the FPS start follows the points (the same
    point, wherever it is in the order: pass its index as ``start``); BatchNorm statistics are order-invariant too.

    Args:
        sample_counts: centres of the two groupings (PCT: 512, 256); each must not exceed the points it samples
            from, so clouds under 512 points need smaller values.
        neighbours: neighbours per centre in both groupings (PCT: 32).
        out_channels: width of the global feature (PCT and IB-VAE: 1024).

    Shapes:
        ``points`` (B, N, 3) -> (B, out_channels), N >= sample_counts[0] >= sample_counts[1] >= neighbours
    """

    def __init__(self, sample_counts: Sequence[int] = (512, 256), neighbours: int = 32,
                 out_channels: int = 1024) -> None:
        super().__init__()
        first, second = sample_counts
        if second > first:
            raise ValueError(f"PointCloudTransformer: sample_counts {tuple(sample_counts)} must not increase (the "
                             "second grouping samples from the first one's centres)")
        self.embedding = nn.Sequential(LBR(3, 64), LBR(64, 64))
        self.group1 = SampleAndGroup(64, 128, first, neighbours)
        self.group2 = SampleAndGroup(128, 256, second, neighbours)
        self.attention = nn.ModuleList(OffsetAttention(256) for _ in range(4))
        self.fuse = LBR(5 * 256, out_channels, negative_slope=0.2)

    def forward(self, points: Tensor, start: int | Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """``start``/``generator``: the first FPS point of the first grouping (:func:`farthest_point_sampling`)."""
        centres, features = self.group1(points, self.embedding(points), start, generator)
        # Start at index 0, the first grouping's first centre: the start point chosen above, in any point order.
        _, features = self.group2(centres, features, start=0)
        layers = [features]
        for attention in self.attention:
            layers.append(attention(layers[-1]))
        return self.fuse(torch.cat([*layers[1:], features], dim=-1)).amax(dim=1)
