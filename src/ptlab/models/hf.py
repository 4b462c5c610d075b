"""Hugging Face transformers interop: configs and weight names of `T5ForConditionalGeneration`,
`BartForConditionalGeneration`, `GPT2LMHeadModel` and `LlamaForCausalLM`, both ways.

Only plain dicts and tensors cross this boundary, so this module never imports transformers. A setting ptlab does
not implement is a `PtlabError` naming the key, never a silently different model. Each transformers class has its
translation here (`INTEROP`), which a family reaches through its spec's `hf_class` (`ptlab.families`).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch

from ptlab.config import ModelConfig, from_dict
from ptlab.errors import PtlabError
from ptlab.families import FAMILIES, FamilySpec

# No config.json field keeps a T5 head untied in transformers 5: T5Config reads tie_word_embeddings only to decide
# whether to scale the decoder output (scale_decoder_outputs) and then sets it to True, so `tie_weights()` ties the
# head to the embedding. from_pretrained keeps the head only because both matrices are stored with different values.
UNTIED_T5_NOTE = ("transformers 5 ties a T5's output head to its embedding whenever tie_weights() runs (so do "
                  "resize_token_embeddings and lm-evaluation-harness): its T5Config sets tie_word_embeddings=True "
                  "whatever config.json says. from_pretrained loads this export with its own head; keep it with "
                  "`model.config.tie_word_embeddings = False` after from_pretrained (transformers 4 needs nothing)")


def _require(hf: dict, key: str, allowed: tuple, default: Any = None) -> Any:
    value = hf.get(key, default)
    if value not in allowed:
        raise PtlabError(f"config.json: {key}={value!r} is not supported (ptlab implements "
                         f"{', '.join(map(repr, allowed))})")
    return value


def _ids(hf: dict) -> dict:
    return {k: hf.get(k) for k in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")
            if isinstance(hf.get(k), int)}


# ---- configs ------------------------------------------------------------------------------------------------------

def model_config_from_hf(hf: dict) -> ModelConfig:
    """A ptlab ModelConfig equivalent to an HF config.json (as a dict). Every value is type-checked and validated
    like a ptlab config's, so a malformed file is a one-line error naming the key."""
    if not isinstance(hf, dict):
        raise PtlabError(f"config.json: expected a JSON object, got {type(hf).__name__}")
    try:
        cfg = _model_config_from_hf(hf)
    except KeyError as err:
        raise PtlabError(f"config.json: no {err} key") from None
    except (TypeError, ValueError, ZeroDivisionError) as err:  # arithmetic on a value of the wrong type, or zero
        raise PtlabError(f"config.json: a value has the wrong type or is zero ({err})") from None
    _drop_ids_outside_the_vocabulary(cfg)
    cfg = from_dict(ModelConfig, dataclasses.asdict(cfg), "model.")
    cfg.validate()
    return cfg


def _drop_ids_outside_the_vocabulary(cfg: ModelConfig) -> None:
    """Special ids the vocabulary does not hold (a small model built from GPT-2's config keeps its 50256): transformers
    loads such a model, so ptlab imports it too, without those ids and with a warning naming them (generation then
    takes them from the tokenizer, or has none)."""
    vocab = cfg.vocab_size
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        return  # validation names the vocabulary size itself
    keys = ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")
    outside = {key: getattr(cfg, key) for key in keys if getattr(cfg, key) is not None
               and not 0 <= getattr(cfg, key) < vocab}
    if outside:
        named = ", ".join(f"{key}={value}" for key, value in outside.items())
        print(f"ptlab: warning: config.json: {named} outside the vocabulary of {vocab}: imported without "
              f"{'it' if len(outside) == 1 else 'them'}", file=sys.stderr)
        for key in outside:
            setattr(cfg, key, None)


def _mapping(hf: dict, key: str) -> dict:
    value = hf.get(key) or {}
    if not isinstance(value, dict):
        raise PtlabError(f"config.json: {key} must be an object, got {value!r}")
    return value


def _hf_model_types() -> dict[str, FamilySpec]:
    """config.json's model_type -> the family that reads it (`spec.hf_model_types`)."""
    return {model_type: spec for spec in FAMILIES.values() for model_type in spec.hf_model_types}


