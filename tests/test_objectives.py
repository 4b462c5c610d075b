"""Statistical and exactness checks for every registered objective (fixed seeds, many draws)."""

import math

import numpy as np
import pytest

from ptlab.config import load_config
from ptlab.errors import PtlabError
from ptlab.objectives import REGISTRY, SpecialIds, build_objective
from ptlab.objectives.bart import poisson_span_lengths
from ptlab.objectives.t5 import splice_spans

VOCAB = 1000
FIRST_ORDINARY = 7
PERIOD = 900  # an ordinary token that ends a sentence
SPECIALS = SpecialIds(pad=0, eos=1, unk=2, sentinels=tuple(range(VOCAB - 1, VOCAB - 101, -1)), mask=3,
                      modes={"R": (4,), "X": (5,), "S": (6,)}, vocab_size=VOCAB,
                      word_start=np.ones(VOCAB, dtype=bool),
                      sentence_end=np.isin(np.arange(VOCAB), [PERIOD]))
DRAWS = 300


def objective(name, **params):
    return build_objective(name, params)[0]


def distinct_tokens(n):
    """Increasing, distinct ordinary ids: any token's position can be read off its value."""
    assert n < PERIOD - FIRST_ORDINARY
    return np.arange(FIRST_ORDINARY, FIRST_ORDINARY + n)


def draws(name, length=500, params=None, specials=SPECIALS, inputs_length=None):
    obj = objective(name, **(params or {}))
    tokens = distinct_tokens(length)
    for seed in range(DRAWS):
        yield tokens, obj(tokens, np.random.default_rng(seed), specials, inputs_length)


def is_sentinel(ids):
    return np.isin(ids, SPECIALS.sentinels)


def runs(mask):
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return edges[1::2] - edges[::2]


# ---- the registry -----------------------------------------------------------------------------------------------

def test_every_objective_builds_and_runs_with_its_defaults():
    tokens = distinct_tokens(400)
    for name, spec in REGISTRY.items():
        obj = objective(name)
        example = obj(tokens, np.random.default_rng(0), SPECIALS, 400)
        assert len(example.targets) > 0, name
        assert example.inputs.ndim == 1 and example.targets.ndim == 1, name


def test_unknown_objective_lists_the_known_ones():
    with pytest.raises(PtlabError, match="unknown objective 'span_corupt'.*did you mean span_corruption.*known: "
                                         "span_corruption, iid_replace_spans"):
        build_objective("span_corupt")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(PtlabError, match=r"'objective.noise_dnsity' for objective span_corruption; did you mean "
                                         r"'objective.noise_density'\? its parameters: noise_density, "
                                         r"mean_span_length, random_roll"):
        build_objective("span_corruption", {"noise_dnsity": 0.2})
    with pytest.raises(PtlabError, match="its parameters: mask_ratio, mask_length"):
        build_objective("bart", {"noise_density": 0.2})


@pytest.mark.parametrize("name,params,key", [
    ("span_corruption", {"noise_density": 1.0}, "noise_density"),
    ("span_corruption", {"mean_span_length": 0.5}, "mean_span_length"),
    ("bart", {"mask_length": "sentence"}, "mask_length"),
    ("bart", {"replace_length": 2}, "replace_length"),
    ("bart", {"poisson_lambda": 0}, "poisson_lambda"),
    ("bert_style", {"random_token_ratio": 1.5}, "random_token_ratio"),
    ("ul2", {"rates": [1, 2]}, "rates"),
    ("ul2", {"rates": "many"}, "rates"),
])
def test_bad_parameter_values_name_the_key(name, params, key):
    with pytest.raises(PtlabError, match=f"objective.{key}"):
        build_objective(name, params)


