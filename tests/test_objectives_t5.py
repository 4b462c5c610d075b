import numpy as np
import pytest

from ptlab.errors import PtlabError
from ptlab.objectives.t5 import (
    num_noise_spans,
    random_spans_helper,
    random_spans_noise_mask,
    span_corruption,
    splice_spans,
)

VOCAB = 1000
SENTINELS = np.arange(VOCAB - 1, VOCAB - 101, -1)  # <extra_id_0> is the highest id, as in T5
EOS = 1


def corrupt(tokens, seed, **kw):
    return span_corruption(np.asarray(tokens), np.random.default_rng(seed), sentinels=SENTINELS, eos_id=EOS, **kw)


def ordinary_tokens(n, seed=0):
    return np.random.default_rng(seed).integers(3, VOCAB - 100, size=n)


def test_random_spans_helper_matches_t5():
    assert random_spans_helper(512, 0.15, 3.0) == (568, 114)
    # T5's adjustment at 50% noise keeps targets no longer than inputs
    raw, targets = random_spans_helper(512, 0.5, 3.0)
    assert targets <= 512


@pytest.mark.parametrize("seed", range(5))
def test_568_raw_tokens_give_512_inputs_and_114_targets(seed):
    inputs, targets = corrupt(ordinary_tokens(568, seed), seed)
    assert len(inputs) == 512 and len(targets) == 114


@pytest.mark.parametrize("length,density,mu", [(568, 0.15, 3.0), (100, 0.5, 2.0), (1000, 0.1, 10.0), (37, 0.15, 3.0)])
def test_noise_fraction_and_number_of_spans(length, density, mu):
    mask = random_spans_noise_mask(length, density, mu, np.random.default_rng(1))
    assert mask.sum() == round(length * density)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert starts.sum() == num_noise_spans(length, density, mu) == max(1, round(round(length * density) / mu))
    assert not mask[0] and mask[-1]  # T5 without roll: starts with non-noise, ends with noise


def test_span_lengths_average_mean_span_length():
    lengths = []
    for seed in range(200):
        mask = random_spans_noise_mask(568, 0.15, 3.0, np.random.default_rng(seed))
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        lengths.extend(edges[1::2] - edges[::2])
    assert abs(np.mean(lengths) - 85 / 28) < 1e-9  # 85 noise tokens in 28 spans, every time
    assert min(lengths) >= 1 and max(lengths) > 6  # a random partition, not fixed-length spans


def test_sentinels_in_order_of_appearance_first_is_extra_id_0():
    inputs, targets = corrupt(ordinary_tokens(568), 3)
    in_sentinels = [t for t in inputs if t in SENTINELS]
    tgt_sentinels = [t for t in targets if t in SENTINELS]
    assert in_sentinels[0] == SENTINELS[0] == VOCAB - 1
    assert in_sentinels == list(SENTINELS[:len(in_sentinels)]) == tgt_sentinels
    assert targets[0] == SENTINELS[0] and inputs[-1] == EOS and targets[-1] == EOS


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("roll", [False, True])
def test_splicing_targets_into_inputs_reconstructs_the_original(seed, roll):
    tokens = ordinary_tokens(300, seed)
    inputs, targets = corrupt(tokens, seed, noise_density=0.3, mean_span_length=2.5, random_roll=roll)
    np.testing.assert_array_equal(splice_spans(inputs, targets, SENTINELS, EOS), tokens)


def test_lecture_example_words():
    words = "Thank you for inviting me to your party last week .".split()
    ids = np.arange(10, 10 + len(words))
    inputs, targets = corrupt(ids, 0)
    np.testing.assert_array_equal(splice_spans(inputs, targets, SENTINELS, EOS), ids)


def test_deterministic_per_seed_and_varies_across_seeds():
    tokens = ordinary_tokens(568)
    a, b = corrupt(tokens, 7), corrupt(tokens, 7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    outputs = {tuple(corrupt(tokens, s)[0]) for s in range(10)}
    assert len(outputs) == 10


def test_random_roll_moves_spans_off_the_end():
    ends_in_noise = [random_spans_noise_mask(50, 0.15, 3.0, np.random.default_rng(s), random_roll=True)[-1]
                     for s in range(100)]
    assert 0 < sum(ends_in_noise) < 100


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_very_short_inputs(length):
    tokens = ordinary_tokens(length)
    inputs, targets = corrupt(tokens, 0)
    assert inputs[-1] == EOS and targets[-1] == EOS
    np.testing.assert_array_equal(splice_spans(inputs, targets, SENTINELS, EOS), tokens)
    if length >= 2:
        assert sum(t in SENTINELS for t in inputs) == 1  # one span, at least one non-noise token left


def test_spans_never_outnumber_non_noise_tokens():
    # 90% noise with span length 1 would ask for more spans than non-noise tokens (HF #22246)
    tokens = ordinary_tokens(20)
    inputs, targets = corrupt(tokens, 0, noise_density=0.9, mean_span_length=1.0)
    np.testing.assert_array_equal(splice_spans(inputs, targets, SENTINELS, EOS), tokens)


def test_sentinel_overflow_is_a_clear_error():
    with pytest.raises(PtlabError, match="sentinels"):
        span_corruption(ordinary_tokens(568), np.random.default_rng(0), sentinels=SENTINELS[:10], eos_id=EOS,
                        noise_density=0.5, mean_span_length=3.0)


def test_empty_input_is_a_clear_error():
    with pytest.raises(PtlabError):
        corrupt(np.array([], dtype=np.int64), 0)
