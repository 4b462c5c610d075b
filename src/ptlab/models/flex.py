"""T5's attention on `flex_attention` kernels: the learned relative position bias is read inside the kernel
(`score_mod`) instead of being materialised as a [batch, heads, query, key] mask, and padding and the decoder's
causal mask become a block mask, so fully masked blocks are skipped.

SDPA runs only its unfused math kernel when the mask needs a gradient (T5's bias does), which is what kept
T5-base at a third of GPT-2's MFU on GPUs. flex_attention is fast only when compiled, so `use_flex_attention`
picks it for compiled CUDA graphs only; elsewhere T5 keeps the dense bias and `kernels.attention` (whose compiled
CPU backward already takes the bias gradient from the scores'). On CPU, torch 2.13 refuses flex's backward, its
compiled CPU kernel cannot read a bias or mask computed inside the graph, and with both built outside it the
forward alone was no faster than the dense path (T5-tiny's encoder attention, batch 8 x 512: 105 against 116 ms
in bf16, 154 against 152 ms in fp32, 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


def use_flex_attention(device: torch.device, dropout: float, cached: bool, forced: bool | None = None) -> bool:
    """Whether T5's attention should run on flex_attention: on CUDA inside a compiled graph, without attention
    dropout (flex has none) and without a KV cache (generation appends keys step by step). `forced` overrides."""
    if forced is not None:
        return forced
    return device.type == "cuda" and torch.compiler.is_compiling() and dropout == 0.0 and not cached


@dataclass
class FlexBias:
    """What one T5 stack adds to its attention scores, for every layer of the stack: a learned value per
    key - query offset (`diagonals` [heads, query + key - 1], entry j - i + query - 1 for query i and key j, as
    `kernels.toeplitz` reads it; None in cross-attention) and the block mask of padding and causality."""

    diagonals: torch.Tensor | None
    block_mask: BlockMask | None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        query_length = q.shape[-2]
        diagonals = self.diagonals
        score_mod = None
        if diagonals is not None:
            def score_mod(score, batch, head, q_idx, kv_idx):
                # a closed-over tensor, so autograd carries the score gradients back to the bias table
                return score + diagonals[head, kv_idx - q_idx + query_length - 1]
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=self.block_mask, scale=scale)


def flex_bias(diagonals: torch.Tensor | None, query_length: int, key_length: int,
              attention_mask: torch.Tensor | None, causal: bool, device: torch.device) -> FlexBias:
    """The stack's `FlexBias`: `attention_mask` [batch, key_length] (1 = real token) hides padded keys; `causal`
    hides future keys, the queries being the last `query_length` keys. Built once and shared by the layers."""
    return FlexBias(diagonals, _block_mask(query_length, key_length, attention_mask, causal, device))


def _block_mask(query_length: int, key_length: int, attention_mask: torch.Tensor | None, causal: bool,
                device: torch.device) -> BlockMask | None:
    if attention_mask is None and not causal:
        return None
    real = attention_mask.bool() if attention_mask is not None else None
    first_query = key_length - query_length

    def visible(batch, head, q_idx, kv_idx):
        allowed = (q_idx + first_query >= kv_idx) if causal else (kv_idx >= 0)
        return allowed & real[batch, kv_idx] if real is not None else allowed

    batch = real.shape[0] if real is not None else None
    return create_block_mask(visible, batch, None, query_length, key_length, device=device)
