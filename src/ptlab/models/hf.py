"""Weight-name maps between ptlab models and Hugging Face transformers checkpoints.

Only plain tensors cross this boundary (state dicts), so this module never imports transformers.
"""

from __future__ import annotations

import torch

from ptlab.config import ModelConfig


def t5_key_map(cfg: ModelConfig) -> dict[str, str]:
    """ptlab parameter name -> HF `T5ForConditionalGeneration` parameter name."""
    ff = ["wi_0", "wi_1", "wo"] if cfg.feed_forward == "gated-gelu" else ["wi", "wo"]
    keys = {"embed.weight": "shared.weight",
            "encoder_norm.weight": "encoder.final_layer_norm.weight",
            "decoder_norm.weight": "decoder.final_layer_norm.weight",
            "encoder_position_bias.embedding.weight":
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "decoder_position_bias.embedding.weight":
                "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    if not cfg.tie_word_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.num_layers):
        hf = f"encoder.block.{i}.layer"
        keys[f"encoder_blocks.{i}.attn_norm.weight"] = f"{hf}.0.layer_norm.weight"
        keys[f"encoder_blocks.{i}.ff_norm.weight"] = f"{hf}.1.layer_norm.weight"
        for p in "qkvo":
            keys[f"encoder_blocks.{i}.attn.{p}.weight"] = f"{hf}.0.SelfAttention.{p}.weight"
        for w in ff:
            keys[f"encoder_blocks.{i}.ff.{w}.weight"] = f"{hf}.1.DenseReluDense.{w}.weight"
    for i in range(cfg.num_decoder_layers or cfg.num_layers):
        hf = f"decoder.block.{i}.layer"
        keys[f"decoder_blocks.{i}.self_attn_norm.weight"] = f"{hf}.0.layer_norm.weight"
        keys[f"decoder_blocks.{i}.cross_attn_norm.weight"] = f"{hf}.1.layer_norm.weight"
        keys[f"decoder_blocks.{i}.ff_norm.weight"] = f"{hf}.2.layer_norm.weight"
        for p in "qkvo":
            keys[f"decoder_blocks.{i}.self_attn.{p}.weight"] = f"{hf}.0.SelfAttention.{p}.weight"
            keys[f"decoder_blocks.{i}.cross_attn.{p}.weight"] = f"{hf}.1.EncDecAttention.{p}.weight"
        for w in ff:
            keys[f"decoder_blocks.{i}.ff.{w}.weight"] = f"{hf}.2.DenseReluDense.{w}.weight"
    return keys


def t5_from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    missing = [hf for hf in t5_key_map(cfg).values() if hf not in hf_state]
    if missing:
        raise KeyError(f"HF T5 state dict lacks {len(missing)} tensors, e.g. {missing[0]}")
    return {ours: hf_state[hf] for ours, hf in t5_key_map(cfg).items()}


def t5_to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {hf: state[ours] for ours, hf in t5_key_map(cfg).items()}
