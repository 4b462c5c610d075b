"""`ptlab study --dry-run`'s time estimate: timed from real steps of each cell's model, it is within a factor 1.5
of the time the cell's runs really take (measured here on a small cell: a pre-training run and a fine-tune)."""

import dataclasses
import io
import time

import pytest
import yaml

from ptlab.lab.study import Plan, estimate_seconds, load_study, plan_study, run_study
from ptlab.lab.study.estimate import StepTimer
from ptlab.lab.study.run import run_finetune, run_pretraining


def small_study(tmp_path, small_corpus, tokenizer_dir, cells=("span corruption",)) -> Plan:
    # large enough for the steps to outweigh what the estimate leaves out (building models, reading task files)
    base = {"model": {"family": "t5", "d_model": 128, "d_kv": 32, "d_ff": 512, "num_heads": 4, "num_layers": 2},
            "objective": {"name": "span_corruption", "inputs_length": 128},
            "data": {"train_files": [str(small_corpus["train"])], "validation_files": [str(small_corpus["validation"])],
                     "tokenizer": str(tokenizer_dir), "vocab_size": 2000},
            "train": {"max_steps": 30, "batch_size": 8, "warmup_steps": 2, "eval_every": 15, "eval_batches": 1,
                      "precision": "fp32", "tensorboard": False, "threads": 1, "compile": False}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    study = {"run_dir": str(tmp_path / "study"), "base": "base.yaml", "seeds": [0],
             "tasks": [{"name": "rt_polarity", "max_train_examples": 128, "max_eval_examples": 32,
                        "max_input_length": 64}],
             "finetune": {"train": {"batch_size": 16, "lr": 1e-3, "warmup_steps": 1, "eval_every": 4,
                                    "precision": "fp32", "tensorboard": False, "compile": False}, "epochs": 1},
             "cells": [cell if isinstance(cell, dict) else {"name": cell} for cell in cells]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    study, base_dir = load_study(tmp_path / "study.yaml")
    return plan_study(study, base_dir)


def test_the_estimate_is_within_1_5x_of_the_real_run(tmp_path, small_corpus, tokenizer_dir):
    """A study's second cell, run as a study runs it (its pre-training, then its fine-tune); a short first cell pays
    what a study pays once (the shards, its process's first imports)."""
    first = {"name": "first", "set": {"train.max_steps": 2}}
    run_study(small_study(tmp_path, small_corpus, tokenizer_dir, [first]), show_progress=False, out=io.StringIO())
    plan = small_study(tmp_path, small_corpus, tokenizer_dir, [first, "second"])
    estimate = estimate_seconds(plan)["second"]
    started = time.perf_counter()
    summary = run_pretraining(plan.pretrains[-1])
    for run in (r for r in plan.finetunes if r.cell.name == "second"):
        run_finetune(plan.study, run, tmp_path / "results.jsonl", summary)
    real = time.perf_counter() - started
    assert real / 1.5 <= estimate <= real * 1.5, f"estimated {estimate:.1f} s, the cell took {real:.1f} s"


def test_each_distinct_shape_is_timed_once(tmp_path, small_corpus, tokenizer_dir, monkeypatch):
    """Seeds and cells that share a model and a batch shape share one timing: the dry run stays short."""
    timed, original = [], StepTimer._timed

    def counting(self, what, shape, tokens, train, measure, once=False):
        def no_step():  # counted instead of set up: only how often something is timed matters here
            timed.append(what[0])
            return lambda: None
        return original(self, what, shape, tokens, train, no_step, once)
    monkeypatch.setattr(StepTimer, "_timed", counting)
    plan = small_study(tmp_path, small_corpus, tokenizer_dir, ["one"])
    estimate_seconds(plan)
    one_cell = sorted(timed)
    assert {"train", "forward", "checkpoint", "start"} <= set(one_cell)
    timed.clear()
    plan.study.seeds = [0, 1, 2]
    plan = plan_study(plan.study, tmp_path)
    plan.study.cells.append(dataclasses.replace(plan.study.cells[0], name="two"))
    plan = plan_study(plan.study, tmp_path)
    assert len(plan.finetunes) == 6
    estimate_seconds(plan)
    assert sorted(timed) == one_cell  # nothing timed again for other seeds or an identical cell


@pytest.mark.parametrize("unavailable", ["cuda"])
def test_a_cell_on_a_device_this_machine_lacks_is_left_untimed(tmp_path, small_corpus, tokenizer_dir, unavailable):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has the device")
    plan = small_study(tmp_path, small_corpus, tokenizer_dir)
    plan.cells[0][1].train.device = unavailable
    assert estimate_seconds(plan) == {}


def test_a_slow_step_prices_the_models_other_shapes_by_their_tokens(monkeypatch):
    """Where a step is slow (bf16 on a CPU without bf16 instructions, a large model), the dry run does not wait for
    one of every shape: the same model and recipe at another shape costs in proportion to its tokens."""
    import ptlab.lab.study.estimate as estimate
    from ptlab.config import ModelConfig, TrainConfig

    monkeypatch.setattr(estimate, "SLOW_STEP_SECONDS", 0.0)  # every step counts as slow
    model = ModelConfig(family="t5", vocab_size=300, d_model=32, d_ff=64, num_heads=2, num_layers=1)
    model.validate()
    train = TrainConfig(precision="fp32", threads=1)
    timer = StepTimer()
    first = timer.train_step(model, train, 4, 16, 8)
    assert timer.train_step(model, train, 8, 16, 8) == pytest.approx(2 * first)  # twice the rows
    assert timer.train_step(model, train, 4, 40, 8) == pytest.approx(2 * first)  # twice the tokens per row
    assert timer.train_step(model, train, 4, 16, 8, padded=True) == pytest.approx(first)
    assert len(timer._seconds) == 4 and len(timer._slow) == 1
