"""Decoder-only language models: GPT-2 and Llama flavours, with an optional prefix-LM attention mode.

A block is the paper's:  x = x + Attention(Norm(x));  x = x + FFN(Norm(x)).
- gpt2:  LayerNorm, learned absolute positions, GELU (tanh) FFN, biases, tied embeddings.
- llama: RMSNorm, rotary positions (RoPE), SwiGLU FFN, grouped-query attention, no biases, untied head.
Which flavour is read from the family's spec (`ptlab.families`: `norm`, `positions`, `feed_forward`, `bias`,
`scaled_residual_init`), so another decoder-only family can reuse these classes with a table entry.
With `prefix_lm`, attention is fully visible inside each example's prefix (the batch's `prefix_mask`) and causal
after it (T5's "prefix LM" architecture); packed rows (`segment_ids`) never attend across examples.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptlab.config import ModelConfig
from ptlab.models.head_loss import OutputHead
from ptlab.models.layers import (
    Attention,
    GeluFeedForward,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    SwiGLUFeedForward,
    init_gpt_style,
    zero_output_projections,
)
from ptlab.models.masks import decoder_bias


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The family's norm: RMSNorm or LayerNorm (`spec.norm`)."""
    if cfg.spec.norm == "rms":
        return RMSNorm(cfg.d_model, cfg.layer_norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        spec = cfg.spec
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, num_kv_heads=cfg.num_kv_heads, bias=spec.bias,
                              dropout=cfg.dropout, qk_norm=cfg.qk_norm)
        self.ff_norm = make_norm(cfg)
        self.ff = (SwiGLUFeedForward(cfg.d_model, cfg.d_ff) if spec.feed_forward == "swiglu"
                   else GeluFeedForward(cfg.d_model, cfg.d_ff, approximate="tanh", dropout=cfg.dropout))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rotary, cache: KVCache | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), mask=mask, is_causal=True, rotary=rotary, cache=cache))
        x = x + self.dropout(self.ff(self.ff_norm(x)))
        return x


class DecoderLM(nn.Module):
    is_encoder_decoder = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.spec.positions == "rope":
            self.positions, self.rotary = None, RotaryEmbedding(cfg.d_kv, cfg.rope_theta)
        else:
            self.positions, self.rotary = nn.Embedding(cfg.max_position_embeddings, cfg.d_model), None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, 0.02) weights and zero biases; GPT-2 scales residual projections by 1/sqrt(2 * layers)."""
        std = 0.02 * self.config.initializer_factor
        init_gpt_style(self, std)
        if self.config.spec.scaled_residual_init:
            for block in self.blocks:
                for projection in (block.attn.o, block.ff.fc_out):
                    nn.init.normal_(projection.weight, std=std / math.sqrt(2 * self.config.num_layers))
        if self.config.zero_init_output:
            zero_output_projections(self)

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: list[KVCache] | None = None,
                past_length: int = 0, return_hidden: bool = False) -> torch.Tensor:
        """Logits [batch, length, vocab] (see `hidden_states` for the arguments), or with `return_hidden` the
        hidden states before the head (for `ptlab.models.head_loss`, through any DDP/FSDP wrapper's forward)."""
        x = self.hidden_states(input_ids, position_ids, segment_ids, prefix_mask, attention_mask, cache, past_length)
        return x if return_hidden else self.output_head().logits(x)

    def output_head(self) -> OutputHead:
        return OutputHead(self.lm_head.weight if self.lm_head is not None else self.embed.weight)

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, cache: list[KVCache] | None = None,
                      past_length: int = 0) -> torch.Tensor:
        """The final (normed) hidden states [batch, length, d_model].

        Training batches give `position_ids`, `segment_ids` and `prefix_mask` (see `ptlab.data.pipeline`); the
        prefix is used only when the model was configured with `prefix_lm`. For generation, `cache` (from
        `new_cache`) holds the `past_length` tokens seen so far and `attention_mask` [batch, past + length] marks
        left padding.
        """
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=input_ids.device)[None].expand(
                batch, length)
        mask = decoder_bias(length, past_length + length, input_ids.device, segment_ids=segment_ids,
                            prefix_mask=prefix_mask if self.config.prefix_lm else None,
                            attention_mask=attention_mask)
        x = self.embed(input_ids)
        rotary = None
        if self.rotary is not None:
            rotary = self.rotary(position_ids)
        else:
            x = x + self.positions(position_ids)
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rotary, cache[i] if cache is not None else None)
        return self.norm(x)
