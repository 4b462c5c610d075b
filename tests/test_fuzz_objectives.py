"""Property-based tests of the pre-training objectives: every objective with one parameter corrupted, any inputs
length and sentinel budget, must be refused in one line or produce in-vocabulary, seed-determined examples quickly;
`ptlab objectives show` never prints a traceback."""

from __future__ import annotations

import dataclasses

import numpy as np
from fuzz_strategies import (
    ODD_FLOATS,
    ODD_INTS,
    ODD_TEXT,
    VALUES,
    accepted_or_refused,
    assert_cli_error_is_one_line,
    examples,
    run_cli,
    time_limit,
)
from hypothesis import given
from hypothesis import strategies as st

from ptlab.lab.preview import SPECIAL_WORDS, WordVocabulary
from ptlab.objectives.registry import REGISTRY, build_objective, parameter_defaults
from ptlab.objectives.t5 import num_noise_spans, random_spans_helper

NAMES = sorted(REGISTRY)
PARAMETERS = sorted({f.name for spec in REGISTRY.values() for f in dataclasses.fields(spec.params)})
WORDS = [f"w{i}." if i % 7 == 0 else f"w{i}" for i in range(300)]


def _vocabulary(num_sentinels: int) -> WordVocabulary:
    return WordVocabulary.from_texts([" ".join(WORDS)], num_sentinels=num_sentinels)


@st.composite
def corrupted_parameters(draw):
    """An objective, its valid defaults, and one parameter (its own or another's, or an odd key) set to an odd
    value: a number near or past a bound, a non-finite float, or any YAML-shaped value."""
    name = draw(st.sampled_from(NAMES))
    params = dict(parameter_defaults(REGISTRY[name]))
    key = draw(st.one_of(st.sampled_from(sorted(params) or PARAMETERS), st.sampled_from(PARAMETERS), st.none(),
                         ODD_TEXT))
    params[key] = draw(st.one_of(ODD_FLOATS, ODD_INTS, VALUES, st.floats(0, 1), st.floats(1, 50)))
    return name, params


@examples(250)
@given(corrupted=corrupted_parameters(), inputs_length=st.one_of(st.integers(4, 300), st.sampled_from([4, 5, 2048])),
       num_sentinels=st.sampled_from([0, 1, 3, 100]), seed=st.integers(0, 2**63 - 1))
def test_an_objective_is_refused_or_gives_valid_examples(corrupted, inputs_length, num_sentinels, seed):
    name, params = corrupted
    ok, built = accepted_or_refused(build_objective, name, params)
    if not ok:
        return
    objective, _ = built
    vocab = _vocabulary(num_sentinels)
    specials = vocab.specials
    ok, _ = accepted_or_refused(objective.check, inputs_length, specials)
    if not ok:
        return
    raw = objective.lengths(inputs_length, specials).raw
    tokens = np.random.default_rng(seed).integers(len(SPECIAL_WORDS), len(vocab.words), size=raw)
    with time_limit(10, f"{name} {params} at inputs_length {inputs_length}"):
        ok, example = accepted_or_refused(objective, tokens, np.random.default_rng([seed, 0]), specials,
                                          inputs_length)
        if not ok:  # only a vocabulary that lacks what the objective needs may be refused here
            assert "token" in str(example) or "sentinel" in str(example), example
            return
        again = objective(tokens, np.random.default_rng([seed, 0]), specials, inputs_length)
    for part, repeat in zip(example, again):
        assert part.ndim == 1 and np.issubdtype(part.dtype, np.integer)
        assert part.size == 0 or (part.min() >= 0 and part.max() < vocab.vocab_size), (name, params)
        np.testing.assert_array_equal(part, repeat)  # the seed alone decides the example
    assert example.targets.size > 0


@examples(60)
@given(name=st.one_of(st.sampled_from(NAMES), ODD_TEXT), text=ODD_TEXT,
       setting=st.tuples(st.one_of(st.sampled_from(PARAMETERS), ODD_TEXT), ODD_TEXT),
       seed=st.one_of(ODD_INTS, st.sampled_from(["-1", "x", "1e3", ""])))
def test_objectives_show_never_prints_a_traceback(name, text, setting, seed):
    argv = ["objectives", "show", name, "--text", text + " a b c d e f g", "--seed", str(seed), "--set",
            f"{setting[0]}={setting[1]}"]
    with time_limit(10, " ".join(argv)):
        code, _, stderr = run_cli(argv)
    assert code in (0, 2), stderr
    assert_cli_error_is_one_line(code, stderr)


@examples(20)
@given(poisson_lambda=st.floats(1e-12, 0.05, exclude_max=True), seed=st.integers(0, 2**32))
def test_a_tiny_poisson_lambda_is_refused_not_drawn_for_minutes(poisson_lambda, seed):
    ok, _ = accepted_or_refused(build_objective, "bart", {"poisson_lambda": poisson_lambda})
    assert not ok


def _walked_spans_helper(inputs_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """T5's `random_spans_helper` as T5 writes it: grow the chunk one token at a time while its inputs fit."""
    def lengths(tokens_length):
        num_noise = min(max(int(round(tokens_length * noise_density)), 1), tokens_length - 1)
        num_spans = num_noise_spans(tokens_length, noise_density, mean_span_length)
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length, targets_length = tokens_length - 1, targets_length - 1
    return tokens_length, targets_length


@examples(100)
@given(inputs_length=st.integers(4, 400), noise_density=st.one_of(st.floats(0.001, 0.99), st.just(0.5)),
       mean_span_length=st.one_of(st.floats(1, 40), st.sampled_from([1.0, 3.0, 64.0])))
def test_the_span_length_search_matches_t5s_walk(inputs_length, noise_density, mean_span_length):
    assert random_spans_helper(inputs_length, noise_density, mean_span_length) == _walked_spans_helper(
        inputs_length, noise_density, mean_span_length)


@examples(20)
@given(name=st.sampled_from(NAMES), inputs_length=st.integers(10**6, 10**12),
       noise_density=st.floats(0.001, 0.99), mean_span_length=st.floats(1, 1e6))
def test_long_inputs_cost_no_time_to_plan(name, inputs_length, noise_density, mean_span_length):
    """Planning lengths (what `ptlab cost` and the trainer's checks do) for a million or a trillion inputs."""
    params = {k: v for k, v in (("noise_density", noise_density), ("mean_span_length", mean_span_length))
              if k in parameter_defaults(REGISTRY[name])}
    objective, _ = build_objective(name, params)
    with time_limit(5, f"{name} lengths at {inputs_length}"):
        accepted_or_refused(objective.check, inputs_length, _vocabulary(100).specials)
        objective.lengths(inputs_length, _vocabulary(100).specials)
