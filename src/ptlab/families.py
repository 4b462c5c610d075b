"""The model families: one table that says, in plain data, what each family is.

    spec = family_spec("llama")
    spec.encoder_decoder, spec.positions, spec.hf_class    # False, "rope", "LlamaForCausalLM"

Code that depends on the family asks its spec (`ModelConfig.spec`), never its name: whether it is an
encoder-decoder, its position scheme, feed-forward and norm, its defaults, the token its decoder starts from and its
transformers class. Only this table and the model registry (`ptlab.models.build_model`) know the names.

A new family is one `FamilySpec` (a row in `FAMILIES` here, or `register_family(FamilySpec(...))` from anywhere)
and the module holding its model, which offers `ptlab.models.LanguageModel`. The table sits at the bottom of the
package, beside `ptlab.schema`, because `ptlab.config` fills a family's defaults from it: so it names the model
class by its import path ("ptlab.models.t5:T5"), or holds the class itself for a family registered later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptlab.errors import PtlabError

# What each position scheme is called on a model card
POSITIONS = {"relative_bias": "relative position bias", "learned": "learned positions", "rope": "RoPE"}
GATED_FEED_FORWARDS = ("gated-gelu", "swiglu")  # three matrices per feed-forward, not two


@dataclass(frozen=True)
class FamilySpec:
    name: str  # the value of model.family
    model: Any  # the nn.Module class, built as `model(cfg)`, or its import path "package.module:Class"
    encoder_decoder: bool  # encode/decode with cross-attention (else one decoder-only stack)
    positions: str  # "relative_bias" (T5's buckets) | "learned" (model.max_position_embeddings) | "rope"
    feed_forward: str | None  # "gelu" | "gelu-tanh" | "swiglu"; None: model.feed_forward picks (gated-gelu | relu)
    norm: str  # "layer" (LayerNorm) | "rms" (RMSNorm)
    bias: bool  # the linear layers have biases
    tie_word_embeddings: bool  # the default of model.tie_word_embeddings
    layer_norm_eps: float  # the default of model.layer_norm_eps
    decoder_start: str | None = None  # the SpecialIds token ("pad" | "eos") an encoder-decoder starts decoding from
    grouped_query: bool = False  # model.num_kv_heads may be fewer than model.num_heads
    shared_encoder_decoder: bool = False  # model.shared_encoder_decoder is allowed
    fixed_head_size: bool = False  # d_kv * num_heads must equal d_model (the transformers config has no d_kv)
    scaled_residual_init: bool = False  # residual output projections start at std / sqrt(2 * layers) (GPT-2)
    hf_class: str | None = None  # the transformers class `ptlab export-hf` writes (None: no export)
    hf_model_types: tuple[str, ...] = ()  # config.json model_type values `ptlab import-hf` reads as this family


FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (
    FamilySpec("t5", "ptlab.models.t5:T5", encoder_decoder=True, positions="relative_bias", feed_forward=None,
               norm="rms", bias=False, tie_word_embeddings=False, layer_norm_eps=1e-6, decoder_start="pad",
               shared_encoder_decoder=True, hf_class="T5ForConditionalGeneration", hf_model_types=("t5", "mt5")),
    FamilySpec("bart", "ptlab.models.bart:Bart", encoder_decoder=True, positions="learned", feed_forward="gelu",
               norm="layer", bias=True, tie_word_embeddings=True, layer_norm_eps=1e-5, decoder_start="eos",
               fixed_head_size=True, hf_class="BartForConditionalGeneration", hf_model_types=("bart",)),
    FamilySpec("gpt2", "ptlab.models.decoder:DecoderLM", encoder_decoder=False, positions="learned",
               feed_forward="gelu-tanh", norm="layer", bias=True, tie_word_embeddings=True, layer_norm_eps=1e-5,
               fixed_head_size=True, scaled_residual_init=True, hf_class="GPT2LMHeadModel",
               hf_model_types=("gpt2",)),
    FamilySpec("llama", "ptlab.models.decoder:DecoderLM", encoder_decoder=False, positions="rope",
               feed_forward="swiglu", norm="rms", bias=False, tie_word_embeddings=False, layer_norm_eps=1e-6,
               grouped_query=True, hf_class="LlamaForCausalLM", hf_model_types=("llama",)),
)}


def family_spec(name: str) -> FamilySpec:
    """The spec of family `name`; an unknown name is a one-line error listing the known ones."""
    if name not in FAMILIES:
        raise PtlabError(f"config key 'model.family': {unknown_family(name)}")
    return FAMILIES[name]


def unknown_family(name: object) -> str:
    return f"unknown family {name!r} (known: {', '.join(FAMILIES)})"


def families_where(**properties: Any) -> list[str]:
    """The names of the families whose specs have all these values, e.g. `families_where(encoder_decoder=False)`."""
    return [name for name, spec in FAMILIES.items()
            if all(getattr(spec, key) == value for key, value in properties.items())]


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family to the table (its model may be the class itself); a name already taken is an error."""
    if spec.name in FAMILIES:
        raise PtlabError(f"model family {spec.name!r} is already registered")
    FAMILIES[spec.name] = spec
    return spec


def unregister_family(name: str) -> None:
    """Remove a family that `register_family` added (a test's, say)."""
    FAMILIES.pop(name, None)
