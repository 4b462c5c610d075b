"""BART encoder-decoder (Lewis et al. 2019), as Hugging Face's `BartForConditionalGeneration` computes it.

Post-norm blocks:  x = LayerNorm(x + SelfAttention(x));  [x = LayerNorm(x + CrossAttention(x, encoder))];
x = LayerNorm(x + FFN(x)).  Learned absolute positions (offset by 2, a fairseq legacy) and a LayerNorm on the
embeddings; scaled attention with biases; GELU; the LM head is the token embedding plus a per-token bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptlab.config import ModelConfig
from ptlab.models.head_loss import OutputHead
from ptlab.models.layers import Attention, GeluFeedForward, KVCache, init_gpt_style, zero_output_projections
from ptlab.models.masks import causal_bias, padding_bias

POSITION_OFFSET = 2


def _attention(cfg: ModelConfig) -> Attention:
    return Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, bias=True, dropout=cfg.dropout, qk_norm=cfg.qk_norm)


def _norm(cfg: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = _attention(cfg)
        self.attn_norm = _norm(cfg)
        self.ff = GeluFeedForward(cfg.d_model, cfg.d_ff, dropout=cfg.dropout)
        self.ff_norm = _norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x, mask=bias)))
        x = self.ff_norm(x + self.dropout(self.ff(x)))
        return x


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = _attention(cfg)
        self.self_attn_norm = _norm(cfg)
        self.cross_attn = _attention(cfg)
        self.cross_attn_norm = _norm(cfg)
        self.ff = GeluFeedForward(cfg.d_model, cfg.d_ff, dropout=cfg.dropout)
        self.ff_norm = _norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, encoded: torch.Tensor, self_bias: torch.Tensor | None,
                cross_bias: torch.Tensor | None, cache: tuple[KVCache, KVCache] | None = None) -> torch.Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = self.self_attn_norm(x + self.dropout(self.self_attn(x, mask=self_bias, cache=self_cache)))
        x = self.cross_attn_norm(x + self.dropout(self.cross_attn(x, context=encoded, mask=cross_bias,
                                                                  cache=cross_cache)))
        x = self.ff_norm(x + self.dropout(self.ff(x)))
        return x


class Bart(nn.Module):
    is_encoder_decoder = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        positions = cfg.max_position_embeddings + POSITION_OFFSET
        self.encoder_positions = nn.Embedding(positions, cfg.d_model)
        self.encoder_embed_norm = _norm(cfg)
        self.encoder_blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))
        self.decoder_positions = nn.Embedding(positions, cfg.d_model)
        self.decoder_embed_norm = _norm(cfg)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_decoder_layers or
                                                                             cfg.num_layers))
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.vocab_size))
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_gpt_style(self, std=0.02 * self.config.initializer_factor)
        if self.config.zero_init_output:
            zero_output_projections(self)

    def _embed(self, ids: torch.Tensor, positions: nn.Embedding, norm: nn.LayerNorm, past_length: int = 0):
        position_ids = torch.arange(past_length, past_length + ids.shape[1], device=ids.device) + POSITION_OFFSET
        return self.dropout(norm(self.embed(ids) * self.embed_scale + positions(position_ids)[None]))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self._embed(input_ids, self.encoder_positions, self.encoder_embed_norm)
        bias = padding_bias(attention_mask)
        for block in self.encoder_blocks:
            x = block(x, bias)
        return x

    def new_cache(self) -> list[tuple[KVCache, KVCache]]:
        return [(KVCache(), KVCache()) for _ in self.decoder_blocks]

    def decode(self, decoder_input_ids: torch.Tensor, encoded: torch.Tensor,
               attention_mask: torch.Tensor | None = None, cache: list | None = None,
               past_length: int = 0, return_hidden: bool = False) -> torch.Tensor:
        """Decoder logits [batch, length, vocab], or with `return_hidden` the hidden states before the head."""
        length = decoder_input_ids.shape[1]
        x = self._embed(decoder_input_ids, self.decoder_positions, self.decoder_embed_norm, past_length)
        self_bias = causal_bias(length, past_length + length, x.device)
        cross_bias = padding_bias(attention_mask)
        for i, block in enumerate(self.decoder_blocks):
            x = block(x, encoded, self_bias, cross_bias, cache[i] if cache is not None else None)
        return x if return_hidden else self.output_head().logits(x)

    def output_head(self) -> OutputHead:
        return OutputHead(self.lm_head.weight if self.lm_head is not None else self.embed.weight,
                          bias=self.final_logits_bias)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask,
                           return_hidden=return_hidden)
