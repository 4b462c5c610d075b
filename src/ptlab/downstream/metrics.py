"""Downstream metrics, computed by the libraries that define them: scikit-learn (accuracy, F1, Matthews
correlation), scipy (Pearson, Spearman), rouge-score (ROUGE-1/2/L F-measure, stemmed, as the summarization papers
report) and sacrebleu (corpus BLEU with its default 13a tokenizer). Scores are in [0, 100] except the
correlations, which are in [-100, 100]."""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from ptlab.config import check_seed
from ptlab.errors import PtlabError


def _accuracy(predictions: list[str], references: list[str], labels: list[str]) -> float:
    from sklearn.metrics import accuracy_score

    return 100.0 * accuracy_score(references, predictions)


def _f1(predictions: list[str], references: list[str], labels: list[str]) -> float:
    """Binary tasks: F1 of the second label (the positive class: "positive", "equivalent", "spam"); more labels:
    macro-averaged F1."""
    from sklearn.metrics import f1_score

    if len(labels) == 2:
        return 100.0 * f1_score(references, predictions, pos_label=labels[1], average="binary", zero_division=0)
    return 100.0 * f1_score(references, predictions, labels=labels or None, average="macro", zero_division=0)


def _mcc(predictions: list[str], references: list[str], labels: list[str]) -> float:
    from sklearn.metrics import matthews_corrcoef

    return 100.0 * matthews_corrcoef(references, predictions)


def _numbers(values: list[str], what: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError as err:
        raise PtlabError(f"{what} must be numbers for a correlation metric ({err})") from None


def _pearson(predictions: list[str], references: list[str], labels: list[str]) -> float:
    from scipy.stats import pearsonr

    predicted = [float(p) if _is_number(p) else 0.0 for p in predictions]  # an unreadable prediction scores 0
    return 100.0 * float(pearsonr(predicted, _numbers(references, "references"))[0])


def _spearman(predictions: list[str], references: list[str], labels: list[str]) -> float:
    from scipy.stats import spearmanr

    predicted = [float(p) if _is_number(p) else 0.0 for p in predictions]
    return 100.0 * float(spearmanr(predicted, _numbers(references, "references"))[0])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _rouge_per_example(kind: str, predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return [100.0 * scorer.score(ref, pred)[kind].fmeasure for pred, ref in zip(predictions, references)]


def _rouge(kind: str) -> Callable:
    def score(predictions: list[str], references: list[str], labels: list[str]) -> float:
        values = _rouge_per_example(kind, predictions, references)
        return sum(values) / max(len(values), 1)
    return score


def _bleu(predictions: list[str], references: list[str], labels: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def _exact_match(predictions: list[str], references: list[str], labels: list[str]) -> float:
    return 100.0 * sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / max(len(references), 1)


METRICS: dict[str, Callable[[list[str], list[str], list[str]], float]] = {
    "accuracy": _accuracy, "f1": _f1, "mcc": _mcc, "pearson": _pearson, "spearman": _spearman,
    "rouge1": _rouge("rouge1"), "rouge2": _rouge("rouge2"), "rougeL": _rouge("rougeL"), "bleu": _bleu,
    "exact_match": _exact_match,
}


# Metrics that are a mean over examples, by their per-example score (what a paired bootstrap resamples)
def _matches(predictions: list[str], references: list[str]) -> list[float]:
    return [100.0 * (p.strip() == r.strip()) for p, r in zip(predictions, references)]


PER_EXAMPLE: dict[str, Callable[[list[str], list[str]], list[float]]] = {
    "accuracy": _matches, "exact_match": _matches,
    **{kind: functools.partial(_rouge_per_example, kind) for kind in ("rouge1", "rouge2", "rougeL")},
}


def paired_bootstrap(first: list[float], second: list[float], rounds: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of first - second over the same examples, and its percentile bootstrap interval (Koehn 2004's paired
    resampling): the uncertainty that comes from which test examples were drawn, not from training seeds."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("paired_bootstrap needs two equally long, non-empty score lists")
    difference = a - b
    rng = np.random.default_rng(check_seed(seed))
    means = difference[rng.integers(0, len(difference), size=(rounds, len(difference)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return float(difference.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def compute_metrics(names: list[str], predictions: list[str], references: list[str],
                    labels: list[str] | None = None) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise PtlabError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    if len(predictions) != len(references):
        raise PtlabError(f"{len(predictions)} predictions for {len(references)} references")
    return {name: METRICS[name](predictions, references, list(labels or [])) for name in names}
