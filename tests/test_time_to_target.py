"""benchmarks/time_to_target.py measures the recipe the shipped configs set: its new side restates each config's
recipe (so that a changed config shows here instead of silently leaving the benchmark on an old recipe), and its
baseline changes what it should (the optimizer and schedule before Muon) and nothing of the model's size."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import time_to_target  # noqa: E402

from ptlab.config import load_config  # noqa: E402


@pytest.mark.parametrize("name", sorted(time_to_target.SETUPS))
def test_the_new_recipe_is_the_shipped_configs(name):
    setup = time_to_target.SETUPS[name]
    config = ROOT / setup.config
    shipped = load_config(config, setup.overrides)
    restated = load_config(config, [*setup.overrides, *setup.new])
    budget_scaled = {"warmup_steps"}  # set for the benchmark's few hundred steps, not the config's thousands
    assert ({k: v for k, v in dataclasses.asdict(restated.train).items() if k not in budget_scaled}
            == {k: v for k, v in dataclasses.asdict(shipped.train).items() if k not in budget_scaled})
    assert dataclasses.asdict(restated.model) == dataclasses.asdict(shipped.model)
    baseline = load_config(config, [*setup.overrides, *setup.baseline, f"train.lr={setup.baseline_lrs[0]}"])
    assert baseline.train.optimizer != shipped.train.optimizer
    assert (baseline.model.d_model, baseline.model.num_layers) == (shipped.model.d_model, shipped.model.num_layers)
