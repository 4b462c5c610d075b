"""The demo's verdict: the paired bootstrap interval over per-example test scores decides "pays off", "hurts" or
"no clear difference", each reached here on constructed score pairs (the end-to-end demo test, in the slow suite,
asserts the summarization verdict of a real run)."""

import numpy as np
import pytest

from ptlab.downstream.metrics import paired_bootstrap
from ptlab.lab.demo import Comparison


def verdict(pretrained: np.ndarray, scratch: np.ndarray) -> str:
    difference, low, high = paired_bootstrap(list(pretrained), list(scratch), seed=0)
    return Comparison("debian_summaries", "rougeL", pretrained.mean(), scratch.mean(), difference, low, high,
                      {}).verdict()


@pytest.mark.parametrize("shift,expected", [(5.0, "pays off"), (-5.0, "hurts"), (0.0, "no clear difference")])
def test_each_verdict_follows_the_interval(shift, expected):
    rng = np.random.default_rng(1)
    scratch = rng.uniform(0, 40, 300)
    pretrained = scratch + shift + rng.normal(0, 3, 300)
    text = verdict(pretrained, scratch)
    assert text.startswith(f"debian_summaries: pre-training {expected}" if expected != "no clear difference"
                           else "debian_summaries: no clear difference"), text
    assert "95% interval" in text


def test_a_gain_within_the_noise_is_not_called_a_pay_off():
    """A mean gain of 0.3 points with per-example noise of 20: the interval straddles zero."""
    rng = np.random.default_rng(2)
    scratch = rng.uniform(0, 40, 100)
    text = verdict(scratch + 0.3 + rng.normal(0, 20, 100), scratch)
    assert "no clear difference" in text and "includes zero" in text