def test_a_config_switches_objective_by_name_only(capsys, tmp_path):
    span_config = tmp_path / "span.yaml"  # a file that sets span corruption's own parameters
    span_config.write_text("objective: {name: span_corruption, noise_density: 0.15, mean_span_length: 3.0}\n")
    cfg = load_config(span_config, ["objective.name=bart"])
    assert cfg.objective.name == "bart"
    bound, dropped = build_objective(cfg.objective.name, cfg.objective.params, cfg.objective.inherited)
    assert set(dropped) == {"noise_density", "mean_span_length"} and bound.params.mask_ratio == 0.3
    # parameters the new objective shares carry over; explicit ones on the command line must be valid
    cfg = load_config(span_config, ["objective.name=iid_replace_spans"])
    assert build_objective(cfg.objective.name, cfg.objective.params, cfg.objective.inherited)[0].params.noise_density \
        == 0.15
    cfg = load_config(span_config, ["objective.name=bart", "objective.mask_ratio=0.4"])
    assert build_objective(cfg.objective.name, cfg.objective.params, cfg.objective.inherited)[0].params.mask_ratio \
        == 0.4
    with pytest.raises(PtlabError, match="'objective.noise_density' for objective bart"):
        load_config(span_config, ["objective.name=bart", "objective.noise_density=0.4"])
    with pytest.raises(PtlabError, match="unknown objective 'bert'"):
        load_config(span_config, ["objective.name=bert"])


# ---- T5 family ----------------------------------------------------------------------------------------------------

def test_span_corruption_rate_and_mean_span_length():
    noise, spans = 0, []
    for tokens, (inputs, targets) in draws("span_corruption", 568):
        mask = ~np.isin(tokens, inputs)
        noise += mask.sum()
        spans.extend(runs(mask))
        np.testing.assert_array_equal(splice_spans(inputs, targets, SPECIALS.sentinel_array, 1), tokens)
    assert abs(noise / (568 * DRAWS) - 0.15) < 0.01
    assert abs(np.mean(spans) / 3.0 - 1) < 0.05


@pytest.mark.parametrize("density", [0.15, 0.5])
def test_iid_replace_spans_rate_runs_and_reconstruction(density):
    noise, run_lengths = 0, []
    objective("iid_replace_spans", noise_density=density).check(200, SPECIALS)  # within the sentinel budget
    for tokens, (inputs, targets) in draws("iid_replace_spans", 260, {"noise_density": density}):
        mask = ~np.isin(tokens, inputs)
        noise += mask.sum()
        run_lengths.extend(runs(mask))
        assert is_sentinel(inputs).sum() == len(runs(mask)) == is_sentinel(targets).sum()
        np.testing.assert_array_equal(splice_spans(inputs, targets, SPECIALS.sentinel_array, 1), tokens)
    assert abs(noise / (260 * DRAWS) - density) < 0.01
    # consecutive i.i.d. noise tokens merge: runs have geometric lengths with mean 1 / (1 - r)
    assert abs(np.mean(run_lengths) * (1 - density) - 1) < 0.05


def test_iid_sentinel_budget_is_checked_up_front():
    with pytest.raises(PtlabError, match="sentinels"):
        objective("iid_replace_spans", noise_density=0.5).check(512, SPECIALS)


def test_iid_spans_never_exceed_the_sentinels():
    few = SpecialIds(pad=0, eos=1, unk=2, sentinels=(999, 998, 997), vocab_size=VOCAB)
    obj = objective("iid_replace_spans", noise_density=0.5)
    for seed in range(20):
        inputs, targets = obj(distinct_tokens(200), np.random.default_rng(seed), few)
        assert np.isin(inputs, few.sentinels).sum() <= 3
        np.testing.assert_array_equal(splice_spans(inputs, targets, np.array(few.sentinels), 1), distinct_tokens(200))


def test_drop_tokens_rate_and_reconstruction():
    dropped = 0
    for tokens, (inputs, targets) in draws("drop_tokens", 500):
        kept, gone = inputs[:-1], targets[:-1]
        assert inputs[-1] == targets[-1] == 1
        dropped += len(gone)
        assert np.all(np.diff(kept) > 0) and np.all(np.diff(gone) > 0)  # order kept on both sides
        np.testing.assert_array_equal(np.sort(np.concatenate([kept, gone])), tokens)  # exact reconstruction
    assert abs(dropped / (500 * DRAWS) - 0.15) < 0.01


def test_bert_style_rate_and_90_10_split():
    masked = randomised = 0
    for tokens, (inputs, targets) in draws("bert_style", 500):
        np.testing.assert_array_equal(targets[:-1], tokens)
        body = inputs[:-1]
        is_mask = body == SPECIALS.mask
        changed = (body != tokens) & ~is_mask
        assert np.all(np.isin(body[changed], SPECIALS.ordinary_ids))
        masked += is_mask.sum()
        randomised += changed.sum()
    noised = masked + randomised
    assert abs(noised / (500 * DRAWS) - 0.15) < 0.01
    assert abs(masked / noised - 0.9) < 0.02


