"""How many weights a model config implies, counted without building the model.

A config read from a file (a checkpoint's config.yaml, an imported config.json) may ask for a model of any size;
`check_fits_weights` refuses one whose weights could not be in the files beside it before anything is allocated.
"""

from __future__ import annotations

from ptlab.config import ModelConfig
from ptlab.errors import PtlabError


def minimum_parameters(cfg: ModelConfig) -> int:
    """A lower bound on the parameter count of `cfg` (exact Python integers, so absurd sizes do not overflow):
    one embedding and, per layer of the first stack, the attention projections and two feed-forward matrices."""
    d_kv = cfg.d_kv if cfg.d_kv is not None else cfg.d_model // max(cfg.num_heads, 1)
    kv_heads = cfg.num_kv_heads if cfg.num_kv_heads is not None else cfg.num_heads
    attention = 2 * cfg.d_model * d_kv * (cfg.num_heads + kv_heads)
    feed_forward = 2 * cfg.d_model * cfg.d_ff
    return (cfg.vocab_size or 0) * cfg.d_model + cfg.num_layers * (attention + feed_forward)


def check_fits_weights(cfg: ModelConfig, weight_bytes: int, source: str) -> None:
    """Refuse a config that implies more weights than `weight_bytes` of files can hold (at least a byte each)."""
    needed = minimum_parameters(cfg)
    if needed > weight_bytes:
        raise PtlabError(f"{source}: the config implies at least {needed:,} parameters but the weight files hold "
                         f"{weight_bytes:,} bytes; the config does not belong to these weights")
