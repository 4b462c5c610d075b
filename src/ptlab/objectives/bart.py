"""BART's noising functions, after fairseq's `DenoisingDataset`, applied in fairseq's order:
sentence permutation -> masking (token masking, token deletion or text infilling) -> mask insertion -> rotation.

The target is always the original chunk. Masking counts whole words when the vocabulary says where words start
(`SpecialIds.word_start`), as fairseq does with `mask_length` "word" or "span-poisson"; "subword" masks tokens.
One deliberate difference from fairseq: spans are placed so that they never overlap (fairseq draws span starts
independently, so overlapping spans merge and the achieved corruption falls short of `mask_ratio`); here exactly
ceil(mask_ratio * words) words are corrupted.
"""

from __future__ import annotations

import math

import numpy as np

from ptlab.errors import PtlabError
from ptlab.objectives.base import Example, SpecialIds

MASK_LENGTHS = ("span-poisson", "word", "subword")


def poisson_span_lengths(budget: int, poisson_lambda: float, rng: np.random.Generator) -> np.ndarray:
    """Span lengths drawn from Poisson(lambda) until they cover `budget` words; the last one is trimmed to fit.

    Zero-length spans are kept: each one inserts a mask without removing anything.
    """
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    lengths = rng.poisson(poisson_lambda, size=budget)
    while lengths.sum() < budget:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, size=budget)])
    covered = np.cumsum(lengths)
    last = int(np.searchsorted(covered, budget))  # first index where the budget is reached
    lengths = lengths[:last + 1].copy()
    lengths[last] = budget - (covered[last - 1] if last > 0 else 0)
    return lengths


def word_index(tokens: np.ndarray, specials: SpecialIds, whole_words: bool) -> np.ndarray:
    """The word number of each token (every token is its own word unless `whole_words` and the vocabulary knows)."""
    if whole_words and specials.word_start is not None:
        starts = specials.word_start[tokens].copy()
        starts[0] = True
    else:
        starts = np.ones(len(tokens), dtype=bool)
    return np.cumsum(starts) - 1


def _mask_or_random(count: int, rng: np.random.Generator, specials: SpecialIds, random_ratio: float) -> np.ndarray:
    out = np.full(count, specials.mask_id, dtype=np.int64)
    if random_ratio > 0 and count:
        use_random = rng.random(count) < random_ratio
        out[use_random] = specials.random_tokens(rng, int(use_random.sum()))
    return out


def mask_spans(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds, words: np.ndarray,
               span_lengths: np.ndarray, replace_length: int, random_ratio: float = 0.0) -> np.ndarray:
    """Corrupt non-overlapping word spans with the given lengths, placed uniformly at random.

    replace_length -1: every corrupted token becomes a mask (token masking); 0: corrupted tokens are deleted (token
    deletion); 1: each span becomes one mask (text infilling). A zero-length span inserts a mask.
    """
    num_words = int(words[-1]) + 1
    num_spans = len(span_lengths)
    kept_words = num_words - int(span_lengths.sum())
    if kept_words < 0:
        raise PtlabError(f"cannot corrupt {int(span_lengths.sum())} of {num_words} words")
    # A uniformly random interleaving of the spans with the kept words (each kept word is one item).
    num_items = num_spans + kept_words
    is_span = np.zeros(num_items, dtype=bool)
    is_span[rng.choice(num_items, size=num_spans, replace=False)] = True
    item_words = np.ones(num_items, dtype=np.int64)
    item_words[is_span] = span_lengths
    token_item = np.repeat(np.arange(num_items), item_words)[words]
    noise = is_span[token_item]

    if replace_length == -1:
        out = tokens.astype(np.int64)
        out[noise] = _mask_or_random(int(noise.sum()), rng, specials, random_ratio)
        kept = np.ones(len(tokens), dtype=bool)
    elif replace_length == 0:
        out, kept = tokens.astype(np.int64), ~noise
    elif replace_length == 1:
        first_of_item = np.concatenate([[True], token_item[1:] != token_item[:-1]])
        span_starts = noise & first_of_item
        out = tokens.astype(np.int64)
        out[span_starts] = _mask_or_random(int(span_starts.sum()), rng, specials, random_ratio)
        kept = ~noise | span_starts
    else:
        raise PtlabError(f"replace_length must be -1, 0 or 1, got {replace_length}")

    zero_items = np.flatnonzero(is_span & (item_words == 0))
    out = out[kept]
    if len(zero_items):
        kept_per_item = np.bincount(token_item[kept], minlength=num_items)
        before = np.cumsum(kept_per_item) - kept_per_item  # output tokens that precede each item
        out = np.insert(out, before[zero_items], _mask_or_random(len(zero_items), rng, specials, random_ratio))
    return out


