"""How many weights a model config implies, counted without building the model.

A config read from a file (a checkpoint's config.yaml, an imported config.json) may ask for a model of any size;
`check_fits_weights` refuses one whose weights could not be in the files beside it before anything is allocated.
"""

from __future__ import annotations

from ptlab.config import ModelConfig
from ptlab.errors import PtlabError


def minimum_parameters(cfg: ModelConfig) -> int:
    """A lower bound on the parameter count of `cfg` (exact Python integers, so absurd sizes do not overflow): one
    embedding, learned positions (BART, GPT-2) or position buckets (T5), and per layer the attention projections
    (plus cross-attention in a decoder) and two feed-forward matrices."""
    d_kv = cfg.d_kv if cfg.d_kv is not None else cfg.d_model // max(cfg.num_heads, 1)
    kv_heads = cfg.num_kv_heads if cfg.num_kv_heads is not None else cfg.num_heads
    attention = 2 * cfg.d_model * d_kv * (cfg.num_heads + kv_heads)
    feed_forward = 2 * cfg.d_model * cfg.d_ff
    total = (cfg.vocab_size or 0) * cfg.d_model + cfg.num_layers * (attention + feed_forward)
    spec = cfg.spec
    if spec.positions == "learned":
        total += cfg.max_position_embeddings * cfg.d_model
    if spec.positions == "relative_bias":  # the encoder's relative position bias (the decoder has one more)
        total += cfg.relative_attention_num_buckets * cfg.num_heads
    if spec.encoder_decoder and not cfg.shared_encoder_decoder:
        decoder_layers = cfg.num_decoder_layers if cfg.num_decoder_layers is not None else cfg.num_layers
        total += decoder_layers * (2 * attention + feed_forward)
    return total


def check_fits_weights(cfg: ModelConfig, weight_bytes: int, source: str) -> None:
    """Refuse a config that implies more weights than `weight_bytes` of files can hold (at least a byte each)."""
    needed = minimum_parameters(cfg)
    if needed > weight_bytes:
        raise PtlabError(f"{source}: the config implies at least {needed:,} parameters but the weight files hold "
                         f"{weight_bytes:,} bytes; the config does not belong to these weights")
