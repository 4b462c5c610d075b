"""`ptlab scaling ladder` on a tiny ladder (3 sizes x 3 budgets of a one- or two-layer GPT-2, a few dozen steps
each): every branch is bit for bit the WSD run of its budget trained from scratch, decays to zero, and records the
right N, D and C in a points.csv that `ptlab scaling fit` reads; a rerun trains nothing, a lost point is retrained
alone; a bad ladder is one line with nothing written. And strategies as curves: two laws with a known crossing."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from ptlab.cli import main
from ptlab.errors import PtlabError
from ptlab.lab.scaling import Law, fit_law, read_runs, runs_from_records
from ptlab.lab.scaling.compare import Curve, compare, crossings, optimal_loss
from ptlab.lab.scaling.ladder import branch_step, load_ladder, parameter_counts, plan_ladder
from ptlab.models.flops import training_flops
from ptlab.train.loop import pretrain
from ptlab.train.optim import lr_factor
from ptlab.train.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SIZES = [{"name": "xs", "model": {"d_model": 16, "d_ff": 32, "num_layers": 1}},
         {"name": "s", "model": {"d_model": 24, "d_ff": 48, "num_layers": 1}},
         {"name": "m", "model": {"d_model": 32, "d_ff": 64, "num_layers": 2}}]
LENGTH = 32  # tokens a causal-LM example feeds the model; its raw chunk is one more
BATCH = 4


def tiny_ladder(path: Path, corpus, tokenizer_dir, **keys) -> Path:
    ladder = {"run_dir": str(path.parent / "ladder"), "base": str(ROOT / "configs" / "gpt2-tiny.yaml"),
              "common": {"data": {"train_files": [str(corpus["train"])],
                                  "validation_files": [str(corpus["validation"])],
                                  "tokenizer": str(tokenizer_dir), "vocab_size": 2000},
                         "objective": {"inputs_length": LENGTH},
                         # the recipe before Muon, whose tiny curves these tests' figures (one crossing) describe
                         "model": {"num_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": None,
                                   "zero_init_output": False},
                         "train": {"optimizer": "adamw", "lr": 1e-3, "embedding_lr": None, "weight_decay": 0.1,
                                   "batch_size": BATCH, "warmup_steps": 2, "decay_ratio": 0.25, "eval_every": 0,
                                   "eval_batches": 2, "checkpoint_every": 0, "log_every": 1, "precision": "fp32",
                                   "compile": False, "threads": 1, "peak_tflops": 1.0}},
              "tokens": [10 * BATCH * (LENGTH + 1), 20 * BATCH * (LENGTH + 1), 30 * BATCH * (LENGTH + 1)],
              "sizes": SIZES, "fit": {"bootstrap": 5}}
    ladder.update(keys)
    path.write_text(yaml.safe_dump(ladder), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ladder(tmp_path_factory, small_corpus, tokenizer_dir):
    """The tiny ladder, run once through the command line: (config path, plan, what it printed)."""
    path = tiny_ladder(tmp_path_factory.mktemp("ladder") / "ladder.yaml", small_corpus, tokenizer_dir)
    plan = plan_ladder(*load_ladder(path))
    return path, plan


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["scaling", "ladder", *map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def first_run(ladder):
    import contextlib
    import io

    path, plan = ladder
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["scaling", "ladder", str(path), "--quiet"])
    assert code == 0, err.getvalue()
    return out.getvalue()


def losses(run_dir) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["lr"]) for r in read_metrics(run_dir) if "loss" in r and "event" not in r}


def test_the_plan_branches_each_budget_where_its_schedule_leaves_the_stable_one(ladder):
    _, plan = ladder
    for rung in plan.cells[0].rungs:
        assert [p.steps for p in rung.points] == [10, 20, 30]
        for point in rung.points:
            train = point.cfg.train
            assert train.schedule == "wsd" and rung.stable.train.schedule == "constant"
            assert all(lr_factor(s, train) == lr_factor(s, rung.stable.train) for s in range(point.branch_step))
            assert lr_factor(point.branch_step, train) < 1
            assert point.branch_step == branch_step(rung.stable.train, train)


def test_a_branch_is_the_wsd_run_of_its_budget_trained_from_scratch(ladder, first_run, tmp_path):
    _, plan = ladder
    rung = plan.cells[0].rungs[1]
    point = rung.points[-1]
    straight = copy.deepcopy(point.cfg)
    straight.run_dir = str(tmp_path / "straight")
    result = pretrain(straight, show_progress=False, resume="never")
    branched, stable = losses(point.run_dir), losses(rung.stable.run_dir)
    assert branched == losses(straight.run_dir) and sorted(branched) == list(range(1, point.steps + 1))
    assert {s: v for s, v in branched.items() if s <= point.branch_step} == stable  # the stable run's own steps
    record = json.loads((point.run_dir / "point.json").read_text())
    assert record["val_bpb"] == result.final_val_bpb and record["val_loss"] == result.final_val_loss
    # fully decayed: the schedule ends at zero, and the last step took the last sliver of the decay
    peak = point.cfg.train.lr
    assert lr_factor(point.steps, point.cfg.train) == 0.0
    assert branched[point.steps][1] == record["final_lr"] == pytest.approx(peak / (point.steps - point.branch_step + 1))


def test_points_csv_records_n_d_c_and_reads_back(ladder, first_run):
    _, plan = ladder
    table = plan.run_dir / "points.csv"
    runs = read_runs(table)
    assert len(runs) == 9
    rows = {r["name"]: r for r in map(lambda p: json.loads((p.run_dir / "point.json").read_text()),
                                      plan.cells[0].points)}
    for point in plan.cells[0].points:
        record = rows[point.name]
        model = copy.deepcopy(point.cfg.model)
        model.vocab_size = 2000
        total, non_embedding = parameter_counts(model)
        head = 0 if model.tie_word_embeddings else 2000 * model.d_model  # an untied head counts as an embedding
        embeddings = 2000 * model.d_model + 64 * model.d_model + head  # tokens and learned positions
        assert (record["params_total"], record["params_non_embedding"]) == (total, total - embeddings)
        assert record["tokens"] == point.steps * BATCH * (LENGTH + 1)
        assert record["flops"] == point.steps * BATCH * training_flops(model, 0, LENGTH)
        i = runs.names.index(point.name)
        assert (runs.params[i], runs.tokens[i], runs.flops[i], runs.loss[i]) == (
            non_embedding, record["tokens"], record["flops"], record["val_bpb"])
    for name in ("fit.json", "fit.png", "predict.png"):
        assert (plan.run_dir / name).is_file()
    assert "L(N, D) = " in first_run and "compute-optimal allocation" in first_run and "m-3.96k" in first_run


def test_a_rerun_trains_nothing_and_a_lost_point_alone(ladder, first_run, capsys):
    path, plan = ladder
    markers = {p.name: (p.run_dir / "point.json").stat().st_mtime_ns for p in plan.cells[0].points}
    code, out, _ = run(capsys, path, "fit.bootstrap=0", "fit.holdout=0")
    assert code == 0 and "9/9 points done; 0 to train" in out
    assert markers == {p.name: (p.run_dir / "point.json").stat().st_mtime_ns for p in plan.cells[0].points}

    lost = plan.cells[0].rungs[0].points[1]  # as if killed before its last checkpoint
    before = json.loads((lost.run_dir / "point.json").read_text())
    (lost.run_dir / "point.json").unlink()
    final = lost.run_dir / "checkpoints" / f"step_{lost.steps:07d}"
    for file in final.iterdir():
        file.unlink()
    final.rmdir()
    code, out, _ = run(capsys, path, "fit.bootstrap=0", "fit.holdout=0")
    assert code == 0 and "8/9 points done; 1 to train" in out and f"done: ladder / {lost.name}" in out
    after = json.loads((lost.run_dir / "point.json").read_text())
    assert {k: v for k, v in after.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}


def test_a_ladder_whose_recipe_changed_does_not_reuse_runs_trained_under_the_old_one(ladder, first_run, capsys):
    path, plan = ladder
    code, out, err = run(capsys, path, "common.train.lr=0.002")
    size_dir = plan.cells[0].rungs[0].stable.run_dir.rsplit("/", 1)[0]
    assert code == 2 and out == ""
    assert err.strip().startswith("ptlab: error: ladder size 'xs':") and "train.lr 0.001, the ladder now sets 0.002" \
        in err and f"delete {size_dir} " in err and len(err.strip().splitlines()) == 1
    # bookkeeping (threads, logging, checkpoint cadence) does not change what a run computes: reused
    code, out, _ = run(capsys, path, "common.train.log_every=2", "fit.bootstrap=0", "fit.holdout=0")
    assert code == 0 and "9/9 points done; 0 to train" in out


@pytest.mark.parametrize("damaged, what", [("config.yaml", "not UTF-8 text"),
                                           ("point.json", "not a finished point's record")])
def test_a_finished_point_with_a_damaged_file_is_refused_not_taken(ladder, first_run, capsys, damaged, what):
    """A point the ladder would take as finished never reaches the trainer's checks: a saved config it cannot
    read, or a record that is not one, is a one-line error naming the file, not a point reused on trust."""
    path, plan = ladder
    file = plan.cells[0].rungs[0].points[0].run_dir / damaged
    kept = file.read_bytes()
    try:
        file.write_bytes(b"\xff\xfe{" + kept[:10])
        code, out, err = run(capsys, path, "fit.bootstrap=0", "fit.holdout=0")
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert str(file) in err and what in err and "delete" in err
    finally:
        file.write_bytes(kept)


def test_the_dry_run_prints_the_points_and_writes_nothing(tmp_path, small_corpus, tokenizer_dir, capsys):
    path = tiny_ladder(tmp_path / "ladder.yaml", small_corpus, tokenizer_dir)
    code = main(["scaling", "ladder", str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "3 sizes, 9 points" in out and "| ladder | m |" in out and "estimated total" in out
    assert not (tmp_path / "ladder").exists()


@pytest.mark.parametrize("keys, message", [
    ({"sizes": SIZES[:2]}, "config key 'sizes': 2 size(s)"),
    ({"tokens": [1320, 2640]}, "config key 'tokens': 2 distinct budget(s)"),
    ({"tokens": [40, 2640, 3960]}, "no room to decay"),
    ({"tokens": [1320, 1330, 3960]}, "the same 10 steps"),
    ({"sizes": [SIZES[0], SIZES[0], SIZES[2]]}, "'sizes[1].name': 'xs' is used twice"),
    ({"fit": {"params": "all"}}, "config key 'fit.params': unknown 'all'"),
    ({"fit": {"holdout": 5}}, "config key 'fit.holdout'"),
    ({"base": "missing.yaml"}, "config key 'base': not found"),
    ({"sizes": [{"name": "xs", "model": {"d_modle": 16}}, *SIZES[1:]]}, "unknown config key 'model.d_modle'"),
    ({"cells": [{"name": "x", "objective": "span_corruptoin"}]}, "span_corruptoin"),
])
def test_a_bad_ladder_is_one_line_and_writes_nothing(tmp_path, small_corpus, tokenizer_dir, capsys, keys, message):
    path = tiny_ladder(tmp_path / "ladder.yaml", small_corpus, tokenizer_dir, **keys)
    code, out, err = run(capsys, path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------- strategies as curves


def law_records(law: Law, flops_per_param_token: float = 6.0) -> list[dict]:
    return [{"params": n, "tokens": d, "flops": flops_per_param_token * n * d, "loss": float(law.loss(n, d))}
            for n in np.geomspace(1e6, 1e8, 5) for d in np.geomspace(1e8, 1e10, 5)]


# B starts higher, falls faster and ends lower: the two compute-optimal curves cross once
LAW_A = Law(1.8, 300.0, 300.0, 0.3, 0.3)
LAW_B = Law(1.7, 2000.0, 2000.0, 0.4, 0.4)


def brute_force_optimal_loss(law: Law, flops: float) -> float:
    params = np.geomspace(1e3, 1e15, 20001)
    return float(law.loss(params, flops / (6 * params)).min())


def test_crossings_of_two_known_laws_match_a_brute_force_search():
    a = Curve("a", fit_law(runs_from_records(law_records(LAW_A)), 0), 6.0)
    b = Curve("b", fit_law(runs_from_records(law_records(LAW_B)), 0), 6.0)
    found = crossings(a, b, 1e12, 1e26, LAW_A, LAW_B)
    assert len(found) == 1
    difference = lambda c: brute_force_optimal_loss(LAW_A, c) - brute_force_optimal_loss(LAW_B, c)  # noqa: E731
    assert difference(found[0] / 1.05) * difference(found[0] * 1.05) < 0  # the sign changes right there
    assert optimal_loss(LAW_A, 6.0, found[0]) == pytest.approx(optimal_loss(LAW_B, 6.0, found[0]), rel=1e-9)


def test_compare_finds_the_crossing_of_fitted_laws_with_intervals():
    curves = [Curve.of(name, fit_law(runs_from_records(law_records(law)), 20, seed=0))
              for name, law in (("a", LAW_A), ("b", LAW_B))]
    comparison = compare(curves)
    truth = crossings(curves[0], curves[1], 1e12, 1e26, LAW_A, LAW_B)[0]
    (crossing,) = comparison.crossings
    assert crossing.flops[0] == pytest.approx(truth, rel=0.02)
    assert crossing.lower_below == "a" and crossing.bootstrap_share == 1.0  # b, the steeper, wins beyond
    assert crossing.interval[0] <= crossing.flops[0] <= crossing.interval[1]
    data = comparison.to_json()
    assert [c["name"] for c in data["curves"]] == ["a", "b"]
    assert data["curves"][1]["compute_exponent"]["value"] == pytest.approx(0.2, rel=1e-3)  # 0.4 * 0.4 / 0.8


def test_curves_that_do_not_cross_say_so():
    shifted = Law(LAW_A.E + 0.1, LAW_A.A, LAW_A.B, LAW_A.alpha, LAW_A.beta)
    curves = [Curve.of(name, fit_law(runs_from_records(law_records(law)), 0)) for name, law in
              (("a", LAW_A), ("shifted", shifted))]
    (crossing,) = compare(curves).crossings
    assert crossing.flops == [] and crossing.lower_below == "a"


def test_k_moves_a_curve_along_compute():
    """With k FLOPs per parameter and token, L*(C) is Chinchilla's curve at 6C/k."""
    assert optimal_loss(LAW_A, 12.0, 2e20) == pytest.approx(optimal_loss(LAW_A, 6.0, 1e20), rel=1e-12)
    assert Curve.of("a", fit_law(runs_from_records(law_records(LAW_A, 9.0)), 0)).flops_per_param_token == 9.0


