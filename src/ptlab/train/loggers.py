"""Experiment trackers behind `train.loggers`: TensorBoard, MLflow and Weights & Biases.

Every tracker has the same four calls, made by `MetricsLog` (which also writes metrics.jsonl, the record of truth):
`start(config, run_name)` once, `log(step, metrics)` per metrics record, `event(step, name, fields)` per event
record (start, resume, skipped_step, interrupted, end, ...), and `finish(checkpoint, status)` once.

MLflow writes to `train.tracking_uri`, else $MLFLOW_TRACKING_URI, else a local file store `mlruns/` beside the
run directory; W&B runs offline unless $WANDB_MODE says otherwise. Neither needs a network by default.

A resumed run continues the tracked run its earlier attempt started (its id is kept in the run directory); when
that run cannot be continued, one warning line says so and a new tracked run is started.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptlab.config import check_logger_installed
from ptlab.errors import PtlabError
from ptlab.files import write_text_atomic

MLFLOW_RUN_FILE = "mlflow-run.json"  # the run id, so that a resumed run continues its MLflow run
WANDB_RUN_FILE = "wandb-run.json"  # the same for W&B


@dataclass
class Tracking:
    """Where and under which names a run is tracked."""

    run_dir: Path
    experiment: str = ""  # "": the name of run_dir's parent directory
    run_name: str = ""  # "": the name of run_dir
    tracking_uri: str = ""  # MLflow; "": $MLFLOW_TRACKING_URI, else file store RUN_DIR/../mlruns
    tags: list[str] = field(default_factory=list)  # "key=value" or bare

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.run_dir.resolve().parent.name or "ptlab"

    @property
    def name(self) -> str:
        return self.run_name or self.run_dir.resolve().name

    def tag_map(self) -> dict[str, str]:
        pairs = (tag.split("=", 1) if "=" in tag else (tag, "true") for tag in self.tags)
        return {key: value for key, value in pairs}

    def mlflow_uri(self) -> str:
        return (self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or (self.run_dir.resolve().parent / "mlruns").as_uri())


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"a.b": value}; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a record (nested ones flattened: a mixture's source_tokens), without the step."""
    return {key: float(value) for key, value in flatten(record).items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class RunLogger:
    """One experiment tracker. The defaults do nothing, so a tracker implements only what it records."""

    def start(self, config: dict[str, Any], run_name: str) -> None:
        pass

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def event(self, step: int, name: str, fields: dict[str, Any]) -> None:
        pass

    def finish(self, checkpoint: str | None, status: str) -> None:
        pass


def _saved_run(tracking: Tracking, file_name: str) -> dict:
    """The tracked run an earlier attempt of this run saved in RUN_DIR/`file_name`; a missing or unreadable file
    is an error whose message says why the run cannot be continued."""
    path = tracking.run_dir / file_name
    if not path.is_file():
        raise FileNotFoundError(f"no {file_name} from the earlier attempt")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{file_name} is not valid JSON") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("run_id"), str):
        raise ValueError(f"{file_name} names no run_id")
    return saved


def _save_run(tracking: Tracking, file_name: str, saved: dict) -> None:
    write_text_atomic(tracking.run_dir / file_name, json.dumps(saved) + "\n")


def _warn_new_run(name: str, err: BaseException, run_id: str) -> None:
    """The one line that says a resumed run's tracker could not continue its run and started another."""
    print(f"ptlab: warning: {name} could not resume the earlier attempt's run ({_first_line(err)}); started a new "
          f"run {run_id}", file=sys.stderr)


class TensorBoardLogger(RunLogger):
    """Scalars to RUN_DIR/tensorboard; a resumed run purges the events after its resume step."""

    def __init__(self, tracking: Tracking, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(tracking.run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def finish(self, checkpoint: str | None, status: str) -> None:
        self._writer.close()


class MlflowLogger(RunLogger):
    """Flattened config keys as params, metrics per step, config.yaml as an artifact (never the weights), the
    final checkpoint's path as the `checkpoint` tag. A resumed run continues the MLflow run it started."""

    def __init__(self, tracking: Tracking, resume_step: int | None):
        self.tracking = tracking
        self.uri = tracking.mlflow_uri()
        self.resuming = resume_step is not None
        if self.uri.startswith("file:") or "://" not in self.uri:
            # MLflow 3 refuses its file store unless asked; the local store is the offline default chosen here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None

    def start(self, config: dict[str, Any], run_name: str) -> None:
        from mlflow.entities import Param

        not_resumed = None
        if self.resuming:
            try:
                self.run_id = self._resume()
            except Exception as err:  # noqa: BLE001 - any reason is one warning line, then a new run
                not_resumed = err
        try:
            if self.run_id is None:
                tags = {**self.tracking.tag_map(), "ptlab.run_dir": str(self.tracking.run_dir.resolve())}
                run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=tags)
                self.run_id = run.info.run_id
                limit = _param_value_limit()
                params = [Param(key, str(value)[:limit]) for key, value in flatten(config).items()]
                for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                    self.client.log_batch(self.run_id, params=params[i:i + 100])
            config_file = self.tracking.run_dir / "config.yaml"
            if config_file.is_file():
                self.client.log_artifact(self.run_id, str(config_file))
        except Exception as err:  # noqa: BLE001 - any MLflow failure at start is one line for the user
            raise PtlabError(f"train.loggers: mlflow at {self.uri}: {_first_line(err)}") from None
        if not_resumed is not None:
            _warn_new_run("mlflow", not_resumed, self.run_id)
        _save_run(self.tracking, MLFLOW_RUN_FILE, {"run_id": self.run_id, "tracking_uri": self.uri})

    def _experiment_id(self) -> str:
        name = self.tracking.experiment_name
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process of a study created it in the meantime
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _resume(self) -> str:
        """The earlier attempt's MLflow run, set running again; raises when it cannot be continued (no run file,
        another store, a deleted run)."""
        saved = _saved_run(self.tracking, MLFLOW_RUN_FILE)
        if saved.get("tracking_uri") != self.uri:
            raise ValueError(f"it was tracked at {saved.get('tracking_uri')}")
        run = self.client.get_run(saved["run_id"])
        if run.info.lifecycle_stage != "active":
            raise ValueError(f"run {saved['run_id']} is {run.info.lifecycle_stage}")
        self.client.update_run(saved["run_id"], status="RUNNING")
        return saved["run_id"]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])

    def event(self, step: int, name: str, fields: dict[str, Any]) -> None:
        if name == "end":  # the final scores: test_* of a fine-tune, val_loss and speed of a pre-training
            self.log(step, numbers(fields))
        elif name in ("start", "resume"):
            for key, value in fields.items():
                if key not in ("event", "step") and isinstance(value, (str, int, float, bool)):
                    self.client.set_tag(self.run_id, f"ptlab.{key}", str(value)[:5000])
        else:
            self.client.set_tag(self.run_id, f"ptlab.event.{name}", json.dumps(fields)[:5000])

    def finish(self, checkpoint: str | None, status: str) -> None:
        if checkpoint:
            self.client.set_tag(self.run_id, "checkpoint", checkpoint)
        self.client.set_terminated(self.run_id, status)