def test_mass_style_masks_every_noised_token():
    noised = 0
    for tokens, (inputs, _) in draws("mass_style", 500):
        body = inputs[:-1]
        assert np.all((body == tokens) | (body == SPECIALS.mask))
        noised += (body == SPECIALS.mask).sum()
    assert abs(noised / (500 * DRAWS) - 0.15) < 0.01


def test_deshuffle_keeps_the_multiset_and_targets_the_original():
    for tokens, (inputs, targets) in draws("deshuffle", 200):
        np.testing.assert_array_equal(np.sort(inputs[:-1]), tokens)
        np.testing.assert_array_equal(targets[:-1], tokens)
        assert not np.array_equal(inputs[:-1], tokens)


@pytest.mark.parametrize("name,eos", [("prefix_lm", True), ("decoder_prefix_lm", False)])
def test_prefix_lm_split_is_uniform_and_exact(name, eos):
    splits = []
    for tokens, (inputs, targets) in draws(name, 100):
        if eos:
            assert inputs[-1] == targets[-1] == 1
            inputs, targets = inputs[:-1], targets[:-1]
        np.testing.assert_array_equal(np.concatenate([inputs, targets]), tokens)
        splits.append(len(inputs))
    assert min(splits) >= 1 and max(splits) <= 99
    assert abs(np.mean(splits) - 50) < 3


def test_causal_lm_targets_the_whole_window():
    for tokens, (inputs, targets) in draws("causal_lm", 64):
        assert len(inputs) == 0
        np.testing.assert_array_equal(targets, tokens)


# ---- BART ---------------------------------------------------------------------------------------------------------

def masked_words(tokens, inputs):
    """Words missing from the inputs and the number of masks (tokens are distinct, one word each)."""
    body = inputs[:-1]
    return len(tokens) - np.isin(body, tokens).sum(), (body == SPECIALS.mask).sum()


def test_text_infilling_rate_span_length_and_one_mask_per_span():
    corrupted = masks = 0
    for tokens, (inputs, targets) in draws("bart_text_infilling", 500):
        np.testing.assert_array_equal(targets[:-1], tokens)
        kept = inputs[:-1][inputs[:-1] != SPECIALS.mask]
        assert np.all(np.diff(kept) > 0)  # no reordering
        words, n_masks = masked_words(tokens, inputs)
        assert words == math.ceil(0.3 * 500)
        corrupted += words
        masks += n_masks
    assert abs(corrupted / (500 * DRAWS) - 0.3) < 0.01
    # one mask per span (zero-length spans included): words per mask is the Poisson mean
    assert abs(corrupted / masks / 3.0 - 1) < 0.05


def test_poisson_spans_zero_length_share_and_trim():
    lengths = np.concatenate([poisson_span_lengths(150, 3.0, np.random.default_rng(s)) for s in range(400)])
    assert abs(np.mean(lengths == 0) - math.exp(-3)) < 0.01
    for s in range(50):
        assert poisson_span_lengths(150, 3.0, np.random.default_rng(s)).sum() == 150


def test_zero_length_spans_insert_a_mask():
    obj = objective("bart_text_infilling", poisson_lambda=0.5)  # exp(-0.5): 61% of spans are empty
    inserted = 0
    for seed in range(100):
        tokens = distinct_tokens(100)
        inputs, _ = obj(tokens, np.random.default_rng(seed), SPECIALS)
        words, n_masks = masked_words(tokens, inputs)
        inserted += n_masks - len(runs(~np.isin(tokens, inputs)))
    assert inserted > 0


def test_token_masking_and_deletion_rates():
    for name, length_change in (("bart_token_masking", 0), ("bart_token_deletion", -math.ceil(0.15 * 500))):
        for tokens, (inputs, _) in draws(name, 500):
            assert len(inputs) - 1 == 500 + length_change
            words, n_masks = masked_words(tokens, inputs)
            assert words == math.ceil(0.15 * 500)
            assert n_masks == (words if length_change == 0 else 0)


def test_whole_word_masking_never_splits_a_word():
    word_start = np.zeros(VOCAB, dtype=bool)
    word_start[FIRST_ORDINARY::3] = True  # words of three tokens
    specials = SpecialIds(pad=0, eos=1, unk=2, sentinels=SPECIALS.sentinels, mask=3, vocab_size=VOCAB,
                          word_start=word_start)
    obj = objective("bart_text_infilling")
    tokens = distinct_tokens(300)
    for seed in range(50):
        inputs, _ = obj(tokens, np.random.default_rng(seed), specials)
        missing = ~np.isin(tokens, inputs)
        words = missing.reshape(-1, 3)
        assert np.all(words.all(axis=1) | ~words.any(axis=1))
        assert words.all(axis=1).sum() == math.ceil(0.3 * 100)


