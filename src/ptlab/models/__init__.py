"""Model families. `build_model(cfg)` returns a plain nn.Module for `cfg.family`."""

from __future__ import annotations

from torch import nn

from ptlab.config import ModelConfig
from ptlab.errors import PtlabError
from ptlab.models.encoder_decoder import EncoderDecoder


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "t5":
        return EncoderDecoder(cfg)
    raise PtlabError(f"config key 'model.family': unknown family {cfg.family!r}")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
