"""Token backbones for region-token models (LAMM): pre-norm Transformer and MLP-Mixer blocks.

Both map a short sequence of tokens ``(B, T, D)`` to the same shape. :class:`TokenBackbone` stacks blocks, ends with a
LayerNorm, and can return every layer's (normalised) tokens, which LAMM's multilayer loss reads out at each depth.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FeedForward(nn.Sequential):
    r"""Two-layer perceptron :math:`\mathrm{FF}(x) = W_2\, \mathrm{GELU}(W_1 x + b_1) + b_2`, hidden width ``hidden``.

    Args:
        dim: input and output features.
        hidden: inner features (``dim × multiplier``: ×4 in LAMM's Transformer, ×0.5 in its MLP-Mixer).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class SelfAttention(nn.Module):
    r"""Multi-head self-attention, query/key/value projections without bias, output projection with bias.

    .. math::
        [Q, K, V] = X W_{qkv}, \qquad
        \mathrm{Attn}(X) = \big\Vert_{h=1}^{H} \mathrm{softmax}\!\big(Q_h K_h^\top / \sqrt{D/H}\big) V_h \; W_o + b_o

    Args:
        dim: token features D (divisible by ``heads``).
        heads: number of heads H.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SelfAttention: dim {dim} must be divisible by heads {heads}; change one of them")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D/H)
        return self.out(attended.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    r"""Pre-norm Transformer layer (Vaswani et al. 2017, pre-norm as in ViT):

    .. math::
        X' = X + \mathrm{Attn}(\mathrm{LN}(X)), \qquad Y = X' + \mathrm{FF}(\mathrm{LN}(X'))

    Args:
        dim: token features D.
        heads: attention heads.
        multiplier: feed-forward width as a multiple of D (LAMM supplement §2.1: ×4).
    """

    def __init__(self, dim: int, heads: int = 8, multiplier: float = 4.0) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, round(dim * multiplier))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.feed_forward_norm(x))


class MixerBlock(nn.Module):
    r"""MLP-Mixer layer (Tolstikhin et al. 2021): a token-mixing MLP across the T tokens, then a channel MLP.

    .. math::
        X' = X + \mathrm{FF}_\text{tok}(\mathrm{LN}(X)^\top)^\top, \qquad
        Y = X' + \mathrm{FF}_\text{ch}(\mathrm{LN}(X'))

    The token MLP's weights are T × T' instead of attention's D × D projections (LAMM supplement §4).

    Args:
        num_tokens: sequence length T (fixed: K region tokens + 1 in LAMM).
        dim: token features D.
        multiplier: channel MLP width as a multiple of D (LAMM supplement §2.1: ×0.5).
        token_multiplier: token MLP width as a multiple of T. The supplement does not give it; we use ×1 (T' = T).
    """

    def __init__(self, num_tokens: int, dim: int, multiplier: float = 0.5, token_multiplier: float = 1.0) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.token_norm = nn.LayerNorm(dim)
        self.token_mixing = FeedForward(num_tokens, max(1, math.ceil(num_tokens * token_multiplier)))
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mixing = FeedForward(dim, round(dim * multiplier))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"MixerBlock: built for {self.num_tokens} tokens, got {x.shape[1]}")
        x = x + self.token_mixing(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mixing(self.channel_norm(x))


class TokenBackbone(nn.Module):
    r"""A stack of L blocks followed by a final LayerNorm.

    With hidden states :math:`h_0 = X`, :math:`h_l = \mathrm{block}_l(h_{l-1})`, the output is
    :math:`\mathrm{LN}(h_L)`; :meth:`forward` with ``all_layers=True`` returns :math:`\mathrm{LN}(h_l)` for every
    :math:`l = 0..L` stacked as ``(L + 1, B, T, D)``, so that each depth can be read out like the last one.

    Args:
        blocks: the layers (all mapping ``(B, T, D)`` to itself).
        dim: token features D.
    """

    def __init__(self, blocks: list[nn.Module], dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def build(cls, kind: str, depth: int, num_tokens: int, dim: int, heads: int = 8,
              multiplier: float | None = None) -> TokenBackbone:
        """``kind="transformer"`` (feed-forward ×4 by default) or ``"mixer"`` (×0.5 by default), ``depth`` layers."""
        if kind == "transformer":
            blocks = [TransformerBlock(dim, heads, 4.0 if multiplier is None else multiplier) for _ in range(depth)]
        elif kind == "mixer":
            blocks = [MixerBlock(num_tokens, dim, 0.5 if multiplier is None else multiplier) for _ in range(depth)]
        else:
            raise ValueError(f"TokenBackbone: kind must be 'transformer' or 'mixer', got {kind!r}")
        return cls(blocks, dim)

    def forward(self, x: Tensor, all_layers: bool = False) -> Tensor:
        states = [x]
        for block in self.blocks:
            states.append(block(states[-1]))
        return self.norm(torch.stack(states)) if all_layers else self.norm(states[-1])