def sentences(tokens):
    """Split after each run of sentence ends; the last sentence may be unterminated."""
    ends = tokens == PERIOD
    return [tuple(s) for s in np.split(tokens, np.flatnonzero(ends[:-1] & ~ends[1:]) + 1)]


def is_concatenation_of(sequence, parts):
    """Whether `sequence` is the concatenation of all `parts` in some order (greedy; parts are random)."""
    remaining, position = list(parts), 0
    while remaining:
        match = next((p for p in remaining if tuple(sequence[position:position + len(p)]) == p), None)
        if match is None:
            return False
        remaining.remove(match)
        position += len(match)
    return position == len(sequence)


def test_sentence_permutation_preserves_the_sentences():
    rng = np.random.default_rng(0)
    obj = objective("bart_sentence_permutation")
    changed = 0
    for seed in range(100):
        tokens = rng.integers(FIRST_ORDINARY, PERIOD, size=200)
        tokens[rng.choice(200, 12, replace=False)] = PERIOD
        inputs, targets = obj(tokens, np.random.default_rng(seed), SPECIALS)
        np.testing.assert_array_equal(targets[:-1], tokens)
        assert is_concatenation_of(inputs[:-1], sentences(tokens))
        changed += not np.array_equal(inputs[:-1], tokens)
    assert changed > 90


def test_document_rotation_is_a_cyclic_shift_from_a_uniform_start():
    starts = []
    for tokens, (inputs, _) in draws("bart_document_rotation", 50):
        body = inputs[:-1]
        start = int(np.flatnonzero(tokens == body[0])[0])
        np.testing.assert_array_equal(body, np.roll(tokens, -start))
        starts.append(start)
    assert len(set(starts)) > 40 and abs(np.mean(starts) - 24.5) < 3


def test_bart_final_recipe_and_bos():
    with_bos = SpecialIds(pad=1, eos=2, unk=3, sentinels=(), mask=999, bos=0, vocab_size=VOCAB,
                          word_start=SPECIALS.word_start, sentence_end=SPECIALS.sentence_end)
    bart = objective("bart")
    assert bart.params.mask_ratio == 0.3 and bart.params.permute_sentences == 1.0
    inputs, targets = bart(distinct_tokens(100) + 10, np.random.default_rng(0), with_bos)
    assert inputs[0] == targets[0] == 0 and inputs[-1] == targets[-1] == 2
    assert (inputs == 999).sum() >= 1


def test_bart_combines_noises_like_fairseq_flags():
    obj = objective("bart", mask_ratio=0.2, mask_length="word", replace_length=-1, insert_ratio=0.1,
                    permute_sentences=0.0, rotate=0.0)
    tokens = distinct_tokens(300)
    inputs, _ = obj(tokens, np.random.default_rng(0), SPECIALS)
    assert len(inputs) - 1 == 300 + math.ceil(300 * 0.1)
    assert (inputs == SPECIALS.mask).sum() == math.ceil(0.2 * 300) + math.ceil(300 * 0.1)


# ---- UL2 ----------------------------------------------------------------------------------------------------------

def test_ul2_samples_every_denoiser_with_its_mode_token():
    obj = objective("ul2")
    raw, _, targets_length = obj.lengths(128, SPECIALS)
    tokens = np.arange(FIRST_ORDINARY, FIRST_ORDINARY + raw) % 850 + FIRST_ORDINARY
    modes = []
    for seed in range(1400):
        inputs, targets = obj(tokens, np.random.default_rng(seed), SPECIALS, 128)
        assert len(inputs) <= 128 and len(targets) <= targets_length
        modes.append(int(inputs[0]))
    counts = np.bincount(modes, minlength=7)[4:7] / len(modes)
    np.testing.assert_allclose(counts, [2 / 7, 4 / 7, 1 / 7], atol=0.03)  # 2 R, 4 X and 1 S denoisers


