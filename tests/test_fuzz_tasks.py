"""Property-based tests of custom task files (CSV and JSONL, plain or gzipped): a valid file with one corruption must
give exactly the written examples or be refused in one line; some corruptions must always be refused."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest
from fuzz_strategies import BYTES, ODD_TEXT, accepted_or_refused, examples
from hypothesis import given
from hypothesis import strategies as st

from ptlab.config import TaskConfig
from ptlab.data.tasks import SPLITS, resolve_task
from ptlab.errors import PtlabError

LABELS = ["negative", "positive"]
TEMPLATE = "review: {text}"
# Record text: anything UTF-8 can hold (no lone surrogates), commas, quotes and line breaks included.
FIELD_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
RECORDS = st.lists(st.fixed_dictionaries({"text": FIELD_TEXT, "label": st.sampled_from(LABELS)}), min_size=1,
                   max_size=6)


def _csv_text(records: list[dict], lineterminator: str = "\r\n", cells=None) -> str:
    buffer = io.StringIO()
    # csv.writer quotes a field holding a line break only when the break is part of its own line terminator; quote
    # everything when a field has one, so that the file is unambiguous whatever the terminator
    breaks = any("\r" in r["text"] or "\n" in r["text"] for r in records)
    writer = csv.writer(buffer, lineterminator=lineterminator, quoting=csv.QUOTE_ALL if breaks else csv.QUOTE_MINIMAL)
    writer.writerow(["text", "label"])
    for number, record in enumerate(records):
        writer.writerow(cells(number, record) if cells else [record["text"], record["label"]])
    return buffer.getvalue()


def _jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _write(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _task(tmp: Path, files: dict[str, Path], template: str = TEMPLATE, labels=LABELS):
    return resolve_task(TaskConfig(train=str(files["train"]), validation=str(files["validation"]),
                                   test=str(files["test"]), input_template=template, target_field="label",
                                   labels=list(labels), metrics=["accuracy"]))


def _all_examples(task) -> dict[str, list]:
    return {split: task.examples(split) for split in SPLITS}


def _expected(records: list[dict]) -> list[tuple[str, str]]:
    return [(TEMPLATE.format(**r), r["label"]) for r in records]


@examples(80)
@given(splits=st.fixed_dictionaries({s: RECORDS for s in SPLITS}), kind=st.sampled_from(["csv", "jsonl"]),
       gz=st.booleans(), lineterminator=st.sampled_from(["\r\n", "\n", "\r"]))
def test_valid_task_files_give_exactly_their_records(tmp_path_factory, splits, kind, gz, lineterminator):
    tmp = tmp_path_factory.mktemp("task")
    files = {}
    for split, records in splits.items():
        text = _csv_text(records, lineterminator) if kind == "csv" else _jsonl_text(records)
        files[split] = _write(tmp / f"{split}.{kind}{'.gz' if gz else ''}", text)
    assert _all_examples(_task(tmp, files)) == {split: _expected(records) for split, records in splits.items()}


@examples(60)
@given(records=RECORDS, row=st.integers(0, 5), change=st.sampled_from(["fewer", "more"]), kind=st.sampled_from(
    ["csv", "csv.gz"]))
def test_a_row_with_the_wrong_number_of_cells_is_refused(tmp_path_factory, records, row, change, kind):
    tmp = tmp_path_factory.mktemp("task")
    row %= len(records)

    def cells(number, record):
        values = [record["text"], record["label"]]
        if number != row:
            return values
        return values[:1] if change == "fewer" else values + ["extra"]

    files = {s: _write(tmp / f"{s}.{kind}", _csv_text(records, cells=cells if s == "test" else None))
             for s in SPLITS}
    with pytest.raises(PtlabError, match="cells"):
        _all_examples(_task(tmp, files))


@examples(40)
@given(records=RECORDS, split=st.sampled_from(SPLITS), label=FIELD_TEXT.filter(lambda t: t not in LABELS))
def test_an_unknown_label_in_any_split_is_refused(tmp_path_factory, records, split, label):
    tmp = tmp_path_factory.mktemp("task")
    bad = [dict(records[0], label=label)] + records[1:]
    files = {s: _write(tmp / f"{s}.jsonl", _jsonl_text(bad if s == split else records)) for s in SPLITS}
    with pytest.raises(PtlabError, match="label"):
        _all_examples(_task(tmp, files))


@examples(60)
@given(records=RECORDS, template=st.one_of(ODD_TEXT, st.sampled_from(
    ["{", "}", "{}", "{0}", "{text", "{text!z}", "{text:d}", "{text.x}", "{text[0]}", "{label}{text}", "{{}}",
     "{missing}", "{text:>{label}}", "{text:%}"])))
def test_any_input_template_is_refused_or_formats_every_record(tmp_path_factory, records, template):
    tmp = tmp_path_factory.mktemp("task")
    files = {s: _write(tmp / f"{s}.jsonl", _jsonl_text(records)) for s in SPLITS}
    ok, task = accepted_or_refused(_task, tmp, files, template)
    if ok:
        ok, got = accepted_or_refused(_all_examples, task)
        if ok:
            assert all(isinstance(source, str) for pairs in got.values() for source, _ in pairs)


@examples(80)
@given(records=RECORDS, name=st.sampled_from(["x.csv", "x.csv.gz", "x.jsonl", "x.jsonl.gz"]),
       corruption=st.one_of(st.tuples(st.just("truncate"), st.integers(0, 10_000)),
                            st.tuples(st.just("replace"), BYTES),
                            st.tuples(st.just("append"), BYTES),
                            st.tuples(st.just("long field"), st.integers(131_000, 140_000))))
def test_a_corrupted_file_gives_its_records_or_is_refused(tmp_path_factory, records, name, corruption):
    tmp = tmp_path_factory.mktemp("task")
    kind, argument = corruption
    if kind == "long field":
        records = [dict(records[0], text="x" * argument)] + records[1:]
    text = _csv_text(records) if ".csv" in name else _jsonl_text(records)
    path = _write(tmp / name, text)
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[:argument % (len(data) + 1)])
    elif kind == "replace":
        path.write_bytes(argument)
    elif kind == "append":
        path.write_bytes(data + argument)
    files = {s: path for s in SPLITS}
    ok, got = accepted_or_refused(lambda: _all_examples(_task(tmp, files)))
    if kind == "long field":
        assert ok and got["train"][0] == (TEMPLATE.format(**records[0]), records[0]["label"])


@examples(60)
@given(records=RECORDS, row=st.integers(0, 5), field=st.sampled_from(["text", "label"]),
       value=st.sampled_from(["null", "missing", "list", "object"]), blank_lines=st.integers(0, 2),
       gz=st.booleans())
def test_a_null_or_missing_field_is_refused_naming_the_file_line_and_field(tmp_path_factory, records, row, field,
                                                                          value, blank_lines, gz):
    """Never the word "None" (or a Python repr) as an input or a label: the record's line and field are named."""
    tmp = tmp_path_factory.mktemp("task")
    row %= len(records)
    bad = dict(records[row])
    if value == "missing":
        del bad[field]
    else:
        bad[field] = {"null": None, "list": ["positive"], "object": {"x": 1}}[value]
    if field == "text" and value in ("list", "object"):
        return  # a template may index into a list or an object field ({text[0]}): not a wrong value
    text = "\n" * blank_lines + _jsonl_text(records[:row] + [bad] + records[row + 1:])
    name = f"train.jsonl{'.gz' if gz else ''}"
    files = {s: _write(tmp / name, text) if s == "train" else _write(tmp / f"{s}.jsonl", _jsonl_text(records))
             for s in SPLITS}
    for labels in (LABELS, []):  # a custom task without labels takes the distinct targets: "None" is never one
        task = _task(tmp, files, labels=labels)
        assert "None" not in task.labels
        with pytest.raises(PtlabError, match=rf"{name} line {blank_lines + row + 1}: .*'{field}'") as err:
            task.examples("train")
        assert "\n" not in str(err.value)


def test_a_csv_error_names_the_line_a_record_starts_on(tmp_path):
    path = _write(tmp_path / "train.csv", 'text,label\n"two\nlines",positive\none line,\n')
    task = resolve_task(TaskConfig(train=str(path), input_template="{text} {label:>{missing}}", target_field="label",
                                   metrics=["accuracy"]))
    with pytest.raises(PtlabError, match=r"train.csv line 2: no field 'missing'"):
        task.examples("train")