def _interop(spec: FamilySpec) -> _Interop:
    if spec.hf_class not in INTEROP:
        raise PtlabError(f"model.family: {spec.name} has no transformers class to convert to or from (ptlab "
                         f"converts {', '.join(INTEROP)})")
    return INTEROP[spec.hf_class]


def _model_config_from_hf(hf: dict) -> ModelConfig:
    model_type, known = hf.get("model_type"), _hf_model_types()
    if model_type not in known:
        raise PtlabError(f"config.json: model_type {model_type!r} is not supported (ptlab imports "
                         f"{', '.join(sorted(known))})")
    spec = known[model_type]
    return _interop(spec).config_from_hf(hf, model_type, spec.name)


def hf_config_from_model(cfg: ModelConfig) -> tuple[dict, list[str]]:
    """An HF config.json (dict) for `cfg`, and notes the user must read (e.g. version constraints)."""
    cfg = dataclasses.replace(cfg)
    cfg.validate()
    if cfg.prefix_lm:
        raise PtlabError("model.prefix_lm: transformers has no prefix-LM attention for GPT-2 or Llama; the export "
                         "would attend differently")
    if cfg.qk_norm:
        raise PtlabError("model.qk_norm: transformers' T5, BART, GPT-2 and Llama have no normalised queries and keys; "
                         "the export would attend differently")
    spec = cfg.spec
    interop = _interop(spec)
    # Every id is written, null included: a missing key would take transformers' default (GPT-2's 50256).
    ids = {k: getattr(cfg, k) for k in ("pad_token_id", "eos_token_id", "bos_token_id")}
    if cfg.is_encoder_decoder:
        ids["decoder_start_token_id"] = cfg.decoder_start_token_id
    common = {"architectures": [spec.hf_class], "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": cfg.tie_word_embeddings, **ids}
    return {**common, "model_type": spec.hf_model_types[0], **interop.config_to_hf(cfg)}, interop.notes(cfg)


# ---- one transformers class each -----------------------------------------------------------------------------------

def _with_bias(ours: str, hf: str) -> dict[str, str]:
    return {f"{ours}.weight": f"{hf}.weight", f"{ours}.bias": f"{hf}.bias"}