def test_ul2_rates_pick_denoisers_and_outputs_reconstruct():
    only_s = objective("ul2", rates=[0, 0, 0, 0, 0, 0, 1])
    only_x = objective("ul2", rates=[0, 0, 1, 0, 0, 0, 0], mode_tokens=False)
    tokens = distinct_tokens(400)
    for seed in range(20):
        inputs, targets = only_s(tokens, np.random.default_rng(seed), SPECIALS, 200)
        assert inputs[0] == 6
        prefix = np.concatenate([inputs[1:-1], targets[:-1]])
        np.testing.assert_array_equal(prefix, tokens[:len(prefix)])
        inputs, targets = only_x(tokens, np.random.default_rng(seed), SPECIALS, 200)
        assert len(inputs) == 200
        rebuilt = splice_spans(inputs, targets, SPECIALS.sentinel_array, 1)
        np.testing.assert_array_equal(rebuilt, tokens[:len(rebuilt)])
        assert abs((~np.isin(rebuilt, inputs)).mean() - 0.5) < 0.01


# UL2 paper (Tay et al. 2022, section 3.1.2): R = (mu 3, r 0.15), (8, 0.15); X = (3, 0.5), (8, 0.5), (64, 0.15),
# (64, 0.5); S = prefix LM; mode tokens [NLU] for R, [NLG] for X, [S2S] for S
UL2_PAPER = [("R", 3, 0.15), ("R", 8, 0.15), ("X", 3, 0.5), ("X", 8, 0.5), ("X", 64, 0.15), ("X", 64, 0.5),
             ("S", None, None)]
BIG_VOCAB = 5000  # 400 sentinels: X(3, 0.5) at 1024 tokens needs about 170 spans
BIG = SpecialIds(pad=0, eos=1, unk=2, sentinels=tuple(range(BIG_VOCAB - 1, BIG_VOCAB - 401, -1)), mask=3,
                 modes={"R": (4,), "X": (5,), "S": (6,)}, vocab_size=BIG_VOCAB)


@pytest.mark.parametrize("index", range(len(UL2_PAPER)))
def test_ul2_each_denoiser_has_the_papers_rate_and_span_length(index):
    mode, mu, rate = UL2_PAPER[index]
    one_hot = [0.0] * len(UL2_PAPER)
    one_hot[index] = 1.0
    obj = objective("ul2", rates=one_hot)
    tokens = np.arange(FIRST_ORDINARY, FIRST_ORDINARY + 2100)
    noise = seen = 0
    spans, patterns, prefix_shares = [], set(), []
    for seed in range(40 if mode != "S" else 300):
        inputs, targets = obj(tokens, np.random.default_rng(seed), BIG, 1024)
        assert inputs[0] == BIG.modes[mode][0] and len(inputs) <= 1024
        if mode == "S":
            prefix, rest = inputs[1:-1], targets[:-1]
            np.testing.assert_array_equal(np.concatenate([prefix, rest]), tokens[:1023])  # mode token + 1023
            prefix_shares.append(len(prefix) / 1023)
            continue
        rebuilt = splice_spans(inputs[1:], targets, BIG.sentinel_array, BIG.eos)
        np.testing.assert_array_equal(rebuilt, tokens[:len(rebuilt)])
        mask = ~np.isin(rebuilt, inputs)
        noise, seen = noise + mask.sum(), seen + len(rebuilt)
        spans.extend(runs(mask))
        patterns.add(mask.tobytes())
    if mode == "S":  # the split is uniform over the chunk
        assert abs(np.mean(prefix_shares) - 0.5) < 0.05
        assert min(prefix_shares) < 0.05 and max(prefix_shares) > 0.95
        return
    assert abs(noise / seen - rate) < 0.01
    assert abs(np.mean(spans) / mu - 1) < 0.1
    assert np.std(spans) > 0 and len(patterns) == 40  # random partitions, a new one per seed


def test_ul2_sentinel_budget_is_checked_up_front():
    with pytest.raises(PtlabError, match="needs up to 1[0-9][0-9] sentinels but the tokenizer has 100"):
        objective("ul2").check(512, SPECIALS)
    objective("ul2").check(128, SPECIALS)


def test_same_seed_same_example_for_every_objective():
    tokens = distinct_tokens(300)
    for name in REGISTRY:
        obj = objective(name)
        a = obj(tokens, np.random.default_rng(5), SPECIALS, 300)
        b = obj(tokens, np.random.default_rng(5), SPECIALS, 300)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)


# ---- BART's random_ratio and mask_length=subword ----------------------------------------------------------------

