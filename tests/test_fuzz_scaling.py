"""Property-based tests of the runs table `ptlab scaling` reads: a valid CSV with one corruption, arbitrary bytes,
or ladder records with an odd value must give a fit with finite, positive parameters or be refused in one
`PtlabError` line naming the file; never another exception, and from the command line, nothing written."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from fuzz_strategies import (
    BYTES,
    ODD_FLOATS,
    ODD_INTS,
    ODD_TEXT,
    VALUES,
    accepted_or_refused,
    assert_cli_error_is_one_line,
    examples,
    leftovers,
    run_cli,
)
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ptlab.config import load_config

from ptlab.lab.scaling import HOFFMANN, fit_law, read_runs, runs_from_records
from ptlab.lab.scaling.fit import coarse_grid
from ptlab.lab.scaling.ladder import Point, check_unchanged, finished_point

HEADER = ["name", "params", "tokens", "loss"]
ROWS = [[f"run{i}", f"{n:g}", f"{d:g}", f"{HOFFMANN.loss(n, d):.4f}"]
        for i, (n, d) in enumerate((n, d) for n in (1e7, 1e8, 1e9) for d in (1e8, 1e9, 1e10))]
FEW_STARTS = coarse_grid()[::12]  # 6 starts: these tests look for crashes, not for the best optimum
CELL = st.one_of(ODD_TEXT, ODD_FLOATS.map(repr), ODD_INTS.map(str), st.sampled_from(["", "1e400", "-0", "0x1p3",
                                                                                     "1_000", " 5 ", "∞"]))


def _table(header: list[str], rows: list[list[str]], lineterminator: str = "\n") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


CORRUPTED = st.one_of(
    # one cell replaced
    st.tuples(st.integers(0, len(ROWS) - 1), st.integers(0, len(HEADER) - 1), CELL).map(
        lambda c: _table(HEADER, [[c[2] if (r, k) == c[:2] else cell for k, cell in enumerate(row)]
                                  for r, row in enumerate(ROWS)])),
    # one header name replaced, or a column dropped
    st.tuples(st.integers(0, len(HEADER) - 1), ODD_TEXT).map(
        lambda c: _table([c[1] if k == c[0] else h for k, h in enumerate(HEADER)], ROWS)),
    st.integers(0, len(HEADER) - 1).map(
        lambda k: _table(HEADER[:k] + HEADER[k + 1:], [row[:k] + row[k + 1:] for row in ROWS])),
    # rows left out, or the text cut anywhere
    st.integers(0, len(ROWS)).map(lambda n: _table(HEADER, ROWS[:n])),
    st.integers(0, len(_table(HEADER, ROWS))).map(lambda n: _table(HEADER, ROWS)[:n]),
    # a line of odd text inserted
    st.tuples(st.integers(0, len(ROWS)), ODD_TEXT).map(
        lambda c: "\n".join(_table(HEADER, ROWS).splitlines()[:c[0] + 1] + [c[1]]
                            + _table(HEADER, ROWS).splitlines()[c[0] + 1:]) + "\n"),
    # tokens given as flops instead, other line endings
    st.sampled_from(["\r\n", "\r"]).map(lambda end: _table(HEADER, ROWS, end)),
    st.just(_table(["name", "params", "flops", "loss"],
                   [[r[0], r[1], f"{6 * float(r[1]) * float(r[2]):g}", r[3]] for r in ROWS])),
)


def _fits_or_refuses(path: Path) -> None:
    ok, result = accepted_or_refused(lambda: fit_law(read_runs(path), resamples=1, grid=FEW_STARTS))
    if ok:
        values = result.law.values()
        assert all(math.isfinite(v) for v in values) and min(values[:3]) > 0, values
    else:
        assert str(path) in str(result), f"the error does not name the file: {result}"


@examples(40)
@given(text=CORRUPTED)
def test_a_corrupted_table_fits_or_is_refused_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _fits_or_refuses(path)


@examples(30)
@given(data=BYTES)
def test_arbitrary_bytes_fit_or_are_refused_in_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    path.write_bytes(data)
    _fits_or_refuses(path)


@examples(40)
@given(key=st.sampled_from(["params", "tokens", "flops", "loss", "cell"]), value=VALUES, row=st.integers(0, 8))
def test_ladder_records_with_an_odd_value_fit_or_are_refused(key, value, row):
    records = [{"params": float(r[1]), "tokens": float(r[2]), "loss": float(r[3]), "cell": r[0]} for r in ROWS]
    records[row][key] = value
    ok, result = accepted_or_refused(lambda: fit_law(runs_from_records(records), resamples=0, grid=FEW_STARTS))
    if ok:
        assert all(math.isfinite(v) for v in result.law.values())


@examples(30)
@given(saved=st.one_of(BYTES, st.dictionaries(st.sampled_from(["train", "model", "objective", "seed", "data"]), VALUES,
                                              max_size=4).map(lambda d: yaml.safe_dump(d).encode())))
def test_a_ladder_run_directory_with_an_odd_saved_config_is_reused_or_refused_in_one_line(tmp_path_factory, saved):
    """A ladder checks each run directory it would reuse against its saved config.yaml: whatever that file
    holds, the check passes or refuses in one line."""
    run_dir = tmp_path_factory.mktemp("point")
    (run_dir / "config.yaml").write_bytes(saved)
    cfg = load_config(Path("configs/gpt2-tiny.yaml"), [f"run_dir={run_dir}"])
    accepted_or_refused(check_unchanged, cfg, "ladder size 'xs'")


@examples(40)
@given(saved=st.one_of(BYTES, st.recursive(st.none() | st.booleans() | ODD_FLOATS | ODD_TEXT,
                                           lambda inner: st.lists(inner, max_size=3)
                                           | st.dictionaries(ODD_TEXT, inner, max_size=3), max_leaves=8)
                       .map(lambda value: json.dumps(value).encode()),
                       st.integers(1, 2000).map(lambda depth: b"[" * depth + b"]" * depth)))
def test_a_finished_points_record_of_any_bytes_is_read_or_refused_in_one_line(tmp_path_factory, saved):
    """A ladder takes a point whose point.json it can read as finished: whatever that file holds, it is read as
    a record (a JSON object) or refused in one line naming the file."""
    run_dir = tmp_path_factory.mktemp("point")
    (run_dir / "point.json").write_bytes(saved)
    cfg = load_config(Path("configs/gpt2-tiny.yaml"), [f"run_dir={run_dir}"])
    ok, result = accepted_or_refused(finished_point, Point("ladder", "xs", 1.0, 10, 0, 10, cfg))
    assert isinstance(result, dict) if ok else str(run_dir / "point.json") in str(result)


@examples(3)
@given(text=CORRUPTED)
def test_the_command_writes_nothing_when_it_refuses_a_table(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("cli")
    path = tmp / "runs.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code, _, err = run_cli(["scaling", "fit", str(path), "--bootstrap", "0", "--json", str(tmp / "out" / "fit.json")])
    assert_cli_error_is_one_line(code, err)
    assert code in (0, 2)
    assert (tmp / "out" / "fit.json").exists() == (code == 0)
    assert leftovers(tmp) == []
