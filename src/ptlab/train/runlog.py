"""Run metrics: one JSON object per line in RUN_DIR/metrics.jsonl (flushed as written, so a crash loses nothing),
passed on to the experiment trackers of `train.loggers` (TensorBoard, MLflow, W&B; see `ptlab.train.loggers`)."""

from __future__ import annotations

import atexit
import json
from pathlib import Path
from typing import Any

from ptlab.errors import PtlabError
from ptlab.train.loggers import RunLogger, Tracking, build_loggers, numbers, warn

# Event records that end a run: the status the trackers record
_ENDINGS = {"end": "FINISHED", "interrupted": "KILLED"}


class MetricsLog:
    def __init__(self, run_dir: str | Path, resume_step: int | None = None, config: Any = None):
        """A new run starts the file afresh; a run resumed at `resume_step` keeps the records up to that step and
        drops later ones (they belong to the interrupted attempt and are about to be recomputed). `config` (a
        `Config` or `FinetuneConfig`) names the trackers in `config.train.loggers`; without it only the file is
        written."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loggers: dict[str, RunLogger] = {}
        if config is not None:
            train = config.train
            tracking = Tracking(Path(run_dir), train.experiment, train.run_name, train.tracking_uri, list(train.tags))
            names = train.logger_names()
            self._loggers = dict(zip(names, build_loggers(names, tracking, resume_step)))
            for logger in self._loggers.values():  # a bad tracking URI fails here, before training starts
                logger.start(config.to_dict(), tracking.name)
        if resume_step is not None:
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step and r.get("event") != "end"]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.path)
        # a new run starts afresh: appending to an earlier attempt's records (a run killed before its first
        # checkpoint) would repeat its steps and glue a torn last line to this run's first record
        self._file = open(self.path, "a" if resume_step is not None else "w", encoding="utf-8")
        self._status, self._checkpoint = "FAILED", None  # until an end or interrupted record says otherwise
        if self._loggers:  # a run that dies of an exception is closed at exit: its tracked run ends as FAILED
            atexit.register(self.close)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if "event" in record:
            name = record["event"]
            if name in _ENDINGS:
                self._status, self._checkpoint = _ENDINGS[name], record.get("checkpoint")
            self._each(lambda logger: logger.event(record.get("step", 0), name, record))
        elif "step" in record:
            self._each(lambda logger: logger.log(record["step"], numbers(record)))

    def close(self) -> None:
        atexit.unregister(self.close)
        self._file.close()
        self._each(lambda logger: logger.finish(self._checkpoint, self._status))
        self._loggers = {}

    def _each(self, call) -> None:
        """A tracker that fails mid-run (a server gone) is dropped with a warning; training goes on."""
        for name, logger in list(self._loggers.items()):
            try:
                call(logger)
            except Exception as err:  # noqa: BLE001 - trackers are best-effort; metrics.jsonl is the record
                warn(name, err)
                del self._loggers[name]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl. Its last line may be cut short by a crash mid-write, and is then
    skipped; a malformed line anywhere before it is a PtlabError naming it (skipping it would silently drop a record
    from the middle of the run's history)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    # bytes that are not UTF-8 make their line malformed, reported as such, instead of failing the whole file
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = None if isinstance(record, dict) else "not a JSON object"
        except json.JSONDecodeError as err:
            problem = f"invalid JSON: {err.msg}"
        except RecursionError:
            problem = "JSON nested too deeply"
        if problem is None:
            records.append(record)
        elif number != last:  # only the last line can be one a crash cut short
            raise PtlabError(f"{path} line {number}: {problem}; only a last line cut short by a crash is skipped, "
                             "so fix or remove this one")
    return records
