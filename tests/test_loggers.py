"""`train.loggers`: a pre-training and a fine-tune tracked in MLflow's local store (read back with MlflowClient),
a study's runs in one experiment, W&B offline by default, and one-line errors for unknown or missing trackers."""

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from ptlab.config import FinetuneConfig, TrainConfig, load_config
from ptlab.errors import PtlabError
from ptlab.train.loggers import Tracking, WandbLogger
from ptlab.train.runlog import read_metrics

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient
from test_finetune import custom_config
from test_trainer import write_config


@pytest.fixture(autouse=True)
def _no_outside_tracking(monkeypatch):
    """The tests' own stores only: a user's MLflow server or W&B mode must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def client_for(store: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=store.as_uri())


def only_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_a_20_step_pretraining_is_an_mlflow_run_with_config_metrics_and_checkpoint(tmp_path, small_corpus,
                                                                                   tokenizer_dir):
    from ptlab.train.loop import pretrain

    work = tmp_path / "runs"
    config = write_config(work, small_corpus, tokenizer_dir, max_steps=20, eval_every=10, checkpoint_every=0,
                          log_every=2)
    result = pretrain(load_config(config, ["train.loggers=[mlflow]"]), show_progress=False)
    client = client_for(work / "mlruns")  # the default store: beside the run directory
    run = only_run(client, "runs")  # the default experiment: the run directory's parent
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.d_model"] == "32" and params["model.family"] == "t5"
    assert params["train.max_steps"] == "20" and params["objective.name"] == "span_corruption"
    assert params["train.loggers"] == "['mlflow']"
    records = [r for r in read_metrics(result.run_dir) if "event" not in r]
    expected_loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    logged_loss = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert logged_loss == expected_loss and [s for s, _ in logged_loss] == list(range(2, 21, 2))
    expected_val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")) == \
        expected_val + [(20, result.final_val_loss)]  # the end record's final score at the last step
    assert run.data.tags["checkpoint"] == str(result.checkpoint)
    assert run.data.tags["ptlab.parameters"] == str(result.parameters)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifacts == ["config.yaml"]  # the config, never the weights
    logged_config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl")))
    assert yaml.safe_load(logged_config.read_text())["train"]["max_steps"] == 20
    assert not (result.run_dir / "tensorboard").exists()  # loggers replaced the default [tensorboard]

    # resumed for 4 more steps: the same MLflow run continues
    more = pretrain(load_config(config, ["train.loggers=[mlflow]", "train.max_steps=24"]), show_progress=False)
    again = only_run(client, "runs")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == 24
    assert again.data.tags["checkpoint"] == str(more.checkpoint) != str(result.checkpoint)


def test_a_finetune_logs_its_scores_and_best_checkpoint(tmp_path, tokenizer_dir):
    from ptlab.downstream.finetune import finetune

    store = tmp_path / "store"
    cfg = load_config(custom_config(tmp_path, tokenizer_dir), [
        "model.d_model=32", "model.d_ff=64", "model.num_heads=2", "task.metrics=[accuracy]",
        "task.max_eval_examples=16", "max_steps=6", "train.batch_size=8", "train.eval_every=3", "train.log_every=1",
        "train.threads=1", "train.loggers=[mlflow]", f"train.tracking_uri={store.as_uri()}",
        "train.experiment=sentiment", "train.tags=[team=nlp, smoke]"], FinetuneConfig)
    result = finetune(cfg, show_progress=False)
    client = client_for(store)
    run = only_run(client, "sentiment")
    assert run.data.params["task.target_field"] == "verdict"
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.test["accuracy"])
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")} == {3, 6}
    assert run.data.tags["checkpoint"] == str(tmp_path / "run" / "best")
    assert run.data.tags["team"] == "nlp" and run.data.tags["smoke"] == "true"


def test_a_study_tracks_its_cells_as_runs_of_one_experiment(tmp_path, small_corpus, tokenizer_dir):
    from test_study import micro_study

    from ptlab.lab.study import load_study, plan_study, run_study

    path = micro_study(tmp_path, small_corpus, tokenizer_dir, cells=[{"name": "span corruption"}])
    study, base_dir = load_study(path, ["seeds=[3]", "common.train.loggers=[mlflow]",
                                        "finetune.train.loggers=[mlflow]", "finetune.max_steps=3",
                                        "common.train.max_steps=3"])
    run_study(plan_study(study, base_dir), show_progress=False, out=io.StringIO())
    client = client_for(tmp_path / "study" / "mlruns")
    experiment = client.get_experiment_by_name("study")  # named after the study's directory
    runs = {r.info.run_name: r.data.tags for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"span-corruption/pretrain", "span-corruption/rt_polarity-seed3"}
    assert runs["span-corruption/pretrain"]["cell"] == "span corruption"
    tags = runs["span-corruption/rt_polarity-seed3"]
    assert (tags["cell"], tags["task"], tags["seed"]) == ("span corruption", "rt_polarity", "3")


def test_unknown_or_repeated_loggers_are_one_line_config_errors(tmp_path, small_corpus, tokenizer_dir):
    config = write_config(tmp_path, small_corpus, tokenizer_dir)
    for value, words in (("[mlflow, comet]", ("'comet'", "known: tensorboard, mlflow, wandb")),
                         ("[mlflow, mlflow]", ("twice",))):
        with pytest.raises(PtlabError) as err:
            load_config(config, [f"train.loggers={value}"])
        assert "config key 'train.loggers'" in str(err.value) and "\n" not in str(err.value)
        assert all(word in str(err.value) for word in words)
    run = subprocess.run([sys.executable, "-m", "ptlab", "pretrain", "--config", str(config), "--quiet",
                          "train.loggers=[comet]"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "train.loggers" in run.stderr


def test_wandb_missing_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path, small_corpus, tokenizer_dir):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if it were not installed
    with pytest.raises(PtlabError) as err:
        load_config(write_config(tmp_path, small_corpus, tokenizer_dir), ["train.loggers=[wandb]"])
    assert str(err.value) == "config key 'train.loggers': wandb is not installed; pip install 'ptlab[wandb]'"


def test_wandb_runs_offline_unless_wandb_mode_says_otherwise(monkeypatch, tmp_path):
    calls = []

    class FakeRun:
        summary: dict = {}

        def log(self, metrics, step):
            calls.append(("log", step, metrics))

        def finish(self, exit_code):
            calls.append(("finish", exit_code))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for mode, expected in ((None, "offline"), ("online", "online")):
        if mode:
            monkeypatch.setenv("WANDB_MODE", mode)
        logger = WandbLogger(Tracking(tmp_path / "lab" / "run", tags=["a=b"]), None)
        logger.start({"train": {"lr": 0.1}}, "run")
        logger.log(5, {"loss": 2.0})
        logger.finish("/ckpt", "FINISHED")
        init = calls[-3][1]
        assert (init["mode"], init["project"], init["name"], init["tags"]) == (expected, "lab", "run", ["a=b"])
        assert calls[-2:] == [("log", 5, {"loss": 2.0}), ("finish", 0)] and FakeRun.summary["checkpoint"] == "/ckpt"


def test_the_deprecated_tensorboard_switch_still_adds_or_removes_tensorboard():
    assert TrainConfig().logger_names() == ["tensorboard"]
    assert TrainConfig(tensorboard=False).logger_names() == []
    assert TrainConfig(loggers=["mlflow"], tensorboard=True).logger_names() == ["tensorboard", "mlflow"]
    assert TrainConfig(loggers=["tensorboard", "mlflow"], tensorboard=False).logger_names() == ["mlflow"]
    assert FinetuneConfig().train.logger_names() == []


def test_the_mlflow_run_file_is_valid_json_beside_the_metrics(tmp_path):
    from ptlab.train.loggers import MLFLOW_RUN_FILE, MlflowLogger

    run_dir = tmp_path / "exp" / "r1"
    run_dir.mkdir(parents=True)
    logger = MlflowLogger(Tracking(run_dir), None)
    logger.start({"model": {"d_model": 8}}, "r1")
    logger.finish(None, "FAILED")
    saved = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())
    assert saved["tracking_uri"] == (tmp_path / "exp" / "mlruns").as_uri()
    assert client_for(tmp_path / "exp" / "mlruns").get_run(saved["run_id"]).info.status == "FAILED"


def test_a_run_that_dies_of_an_exception_ends_as_failed_in_mlflow(tmp_path):
    script = ("import sys\nfrom ptlab.config import Config\nfrom ptlab.train.runlog import MetricsLog\n"
              "cfg = Config(run_dir=sys.argv[1])\ncfg.train.loggers = ['mlflow']\n"
              "log = MetricsLog(cfg.run_dir, config=cfg)\nlog.write({'step': 1, 'loss': 2.5})\n"
              "raise RuntimeError('the loop died')\n")
    died = subprocess.run([sys.executable, "-c", script, str(tmp_path / "exp" / "r1")], capture_output=True,
                          text=True, timeout=120)
    assert died.returncode == 1 and "the loop died" in died.stderr
    run = only_run(client_for(tmp_path / "exp" / "mlruns"), "exp")
    assert run.info.status == "FAILED" and run.data.metrics == {"loss": 2.5}
