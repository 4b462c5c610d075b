"""T5 encoder-decoder (v1.1 by default; original T5 via `feed_forward: relu` and a tied head; a shared variant).

Read top to bottom, a block is the paper's:  x = x + SelfAttention(RMSNorm(x));  [x = x + CrossAttention(RMSNorm(x),
encoder)];  x = x + FFN(RMSNorm(x)).  Attention scores are not scaled by 1/sqrt(d_head) (T5 folds that into the init),
and a learned relative position bias, computed once per stack, is added to every self-attention layer's scores.
With `shared_encoder_decoder` the decoder's self-attention and FFN are the encoder's (T5 Table 2, "Enc-dec, shared").
"""

from __future__ import annotations

import torch
from torch import nn

from ptlab.config import ModelConfig
from ptlab.models.flex import FlexBias, flex_bias, use_flex_attention
from ptlab.models.head_loss import OutputHead
from ptlab.models.layers import (
    Attention,
    GatedGeluFeedForward,
    KVCache,
    RelativePositionBias,
    ReluFeedForward,
    RMSNorm,
    zero_output_projections,
)
from ptlab.models.masks import add_biases, causal_bias, padding_bias


def _feed_forward(cfg: ModelConfig) -> nn.Module:
    ff = GatedGeluFeedForward if cfg.feed_forward == "gated-gelu" else ReluFeedForward
    return ff(cfg.d_model, cfg.d_ff, cfg.dropout)


def _attention(cfg: ModelConfig) -> Attention:
    # Unscaled scores, the 1/sqrt(d_kv) folded into q's init; normalised queries and keys need the usual scale
    return Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, dropout=cfg.dropout, scale=None if cfg.qk_norm else 1.0,
                     qk_norm=cfg.qk_norm)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.attn = _attention(cfg)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.ff = _feed_forward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | FlexBias | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), mask=bias))
        x = x + self.dropout(self.ff(self.ff_norm(x)))
        return x


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, shared_with: EncoderBlock | None = None):
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.self_attn = shared_with.attn if shared_with is not None else _attention(cfg)
        self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.cross_attn = _attention(cfg)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.ff = shared_with.ff if shared_with is not None else _feed_forward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, encoded: torch.Tensor, self_bias: torch.Tensor | FlexBias | None,
                cross_bias: torch.Tensor | FlexBias | None,
                cache: tuple[KVCache, KVCache] | None = None) -> torch.Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = x + self.dropout(self.self_attn(self.self_attn_norm(x), mask=self_bias, cache=self_cache))
        x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), context=encoded, mask=cross_bias,
                                             cache=cross_cache))
        x = x + self.dropout(self.ff(self.ff_norm(x)))
        return x


class T5(nn.Module):
    """Shared token embedding, encoder and decoder stacks, LM head (untied in v1.1)."""

    is_encoder_decoder = True
    # None: attention on flex_attention where it is faster (`ptlab.models.flex.use_flex_attention`); True/False
    # force it on or off (benchmarks comparing the two kernels, tests checking flex against the dense bias)
    flex_attention: bool | None = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder_position_bias = RelativePositionBias(
            cfg.num_heads, True, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        self.encoder_blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))
        self.encoder_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.decoder_position_bias = RelativePositionBias(
            cfg.num_heads, False, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        if cfg.shared_encoder_decoder:
            self.decoder_blocks = nn.ModuleList(DecoderBlock(cfg, shared_with=b) for b in self.encoder_blocks)
        else:
            self.decoder_blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_decoder_layers or
                                                                                 cfg.num_layers))
        self.decoder_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """T5's initialisation (HF `T5PreTrainedModel._init_weights`), with the untied head at std d_model**-0.5.

        An untied head at T5's embedding std of 1.0 starts at a loss of ~110 (nanoT5 #25).
        """
        cfg, factor = self.config, self.config.initializer_factor
        d_model, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
        nn.init.normal_(self.embed.weight, std=factor * 1.0)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=factor * d_model**-0.5)
        for bias in (self.encoder_position_bias, self.decoder_position_bias):
            nn.init.normal_(bias.embedding.weight, std=factor * d_model**-0.5)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, Attention):
                nn.init.normal_(module.q.weight, std=factor * (d_model * cfg.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.v.weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.o.weight, std=factor * inner**-0.5)
            elif isinstance(module, GatedGeluFeedForward):
                nn.init.normal_(module.wi_0.weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.wi_1.weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=factor * cfg.d_ff**-0.5)
            elif isinstance(module, ReluFeedForward):
                nn.init.normal_(module.wi.weight, std=factor * d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=factor * cfg.d_ff**-0.5)
        if cfg.zero_init_output:
            zero_output_projections(self)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        if self._flex(input_ids.device, cached=False):
            bias = flex_bias(self.encoder_position_bias.diagonals(length, length), length, length, attention_mask,
                             False, input_ids.device)
        else:
            bias = add_biases(self.encoder_position_bias(length, length), padding_bias(attention_mask))
        x = self.dropout(self.embed(input_ids))
        for block in self.encoder_blocks:
            x = block(x, bias)
        return self.dropout(self.encoder_norm(x))

    def _flex(self, device: torch.device, cached: bool) -> bool:
        dropout = self.config.dropout if self.training else 0.0
        return use_flex_attention(device, dropout, cached, self.flex_attention)

    def new_cache(self) -> list[tuple[KVCache, KVCache]]:
        return [(KVCache(), KVCache()) for _ in self.decoder_blocks]

    def decode(self, decoder_input_ids: torch.Tensor, encoded: torch.Tensor,
               attention_mask: torch.Tensor | None = None, cache: list | None = None,
               past_length: int = 0, return_hidden: bool = False) -> torch.Tensor:
        """Decoder logits [batch, length, vocab] given the encoder output and the encoder's padding mask. With a
        `cache` (from `new_cache`), `decoder_input_ids` are the tokens after the `past_length` already seen; with
        `return_hidden`, the hidden states before the head."""
        length, device = decoder_input_ids.shape[1], decoder_input_ids.device
        total = past_length + length
        if self._flex(device, cached=cache is not None):
            diagonals = self.decoder_position_bias.diagonals(length, total, offset=past_length)
            self_bias = flex_bias(diagonals, length, total, None, True, device)
            cross_bias = flex_bias(None, length, encoded.shape[1], attention_mask, False, device)
        else:
            self_bias = self.decoder_position_bias(length, total, offset=past_length) + causal_bias(length, total,
                                                                                                   device)
            cross_bias = padding_bias(attention_mask)
        x = self.dropout(self.embed(decoder_input_ids))
        for i, block in enumerate(self.decoder_blocks):
            x = block(x, encoded, self_bias, cross_bias, cache[i] if cache is not None else None)
        x = self.dropout(self.decoder_norm(x))
        return x if return_hidden else self.output_head().logits(x)

    def output_head(self) -> OutputHead:
        if self.lm_head is None:
            # original T5: tied head, with the decoder output rescaled to keep logits at the embedding's scale
            return OutputHead(self.embed.weight, scale=self.config.d_model**-0.5)
        return OutputHead(self.lm_head.weight)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask,
                           return_hidden=return_hidden)


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: [start, y_0, ..., y_{n-2}], with ignored labels (-100) read as padding."""
    shifted = torch.full_like(labels, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == -100, pad_id)
