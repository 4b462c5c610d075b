"""Every metric against a value computed by hand."""

import math

import pytest

from ptlab.downstream.metrics import compute_metrics
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
