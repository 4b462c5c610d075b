"""The model registry. `build_model(cfg)` returns a plain nn.Module of the class the family's spec names
(`ptlab.families`), checked against the contract every model keeps (`LanguageModel`).

Encoder-decoders (t5, bart) are called as `model(input_ids, decoder_input_ids, attention_mask)` and also expose
`encode`/`decode`; decoder-only models (gpt2, llama) as `model(input_ids, ...)`. All return logits [B, T, V].
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ptlab.config import ModelConfig
from ptlab.errors import PtlabError
from ptlab.families import FamilySpec
from ptlab.models.head_loss import OutputHead


@runtime_checkable
class LanguageModel(Protocol):
    """What every family's model offers; the trainer, generation, probes, FLOP counts and interop ask for nothing
    else. Its blocks are in `blocks` (decoder-only) or `encoder_blocks` and `decoder_blocks`, where FSDP and
    activation checkpointing find them (`ptlab.train.distributed.blocks`)."""

    config: ModelConfig
    is_encoder_decoder: bool

    def forward(self, input_ids: torch.Tensor, *args: Any, return_hidden: bool = False,
                **kwargs: Any) -> torch.Tensor:
        """Logits [batch, length, vocab], or with `return_hidden` the hidden states before the head."""

    def output_head(self) -> OutputHead:
        """The head that turns hidden states into logits (`ptlab.models.head_loss` computes the loss in chunks)."""

    def new_cache(self) -> list:
        """An empty key/value cache for generation, one entry per decoder block."""

    def reset_parameters(self) -> None:
        """The family's initialisation."""


@runtime_checkable
class DecoderOnlyModel(LanguageModel, Protocol):
    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None, prefix_mask: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, cache: list | None = None,
                      past_length: int = 0) -> torch.Tensor:
        """The final (normed) hidden states [batch, length, d_model]."""


@runtime_checkable
class EncoderDecoderModel(LanguageModel, Protocol):
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output [batch, length, d_model]."""

    def decode(self, decoder_input_ids: torch.Tensor, encoded: torch.Tensor,
               attention_mask: torch.Tensor | None = None, cache: list | None = None, past_length: int = 0,
               return_hidden: bool = False) -> torch.Tensor:
        """Decoder logits (or hidden states) given the encoder output and the encoder's padding mask."""


def model_class(spec: FamilySpec) -> type[nn.Module]:
    """The class a family's spec names: the class itself, or its import path "package.module:Class"."""
    if not isinstance(spec.model, str):
        return spec.model
    module, _, name = spec.model.partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(cfg: ModelConfig) -> nn.Module:
    cfg.validate()
    if cfg.vocab_size is None:
        raise PtlabError("config key 'model.vocab_size' must be set (it is normally taken from the tokenizer)")
    spec = cfg.spec
    model = model_class(spec)(cfg)
    contract = EncoderDecoderModel if spec.encoder_decoder else DecoderOnlyModel
    if not isinstance(model, contract) or model.is_encoder_decoder != spec.encoder_decoder:
        raise PtlabError(f"model family {spec.name!r}: {type(model).__name__} does not offer "
                         f"ptlab.models.{contract.__name__} (see ptlab.families)")
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Distinct parameters (tied or shared weights count once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
