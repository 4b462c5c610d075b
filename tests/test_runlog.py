"""metrics.jsonl is read back whole or not at all: only a last line cut short by a crash is skipped; any other
malformed line is a one-line error naming the file and line, never a record silently dropped from a run's history."""

import json

import pytest

from ptlab.errors import PtlabError
from ptlab.train.runlog import MetricsLog, read_metrics

RECORDS = [{"event": "start", "step": 0}, {"step": 10, "loss": 3.5}, {"step": 20, "loss": 3.1}]


def write_lines(run_dir, lines: list[str], end: str = "\n") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + end, encoding="utf-8")


def test_a_torn_last_line_is_skipped(tmp_path):
    lines = [json.dumps(r) for r in RECORDS]
    write_lines(tmp_path, lines + ['{"step": 30, "lo'], end="")  # killed mid-write
    assert read_metrics(tmp_path) == RECORDS
    write_lines(tmp_path, lines + ['{"step": 30, "lo', ""])  # blank lines after it change nothing
    assert read_metrics(tmp_path) == RECORDS
    write_lines(tmp_path, lines)
    assert read_metrics(tmp_path) == RECORDS
    assert read_metrics(tmp_path / "missing") == []


@pytest.mark.parametrize("bad", [b'{"step": 15, "lo', b"[1, 2]", b"3", b"\xff\xfe not UTF-8"])
def test_a_malformed_line_before_the_last_is_an_error_naming_it(tmp_path, bad):
    lines = [json.dumps(r).encode() for r in RECORDS]
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines[:2] + [b"", bad] + lines[2:]) + b"\n")
    with pytest.raises(PtlabError, match=rf"{tmp_path / 'metrics.jsonl'} line 4: ") as err:
        read_metrics(tmp_path)
    assert "\n" not in str(err.value)


def test_a_fresh_start_after_a_kill_before_any_checkpoint_starts_the_file_afresh(tmp_path):
    """The killed attempt's records (and its torn last line) are not kept under the new run's."""
    write_lines(tmp_path, [json.dumps(r) for r in RECORDS] + ['{"step": 30, "lo'], end="")
    log = MetricsLog(tmp_path)  # no checkpoint to resume: a new run
    log.write({"event": "start", "step": 0})
    log.write({"step": 10, "loss": 4.0})
    log.close()
    assert read_metrics(tmp_path) == [{"event": "start", "step": 0}, {"step": 10, "loss": 4.0}]


def test_a_resumed_run_keeps_the_records_up_to_its_checkpoint_and_drops_a_torn_line(tmp_path):
    write_lines(tmp_path, [json.dumps(r) for r in RECORDS] + ['{"step": 30, "lo'], end="")
    log = MetricsLog(tmp_path, resume_step=10)
    log.write({"event": "resume", "step": 10})
    log.close()
    assert read_metrics(tmp_path) == RECORDS[:2] + [{"event": "resume", "step": 10}]
