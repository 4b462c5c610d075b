"""Every metric against a value computed by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from ptlab.downstream.metrics import PER_EXAMPLE, compute_metrics, paired_bootstrap
from ptlab.errors import PtlabError


def test_accuracy_f1_and_mcc_by_hand():
    refs = ["pos", "pos", "neg", "neg", "pos"]
    preds = ["pos", "neg", "neg", "pos", "pos"]
    scores = compute_metrics(["accuracy", "f1", "mcc"], preds, refs, ["neg", "pos"])
    assert scores["accuracy"] == pytest.approx(60.0)
    # positive class "pos": TP 2, FP 1, FN 1 -> precision 2/3, recall 2/3, F1 2/3
    assert scores["f1"] == pytest.approx(100 * 2 / 3)
    # TP 2, TN 1, FP 1, FN 1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert scores["mcc"] == pytest.approx(100 / 6)


def test_macro_f1_with_three_labels():
    scores = compute_metrics(["f1"], ["a", "b", "c", "a"], ["a", "b", "b", "c"], ["a", "b", "c"])
    # a: P 1/2 R 1 F 2/3; b: P 1 R 1/2 F 2/3; c: P 0 R 0 F 0 -> macro 4/9
    assert scores["f1"] == pytest.approx(100 * 4 / 9)


def test_correlations_by_hand():
    refs = ["1", "2", "3", "4"]
    preds = ["2", "4", "6", "9"]
    mean_r, mean_p = 2.5, 5.25
    cov = sum((float(r) - mean_r) * (float(p) - mean_p) for r, p in zip(refs, preds))
    var_r = sum((float(r) - mean_r) ** 2 for r in refs)
    var_p = sum((float(p) - mean_p) ** 2 for p in preds)
    scores = compute_metrics(["pearson", "spearman"], preds, refs)
    assert scores["pearson"] == pytest.approx(100 * cov / math.sqrt(var_r * var_p))
    assert scores["spearman"] == pytest.approx(100.0)  # the same order


def test_rouge_by_hand():
    # reference "the cat sat on the mat", prediction "the cat lay on the mat"
    scores = compute_metrics(["rouge1", "rouge2", "rougeL"], ["the cat lay on the mat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)  # 5 of 6 unigrams match both ways
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)  # the cat / on the / the mat of 5 bigrams
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)  # LCS: the cat on the mat


def test_bleu_by_hand():
    prediction = "the quick brown fox jumps over the dog"
    reference = "the quick brown fox jumps over the lazy dog"
    # n-gram precisions 8/8, 6/7, 5/6, 4/5; brevity penalty exp(1 - 9/8)
    precisions = [8 / 8, 6 / 7, 5 / 6, 4 / 5]
    expected = 100 * math.exp(1 - 9 / 8) * math.exp(sum(math.log(p) for p in precisions) / 4)
    assert compute_metrics(["bleu"], [prediction], [reference])["bleu"] == pytest.approx(expected, rel=1e-4)


def test_exact_match_and_unknown_metric():
    assert compute_metrics(["exact_match"], ["a ", "b"], ["a", "c"])["exact_match"] == pytest.approx(50.0)
    with pytest.raises(PtlabError, match="unknown metric"):
        compute_metrics(["blue"], ["a"], ["a"])


def test_tasks_may_name_exactly_the_metrics_there_are():
    from ptlab.data.tasks import METRIC_NAMES
    from ptlab.downstream.metrics import METRICS

    assert tuple(METRICS) == METRIC_NAMES


# ---- per-example scores and the paired bootstrap (the demo's verdicts) -----------------------------------------

@pytest.mark.parametrize("metric", sorted(PER_EXAMPLE))
def test_per_example_scores_average_to_the_metric(metric):
    if metric == "accuracy":  # defined on label strings
        references, predictions = ["positive", "negative", "negative"], ["positive", "positive", "negative"]
    else:
        references = ["positive", "a small tool for copying files", "the cat sat", "negative"]
        predictions = ["positive", "tool to copy files", "the cat sat", " negative "]
    per_example = PER_EXAMPLE[metric](predictions, references)
    assert len(per_example) == len(references)
    expected = compute_metrics([metric], predictions, references, ["positive", "negative"])[metric]
    assert np.mean(per_example) == pytest.approx(expected)


def test_paired_bootstrap_matches_scipy_and_is_seeded():
    rng = np.random.default_rng(3)
    first = rng.normal(1.0, 2.0, size=300)
    second = first - rng.normal(0.4, 1.0, size=300)
    mean, low, high = paired_bootstrap(first, second, rounds=4000, seed=1)
    reference = stats.bootstrap((first - second,), np.mean, n_resamples=4000, method="percentile",
                                random_state=np.random.default_rng(2)).confidence_interval
    assert mean == pytest.approx(np.mean(first - second))
    assert low == pytest.approx(reference.low, abs=0.03) and high == pytest.approx(reference.high, abs=0.03)
    assert paired_bootstrap(first, second, rounds=4000, seed=1) == (mean, low, high)
    assert low < 0.4 < high
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])
