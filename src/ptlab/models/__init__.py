"""Model families. `build_model(cfg)` returns a plain nn.Module for `cfg.family`.

Encoder-decoders (t5, bart) are called as `model(input_ids, decoder_input_ids, attention_mask)` and also expose
`encode`/`decode`; decoder-only models (gpt2, llama) as `model(input_ids, ...)`. All return logits [B, T, V].
"""

from __future__ import annotations

from torch import nn

from ptlab.config import ModelConfig
from ptlab.errors import PtlabError


def build_model(cfg: ModelConfig) -> nn.Module:
    from ptlab.models.bart import Bart
    from ptlab.models.decoder import DecoderLM
    from ptlab.models.t5 import T5

    cfg.validate()
    if cfg.vocab_size is None:
        raise PtlabError("config key 'model.vocab_size' must be set (it is normally taken from the tokenizer)")
    families = {"t5": T5, "bart": Bart, "gpt2": DecoderLM, "llama": DecoderLM}
    return families[cfg.family](cfg)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Distinct parameters (tied or shared weights count once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
