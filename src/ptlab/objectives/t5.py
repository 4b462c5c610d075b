"""The T5 paper's objectives (Tables 3-5), after `t5/data/preprocessors.py`.

Span corruption ("replace corrupted spans"), its i.i.d. variant, drop corrupted tokens, BERT-style and MASS-style
masking, deshuffling and prefix LM. Pure numpy: token ids in, an `Example` out, every random choice drawn from the
`numpy.random.Generator` passed in. Special-token ids are arguments: `sentinels[i]` is the id of `<extra_id_i>` (in
T5's vocabulary that is `vocab_size - 1 - i`, so sentinel ids decrease in order of appearance).
"""

from __future__ import annotations

import functools

import numpy as np

from ptlab.errors import PtlabError
from ptlab.objectives.base import Example, SpecialIds, with_eos


@functools.lru_cache(maxsize=256)
def random_spans_helper(inputs_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """Raw chunk length and target length that yield exactly `inputs_length` encoder tokens.

    Mirrors T5's `random_spans_helper`: for inputs_length=512, noise_density=0.15, mean_span_length=3 it returns
    (568, 114). Inputs hold the non-noise tokens, one sentinel per span and EOS; targets hold the noise tokens, one
    sentinel per span and EOS.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        # T5's helper rounds the span count alone; counting as `random_spans_noise_mask` does (at least one span)
        # keeps long-span settings such as UL2's mu=64 from overshooting `inputs_length` by one.
        num_noise = min(max(int(round(tokens_length * noise_density)), 1), tokens_length - 1)
        num_spans = num_noise_spans(tokens_length, noise_density, mean_span_length)
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    # The longest chunk whose inputs fit. T5 walks up one token at a time; the inputs length never shrinks as the
    # chunk grows, so a doubling then bisecting search finds the same chunk in O(log n) steps (a walk takes minutes
    # for long inputs or rare long spans, where the chunk is many times the inputs).
    low, step = inputs_length, 1  # lengths(low) fits
    while lengths(low + step)[0] <= inputs_length:
        low, step = low + step, step * 2
    high = low + step  # lengths(high) does not fit
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if lengths(middle)[0] <= inputs_length else (low, middle)
    tokens_length = low
    _, targets_length = lengths(tokens_length)
    # T5's own adjustment so that at 50% noise the targets are not longer than the (round-numbered) inputs.
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def num_noise_spans(length: int, noise_density: float, mean_span_length: float) -> int:
    """How many spans `random_spans_noise_mask` makes for a chunk of `length` tokens."""
    length = max(length, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max(int(round(num_noise / mean_span_length)), 1)
    return min(spans, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a uniformly random partition of `num_items` into `num_segments` positive parts."""
    first_in_segment = np.arange(num_items - 1) < num_segments - 1
    rng.shuffle(first_in_segment)
    segment_id = np.cumsum(np.concatenate([[0], first_in_segment]))
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator, random_roll: bool = False) -> np.ndarray:
    """Boolean mask of noise positions: spans alternate non-noise/noise, starting with non-noise.

    round(length * noise_density) tokens (at least 1, at most length-1) are noise, in
    round(noise / mean_span_length) spans (at least 1, never more than the non-noise tokens, which would leave a
    noise span with no non-noise span before it: HF transformers #22246).
    """
    if length <= 0:
        return np.zeros(0, dtype=bool)
    orig_length = length
    length = max(length, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = num_noise_spans(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros(length, dtype=np.int64)
    span_start_indicator[span_starts] = 1
    is_noise = np.cumsum(span_start_indicator) % 2 == 1
    if random_roll:
        is_noise = np.roll(is_noise, int(rng.integers(length)))
    return is_noise[:orig_length]


def _check_sentinel_budget(num_spans: int, sentinels: np.ndarray) -> None:
    if num_spans > len(sentinels):
        raise PtlabError(
            f"span corruption needs {num_spans} sentinels but the tokenizer has {len(sentinels)}: lower "
            "objective.noise_density or objective.inputs_length, raise objective.mean_span_length, or train a "
            "tokenizer with more sentinels (data.num_sentinels)")


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """Replace each run of noise tokens with the next sentinel (in order of appearance); keep the rest."""
    prev_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise = noise_mask & ~prev_noise
    span_index = np.cumsum(first_noise) - 1
    _check_sentinel_budget(int(first_noise.sum()), sentinels)
    out = np.where(first_noise, sentinels[np.clip(span_index, 0, len(sentinels) - 1)], tokens)
    return out[~(noise_mask & prev_noise)]


def noise_spans_with_sentinels(tokens: np.ndarray, noise_mask: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """The noise tokens only, each span preceded by its sentinel: `<extra_id_0> span_0 <extra_id_1> span_1 ...`.

    For an unrolled mask this equals T5's `noise_span_to_unique_sentinel(tokens, ~noise_mask)`; unlike that trick it
    stays aligned with the inputs when the mask was rolled and the chunk starts with noise.
    """
    prev_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise = noise_mask & ~prev_noise
    num_spans = int(first_noise.sum())
    _check_sentinel_budget(num_spans, sentinels)
    return np.insert(tokens[noise_mask], np.flatnonzero(first_noise[noise_mask]), sentinels[:num_spans])


def span_corruption(tokens: np.ndarray, rng: np.random.Generator, *, sentinels: np.ndarray, eos_id: int,
                    noise_density: float = 0.15, mean_span_length: float = 3.0,
                    random_roll: bool = False) -> Example:
    """T5 span corruption of one raw chunk.

    Returns (inputs, targets), each ending in EOS: inputs keep the non-noise tokens with one sentinel per noise span;
    targets read `<extra_id_0> span_0 <extra_id_1> span_1 ...`. Splicing the target spans back into the inputs'
    sentinels yields the original chunk (see `splice_spans`).
    """
    tokens = _check_tokens(tokens, "span corruption")
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng, random_roll)
    return replace_spans(tokens, mask, sentinels, eos_id)


def replace_spans(tokens: np.ndarray, noise_mask: np.ndarray, sentinels: np.ndarray, eos_id: int) -> Example:
    """Each noise span becomes one sentinel in the inputs; the targets list the spans after their sentinels."""
    sentinels = np.asarray(sentinels, dtype=tokens.dtype)
    return Example(with_eos(noise_span_to_unique_sentinel(tokens, noise_mask, sentinels), eos_id),
                   with_eos(noise_spans_with_sentinels(tokens, noise_mask, sentinels), eos_id))


def _check_tokens(tokens: np.ndarray, what: str, minimum: int = 1) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) < minimum:
        raise PtlabError(f"{what} needs a 1-D token array of at least {minimum} tokens, got shape {tokens.shape}")
    return tokens


def iid_noise_mask(length: int, noise_density: float, rng: np.random.Generator) -> np.ndarray:
    """Each token is noise independently with probability `noise_density` (T5's `iid_noise_mask`)."""
    return rng.random(length) < noise_density


def limit_noise_spans(noise_mask: np.ndarray, max_spans: int) -> np.ndarray:
    """Keep only the first `max_spans` runs of noise.

    An i.i.d. mask has a random number of runs; on the rare draw that it exceeds the sentinel budget, the last runs
    stay un-noised rather than reusing ordinary ids as sentinels (what T5's code would do) or failing mid-run.
    """
    first_noise = noise_mask & ~np.concatenate([[False], noise_mask[:-1]])
    if first_noise.sum() <= max_spans:
        return noise_mask
    return noise_mask & (np.cumsum(first_noise) <= max_spans)


def iid_replace_spans(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds,
                      noise_density: float = 0.15) -> Example:
    """T5's Table-1 baseline: an i.i.d. mask, consecutive noise tokens merged under one sentinel."""
    tokens = _check_tokens(tokens, "i.i.d. span replacement")
    mask = limit_noise_spans(iid_noise_mask(len(tokens), noise_density, rng), len(specials.sentinels))
    return replace_spans(tokens, mask, specials.sentinel_array, specials.eos)


def drop_tokens(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds,
                noise_density: float = 0.15) -> Example:
    """"Drop corrupted tokens": i.i.d. noise tokens are deleted from the inputs; the targets are those tokens, in order."""
    tokens = _check_tokens(tokens, "drop tokens")
    mask = iid_noise_mask(len(tokens), noise_density, rng)
    return Example(with_eos(tokens[~mask], specials.eos), with_eos(tokens[mask], specials.eos))


def bert_style(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds, noise_density: float = 0.15,
               random_token_ratio: float = 0.1) -> Example:
    """T5's BERT-style objective: i.i.d. noise tokens become the mask token, or (with probability
    `random_token_ratio`) a uniformly random ordinary token; there is no keep-the-original branch. The target is the
    whole original chunk. With `random_token_ratio=0` this is T5's MASS-style objective."""
    tokens = _check_tokens(tokens, "BERT-style masking")
    mask = iid_noise_mask(len(tokens), noise_density, rng)
    use_random = rng.random(len(tokens)) < random_token_ratio
    corrupted = np.where(mask, specials.mask_id, tokens).astype(tokens.dtype)
    randomised = mask & use_random
    if randomised.any():
        corrupted[randomised] = specials.random_tokens(rng, int(randomised.sum()))
    return Example(with_eos(corrupted, specials.eos), with_eos(tokens, specials.eos))


def deshuffle(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds) -> Example:
    """The inputs are the chunk's tokens in a random order; the target is the original order."""
    tokens = _check_tokens(tokens, "deshuffling")
    return Example(with_eos(rng.permutation(tokens), specials.eos), with_eos(tokens, specials.eos))


def prefix_lm(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds) -> Example:
    """Split at a point uniform in [1, L-1]: the inputs are the prefix, the targets the rest (each with EOS)."""
    tokens = _check_tokens(tokens, "prefix LM", minimum=2)
    split = int(rng.integers(1, len(tokens)))
    return Example(with_eos(tokens[:split], specials.eos), with_eos(tokens[split:], specials.eos))


def splice_spans(inputs: np.ndarray, targets: np.ndarray, sentinels: np.ndarray, eos_id: int) -> np.ndarray:
    """Inverse of span corruption: put each target span back in place of its sentinel in the inputs."""
    sentinel_set = {int(s): i for i, s in enumerate(sentinels)}
    spans: dict[int, list[int]] = {}
    current = None
    for tok in targets.tolist():
        if tok == eos_id:
            break
        if tok in sentinel_set:
            current = sentinel_set[tok]
            spans[current] = []
        elif current is not None:
            spans[current].append(tok)
    out: list[int] = []
    for tok in inputs.tolist():
        if tok == eos_id:
            break
        if tok in sentinel_set:
            out.extend(spans.get(sentinel_set[tok], []))
        else:
            out.append(tok)
    return np.array(out, dtype=inputs.dtype)
