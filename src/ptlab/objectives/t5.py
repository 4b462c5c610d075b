"""T5's span corruption ("replace corrupted spans"), after `t5/data/preprocessors.py`.

Pure numpy: token ids in, (inputs, targets) out, every random choice drawn from the `numpy.random.Generator` passed
in. Special-token ids are arguments: `sentinels[i]` is the id of `<extra_id_i>` (in T5's vocabulary that is
`vocab_size - 1 - i`, so sentinel ids decrease in order of appearance).
"""

from __future__ import annotations

import numpy as np

from ptlab.errors import PtlabError


def random_spans_helper(inputs_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """Raw chunk length and target length that yield exactly `inputs_length` encoder tokens.

    Mirrors T5's `random_spans_helper`: for inputs_length=512, noise_density=0.15, mean_span_length=3 it returns
    (568, 114). Inputs hold the non-noise tokens, one sentinel per span and EOS; targets hold the noise tokens, one
    sentinel per span and EOS.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_span_length))
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
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
                    random_roll: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one raw chunk.

    Returns (inputs, targets), each ending in EOS: inputs keep the non-noise tokens with one sentinel per noise span;
    targets read `<extra_id_0> span_0 <extra_id_1> span_1 ...`. Splicing the target spans back into the inputs'
    sentinels yields the original chunk (see `splice_spans`).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) == 0:
        raise PtlabError("span corruption needs a non-empty 1-D token array")
    sentinels = np.asarray(sentinels, dtype=tokens.dtype)
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng, random_roll)
    eos = np.array([eos_id], dtype=tokens.dtype)
    inputs = np.concatenate([noise_span_to_unique_sentinel(tokens, mask, sentinels), eos])
    targets = np.concatenate([noise_spans_with_sentinels(tokens, mask, sentinels), eos])
    return inputs, targets


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