def test_random_ratio_replaces_that_share_of_masked_tokens_with_ordinary_random_tokens():
    obj = objective("bart_token_masking", mask_ratio=0.3, random_ratio=0.25)
    masks = randoms = 0
    replacements = []
    for tokens, (inputs, _) in draws("bart_token_masking", 500, {"mask_ratio": 0.3, "random_ratio": 0.25}):
        body = inputs[:-1]
        assert len(body) == 500
        changed = body != tokens
        # a random token may by chance be the original one (about 1 in 900)
        assert math.ceil(0.3 * 500) - 2 <= changed.sum() <= math.ceil(0.3 * 500)
        masks += (body == SPECIALS.mask).sum()
        replaced = body[changed & (body != SPECIALS.mask)]
        randoms += len(replaced)
        replacements.extend(replaced.tolist())
    assert abs(randoms / (masks + randoms) - 0.25) < 0.01
    replacements = np.array(replacements)
    assert SPECIALS.ordinary_ids.size == VOCAB - 3 - 100 - 1 - 3  # pad/eos/unk, sentinels, mask, mode tokens
    assert np.isin(replacements, SPECIALS.ordinary_ids).all()
    # uniform over the ordinary ids: their mean and a spread over the whole range
    assert abs(replacements.mean() / SPECIALS.ordinary_ids.mean() - 1) < 0.03
    assert len(np.unique(replacements)) > 0.9 * SPECIALS.ordinary_ids.size
    assert obj.params.random_ratio == 0.25


def test_random_ratio_zero_only_ever_inserts_the_mask():
    for tokens, (inputs, _) in draws("bart_text_infilling", 300, {"random_ratio": 0.0}):
        body = inputs[:-1]
        assert np.isin(body, np.append(tokens, SPECIALS.mask)).all()


def test_subword_masking_ignores_word_boundaries():
    word_start = np.zeros(VOCAB, dtype=bool)
    word_start[FIRST_ORDINARY::3] = True  # words of three tokens
    specials = SpecialIds(pad=0, eos=1, unk=2, sentinels=SPECIALS.sentinels, mask=3, vocab_size=VOCAB,
                          word_start=word_start)
    tokens = distinct_tokens(300)
    by_position = np.zeros(3)
    partial = 0
    draws_ = 400
    for seed in range(draws_):
        for mask_length in ("subword", "word"):
            obj = objective("bart_token_masking", mask_ratio=0.3, mask_length=mask_length)
            inputs, _ = obj(tokens, np.random.default_rng(seed), specials)
            masked = (inputs[:-1] == specials.mask).reshape(-1, 3)
            if mask_length == "word":  # whole words: 30% of 100 words, every token of each
                assert masked.all(axis=1).sum() == 30 and masked.sum() == 90
                continue
            assert masked.sum() == math.ceil(0.3 * 300)  # 30% of the tokens
            by_position += masked.sum(axis=0)
            partial += (masked.any(axis=1) & ~masked.all(axis=1)).sum()
    # 90 of 300 tokens drawn without replacement: a word is partly masked unless all or none of its 3 are
    none = (210 * 209 * 208) / (300 * 299 * 298)
    whole = (90 * 89 * 88) / (300 * 299 * 298)
    assert abs(partial / (100 * draws_) - (1 - none - whole)) < 0.01
    np.testing.assert_allclose(by_position / (100 * draws_), 0.3, atol=0.01)  # word starts are not favoured


def test_subword_infilling_counts_spans_in_tokens():
    word_start = np.zeros(VOCAB, dtype=bool)
    word_start[FIRST_ORDINARY::3] = True
    specials = SpecialIds(pad=0, eos=1, unk=2, sentinels=SPECIALS.sentinels, mask=3, vocab_size=VOCAB,
                          word_start=word_start)
    tokens = distinct_tokens(300)
    obj = objective("bart_text_infilling", mask_length="subword")
    cut_words = 0
    for seed in range(100):
        inputs, _ = obj(tokens, np.random.default_rng(seed), specials)
        missing = ~np.isin(tokens, inputs)
        assert missing.sum() == math.ceil(0.3 * 300)
        # "subword" spans are single tokens, as in fairseq: one mask per token, even for neighbours
        assert (inputs[:-1] == specials.mask).sum() == missing.sum()
        words = missing.reshape(-1, 3)
        cut_words += (words.any(axis=1) & ~words.all(axis=1)).sum()
    assert cut_words > 0