def test_compare_from_the_command_line(tmp_path, capsys):
    tables = []
    for name, law in (("a", LAW_A), ("b", LAW_B)):
        folder = tmp_path / name
        folder.mkdir()
        rows = law_records(law)
        lines = ["params,tokens,flops,loss"] + [f"{r['params']},{r['tokens']},{r['flops']},{r['loss']}" for r in rows]
        (folder / "points.csv").write_text("\n".join(lines) + "\n")
        tables.append(str(folder / "points.csv"))
    out_json = tmp_path / "compare.json"
    assert main(["scaling", "compare", *tables, "--bootstrap", "0", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "a and b cross at C = " in printed
    assert [c["name"] for c in json.loads(out_json.read_text())["curves"]] == ["a", "b"]

    out_json.unlink()
    assert main(["scaling", "compare", tables[0], "--json", str(out_json)]) == 2
    err = capsys.readouterr().err
    assert "two tables or more" in err and len(err.strip().splitlines()) == 1 and not out_json.exists()


def test_a_comparison_needs_distinct_names():
    fit = fit_law(runs_from_records(law_records(LAW_A)), 0)
    with pytest.raises(PtlabError, match="same name"):
        compare([Curve.of("a", fit), Curve.of("a", fit)])


def test_a_strategies_ladder_fits_a_law_per_cell_and_compares_them(tmp_path, small_corpus, tokenizer_dir, capsys):
    cells = [{"name": "lm", "objective": "causal_lm", "family": "gpt2"},
             {"name": "span", "objective": "span_corruption", "family": "t5"}]
    path = tiny_ladder(tmp_path / "ladder.yaml", small_corpus, tokenizer_dir, cells=cells,
                       sizes=[{**s, "model": {**s["model"], "num_layers": 1}} for s in SIZES])
    code, out, err = run(capsys, path, "--jobs", "2", "fit.holdout=0")
    assert code == 0, err
    run_dir = tmp_path / "ladder"
    for cell in ("lm", "span"):
        assert len(read_runs(run_dir / "cells" / cell / "points.csv")) == 9
    data = json.loads((run_dir / "compare.json").read_text())
    assert [c["name"] for c in data["curves"]] == ["lm", "span"] and len(data["crossings"]) == 1
    assert "strategies as scaling curves" in out and "objectives differ" in out
    assert all(math.isfinite(c["compute_exponent"]["value"]) for c in data["curves"])