class WandbLogger(RunLogger):
    """A W&B run in RUN_DIR/wandb; offline unless $WANDB_MODE is set (`wandb sync RUN_DIR/wandb/offline-run-*`
    uploads an offline one). A resumed run continues the W&B run of its earlier attempt (under the same id)."""

    def __init__(self, tracking: Tracking, resume_step: int | None):
        self.tracking = tracking
        self.resuming = resume_step is not None
        self.run = None

    def start(self, config: dict[str, Any], run_name: str) -> None:
        import wandb

        settings = dict(project=self.tracking.experiment_name, name=run_name, config=config,
                        dir=str(self.tracking.run_dir), tags=list(self.tracking.tags),
                        mode=os.environ.get("WANDB_MODE", "offline"))
        not_resumed = None
        if self.resuming:
            try:  # "must": online, a run the server no longer has is an error here, not a new run under its id
                self.run = wandb.init(**settings, id=_saved_run(self.tracking, WANDB_RUN_FILE)["run_id"],
                                      resume="must")
            except Exception as err:  # noqa: BLE001 - any reason is one warning line, then a new run
                not_resumed = err
        if self.run is None:
            self.run = wandb.init(**settings)
        if not_resumed is not None:
            _warn_new_run("wandb", not_resumed, self.run.id)
        _save_run(self.tracking, WANDB_RUN_FILE, {"run_id": self.run.id})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def event(self, step: int, name: str, fields: dict[str, Any]) -> None:
        if name == "end":
            self.run.summary.update(numbers(fields))

    def finish(self, checkpoint: str | None, status: str) -> None:
        if checkpoint:
            self.run.summary["checkpoint"] = checkpoint
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


_CLASSES = {"tensorboard": TensorBoardLogger, "mlflow": MlflowLogger, "wandb": WandbLogger}


def build_loggers(names: list[str], tracking: Tracking, resume_step: int | None) -> list[RunLogger]:
    for name in names:
        check_logger_installed(name)
    return [_CLASSES[name](tracking, resume_step) for name in names]


def _param_value_limit() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
        return MAX_PARAM_VAL_LENGTH
    except ImportError:
        return 500  # MLflow 1.x's limit


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def warn(name: str, err: BaseException) -> None:
    print(f"ptlab: warning: {name} logging stopped ({_first_line(err)}); metrics.jsonl has every record",
          file=sys.stderr)
