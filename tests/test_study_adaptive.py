"""Adaptive pre-training in studies and `ptlab tapt`: cells that continue another cell's pre-training (`init`), that
pre-train per task on the task's training inputs (`adapt: task`), that run on some tasks only (`tasks`), and
pre-training seeds besides fine-tuning seeds, with a table whose spreads say which runs they are over."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import ptlab.downstream.finetune
import ptlab.train.loop
from ptlab.config import FinetuneConfig, TaskConfig, load_config
from ptlab.data.shards import open_shard
from ptlab.data.tasks import resolve_task
from ptlab.data.tokenizer import load_tokenizer
from ptlab.errors import PtlabError
from ptlab.lab.adaptive import default_tapt_steps, tapt
from ptlab.lab.study import format_plan, load_study, plan_study, read_results, run_study
from ptlab.train.checkpoint import latest_valid_checkpoint, load_trainer_state

TAPT_CELLS = [{"name": "none", "pretrain": False},
              {"name": "general"},
              {"name": "general+TAPT", "init": "general", "adapt": "task", "set": {"train.max_steps": 3}}]


def write_study(tmp_path: Path, small_corpus, tokenizer_dir, cells, tasks=("rt_polarity",), **keys) -> Path:
    base = {"model": {"family": "t5", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4, "num_layers": 1},
            "objective": {"name": "bart", "inputs_length": 32},
            "data": {"train_files": [str(small_corpus["train"])], "validation_files": [str(small_corpus["validation"])],
                     "tokenizer": str(tokenizer_dir), "vocab_size": 2000},
            "train": {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 4, "eval_batches": 1,
                      "checkpoint_every": 2, "precision": "fp32", "tensorboard": False, "threads": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    study = {"run_dir": str(tmp_path / "study"), "base": "base.yaml", "seeds": [0, 1],
             "tasks": [{"name": t, "max_train_examples": 16, "max_eval_examples": 8, "max_input_length": 32}
                       for t in tasks],
             "finetune": {"train": {"batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "eval_every": 2,
                                    "precision": "fp32", "tensorboard": False}, "max_steps": 2},
             "cells": cells, **keys}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_plan_counts_runs_and_each_adapting_run_continues_its_init_cell_of_the_same_seed(
        tmp_path, small_corpus, tokenizer_dir):
    cells = [*TAPT_CELLS, {"name": "TAPT only", "adapt": "task"},
             {"name": "general+DAPT", "init": "general", "tasks": ["spam_ham"],
              "set": {"data.sources": ["debian_descriptions"]}}]
    path = write_study(tmp_path, small_corpus, tokenizer_dir, cells, tasks=("rt_polarity", "spam_ham"),
                       pretrain_seeds=[0, 5], seeds=[0, 1, 2])
    plan = plan_study(*load_study(path))
    per_cell = {c["name"]: (sum(r.cell.name == c["name"] for r in plan.pretrains),
                            sum(r.cell.name == c["name"] for r in plan.finetunes)) for c in cells}
    # pre-training runs: seeds (x tasks when adapting); fine-tunes: their tasks x 3 seeds (x 2 pre-training seeds)
    assert per_cell == {"none": (0, 2 * 3), "general": (2, 2 * 2 * 3), "general+TAPT": (2 * 2, 2 * 2 * 3),
                        "TAPT only": (2 * 2, 2 * 2 * 3), "general+DAPT": (2, 2 * 1 * 3)}
    assert "12 pre-training runs, 48 fine-tunes" in format_plan(plan)
    assert "| general+DAPT | encoder-decoder | bart | cell 'general' |" in format_plan(plan)
    for i, run in enumerate(plan.pretrains):  # every run comes after the run it continues
        assert run.init is None or plan.pretrains.index(run.init) < i
    cells_dir = tmp_path / "study" / "cells"
    adapted = next(r for r in plan.pretrains if r.cell.name == "general+TAPT" and r.pretrain_seed == 5
                   and r.task.name == "spam_ham")
    assert adapted.cfg.init == str(cells_dir / "general" / "pretrain-seed5") == adapted.init.cfg.run_dir
    assert adapted.cfg.run_dir == str(cells_dir / "general-tapt" / "pretrain-spam_ham-seed5")
    assert (adapted.cfg.seed, adapted.cfg.train.max_steps) == (5, 3)
    assert adapted.cfg.data.train_files == ["task:spam_ham"] and adapted.cfg.data.validation_files == []
    only = next(r for r in plan.pretrains if r.cell.name == "TAPT only" and r.pretrain_seed == 0)
    assert only.cfg.init is None and only.cfg.run_dir == str(cells_dir / "tapt-only" / "pretrain-rt_polarity")
    assert only.cfg.data.shards_dir == next(r for r in plan.pretrains if r.cell.name == "general+TAPT"
                                            and r.task.name == "rt_polarity").cfg.data.shards_dir  # shared shards
    dapt = [r for r in plan.pretrains if r.cell.name == "general+DAPT"]
    assert [r.cfg.data.sources for r in dapt] == [["debian_descriptions"]] * 2
    # the base config's seed keeps a single-seed study's directories
    assert {r.directory for r in plan.finetunes if r.cell.name == "general" and r.task.name == "rt_polarity"} == {
        f"rt_polarity-seed{s}{p}" for s in (0, 1, 2) for p in ("", "-pretrain-seed5")}


@pytest.mark.parametrize("cell, key", [
    ({"name": "x", "init": "nonexistent"}, r"cells\[1\]\.init"),
    ({"name": "x", "adapt": "bogus"}, r"cells\[1\]\.adapt"),
    ({"name": "x", "tasks": ["unknown"]}, r"cells\[1\]\.tasks"),
    ({"name": "x", "init": "none"}, r"cells\[1\]\.init"),  # a cell that does not pre-train
    ({"name": "x", "pretrain": False, "adapt": "task"}, r"cells\[1\]\.pretrain"),
])
def test_bad_cell_references_are_one_line_errors_naming_the_key(tmp_path, small_corpus, tokenizer_dir, cell, key):
    path = write_study(tmp_path, small_corpus, tokenizer_dir, [{"name": "none", "pretrain": False}, cell])
    with pytest.raises(PtlabError, match=key) as err:
        load_study(path)
    assert "\n" not in str(err.value)


def test_a_bad_cell_reference_exits_non_zero_without_a_traceback(tmp_path, small_corpus, tokenizer_dir):
    path = write_study(tmp_path, small_corpus, tokenizer_dir, [{"name": "x", "init": "general"}, {"name": "general"}])
    result = subprocess.run([sys.executable, "-m", "ptlab", "study", str(path), "--dry-run"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "cells[0].init" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def adaptive_study(tmp_path_factory, small_corpus, tokenizer_dir):
    """The micro TAPT study, killed in the middle while running serially, then finished with two jobs."""
    tmp_path = tmp_path_factory.mktemp("adaptive")
    path = write_study(tmp_path, small_corpus, tokenizer_dir, TAPT_CELLS, pretrain_seeds=[0, 1])
    study, base_dir = load_study(path)
    real_finetune, calls = ptlab.downstream.finetune.finetune, []

    def finetune(cfg, show_progress=True):
        calls.append(cfg.run_dir)
        if len(calls) == 4:  # after no pre-training's two and general's first: general seed 1 is not pre-trained
            raise KeyboardInterrupt
        return real_finetune(cfg, show_progress)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ptlab.downstream.finetune, "finetune", finetune)
        with pytest.raises(KeyboardInterrupt):
            run_study(plan_study(study, base_dir), show_progress=False)
    killed_rows = read_results(Path(study.run_dir) / "results.jsonl")
    plan = plan_study(study, base_dir)
    run_study(plan, jobs=2, show_progress=False)
    return plan, killed_rows, read_results(Path(study.run_dir) / "results.jsonl")


def test_a_killed_study_finishes_every_pretrain_seed_x_seed_run_once(adaptive_study):
    _, killed_rows, rows = adaptive_study
    assert len(killed_rows) == 3
    keys = sorted((r["cell"], r["pretrain_seed"] if r["pretrain_seed"] is not None else -1, r["seed"]) for r in rows)
    assert keys == sorted([("none", -1, s) for s in (0, 1)] + [
        (c, p, s) for c in ("general", "general+TAPT") for p in (0, 1) for s in (0, 1)])


def test_each_adapting_run_started_from_its_seeds_final_general_checkpoint(adaptive_study):
    plan, _, _ = adaptive_study
    for run in (r for r in plan.pretrains if r.cell.name == "general+TAPT"):
        general = json.loads((Path(run.init.cfg.run_dir) / "pretrain-done.json").read_text())
        started = load_trainer_state(latest_valid_checkpoint(run.cfg.run_dir))["data"]["init"]
        final = json.loads((Path(general["checkpoint"]) / "meta.json").read_text())["sha256"]["model.safetensors"]
        # the final weights, not a checkpoint the init run had written midway (jobs=2 ran them side by side)
        assert started["checkpoint"] == general["checkpoint"] and started["sha256"] == final
        assert started["path"] == run.init.cfg.run_dir


def test_the_adaptation_run_sees_the_training_split_inputs_only(adaptive_study, tokenizer_dir):
    plan, _, _ = adaptive_study
    run = next(r for r in plan.pretrains if r.cell.name == "general+TAPT")
    shard = open_shard(Path(run.cfg.data.shards_dir) / "train")
    ends = [*shard.doc_starts[1:].tolist(), shard.num_tokens]
    documents = {tuple(shard.tokens[a:b].tolist()) for a, b in zip(shard.doc_starts.tolist(), ends)}
    tokenizer = load_tokenizer(tokenizer_dir)
    task = resolve_task(TaskConfig(name="rt_polarity"))
    encoded = {split: {tuple(ids + [tokenizer.eos_id]) for ids in tokenizer.encode_batch(
        [text for text, _ in task.examples(split)])} for split in ("train", "validation", "test")}
    assert documents == encoded["train"]
    assert not documents & ((encoded["validation"] | encoded["test"]) - encoded["train"])


def test_the_table_reports_mean_and_std_over_pretrain_x_finetune_seeds(adaptive_study):
    plan, _, rows = adaptive_study
    table = (plan.run_dir / "table.md").read_text()
    assert "mean ± std over 2 pre-training x 2 fine-tuning seeds" in table
    assert "without pre-training: over the 2 fine-tuning seeds" in table
    with open(plan.run_dir / "table.csv", newline="") as f:
        records = {r["cell"]: r for r in csv.DictReader(f)}
    for cell in ("none", "general", "general+TAPT"):
        scores = [r["score"] for r in rows if r["cell"] == cell]
        assert float(records[cell]["rt_polarity_mean"]) == pytest.approx(np.mean(scores))
        assert float(records[cell]["rt_polarity_std"]) == pytest.approx(np.std(scores, ddof=1))
        assert int(records[cell]["rt_polarity_seeds"]) == len(scores)
    means = [np.mean([r["score"] for r in rows if r["cell"] == "general+TAPT" and r["pretrain_seed"] == p])
             for p in (0, 1)]
    assert float(records["general+TAPT"]["rt_polarity_pretrain_seed_std"]) == pytest.approx(np.std(means, ddof=1))
    assert records["none"]["rt_polarity_pretrain_seed_std"] == ""
    line = next(x for x in table.splitlines() if x.startswith("| general+TAPT |"))
    assert f"[{np.std(means, ddof=1):.1f}]" in line


def test_tapt_continues_a_checkpoint_on_the_task_and_fine_tunes(adaptive_study, tmp_path, monkeypatch):
    plan, _, _ = adaptive_study
    general = next(r for r in plan.pretrains if r.cell.name == "general" and r.pretrain_seed == 0)
    config = {"init": general.cfg.run_dir, "run_dir": str(tmp_path / "unused"),
              "task": {"name": "rt_polarity", "max_train_examples": 16, "max_eval_examples": 8,
                       "max_input_length": 32},
              "train": {"batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "eval_every": 2, "precision": "fp32",
                        "loggers": [], "threads": 1}, "max_steps": 2}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "tapt"
    result = subprocess.run([sys.executable, "-m", "ptlab", "tapt", "--config", str(tmp_path / "ft.yaml"),
                             "--steps", "3", "--out", str(out), "--quiet"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test" in result.stdout and "accuracy" in result.stdout
    adapted = yaml.safe_load((out / "adapt" / "config.yaml").read_text())
    assert adapted["objective"]["name"] == "bart" and adapted["data"]["train_files"] == ["task:rt_polarity"]
    assert adapted["train"]["max_steps"] == 3 and adapted["data"]["validation_files"] == []
    state = load_trainer_state(latest_valid_checkpoint(out / "adapt"))
    assert state["data"]["init"]["path"] == general.cfg.run_dir
    assert json.loads((out / "finetune" / "scores.json").read_text())["init"] == str(out / "adapt")

    monkeypatch.setattr(ptlab.train.loop, "pretrain", lambda *a, **k: pytest.fail("the adaptation is done"))
    again = tapt(load_config(tmp_path / "ft.yaml", cls=FinetuneConfig), steps=3,
                 out=str(out), show_progress=False)
    assert again.finetune.test is not None


def test_tapt_needs_a_pretraining_checkpoint(adaptive_study, tmp_path):
    plan, _, _ = adaptive_study
    fine_tuned = plan.run_dir / "cells" / "general" / "rt_polarity-seed0"
    for init, words in (("none", "init is none"), (str(tmp_path / "missing"), "does not exist"),
                        (str(fine_tuned / "best"), "not a fine-tuned one"), (str(fine_tuned), "not a fine-tuned one")):
        with pytest.raises(PtlabError, match=f"config key 'init'.*{words}"):
            tapt(FinetuneConfig(init=init, task=TaskConfig(name="rt_polarity")), steps=3, out=str(tmp_path))
    assert not (tmp_path / "adapt").exists()


def test_the_default_tapt_budget_is_a_few_passes_within_bounds():
    assert default_tapt_steps(["a"] * 10, lambda texts: [100 for _ in texts], 100) == 30  # 3 passes of 10 steps
    assert default_tapt_steps(["a"], lambda texts: [1 for _ in texts], 100) == 20  # at least
    assert default_tapt_steps(["a"] * 10**6, lambda texts: [100 for _ in texts], 100) == 2000  # at most


def test_the_adaptive_study_plans_its_runs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    plan = plan_study(*load_study(root / "configs" / "study-adaptive.yaml", [f"run_dir={tmp_path}"]))
    # general 2 seeds; general+TAPT and TAPT only 2 seeds x 3 tasks; general+DAPT 2 seeds
    assert len(plan.pretrains) == 2 + 6 + 6 + 2
    # none 3 tasks x 1 fine-tuning seed; the others x 2 pre-training seeds; DAPT on debian_summaries only
    assert len(plan.finetunes) == 3 + 6 + 6 + 6 + 2
    dapt = [r for r in plan.pretrains if r.cell.name == "general + DAPT"]
    assert all(r.cfg.data.sources == ["debian_descriptions"] and r.init.cell.name == "general" for r in dapt)
    assert not tmp_path.joinpath("cells").exists()


def test_a_data_key_a_cell_sets_gives_it_shards_of_its_own(tmp_path, small_corpus, tokenizer_dir):
    cells = [{"name": "a"}, {"name": "b", "set": {"data.text_field": "body"}}, {"name": "c", "set": {"seed": 3}}]
    plan = plan_study(*load_study(write_study(tmp_path, small_corpus, tokenizer_dir, cells)))
    shards = [run.cfg.data.shards_dir for run in plan.pretrains]
    assert shards[0] != shards[1] and shards[0] == shards[2]
