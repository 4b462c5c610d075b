"""`ptlab study`: plans, architectures matched the way T5's Table 2 does, tables, and restart after a kill."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import ptlab.downstream.finetune
import ptlab.train.loop
from ptlab.errors import PtlabError
from ptlab.lab.study import cell_figures, example_lengths, load_study, plan_study, read_results, run_study

ROOT = Path(__file__).resolve().parents[1]



def micro_study(tmp_path: Path, small_corpus, tokenizer_dir, cells=None) -> Path:
    base = {"model": {"family": "t5", "d_model": 64, "d_kv": 16, "d_ff": 128, "num_heads": 4, "num_layers": 2},
            "objective": {"name": "span_corruption", "inputs_length": 64},
            "data": {"train_files": [str(small_corpus["train"])], "validation_files": [str(small_corpus["validation"])],
                     "tokenizer": str(tokenizer_dir), "vocab_size": 2000},
            "train": {"max_steps": 6, "batch_size": 4, "warmup_steps": 2, "eval_every": 3, "eval_batches": 1,
                      "precision": "fp32", "tensorboard": False, "threads": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    study = {"run_dir": str(tmp_path / "study"), "base": "base.yaml", "seeds": [0, 1],
             "tasks": [{"name": "rt_polarity", "max_train_examples": 24, "max_eval_examples": 12,
                        "max_input_length": 32}],
             "finetune": {"train": {"batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "eval_every": 3,
                                    "precision": "fp32", "tensorboard": False}, "epochs": 1},
             "cells": cells or [{"name": "no pre-training", "pretrain": False},
                                {"name": "span corruption"},
                                {"name": "deshuffling", "set": {"objective.name": "deshuffle"}}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_architecture_cells_match_parameters_and_flops_as_t5_table_2(tmp_path, small_corpus, tokenizer_dir):
    cells = [{"name": n, "architecture": n} for n in ("encoder-decoder", "shared", "half-layers", "lm", "prefix-lm")]
    study, base_dir = load_study(micro_study(tmp_path, small_corpus, tokenizer_dir, cells))
    figures = {cell.name: cell_figures(cfg) for cell, cfg in plan_study(study, base_dir).cells}
    full = figures["encoder-decoder"]
    embedding = 2000 * 64 * 2  # input embedding and untied LM head
    p2 = full["parameters"] - embedding  # "2P": encoder and decoder
    assert figures["shared"]["parameters"] - embedding == pytest.approx(p2 / 2, rel=0.25)  # P
    assert figures["half-layers"]["parameters"] - embedding == pytest.approx(p2 / 2, rel=0.05)  # P
    assert figures["lm"]["parameters"] - embedding == pytest.approx(p2 / 2, rel=0.25)  # P
    assert figures["shared"]["flops_per_example"] == pytest.approx(full["flops_per_example"])  # M
    assert figures["half-layers"]["flops_per_example"] < 0.7 * full["flops_per_example"]  # about M/2
    # a decoder-only model reads inputs and targets as one sequence through one stack: about M, not counting the
    # LM head, which it also applies to the inputs (T5 counts the Transformer's FLOPs; here the head dominates)
    plan = plan_study(study, base_dir)
    inputs, targets = example_lengths(plan.cells[0][1])
    head = 3 * 2 * 64 * 2000
    assert figures["lm"]["flops_per_example"] - head * (inputs + targets) == pytest.approx(
        full["flops_per_example"] - head * targets, rel=0.25)
    families = {cell.name: (cfg.model.family, cfg.model.prefix_lm) for cell, cfg in plan.cells}
    assert families["lm"] == ("llama", False) and families["prefix-lm"] == ("llama", True)


def test_a_killed_study_restarts_without_redoing_finished_work(tmp_path, small_corpus, tokenizer_dir, monkeypatch):
    study, base_dir = load_study(micro_study(tmp_path, small_corpus, tokenizer_dir))
    real_finetune, real_pretrain = ptlab.downstream.finetune.finetune, ptlab.train.loop.pretrain
    calls = {"finetune": [], "pretrain": []}

    def finetune(cfg, show_progress=True):
        calls["finetune"].append(cfg.run_dir)
        if len(calls["finetune"]) == 4:  # the second cell, after its pre-training and one fine-tune
            raise KeyboardInterrupt
        return real_finetune(cfg, show_progress)

    def pretrain(cfg, **kwargs):
        calls["pretrain"].append(cfg.run_dir)
        return real_pretrain(cfg, **kwargs)

    monkeypatch.setattr(ptlab.downstream.finetune, "finetune", finetune)
    monkeypatch.setattr(ptlab.train.loop, "pretrain", pretrain)
    with pytest.raises(KeyboardInterrupt):
        run_study(plan_study(study, base_dir), show_progress=False)
    assert len(read_results(Path(study.run_dir) / "results.jsonl")) == 3
    assert len(calls["pretrain"]) == 1

    calls["finetune"].clear()
    calls["pretrain"].clear()
    run_study(plan_study(study, base_dir), show_progress=False)
    # the finished cell is not touched; the killed cell keeps its pre-training and its finished fine-tune
    assert len(calls["finetune"]) == 1 + 2
    assert calls["pretrain"] == [str(Path(study.run_dir) / "cells" / "deshuffling" / "pretrain")]
    rows = read_results(Path(study.run_dir) / "results.jsonl")
    assert sorted((r["cell"], r["seed"]) for r in rows) == sorted(
        (c, s) for c in ("no pre-training", "span corruption", "deshuffling") for s in (0, 1))

    run_study(plan_study(study, base_dir), show_progress=False)  # all done: nothing runs
    assert len(calls["finetune"]) == 3
    table = (Path(study.run_dir) / "table.md").read_text()
    assert "| span corruption | encoder-decoder | span_corruption |" in table
    with open(Path(study.run_dir) / "table.csv", newline="") as f:
        records = list(csv.DictReader(f))
    scores = [r["score"] for r in rows if r["cell"] == "deshuffling"]
    deshuffle = next(r for r in records if r["cell"] == "deshuffling")
    assert float(deshuffle["rt_polarity_mean"]) == pytest.approx(sum(scores) / 2)
    assert float(deshuffle["average"]) == pytest.approx(sum(scores) / 2)  # one task: its mean
    assert (Path(study.run_dir) / "chart.png").stat().st_size > 1000


def test_a_single_seed_study_keeps_its_results_when_pre_training_seeds_are_added(tmp_path, small_corpus,
                                                                                 tokenizer_dir, monkeypatch):
    study, base_dir = load_study(micro_study(tmp_path, small_corpus, tokenizer_dir))
    run_dir = Path(study.run_dir)
    cells = {"no pre-training": "no-pre-training", "span corruption": "span-corruption", "deshuffling": "deshuffling"}
    # a finished study as ptlab wrote it before pre-training seeds: rows without pretrain_seed, cells/<cell>/pretrain
    rows = [{"cell": cell, "task": "rt_polarity", "seed": seed, "metric": "accuracy", "score": 50.0 + seed,
             "scores": {"accuracy": 50.0 + seed}, "split": "test", "finetune_seconds": 1.0, "pretrain_seconds": 2.0,
             "pretrain_val_loss": None} for cell in cells for seed in (0, 1)]
    run_dir.mkdir(parents=True)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for slug in ("span-corruption", "deshuffling"):
        (run_dir / "cells" / slug / "pretrain").mkdir(parents=True)
        (run_dir / "cells" / slug / "pretrain" / "pretrain-done.json").write_text(json.dumps(
            {"checkpoint": str(run_dir / "cells" / slug / "pretrain"), "final_val_loss": None, "seconds": 2.0}))
    calls = {"finetune": [], "pretrain": []}

    def finetune(cfg, show_progress=True):
        calls["finetune"].append(Path(cfg.run_dir).relative_to(run_dir / "cells").as_posix())
        return SimpleNamespace(test={"accuracy": 60.0}, validation={"accuracy": 60.0}, seconds=1.0)

    def pretrain(cfg, **kwargs):
        calls["pretrain"].append(Path(cfg.run_dir).relative_to(run_dir / "cells").as_posix())
        return SimpleNamespace(interrupted=None, checkpoint=Path(cfg.run_dir), final_val_loss=None, final_val_bpb=None,
                               train_seconds=2.0, tokens_per_second=1.0, parameters=1)

    monkeypatch.setattr(ptlab.downstream.finetune, "finetune", finetune)
    monkeypatch.setattr(ptlab.train.loop, "pretrain", pretrain)
    run_study(plan_study(study, base_dir), show_progress=False, out=io.StringIO())
    assert calls == {"finetune": [], "pretrain": []}  # all done

    study, base_dir = load_study(micro_study(tmp_path, small_corpus, tokenizer_dir), ["pretrain_seeds=[0, 1]"])
    run_study(plan_study(study, base_dir), show_progress=False, out=io.StringIO())
    # the base config's seed (0) is the single-seed study's pre-training: only seed 1 runs
    assert calls["pretrain"] == ["span-corruption/pretrain-seed1", "deshuffling/pretrain-seed1"]
    assert calls["finetune"] == [f"{c}/rt_polarity-seed{s}-pretrain-seed1" for c in ("span-corruption", "deshuffling")
                                 for s in (0, 1)]
    new = read_results(run_dir / "results.jsonl")[len(rows):]
    assert {(r["cell"], r["pretrain_seed"]) for r in new} == {("span corruption", 1), ("deshuffling", 1)}
    with open(run_dir / "table.csv", newline="") as f:
        records = {r["cell"]: r for r in csv.DictReader(f)}
    assert float(records["deshuffling"]["rt_polarity_mean"]) == pytest.approx((50 + 51 + 60 + 60) / 4)
    assert int(records["no pre-training"]["rt_polarity_seeds"]) == 2  # no pre-training seed to vary


def test_study_config_errors_are_one_line_and_name_the_key(tmp_path, small_corpus, tokenizer_dir):
    path = micro_study(tmp_path, small_corpus, tokenizer_dir, [{"name": "x", "architecture": "encoder-only"}])
    with pytest.raises(PtlabError, match=r"cells\[0\]\.architecture"):
        load_study(path)
    path = micro_study(tmp_path, small_corpus, tokenizer_dir, [{"name": "x", "set": {"objective.name": "spam"}}])
    study, base_dir = load_study(path)
    with pytest.raises(PtlabError, match="study cell 'x'"):
        plan_study(study, base_dir)
    result = subprocess.run([sys.executable, "-m", "ptlab", "study", str(path), "sized=small"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "did you mean 'size'" in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, small_corpus, tokenizer_dir):
    path = micro_study(tmp_path, small_corpus, tokenizer_dir)
    # overrides may follow options: argparse alone would reject `size=small` after `--dry-run`
    result = subprocess.run([sys.executable, "-m", "ptlab", "study", str(path), "--dry-run", "size=small"],
                            capture_output=True, text=True, check=True)
    assert "| deshuffling | encoder-decoder | deshuffle |" in result.stdout and "(size small)" in result.stdout
    assert "estimated total" in result.stdout
    assert not (tmp_path / "study").exists()


NOT_STUDY_GRIDS = {"study-incontext.yaml"}  # read by studies/incontext.py, not by `ptlab study`


def test_built_in_study_configs_load_and_scale_to_a_gpu_size():
    for path in sorted(p for p in (ROOT / "configs").glob("study-*.yaml") if p.name not in NOT_STUDY_GRIDS):
        study, base_dir = load_study(path)
        plan_study(study, base_dir)
    study, base_dir = load_study(ROOT / "configs" / "study-tiny.yaml", ["size=base", "common.train.device=cuda"])
    plan = plan_study(study, base_dir)
    model = plan.cells[1][1].model
    assert (model.d_model, model.num_layers, plan.cells[1][1].train.device) == (768, 12, "cuda")


@pytest.mark.slow
def test_the_smoke_study_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ptlab", "study", str(ROOT / "configs" / "study-smoke.yaml"),
                             f"run_dir={tmp_path / 'smoke'}", "--quiet"], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_results(tmp_path / "smoke" / "results.jsonl")
    assert len(rows) == 3 * 2 * 2
    assert all(0 <= r["score"] <= 100 for r in rows)
    assert "average" in (tmp_path / "smoke" / "table.md").read_text()
