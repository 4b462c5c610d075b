"""Every objective by its config name, with its parameters (a dataclass of defaults) and its length bookkeeping.

    objective = build_objective("bart", {"mask_ratio": 0.3})
    raw_length, targets_length = objective.lengths(inputs_length=512, specials=specials)
    example = objective(tokens[:raw_length], rng, specials)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from ptlab.errors import PtlabError
from ptlab.objectives import bart, lm, t5, ul2
from ptlab.objectives.base import Example, SpecialIds
from ptlab.schema import from_dict

# ---- parameters ---------------------------------------------------------------------------------------------------

def _in_range(key: str, value: float, low: float, high: float, *, open_low=False, open_high=False) -> None:
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise PtlabError(f"config key 'objective.{key}': must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")


@dataclass(frozen=True)
class NoParams:
    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class SpanParams:
    noise_density: float = 0.15  # share of tokens corrupted
    mean_span_length: float = 3.0
    random_roll: bool = False  # roll the mask so that spans are not biased towards the chunk's ends (T5 #905)

    def validate(self) -> None:
        _in_range("noise_density", self.noise_density, 0, 1, open_low=True, open_high=True)
        if self.mean_span_length < 1:
            raise PtlabError(f"config key 'objective.mean_span_length': must be >= 1, got {self.mean_span_length}")


@dataclass(frozen=True)
class IidParams:
    noise_density: float = 0.15  # probability that each token is corrupted

    def validate(self) -> None:
        _in_range("noise_density", self.noise_density, 0, 1, open_low=True, open_high=True)


@dataclass(frozen=True)
class BertParams:
    noise_density: float = 0.15
    random_token_ratio: float = 0.1  # share of corrupted tokens that become a random token instead of the mask

    def validate(self) -> None:
        _in_range("noise_density", self.noise_density, 0, 1, open_low=True, open_high=True)
        _in_range("random_token_ratio", self.random_token_ratio, 0, 1)


@dataclass(frozen=True)
class BartParams:
    mask_ratio: float = 0.3  # share of words corrupted (fairseq --mask)
    mask_length: str = "span-poisson"  # span-poisson | word | subword
    poisson_lambda: float = 3.0
    replace_length: int = 1  # -1: a mask per token; 0: delete; 1: one mask per span
    random_ratio: float = 0.0  # share of masks that are random tokens instead (fairseq --mask-random)
    insert_ratio: float = 0.0  # masks inserted, as a share of the length (fairseq --insert)
    permute_sentences: float = 1.0  # share of sentences shuffled
    rotate: float = 0.0  # probability of rotating the document

    def validate(self) -> None:
        for key in ("mask_ratio", "random_ratio", "insert_ratio", "permute_sentences", "rotate"):
            _in_range(key, getattr(self, key), 0, 1)
        if self.mask_length not in bart.MASK_LENGTHS:
            raise PtlabError(f"config key 'objective.mask_length': must be one of {', '.join(bart.MASK_LENGTHS)}, "
                             f"got {self.mask_length!r}")
        if self.replace_length not in (-1, 0, 1):
            raise PtlabError(f"config key 'objective.replace_length': must be -1, 0 or 1, got {self.replace_length}")
        # Below ~0.05 almost every span is empty and drawing enough of them to cover the budget takes 1/lambda
        # rounds; above 1,000 every span covers the whole budget anyway.
        _in_range("poisson_lambda", self.poisson_lambda, 0.05, 1000)


@dataclass(frozen=True)
class Ul2Params:
    rates: list[float] = field(default_factory=list)  # one weight per denoiser (R,R,X,X,X,X,S); empty: uniform
    mode_tokens: bool = True  # prepend [NLU]/[NLG]/[S2S]

    def validate(self) -> None:
        count = len(ul2.UL2_DENOISERS)
        if self.rates and (len(self.rates) != count or min(self.rates) < 0 or sum(self.rates) <= 0):
            raise PtlabError(f"config key 'objective.rates': needs {count} non-negative weights with a positive sum, "
                             f"one per denoiser ({', '.join(d.label for d in ul2.UL2_DENOISERS)}); got {self.rates}")

    @property
    def probabilities(self) -> np.ndarray:
        rates = np.asarray(self.rates or [1.0] * len(ul2.UL2_DENOISERS), dtype=np.float64)
        return rates / rates.sum()


# ---- length bookkeeping: (inputs_length, params, specials) -> (raw chunk length, targets length) -------------------

def _span_lengths(n: int, p: SpanParams, s: SpecialIds) -> tuple[int, int]:
    return t5.random_spans_helper(n, p.noise_density, p.mean_span_length)


def _iid_replace_lengths(n: int, p: IidParams, s: SpecialIds) -> tuple[int, int]:
    # Expected: a share r of tokens is noise, and r(1-r) of positions start a noise run (one sentinel each).
    r = p.noise_density
    raw = max(2, int((n - 1) / (1 - r * r)))
    return raw, math.ceil(raw * r * (2 - r)) + 1


def _drop_lengths(n: int, p: IidParams, s: SpecialIds) -> tuple[int, int]:
    raw = max(2, int((n - 1) / (1 - p.noise_density)))
    return raw, math.ceil(raw * p.noise_density) + 1


def _same_length(n: int, p: Any, s: SpecialIds) -> tuple[int, int]:
    return n - 1, n  # inputs: the chunk (permuted or masked) + EOS; targets: the original + EOS


def _prefix_lengths(n: int, p: Any, s: SpecialIds) -> tuple[int, int]:
    return n, n  # inputs: a prefix of 1..n-1 tokens + EOS; targets: the rest + EOS


def _window_lengths(n: int, p: Any, s: SpecialIds) -> tuple[int, int]:
    return n + 1, n + 1  # a decoder reads n tokens and predicts the n next ones


def _bart_lengths(n: int, p: BartParams, s: SpecialIds) -> tuple[int, int]:
    wrap = 1 + (s.bos is not None)
    raw = max(1, int((n - wrap) / (1 + p.insert_ratio)))
    return raw, raw + wrap


def _ul2_active(p: Ul2Params) -> list[ul2.Denoiser]:
    return [d for d, w in zip(ul2.UL2_DENOISERS, p.probabilities) if w > 0]


def _ul2_mode_length(p: Ul2Params, s: SpecialIds) -> int:
    return max(len(s.mode(d.mode)) for d in _ul2_active(p)) if p.mode_tokens else 0


def _ul2_lengths(n: int, p: Ul2Params, s: SpecialIds) -> tuple[int, int]:
    sizes = [ul2.denoiser_lengths(d, n - _ul2_mode_length(p, s)) for d in _ul2_active(p)]
    return max(r for r, _ in sizes), max(t for _, t in sizes)


def _span_sentinels(n: int, p: SpanParams, s: SpecialIds) -> int:
    raw, _ = _span_lengths(n, p, s)
    return t5.num_noise_spans(raw, p.noise_density, p.mean_span_length)


def _iid_sentinels(n: int, p: IidParams, s: SpecialIds) -> int:
    # Runs of i.i.d. noise: mean raw*r*(1-r); budget for three standard deviations above it (beyond that the last
    # runs stay un-noised, see `t5.limit_noise_spans`).
    raw, _ = _iid_replace_lengths(n, p, s)
    mean = raw * p.noise_density * (1 - p.noise_density)
    return math.ceil(mean + 3 * math.sqrt(mean))


def _ul2_sentinels(n: int, p: Ul2Params, s: SpecialIds) -> int:
    return max(ul2.denoiser_spans(d, n - _ul2_mode_length(p, s)) for d in _ul2_active(p))


# ---- the registry ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    summary: str
    params: type
    apply: Callable[..., Example]  # (tokens, rng, specials, params, inputs_length) -> Example
    lengths: Callable[[int, Any, SpecialIds], tuple[int, int]]
    sentinels: Callable[[int, Any, SpecialIds], int] = lambda n, p, s: 0
    defaults: dict = field(default_factory=dict)  # this objective's own defaults for a shared parameter class
    decoder_only: bool = False


def _kwargs(p: Any) -> dict:
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}


def _spec(name, summary, params, fn, lengths, **kw) -> ObjectiveSpec:
    return ObjectiveSpec(name, summary, params, fn, lengths, **kw)


def _plain(fn):
    return lambda tokens, rng, specials, p, n: fn(tokens, rng, specials, **_kwargs(p))


def _span_corruption(tokens, rng, specials, p: SpanParams, n):
    return t5.span_corruption(tokens, rng, sentinels=specials.sentinel_array, eos_id=specials.eos, **_kwargs(p))


def _ul2(tokens, rng, specials, p: Ul2Params, n):
    return ul2.ul2_denoise(tokens, rng, specials, inputs_length=n, probabilities=p.probabilities,
                           mode_tokens=p.mode_tokens)


_BART_SINGLE = {"permute_sentences": 0.0, "rotate": 0.0}
SPECS: tuple[ObjectiveSpec, ...] = (
    _spec("span_corruption", "T5: replace random spans with sentinels; targets are the spans (T5's final "
          "objective)", SpanParams, _span_corruption, _span_lengths, sentinels=_span_sentinels),
    _spec("iid_replace_spans", "T5: i.i.d. noise, each run of noise tokens -> one sentinel (T5's Table-1 baseline)",
          IidParams, _plain(t5.iid_replace_spans), _iid_replace_lengths, sentinels=_iid_sentinels),
    _spec("drop_tokens", "T5: i.i.d. noise tokens deleted from the inputs; targets are the deleted tokens",
          IidParams, _plain(t5.drop_tokens), _drop_lengths),
    _spec("bert_style", "T5's BERT-style: 15% i.i.d. noise, 90% -> mask, 10% -> random token; target = original",
          BertParams, _plain(t5.bert_style), _same_length),
    _spec("mass_style", "T5's MASS-style: i.i.d. noise tokens -> mask; target = original", BertParams,
          _plain(t5.bert_style), _same_length, defaults={"random_token_ratio": 0.0}),
    _spec("deshuffle", "T5: inputs are the tokens in random order; target = original", NoParams,
          _plain(t5.deshuffle), _same_length),
    _spec("prefix_lm", "T5: split at a random point; inputs = prefix, targets = the rest (encoder-decoder)",
          NoParams, _plain(t5.prefix_lm), _prefix_lengths),
    _spec("causal_lm", "GPT: predict every next token of a window of the token stream (decoder-only)", NoParams,
          _plain(lm.causal_lm), _window_lengths, decoder_only=True),
    _spec("decoder_prefix_lm", "prefix LM for decoder-only models: fully visible random-length prefix, loss on the "
          "rest", NoParams, _plain(lm.decoder_prefix_lm), _window_lengths, decoder_only=True),
    _spec("bart", "BART's final recipe: 30% text infilling (Poisson(3) spans) + permute all sentences", BartParams,
          _plain(bart.bart_noise), _bart_lengths),
    _spec("bart_token_masking", "BART: 15% of tokens -> <mask>, one for one", BartParams, _plain(bart.bart_noise),
          _bart_lengths, defaults={"mask_ratio": 0.15, "mask_length": "subword", "replace_length": -1,
                                   **_BART_SINGLE}),
    _spec("bart_token_deletion", "BART: 15% of tokens deleted", BartParams, _plain(bart.bart_noise), _bart_lengths,
          defaults={"mask_ratio": 0.15, "mask_length": "subword", "replace_length": 0, **_BART_SINGLE}),
    _spec("bart_text_infilling", "BART: 30% of words in Poisson(3) spans, each span -> one <mask>", BartParams,
          _plain(bart.bart_noise), _bart_lengths, defaults=dict(_BART_SINGLE)),
    _spec("bart_sentence_permutation", "BART: sentences shuffled", BartParams, _plain(bart.bart_noise),
          _bart_lengths, defaults={"mask_ratio": 0.0, "permute_sentences": 1.0, "rotate": 0.0}),
    _spec("bart_document_rotation", "BART: the document rotated to start at a random token", BartParams,
          _plain(bart.bart_noise), _bart_lengths, defaults={"mask_ratio": 0.0, "permute_sentences": 0.0,
                                                            "rotate": 1.0}),
    _spec("ul2", "UL2: per example one of R/X/S denoisers (span corruption or prefix LM) with a mode token",
          Ul2Params, _ul2, _ul2_lengths, sentinels=_ul2_sentinels),
)
REGISTRY: dict[str, ObjectiveSpec] = {spec.name: spec for spec in SPECS}


def parameter_defaults(spec: ObjectiveSpec) -> dict[str, Any]:
    return {**_kwargs(spec.params()), **spec.defaults}


class Lengths(NamedTuple):
    raw: int
    inputs: int
    targets: int


@dataclass(frozen=True)
class BoundObjective:
    """An objective with its parameters fixed: call it on a raw chunk."""

    spec: ObjectiveSpec
    params: Any

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def decoder_only(self) -> bool:
        return self.spec.decoder_only

    def lengths(self, inputs_length: int, specials: SpecialIds) -> Lengths:
        """Raw chunk length to feed in, and the (nominal) lengths of the inputs and targets that come out."""
        raw, targets = self.spec.lengths(inputs_length, self.params, specials)
        return Lengths(raw, 0 if self.decoder_only else inputs_length, targets)

    def check(self, inputs_length: int, specials: SpecialIds) -> None:
        """Fail before training, not at step 40,000, when the vocabulary cannot serve this objective."""
        needed = self.spec.sentinels(inputs_length, self.params, specials)
        if needed > len(specials.sentinels):
            raise PtlabError(
                f"objective {self.name} at inputs_length {inputs_length} needs up to {needed} sentinels but the "
                f"tokenizer has {len(specials.sentinels)}: lower objective.inputs_length or the noise density, raise "
                f"the mean span length, or train a tokenizer with more (data.num_sentinels)")
        if self.lengths(inputs_length, specials).raw < 2:
            raise PtlabError(f"config key 'objective.inputs_length': {inputs_length} is too short for {self.name}")

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds,
                 inputs_length: int | None = None) -> Example:
        return self.spec.apply(np.asarray(tokens), rng, specials, self.params,
                               inputs_length if inputs_length is not None else len(tokens))

    def as_dict(self) -> dict[str, Any]:
        return _kwargs(self.params)


def get_objective_spec(name: str) -> ObjectiveSpec:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise PtlabError(f"unknown objective {name!r}{hint}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_objective(name: str, params: dict[str, Any] | None = None,
                    inherited: dict[str, Any] | None = None) -> tuple[BoundObjective, list[str]]:
    """Resolve an objective and its parameters: the objective's defaults, then `inherited` (parameters from a config
    whose objective was switched by name: those this objective does not take are dropped), then `params` (which must
    all be valid). Returns the bound objective and the names of dropped inherited parameters."""
    spec = get_objective_spec(name)
    valid = [f.name for f in dataclasses.fields(spec.params)]
    for key in params or {}:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"did you mean 'objective.{close[0]}'? " if close else ""
            listing = ", ".join(valid) if valid else "none besides name and inputs_length"
            raise PtlabError(f"unknown config key 'objective.{key}' for objective {name}; {hint}its parameters: "
                             f"{listing}")
    dropped = [k for k in (inherited or {}) if k not in valid]
    merged = {**parameter_defaults(spec), **{k: v for k, v in (inherited or {}).items() if k in valid},
              **(params or {})}
    bound_params = from_dict(spec.params, merged, "objective.")
    bound_params.validate()
    return BoundObjective(spec, bound_params), dropped