def sentence_permutation(tokens: np.ndarray, ratio: float, rng: np.random.Generator,
                      specials: SpecialIds) -> np.ndarray:
    """Shuffle ceil(ratio * sentences) randomly chosen sentences among their own positions (fairseq's scheme).

    A sentence ends after a run of sentence-ending tokens (so "..." stays whole); the last one runs to the end.
    """
    if specials.sentence_end is None:
        raise PtlabError("sentence permutation needs to know which tokens end a sentence (SpecialIds.sentence_end)")
    ends = specials.sentence_end[tokens]
    cuts = np.flatnonzero(ends[:-1] & ~ends[1:]) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(tokens)]])
    count = len(starts)
    to_permute = math.ceil(count * ratio)
    if count < 2 or to_permute < 2:
        return tokens
    chosen = rng.permutation(count)[:to_permute]
    order = np.arange(count)
    order[chosen] = chosen[rng.permutation(to_permute)]
    return np.concatenate([tokens[starts[i]:stops[i]] for i in order])


def insert_masks(tokens: np.ndarray, ratio: float, rng: np.random.Generator, specials: SpecialIds,
                 random_ratio: float = 0.0) -> np.ndarray:
    """Insert ceil(ratio * length) masks (or random tokens) at random positions."""
    count = math.ceil(len(tokens) * ratio)
    if count == 0:
        return tokens
    total = len(tokens) + count
    inserted = np.zeros(total, dtype=bool)
    inserted[rng.choice(total, size=count, replace=False)] = True
    out = np.empty(total, dtype=np.int64)
    out[inserted] = _mask_or_random(count, rng, specials, random_ratio)
    out[~inserted] = tokens
    return out


def rotate_document(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate so that the document starts at a token chosen uniformly at random."""
    return np.roll(tokens, -int(rng.integers(len(tokens))))


def bart_noise(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds, *, mask_ratio: float = 0.3,
               mask_length: str = "span-poisson", poisson_lambda: float = 3.0, replace_length: int = 1,
               random_ratio: float = 0.0, insert_ratio: float = 0.0, permute_sentences: float = 1.0,
               rotate: float = 0.0) -> Example:
    """BART's noising of one chunk; defaults are the paper's final recipe (30% text infilling with Poisson(3)
    spans + permuting all sentences). The target is the original chunk; BOS (if the vocabulary has one) and EOS
    wrap both sides, as in fairseq."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) == 0:
        raise PtlabError("BART noising needs a non-empty 1-D token array")
    if mask_length not in MASK_LENGTHS:
        raise PtlabError(f"mask_length must be one of {', '.join(MASK_LENGTHS)}, got {mask_length!r}")
    noised = tokens.astype(np.int64)
    if permute_sentences > 0:
        noised = sentence_permutation(noised, permute_sentences, rng, specials)
    if mask_ratio > 0:
        words = word_index(noised, specials, whole_words=mask_length != "subword")
        budget = math.ceil(mask_ratio * (int(words[-1]) + 1))
        if mask_length == "span-poisson":
            lengths = poisson_span_lengths(budget, poisson_lambda, rng)
        else:
            lengths = np.ones(budget, dtype=np.int64)
        noised = mask_spans(noised, rng, specials, words, lengths, replace_length, random_ratio)
    if insert_ratio > 0:
        noised = insert_masks(noised, insert_ratio, rng, specials, random_ratio)
    if rotate > 0 and len(noised) > 1 and rng.random() < rotate:
        noised = rotate_document(noised, rng)
    return Example(_wrap(noised, specials), _wrap(tokens.astype(np.int64), specials))


def _wrap(tokens: np.ndarray, specials: SpecialIds) -> np.ndarray:
    head = [specials.bos] if specials.bos is not None else []
    return np.concatenate([np.array(head, dtype=np.int64), tokens, np.array([specials.eos], dtype=np.int64)])
