"""Building blocks shared by the model families: norms, attention through SDPA, relative position bias, MLPs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Additive mask value for disallowed positions: large enough to zero a softmax, small enough not to overflow bf16.
MASK_VALUE = -1e9


class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction or bias (T5's "T5LayerNorm"), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention without biases. `scale=None` is the usual 1/sqrt(d_head); T5 uses 1.0 (folded into init)."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        self.num_heads, self.d_head, self.scale, self.dropout = num_heads, d_head, scale, dropout
        inner = num_heads * d_head
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over `x`, or cross-attention to `context`; `bias` is added to the scores (masks included)."""
        source = x if context is None else context
        q, k, v = self._heads(self.q(x)), self._heads(self.k(source)), self._heads(self.v(source))
        if bias is not None:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                             dropout_p=self.dropout if self.training else 0.0)
        batch, _, length, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.d_head))


class GatedGeluFeedForward(nn.Module):
    """T5 v1.1's FFN: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))


class ReluFeedForward(nn.Module):
    """The original T5 FFN: wo(relu(wi x))."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.relu(self.wi(x))))


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucketing of (key - query) offsets: exact for small offsets, logarithmic up to max_distance."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log-spaced buckets for larger distances; clamp avoids log(0) on the (unused) small branch
    large = max_exact + (
        torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to attention scores; computed once per stack and shared by layers."""

    def __init__(self, num_heads: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
        """Bias of shape [1, heads, query_length, key_length]; `offset` is the first query's position (KV cache)."""
        device = self.embedding.weight.device
        query = torch.arange(offset, offset + query_length, device=device)[:, None]
        key = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(key - query, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


def padding_bias(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[batch, key_length] 1/0 mask -> additive [batch, 1, 1, key_length] bias (None when there is no mask)."""
    if attention_mask is None:
        return None
    return (1.0 - attention_mask[:, None, None, :].float()) * MASK_VALUE


def causal_bias(length: int, device: torch.device) -> torch.Tensor:
    """Additive [1, 1, length, length] bias that hides future positions."""
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, device=device).masked_fill(future, MASK_VALUE)[None, None]


def add_biases(*biases: torch.Tensor | None) -> torch.Tensor | None:
    total = None
    for bias in biases:
        if bias is not None:
            total = bias if total is None else total + bias
    return total
