"""Building blocks shared by the model families: norms, attention (SDPA, GQA, KV cache), rotary and relative
position encodings, feed-forward variants."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ptlab.models.flex import FlexBias
from ptlab.models.kernels import attention, gelu_tanh, toeplitz

# Additive mask value for disallowed positions: large enough to zero a softmax, small enough not to overflow bf16.
MASK_VALUE = -1e9


class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction or bias (T5's "T5LayerNorm", Llama's RMSNorm), in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class KVCache:
    """Keys and values one attention layer has seen: the tokens decoded so far (self-attention, appended step by
    step) or the encoder output (cross-attention, computed once)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the given batch rows (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, rows), self.v.index_select(0, rows)


class Attention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention`.

    `num_kv_heads < num_heads` is grouped-query attention (each key/value head serves a group of query heads).
    `scale=None` is the usual 1/sqrt(d_head); T5 uses 1.0 (folded into its init). `bias` adds biases to the four
    projections (BART, GPT-2). `qk_norm` RMS-normalises each head's queries and keys (with a learned gain) before
    the rotary encoding and the scores.
    """

    def __init__(self, d_model: int, num_heads: int, d_head: int, *, num_kv_heads: int | None = None,
                 bias: bool = False, scale: float | None = None, dropout: float = 0.0, qk_norm: bool = False):
        super().__init__()
        self.num_heads, self.d_head, self.scale, self.dropout = num_heads, d_head, scale, dropout
        self.num_kv_heads = num_kv_heads or num_heads
        self.q = nn.Linear(d_model, num_heads * d_head, bias=bias)
        self.k = nn.Linear(d_model, self.num_kv_heads * d_head, bias=bias)
        self.v = nn.Linear(d_model, self.num_kv_heads * d_head, bias=bias)
        self.o = nn.Linear(num_heads * d_head, d_model, bias=bias)
        self.q_norm, self.k_norm = (RMSNorm(d_head), RMSNorm(d_head)) if qk_norm else (None, None)

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | FlexBias | None = None, is_causal: bool = False,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Self-attention over `x`, or cross-attention to `context`. `mask` is added to the scores; `rotary` is the
        (cos, sin) of each position; `cache` holds earlier keys/values (self) or the encoder's (cross). A
        `FlexBias` mask runs the attention on flex_attention instead (T5's bias and masks, see `ptlab.models.flex`)."""
        if context is not None and cache is not None and cache.k is not None:
            q = self._heads(self.q(x), self.num_heads)
            if self.q_norm is not None:
                q = self.q_norm(q)
            k, v = cache.k, cache.v  # cross-attention: the encoder's keys and values, computed at the first step
        else:
            if context is None:
                q, k, v = fused_linear(x, self.q, self.k, self.v)
            else:
                q, (k, v) = self.q(x), fused_linear(context, self.k, self.v)
            q = self._heads(q, self.num_heads)
            k, v = self._heads(k, self.num_kv_heads), self._heads(v, self.num_kv_heads)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if cache is not None:
                k, v = cache.append(k, v)
        if isinstance(mask, FlexBias):
            out = mask.attend(q, k, v, self.scale)
        else:
            if mask is not None:
                mask = mask.to(q.dtype)
            out = attention(q, k, v, mask, is_causal=is_causal and mask is None, scale=self.scale,
                            dropout=self.dropout if self.training else 0.0)
        batch, _, length, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.d_head))


def fused_linear(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """Several projections of the same input as one matrix product (one large GEMM runs faster than a few
    narrow ones), split back into each layer's output. The parameters stay separate, as checkpoints name them."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
    return F.linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)


class GatedGeluFeedForward(nn.Module):
    """T5 v1.1's FFN: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = fused_linear(x, self.wi_0, self.wi_1)
        return self.wo(self.dropout(gelu_tanh(gate) * up))


class ReluFeedForward(nn.Module):
    """The original T5 FFN: wo(relu(wi x))."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.relu(self.wi(x))))


class SwiGLUFeedForward(nn.Module):
    """Llama's FFN: down(silu(gate x) * up x)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = fused_linear(x, self.gate, self.up)
        return self.down(F.silu(gate) * up)


class GeluFeedForward(nn.Module):
    """GPT-2's and BART's FFN: fc_out(gelu(fc_in x)) with biases; GPT-2 uses the tanh approximation of GELU."""

    def __init__(self, d_model: int, d_ff: int, approximate: str = "none", dropout: float = 0.0):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)
        self.approximate = approximate
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc_in(x)
        hidden = gelu_tanh(hidden) if self.approximate == "tanh" else F.gelu(hidden, approximate=self.approximate)
        return self.fc_out(self.dropout(hidden))


class RotaryEmbedding(nn.Module):
    """RoPE's (cos, sin) per position, in Hugging Face's convention (the two halves of each head are rotated
    together; Meta's checkpoints pair adjacent dimensions instead, which permutes the q/k rows)."""

    def __init__(self, d_head: int, theta: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch, length] positions -> cos and sin of shape [batch, 1, length, d_head] (float32)."""
        angles = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))


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
        return toeplitz(self.diagonals(query_length, key_length, offset), query_length, key_length).unsqueeze(0)

    def diagonals(self, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
        """[heads, query_length + key_length - 1]: the bias of each key - query offset, from the last query's
        offset to the first key up to the first query's to the last key (`kernels.toeplitz`'s order)."""
        # The bias depends on key - query only: look up each of the query_length + key_length - 1 offsets once.
        first = -(offset + query_length - 1)  # the last query's offset to the first key
        relative = torch.arange(first, first + query_length + key_length - 1, device=self.embedding.weight.device)
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).t()


@torch.no_grad()
def zero_output_projections(model: nn.Module) -> None:
    """Zero every residual branch's last projection (attention's output and the feed-forward's down projection,
    biases included): each block starts as the identity (`model.zero_init_output`)."""
    outputs = {Attention: "o", GatedGeluFeedForward: "wo", ReluFeedForward: "wo", SwiGLUFeedForward: "down",
               GeluFeedForward: "fc_out"}
    for module in model.modules():
        name = outputs.get(type(module))
        if name is not None:
            for param in getattr(module, name).parameters():
                nn.init.zeros_(param)


@torch.no_grad()
def init_gpt_style(model: nn.Module, std: float) -> None:
    """GPT-2's and BART's initialisation: normal(0, std) linear and embedding weights, zero biases, unit norms."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
        if isinstance(getattr(module, "bias", None), nn.Parameter):
            nn.init.zeros_(module.bias)