class _Interop:
    """How one transformers class translates: its config.json keys both ways and its weight names. A family reaches
    it through its spec's `hf_class` (`INTEROP`); the hooks below do nothing unless a class needs them."""

    def config_from_hf(self, hf: dict, model_type: str, family: str) -> ModelConfig:
        raise NotImplementedError

    def config_to_hf(self, cfg: ModelConfig) -> dict:
        """The class's own config.json keys (the ids, vocabulary and tying are written for every class)."""
        raise NotImplementedError

    def weight_map(self, cfg: ModelConfig) -> dict[str, str]:
        """ptlab weight name -> transformers weight name."""
        raise NotImplementedError

    def notes(self, cfg: ModelConfig) -> list[str]:
        return []

    def reading(self, keys: dict[str, str], hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> list[str]:
        """Adjust `keys` to the names this checkpoint stores; the HF weights needed beyond `keys`' values."""
        return []

    def transposed(self, ours: str) -> bool:
        """Whether the HF weight is stored transposed."""
        return False

    def after_reading(self, state: dict[str, torch.Tensor], hf_state: dict[str, torch.Tensor],
                      cfg: ModelConfig) -> None:
        pass

    def after_writing(self, out: dict[str, torch.Tensor], state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
        pass


class _T5(_Interop):
    def config_from_hf(self, hf: dict, model_type: str, family: str) -> ModelConfig:
        ff = _require(hf, "feed_forward_proj", ("relu", "gated-gelu"), "relu")
        if "scale_decoder_outputs" in hf:  # transformers 5.x: the head is always tied; this says whether scaled
            tied = bool(hf["scale_decoder_outputs"])
        elif model_type == "mt5" and str(hf.get("transformers_version", "")).startswith("5."):
            tied = False  # transformers 5.x's MT5 always ties its head and never scales it: ptlab's unscaled head
        else:  # transformers 4.x: tied (and scaled) unless tie_word_embeddings is false
            tied = bool(hf.get("tie_word_embeddings", True))
        cfg = ModelConfig(family=family, vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"],
                          d_ff=hf["d_ff"], num_heads=hf["num_heads"], num_layers=hf["num_layers"],
                          num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], feed_forward=ff,
                          tie_word_embeddings=tied,
                          relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
                          relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
                          layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
                          initializer_factor=hf.get("initializer_factor", 1.0), **_ids(hf))
        cfg.decoder_start_token_id = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else \
            cfg.pad_token_id
        return cfg

    def config_to_hf(self, cfg: ModelConfig) -> dict:
        start = cfg.decoder_start_token_id
        if start is None:
            start = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        return {"decoder_start_token_id": start, "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
                "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
                "num_decoder_layers": cfg.num_decoder_layers or cfg.num_layers, "feed_forward_proj": cfg.feed_forward,
                "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
                "relative_attention_max_distance": cfg.relative_attention_max_distance,
                "layer_norm_epsilon": cfg.layer_norm_eps, "initializer_factor": cfg.initializer_factor,
                "dropout_rate": 0.0, "is_encoder_decoder": True, "scale_decoder_outputs": cfg.tie_word_embeddings}

    def notes(self, cfg: ModelConfig) -> list[str]:
        return [] if cfg.tie_word_embeddings else [UNTIED_T5_NOTE]

    def weight_map(self, cfg: ModelConfig) -> dict[str, str]:
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

    def reading(self, keys: dict[str, str], hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> list[str]:
        if not cfg.tie_word_embeddings and "lm_head.weight" not in hf_state:
            keys["lm_head.weight"] = "shared.weight"  # transformers 5.x: a tied, unscaled head
        return []


class _Bart(_Interop):
    def config_from_hf(self, hf: dict, model_type: str, family: str) -> ModelConfig:
        _require(hf, "activation_function", ("gelu",), "gelu")
        for key in ("normalize_before", "add_final_layer_norm", "normalize_embedding"):
            if key in hf and hf[key] != (key == "normalize_embedding"):
                raise PtlabError(f"config.json: {key}={hf[key]!r} is not supported (that is mBART's layout)")
        for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"),
                         ("encoder_ffn_dim", "decoder_ffn_dim")):
            if hf[enc] != hf[dec]:
                raise PtlabError(f"config.json: {enc}={hf[enc]} differs from {dec}={hf[dec]}; ptlab's BART uses "
                                 "one value for both stacks")
        return ModelConfig(family=family, vocab_size=hf["vocab_size"], d_model=hf["d_model"],
                           num_heads=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"],
                           num_layers=hf["encoder_layers"], num_decoder_layers=hf["decoder_layers"],
                           max_position_embeddings=hf["max_position_embeddings"],
                           scale_embedding=bool(hf.get("scale_embedding", False)),
                           tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), layer_norm_eps=1e-5,
                           **_ids(hf))

    def config_to_hf(self, cfg: ModelConfig) -> dict:
        if cfg.layer_norm_eps != 1e-5:
            raise PtlabError(f"model.layer_norm_eps: transformers' BART uses 1e-5, not {cfg.layer_norm_eps}")
        return {"d_model": cfg.d_model, "encoder_layers": cfg.num_layers,
                "decoder_layers": cfg.num_decoder_layers or cfg.num_layers, "encoder_attention_heads": cfg.num_heads,
                "decoder_attention_heads": cfg.num_heads, "encoder_ffn_dim": cfg.d_ff, "decoder_ffn_dim": cfg.d_ff,
                "max_position_embeddings": cfg.max_position_embeddings, "activation_function": "gelu",
                "scale_embedding": cfg.scale_embedding, "dropout": 0.0, "attention_dropout": 0.0,
                "activation_dropout": 0.0, "is_encoder_decoder": True, "forced_eos_token_id": None}

    def weight_map(self, cfg: ModelConfig) -> dict[str, str]:
        keys = {"embed.weight": "model.shared.weight", "final_logits_bias": "final_logits_bias",
                "encoder_positions.weight": "model.encoder.embed_positions.weight",
                "decoder_positions.weight": "model.decoder.embed_positions.weight",
                **_with_bias("encoder_embed_norm", "model.encoder.layernorm_embedding"),
                **_with_bias("decoder_embed_norm", "model.decoder.layernorm_embedding")}
        if not cfg.tie_word_embeddings:
            keys["lm_head.weight"] = "lm_head.weight"
        projections = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
        stacks = (("encoder", cfg.num_layers, {"attn": "self_attn"}, {"attn_norm": "self_attn_layer_norm"}),
                  ("decoder", cfg.num_decoder_layers or cfg.num_layers,
                   {"self_attn": "self_attn", "cross_attn": "encoder_attn"},
                   {"self_attn_norm": "self_attn_layer_norm", "cross_attn_norm": "encoder_attn_layer_norm"}))
        for stack, layers, attentions, norms in stacks:
            for i in range(layers):
                ours, hf = f"{stack}_blocks.{i}", f"model.{stack}.layers.{i}"
                for our_attn, hf_attn in attentions.items():
                    for p, hp in projections.items():
                        keys.update(_with_bias(f"{ours}.{our_attn}.{p}", f"{hf}.{hf_attn}.{hp}"))
                for our_norm, hf_norm in {**norms, "ff_norm": "final_layer_norm"}.items():
                    keys.update(_with_bias(f"{ours}.{our_norm}", f"{hf}.{hf_norm}"))
                keys.update(_with_bias(f"{ours}.ff.fc_in", f"{hf}.fc1"))
                keys.update(_with_bias(f"{ours}.ff.fc_out", f"{hf}.fc2"))
        return keys

    def reading(self, keys: dict[str, str], hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> list[str]:
        if "model.shared.weight" not in hf_state:
            keys["embed.weight"] = "model.encoder.embed_tokens.weight"
        return []

    def after_writing(self, out: dict[str, torch.Tensor], state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
        if not cfg.tie_word_embeddings:
            # transformers 5 ties BART's encoder and decoder embeddings to `model.shared` only under
            # tie_word_embeddings=true: with an untied head they load from their own names, or at random
            for stack in ("encoder", "decoder"):
                out[f"model.{stack}.embed_tokens.weight"] = out["model.shared.weight"].clone()


class _GPT2(_Interop):
    """GPT-2 stores its linear layers as Conv1D ([in, out]; ptlab's are nn.Linear, [out, in]) and fuses the query,
    key and value projections into one `c_attn`."""

    def config_from_hf(self, hf: dict, model_type: str, family: str) -> ModelConfig:
        _require(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
        _require(hf, "scale_attn_weights", (True,), True)
        _require(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
        _require(hf, "add_cross_attention", (False,), False)
        return ModelConfig(family=family, vocab_size=hf["vocab_size"], d_model=hf["n_embd"], num_heads=hf["n_head"],
                           d_ff=hf.get("n_inner") or 4 * hf["n_embd"], num_layers=hf["n_layer"],
                           max_position_embeddings=hf["n_positions"],
                           layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                           tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), **_ids(hf))

    def config_to_hf(self, cfg: ModelConfig) -> dict:
        return {"n_embd": cfg.d_model, "n_head": cfg.num_heads, "n_layer": cfg.num_layers,
                "n_inner": cfg.d_ff, "n_positions": cfg.max_position_embeddings, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.layer_norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}

    def weight_map(self, cfg: ModelConfig) -> dict[str, str]:
        """Plain renames only; the fused attention is split and joined in `after_reading` and `after_writing`."""
        keys = {"embed.weight": "transformer.wte.weight", "positions.weight": "transformer.wpe.weight",
                **_with_bias("norm", "transformer.ln_f")}
        if not cfg.tie_word_embeddings:
            keys["lm_head.weight"] = "lm_head.weight"
        for i in range(cfg.num_layers):
            ours, hf = f"blocks.{i}", f"transformer.h.{i}"
            keys.update(_with_bias(f"{ours}.attn_norm", f"{hf}.ln_1"))
            keys.update(_with_bias(f"{ours}.ff_norm", f"{hf}.ln_2"))
            keys.update(_with_bias(f"{ours}.attn.o", f"{hf}.attn.c_proj"))
            keys.update(_with_bias(f"{ours}.ff.fc_in", f"{hf}.mlp.c_fc"))
            keys.update(_with_bias(f"{ours}.ff.fc_out", f"{hf}.mlp.c_proj"))
        return keys

    def reading(self, keys: dict[str, str], hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> list[str]:
        return [f"transformer.h.{i}.attn.c_attn.{part}" for i in range(cfg.num_layers) for part in ("weight", "bias")]

    def transposed(self, ours: str) -> bool:
        return ours.endswith(".weight") and (".attn.o." in ours or ".ff." in ours)

    def after_reading(self, state: dict[str, torch.Tensor], hf_state: dict[str, torch.Tensor],
                      cfg: ModelConfig) -> None:
        for i in range(cfg.num_layers):
            weight = hf_state[f"transformer.h.{i}.attn.c_attn.weight"].t()
            bias = hf_state[f"transformer.h.{i}.attn.c_attn.bias"]
            for part, w, b in zip("qkv", weight.chunk(3, dim=0), bias.chunk(3)):
                state[f"blocks.{i}.attn.{part}.weight"] = w.contiguous()
                state[f"blocks.{i}.attn.{part}.bias"] = b.contiguous()

    def after_writing(self, out: dict[str, torch.Tensor], state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
        for i in range(cfg.num_layers):
            attn = f"blocks.{i}.attn"
            out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(
                [state[f"{attn}.{p}.weight"] for p in "qkv"], dim=0).t().contiguous()
            out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat([state[f"{attn}.{p}.bias"] for p in "qkv"])


class _Llama(_Interop):
    def config_from_hf(self, hf: dict, model_type: str, family: str) -> ModelConfig:
        _require(hf, "hidden_act", ("silu",), "silu")
        _require(hf, "attention_bias", (False,), False)
        _require(hf, "mlp_bias", (False,), False)
        rope = _mapping(hf, "rope_parameters")
        scaling = _mapping(hf, "rope_scaling")
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise PtlabError(f"config.json: rope type {rope_type!r} is not supported (ptlab implements plain RoPE, "
                             "'default')")
        heads = hf["num_attention_heads"]
        return ModelConfig(family=family, vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=heads,
                           num_kv_heads=hf.get("num_key_value_heads") or heads,
                           d_kv=hf.get("head_dim") or hf["hidden_size"] // heads, d_ff=hf["intermediate_size"],
                           num_layers=hf["num_hidden_layers"], max_position_embeddings=hf["max_position_embeddings"],
                           rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
                           layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
                           tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), **_ids(hf))

    def config_to_hf(self, cfg: ModelConfig) -> dict:
        return {"hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
                "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
                "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.d_kv,
                "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.layer_norm_eps,
                "rope_theta": cfg.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}

    def weight_map(self, cfg: ModelConfig) -> dict[str, str]:
        keys = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
        if not cfg.tie_word_embeddings:
            keys["lm_head.weight"] = "lm_head.weight"
        names = {"attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm", "attn.q": "self_attn.q_proj",
                 "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj", "attn.o": "self_attn.o_proj",
                 "ff.gate": "mlp.gate_proj", "ff.up": "mlp.up_proj", "ff.down": "mlp.down_proj"}
        for i in range(cfg.num_layers):
            for ours, hf in names.items():
                keys[f"blocks.{i}.{ours}.weight"] = f"model.layers.{i}.{hf}.weight"
        return keys


# transformers class (a family's `spec.hf_class`) -> how it translates
INTEROP: dict[str, _Interop] = {"T5ForConditionalGeneration": _T5(), "BartForConditionalGeneration": _Bart(),
                                "GPT2LMHeadModel": _GPT2(), "LlamaForCausalLM": _Llama()}


# ---- weights ------------------------------------------------------------------------------------------------------

def weight_map(cfg: ModelConfig) -> dict[str, str]:
    """ptlab weight name -> transformers weight name, for a family with a transformers class."""
    return _interop(cfg.spec).weight_map(cfg)


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """ptlab state dict from an HF one (tied weights may be stored once under any of their names)."""
    interop = _interop(cfg.spec)
    keys = interop.weight_map(cfg)
    needed = interop.reading(keys, hf_state, cfg)
    needed = list(keys.values()) + needed
    missing = [hf for hf in needed if hf not in hf_state]
    if missing:
        raise PtlabError(f"the checkpoint lacks {len(missing)} of the {cfg.family} weights the config implies, "
                         f"e.g. {missing[0]}")
    state = {ours: (hf_state[hf].t() if interop.transposed(ours) else hf_state[hf]).contiguous()
             for ours, hf in keys.items()}
    interop.after_reading(state, hf_state, cfg)
    return state


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF state dict from a ptlab one (contiguous copies, safe to save)."""
    interop = _interop(cfg.spec)
    out = {hf: (state[ours].t() if interop.transposed(ours) else state[ours]).contiguous().clone()
           for ours, hf in interop.weight_map(cfg).items()}
    interop.after_writing(out, state, cfg)
    return out
