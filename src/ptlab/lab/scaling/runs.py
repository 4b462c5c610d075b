"""The table a scaling law is fitted to: one row per training run with its parameters N, tokens D and final loss L.

A CSV needs the columns `params`, `loss` and `tokens`, or `flops` in place of `tokens` (then D = C / 6N). Other
columns are allowed: `name` or `cell` names the run, the rest is ignored. A ladder runner passes the same fields as a
list of dicts to `runs_from_records`. Every value is checked, so that the
fit never sees a NaN: a bad table is one `PtlabError` line naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptlab.errors import PtlabError

NUMBER_COLUMNS = ("params", "tokens", "flops", "loss")
NAME_COLUMNS = ("name", "cell")
PARAMETERS = 5  # E, A, B, alpha, beta: a table needs at least this many runs
DISTINCT = 3  # and this many distinct N and D, or A/N^alpha (B/D^beta) cannot be told apart from E


@dataclass(frozen=True)
class Runs:
    """Runs as parallel arrays. `flops` is the table's own FLOP count where it has one (ptlab's counter includes
    attention), else 6ND; the law's allocation always uses C = 6ND, as Hoffmann et al. did."""
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    flops: np.ndarray
    names: tuple[str, ...]
    source: str = "runs"

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, index: Iterable[int] | np.ndarray) -> Runs:
        index = np.asarray(index, dtype=int)
        return Runs(self.params[index], self.tokens[index], self.loss[index], self.flops[index],
                    tuple(self.names[i] for i in index), self.source)

    def by_compute(self) -> np.ndarray:
        """Indices from the smallest to the largest compute (ties: the larger model last)."""
        return np.lexsort((self.params, self.flops))


def _number(value: object, where: str, column: str) -> float:
    if value is None:
        raise PtlabError(f"{where}: no {column!r}")
    if isinstance(value, bool):  # a ladder record must not pass True as 1 parameter
        raise PtlabError(f"{where}, column {column!r}: not a number ({value!r})")
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise PtlabError(f"{where}, column {column!r}: not a number ({str(value)[:40]!r})") from None
    if not math.isfinite(number):
        raise PtlabError(f"{where}, column {column!r}: not finite ({number})")
    if number <= 0:
        raise PtlabError(f"{where}, column {column!r}: must be positive, got {number:g}")
    return number


def runs_from_records(records: Iterable[Mapping[str, object]], source: str = "records") -> Runs:
    """Runs from dicts with `params`, `loss` and `tokens` or `flops` (both: D from tokens, C from flops) and an
    optional `name` or `cell`, as a ladder runner records them. `source` names the list in errors."""
    return _runs(((f"{source} record {number}", record) for number, record in enumerate(records)), source)


def _runs(labelled: Iterable[tuple[str, Mapping[str, object]]], source: str) -> Runs:
    """Runs from (where, record) pairs; `where` says in an error which row it was."""
    params, tokens, loss, flops, names = [], [], [], [], []
    table_has_flops = None
    for where, record in labelled:
        if not isinstance(record, Mapping):
            raise PtlabError(f"{where}: expected a mapping with params, tokens or flops, and loss; got "
                             f"{type(record).__name__}")
        n = _number(record.get("params"), where, "params")
        has_tokens, has_flops = record.get("tokens") is not None, record.get("flops") is not None
        if not has_tokens and not has_flops:
            raise PtlabError(f"{where}: needs 'tokens' or 'flops'")
        if table_has_flops is None:
            table_has_flops = has_flops
        elif has_flops != table_has_flops:  # one definition of C per table, or the largest-compute run is ill-defined
            raise PtlabError(f"{where}: {'has' if has_flops else 'lacks'} 'flops' where the first run "
                             f"{'lacks' if has_flops else 'has'} it")
        c = _number(record["flops"], where, "flops") if has_flops else None
        d = _number(record["tokens"], where, "tokens") if has_tokens else c / (6 * n)
        if not d > 0 or not math.isfinite(d):  # flops / 6N can underflow to 0
            raise PtlabError(f"{where}: tokens = flops / (6 params) = {d:g} is not a positive number")
        c = c if c is not None else 6 * n * d
        if not math.isfinite(6 * n * d):  # the allocation works with C = 6ND
            raise PtlabError(f"{where}: compute 6 * params * tokens overflows ({n:g} x {d:g})")
        params.append(n)
        tokens.append(d)
        loss.append(_number(record.get("loss"), where, "loss"))
        flops.append(c)
        names.append(next((str(record[k]) for k in NAME_COLUMNS if record.get(k) not in (None, "")),
                          f"run {len(names) + 1}"))
    runs = Runs(np.array(params, dtype=float), np.array(tokens, dtype=float), np.array(loss, dtype=float),
                np.array(flops, dtype=float), tuple(names), source)
    check_fittable(runs)
    return runs


def check_fittable(runs: Runs) -> None:
    """Enough runs, and enough distinct sizes and budgets, to determine the five parameters."""
    if len(runs) < PARAMETERS:
        raise PtlabError(f"{runs.source}: {len(runs)} run(s); the law has {PARAMETERS} parameters, so it needs at "
                         f"least {PARAMETERS} runs")
    distinct_n, distinct_d = len(np.unique(runs.params)), len(np.unique(runs.tokens))
    if min(distinct_n, distinct_d) < DISTINCT:
        raise PtlabError(f"{runs.source}: {distinct_n} distinct params and {distinct_d} distinct token counts; the "
                         f"law needs at least {DISTINCT} of each to tell A/N^alpha and B/D^beta from E")


def read_runs(path: str | Path) -> Runs:
    """Runs from a CSV file (see the module docstring). Errors name the file and, for a value, its line and
    column."""
    path = Path(path)
    if not path.is_file():
        raise PtlabError(f"runs table not found: {path}" if not path.exists() else f"{path} is not a file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader]  # the line a row ends on, for the errors
    except UnicodeDecodeError as err:
        raise PtlabError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise PtlabError(f"{path}: not a readable CSV ({err})") from None
    except OSError as err:
        raise PtlabError(f"cannot read {path}: {err.strerror or err}") from None
    lines = [(number, row) for number, row in rows if any(cell.strip() for cell in row)]
    if not lines:
        raise PtlabError(f"{path}: empty; expected a header with params, tokens (or flops) and loss")
    header_line, header = lines[0]
    header = [cell.strip().lower() for cell in header]
    duplicated = sorted({c for c in header if c in NUMBER_COLUMNS + NAME_COLUMNS and header.count(c) > 1})
    if duplicated:
        raise PtlabError(f"{path} line {header_line}: column {duplicated[0]!r} appears twice")
    missing = [repr(c) for c in ("params", "loss") if c not in header]
    if "tokens" not in header and "flops" not in header:
        missing.append("'tokens' (or 'flops')")
    if missing:
        shown = ", ".join(repr(c[:20]) for c in header[:8]) + (", ..." if len(header) > 8 else "")
        raise PtlabError(f"{path}: missing column(s) {', '.join(missing)} (the header has {shown})")
    labelled = []
    for number, row in lines[1:]:
        if len(row) != len(header):
            raise PtlabError(f"{path} line {number}: {len(row)} field(s), the header has {len(header)}")
        labelled.append((f"{path} line {number}", {column: cell for column, cell in zip(header, row)
                                                   if column in NUMBER_COLUMNS or column in NAME_COLUMNS}))
    return _runs(labelled, str(path))
