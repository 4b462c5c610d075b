"""Decoding from encoder-decoder models."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, start_id: int,
                  eos_id: int, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding for a batch; returns generated ids [batch, <= max_new_tokens], EOS-padded after EOS."""
    encoded = model.encode(input_ids, attention_mask)
    out = torch.full((input_ids.shape[0], 1), start_id, dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model.decode(out, encoded, attention_mask)[:, -1]
        next_token = logits.argmax(-1).masked_fill(finished, eos_id)
        out = torch.cat([out, next_token[:, None]], dim=1)
        finished |= next_token == eos_id
        if bool(finished.all()):
            break
    return out[:, 1:]
