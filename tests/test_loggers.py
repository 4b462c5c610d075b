"""`train.loggers`: a pre-training and a fine-tune tracked in MLflow's local store (read back with MlflowClient),
a study's runs in one experiment, a pre-training in an offline W&B run (read back with wandb's own reader), a
tracker that cannot continue its run on resume, and one-line errors for unknown or missing trackers."""

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
from ptlab.train.loggers import MLFLOW_RUN_FILE, WANDB_RUN_FILE, MlflowLogger, Tracking, WandbLogger
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


def wandb_runs(run_dir: Path) -> list[dict]:
    """The offline W&B runs under RUN_DIR/wandb in the order they started, each read back from its transaction log
    (run-ID.wandb) with wandb's own reader, `wandb leet inspect --json`: its id, config, history rows by step
    (without wandb's own _runtime/_step/_timestamp), summary and exit code."""
    runs = []
    for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        records = [json.loads(line) for line in out.splitlines()]
        run = next(r["run"] for r in records if r["type"] == "run")
        history = {r["history"].get("step", {}).get("num", 0): {k: v for k, v in r["history"]["item"].items()
                                                                 if not k.startswith("_")}
                   for r in records if r["type"] == "history"}
        summary = {k: v for r in records if r["type"] == "summary" for k, v in r["summary"]["update"].items()}
        runs.append({"id": run["run_id"], "start": run["start_time"], "config": run["config"]["update"],
                     "history": history, "summary": summary,
                     "exit_code": next(r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit")})
    return sorted(runs, key=lambda run: run["start"])


def metrics_by_step(run_dir: Path, after: int = -1) -> dict[int, dict]:
    """metrics.jsonl's numbers per step after `after`, the records of one step merged (as W&B merges them)."""
    rows: dict[int, dict] = {}
    for record in read_metrics(run_dir):
        if "event" not in record and record["step"] > after:
            rows.setdefault(record["step"], {}).update(
                {k: v for k, v in record.items()
                 if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return rows


def test_a_pretraining_is_an_offline_wandb_run_with_the_history_of_metrics_jsonl(tmp_path, small_corpus,
                                                                                 tokenizer_dir, capsys):
    pytest.importorskip("wandb")
    from ptlab.train.loop import pretrain

    config = write_config(tmp_path / "lab", small_corpus, tokenizer_dir, max_steps=8, eval_every=4,
                          checkpoint_every=4, log_every=2)
    result = pretrain(load_config(config, ["train.loggers=[wandb]"]), show_progress=False)
    [run] = wandb_runs(result.run_dir)
    assert run["history"] == metrics_by_step(result.run_dir) and sorted(run["history"]) == [0, 2, 4, 6, 8]
    assert run["summary"]["val_loss"] == result.final_val_loss
    assert run["summary"]["checkpoint"] == str(result.checkpoint) and run["exit_code"] == 0
    assert run["config"]["model"]["d_model"] == 32 and run["config"]["train"]["loggers"] == ["wandb"]
    assert json.loads((result.run_dir / WANDB_RUN_FILE).read_text())["run_id"] == run["id"]
    assert "could not resume" not in capsys.readouterr().err

    # resumed for 4 more steps: the same W&B run continues (offline, a second log under the same id)
    pretrain(load_config(config, ["train.loggers=[wandb]", "train.max_steps=12"]), show_progress=False)
    _, second = wandb_runs(result.run_dir)
    assert second["id"] == run["id"] and second["history"] == metrics_by_step(result.run_dir, after=8)
    assert "could not resume" not in capsys.readouterr().err

    # the run file lost: one warning line, and a new W&B run holds the rest
    (result.run_dir / WANDB_RUN_FILE).unlink()
    pretrain(load_config(config, ["train.loggers=[wandb]", "train.max_steps=14"]), show_progress=False)
    *_, third = wandb_runs(result.run_dir)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ptlab: warning")]
    assert warnings == [f"ptlab: warning: wandb could not resume the earlier attempt's run (no {WANDB_RUN_FILE} "
                        f"from the earlier attempt); started a new run {third['id']}"]
    assert third["id"] != run["id"] and third["history"] == metrics_by_step(result.run_dir, after=12)


def fake_wandb(monkeypatch, calls: list, known_runs: tuple = ()):
    """A wandb module that records its calls; `init(resume="must")` fails for a run id not in `known_runs`, as
    an online W&B server does for a run it does not have."""

    class FakeRun:
        summary: dict = {}

        def __init__(self, run_id):
            self.id = run_id

        def log(self, metrics, step):
            calls.append(("log", step, metrics))

        def finish(self, exit_code):
            calls.append(("finish", exit_code))

    def init(**kwargs):
        calls.append(("init", kwargs))
        if kwargs.get("resume") == "must" and kwargs["id"] not in known_runs:
            raise RuntimeError(f"run {kwargs['id']} not found\n(a traceback's second line)")
        return FakeRun(kwargs.get("id") or f"new{len(calls)}")

    fake = types.ModuleType("wandb")
    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)


def test_wandb_runs_offline_unless_wandb_mode_says_otherwise(monkeypatch, tmp_path):
    calls = []
    fake_wandb(monkeypatch, calls)
    for mode, expected in ((None, "offline"), ("online", "online")):
        if mode:
            monkeypatch.setenv("WANDB_MODE", mode)
        logger = WandbLogger(Tracking(tmp_path / "lab" / "run", tags=["a=b"]), None)
        logger.start({"train": {"lr": 0.1}}, "run")
        logger.log(5, {"loss": 2.0})
        logger.finish("/ckpt", "FINISHED")
        init = calls[-3][1]
        assert (init["mode"], init["project"], init["name"], init["tags"]) == (expected, "lab", "run", ["a=b"])
        assert calls[-2:] == [("log", 5, {"loss": 2.0}), ("finish", 0)]
        assert logger.run.summary["checkpoint"] == "/ckpt"


def test_an_online_wandb_run_the_server_cannot_resume_is_one_warning_line_and_a_new_run(monkeypatch, tmp_path,
                                                                                       capsys):
    monkeypatch.setenv("WANDB_MODE", "online")  # offline, W&B continues any id; online, the server may refuse
    run_dir = tmp_path / "lab" / "run"
    calls = []
    fake_wandb(monkeypatch, calls, known_runs=("kept",))
    (run_dir).mkdir(parents=True)
    (run_dir / WANDB_RUN_FILE).write_text(json.dumps({"run_id": "kept"}))
    WandbLogger(Tracking(run_dir), resume_step=4).start({}, "run")
    assert [(c[1].get("id"), c[1].get("resume")) for c in calls] == [("kept", "must")]
    assert capsys.readouterr().err == ""

    (run_dir / WANDB_RUN_FILE).write_text(json.dumps({"run_id": "gone"}))
    logger = WandbLogger(Tracking(run_dir), resume_step=4)
    logger.start({}, "run")
    assert [(c[1].get("id"), c[1].get("resume")) for c in calls[1:]] == [("gone", "must"), (None, None)]
    assert capsys.readouterr().err == ("ptlab: warning: wandb could not resume the earlier attempt's run (run gone "
                                       f"not found); started a new run {logger.run.id}\n")
    assert json.loads((run_dir / WANDB_RUN_FILE).read_text()) == {"run_id": logger.run.id}


def test_an_mlflow_run_that_cannot_be_resumed_is_one_warning_line_and_a_new_run(tmp_path, capsys):
    run_dir = tmp_path / "exp" / "r1"
    run_dir.mkdir(parents=True)

    def attempt(resume_step):
        logger = MlflowLogger(Tracking(run_dir), resume_step)
        logger.start({"model": {"d_model": 8}}, "r1")
        logger.finish(None, "KILLED")
        return logger.run_id, capsys.readouterr().err

    first, _ = attempt(None)
    assert attempt(5) == (first, "")  # continued, silently
    client_for(tmp_path / "exp" / "mlruns").delete_run(first)
    second, err = attempt(5)
    assert second != first and err == (f"ptlab: warning: mlflow could not resume the earlier attempt's run (run "
                                       f"{first} is deleted); started a new run {second}\n")
    (run_dir / MLFLOW_RUN_FILE).unlink()
    third, err = attempt(5)
    assert third not in (first, second) and err == (
        f"ptlab: warning: mlflow could not resume the earlier attempt's run (no {MLFLOW_RUN_FILE} from the earlier "
        f"attempt); started a new run {third}\n")
    assert json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"] == third


def test_the_deprecated_tensorboard_switch_still_adds_or_removes_tensorboard():
    assert TrainConfig().logger_names() == ["tensorboard"]
    assert TrainConfig(tensorboard=False).logger_names() == []
    assert TrainConfig(loggers=["mlflow"], tensorboard=True).logger_names() == ["tensorboard", "mlflow"]
    assert TrainConfig(loggers=["tensorboard", "mlflow"], tensorboard=False).logger_names() == ["mlflow"]
    assert FinetuneConfig().train.logger_names() == []


def test_the_mlflow_run_file_is_valid_json_beside_the_metrics(tmp_path):
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
