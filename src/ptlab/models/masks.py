"""Attention masks as additive biases [batch, 1, query, key] (T5 paper, Figure 3): fully visible (encoder), causal
(decoder, LM) and causal with a fully visible prefix (prefix LM); packed rows never attend across examples."""

from __future__ import annotations

import torch

from ptlab.models.layers import MASK_VALUE


def padding_bias(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[batch, key_length] 1/0 mask -> additive [batch, 1, 1, key_length] bias (None when there is no mask)."""
    if attention_mask is None:
        return None
    return (1.0 - attention_mask[:, None, None, :].float()) * MASK_VALUE


def causal_bias(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """Additive [1, 1, query, key] bias hiding future positions; the queries are the last `query_length` keys."""
    query = torch.arange(key_length - query_length, key_length, device=device)[:, None]
    future = torch.arange(key_length, device=device)[None, :] > query
    return torch.zeros(query_length, key_length, device=device).masked_fill(future, MASK_VALUE)[None, None]


def add_biases(*biases: torch.Tensor | None) -> torch.Tensor | None:
    total = None
    for bias in biases:
        if bias is not None:
            total = bias if total is None else total + bias
    return total


def decoder_bias(query_length: int, key_length: int, device: torch.device, *,
                 segment_ids: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The mask of a decoder-only model, or None when plain causal attention (`is_causal`) is exact.

    - `segment_ids` [batch, length] (0 = padding): attention stays inside each packed example;
    - `prefix_mask` [batch, length]: positions of a fully visible prefix (prefix LM);
    - `attention_mask` [batch, key_length] (1 = real token): hides left padding when generating.
    Padding at the end of a row needs no mask: causal attention never looks ahead.
    """
    if torch.compiler.is_compiling():
        # Looking at the values would break the graph and wait for the device; the full mask is exact anyway
        # (a padding-only segment or an empty prefix changes nothing), so a compiled model takes what it is given.
        packed, prefix = segment_ids is not None, prefix_mask is not None
    else:
        packed = segment_ids is not None and bool((segment_ids.max(dim=1).values > 1).any())
        prefix = prefix_mask is not None and bool(prefix_mask.any())
    if not packed and not prefix and attention_mask is None and query_length == key_length:
        return None
    query = torch.arange(key_length - query_length, key_length, device=device)[:, None]
    key = torch.arange(key_length, device=device)[None, :]
    allowed = (key <= query)[None]  # [1 or batch, query, key]
    if prefix:
        allowed = allowed | (prefix_mask[:, None, :] & prefix_mask[:, -query_length:, None])
    if packed:
        allowed = allowed & (segment_ids[:, -query_length:, None] == segment_ids[:, None, :])
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, :].bool()
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, MASK_VALUE)[:, None]
