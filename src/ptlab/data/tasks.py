"""Downstream tasks in text-to-text form: the bundled ones by name, or the user's own JSONL/CSV via config.

    task = resolve_task(TaskConfig(name="rt_polarity"))
    examples = task.examples("validation")        # [(input text, target text)], e.g. ("sst2 sentence: ...", "positive")

A classification task lists its labels: they are scored by ranking each label string's likelihood, so a prediction
is always one of them. For prompting a pre-trained model (`ptlab.downstream.incontext`), a task also has a natural
`prompt` template and a `verbalizer` (each label's words), apart from the fine-tuning format:

    task.prompts("test")                          # [("Review: ...\nSentiment:", "positive")]; task.verbalizer
"""

from __future__ import annotations

import csv
import gzip
import io
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ptlab.config import TaskConfig, from_dict, read_yaml
from ptlab.errors import PtlabError
from ptlab.files import parse_json_object

# The metrics a task may name; their implementations are ptlab.downstream.metrics.METRICS, in this order.
METRIC_NAMES = ("accuracy", "f1", "mcc", "pearson", "spearman", "rouge1", "rouge2", "rougeL", "bleu", "exact_match")

TASKS_DIR = Path(__file__).resolve().parents[3] / "data" / "tasks"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskSpec:
    input_template: str
    target_field: str
    metrics: tuple[str, ...]
    labels: tuple[str, ...] = ()
    max_target_length: int = 64
    prompt: str = ""  # for prompting a pre-trained model; the answer follows it (see ptlab.downstream.incontext)
    verbalizer: dict[str, str] = field(default_factory=dict)  # label -> the words that answer it


TASKS: dict[str, TaskSpec] = {
    "rt_polarity": TaskSpec("sst2 sentence: {text}", "label", ("accuracy", "f1"), ("negative", "positive"),
                            prompt="Review: {text}\nSentiment:",
                            verbalizer={"negative": " negative", "positive": " positive"}),
    "bible_paraphrase": TaskSpec("mrpc sentence1: {sentence1} sentence2: {sentence2}", "label", ("accuracy", "f1"),
                                 ("not_equivalent", "equivalent"),
                                 prompt="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nSame meaning?",
                                 verbalizer={"not_equivalent": " no", "equivalent": " yes"}),
    "debian_summaries": TaskSpec("summarize: {document}", "summary", ("rougeL", "rouge1", "rouge2"),
                                 max_target_length=32, prompt="Description: {document}\nSummary:"),
    "ddtp_en_de": TaskSpec("translate English to German: {source}", "target", ("bleu",), max_target_length=128,
                           prompt="English: {source}\nGerman:"),
    "ddtp_en_fr": TaskSpec("translate English to French: {source}", "target", ("bleu",), max_target_length=128,
                           prompt="English: {source}\nFrench:"),
    "bible_en_es": TaskSpec("translate English to Spanish: {source}", "target", ("bleu",), max_target_length=128,
                            prompt="English: {source}\nSpanish:"),
    "spam_ham": TaskSpec("spam email: {text}", "label", ("accuracy", "f1", "mcc"), ("ham", "spam"),
                         prompt="Email: {text}\nThis email is", verbalizer={"ham": " normal", "spam": " spam"}),
}


@dataclass
class Task:
    name: str
    files: dict[str, Path | None]
    input_template: str
    target_field: str
    metrics: list[str]
    labels: list[str] = field(default_factory=list)
    max_input_length: int = 256
    max_target_length: int = 64
    max_train_examples: int = 0
    max_eval_examples: int = 0
    prompt: str = ""  # empty: the input template
    verbalizer: dict[str, str] = field(default_factory=dict)  # classification: every label's answer words

    @property
    def is_classification(self) -> bool:
        return bool(self.labels)

    def answer(self, target: str) -> str:
        """The words that follow a prompt for this target: the label's verbalizer entry, or the target after a space."""
        return self.verbalizer[target] if self.labels else " " + target

    def records(self, split: str) -> list[dict]:
        return [record for _, record in self._numbered_records(split)]

    def _numbered_records(self, split: str) -> list[tuple[int, dict]]:
        path = self.files.get(split)
        if path is None:
            raise PtlabError(f"task {self.name} has no {split} split (set task.{split})")
        return numbered_records(path)

    def examples(self, split: str) -> list[tuple[str, str]]:
        """(input text, target text) pairs; capped by max_train_examples / max_eval_examples (first N)."""
        return self._pairs(split, self.input_template, "task.input_template")

    def prompts(self, split: str) -> list[tuple[str, str]]:
        """(prompt text, target text) pairs for prompting, capped like `examples`."""
        return self._pairs(split, self.prompt or self.input_template, "task.prompt")

    def _pairs(self, split: str, template: str, key: str) -> list[tuple[str, str]]:
        records = self._numbered_records(split)
        limit = self.max_train_examples if split == "train" else self.max_eval_examples
        if limit:
            records = records[:limit]
        path = self.files[split]
        pairs = []
        for line, record in records:
            where = f"{path} line {line}"
            try:
                source = template.format_map(_Fields(record))
            except KeyError as err:
                raise PtlabError(f"{where}: no field {err} for {key} "
                                 f"{template!r} (fields: {', '.join(sorted(record))})") from None
            except _NullField as err:
                raise PtlabError(f"{where}: field {err.args[0]!r} is null, and {key} {template!r} "
                                 "uses it") from None
            except (ValueError, TypeError, IndexError, AttributeError) as err:  # e.g. {text:d} on a string
                raise PtlabError(f"{where}: {key} {template!r} cannot "
                                 f"format this record ({err})") from None
            if self.target_field not in record:
                raise PtlabError(f"{where}: no target field {self.target_field!r} "
                                 f"(fields: {', '.join(sorted(record))})")
            target = target_text(record[self.target_field])
            if target is None:
                raise PtlabError(f"{where}: target field {self.target_field!r} is "
                                 f"{_json_kind(record[self.target_field])}, not text or a number")
            if self.labels and target not in self.labels:
                raise PtlabError(f"{where}: label {target!r} is not one of task.labels "
                                 f"{self.labels}")
            pairs.append((source, target))
        if not pairs:
            raise PtlabError(f"{path}: no examples")
        return pairs


class _NullField(Exception):
    """A template field whose value is JSON null."""


class _Fields(dict):
    """A record as `str.format_map` reads it: a null field is an error (formatted, it would be the word "None")."""

    def __getitem__(self, name: str):
        value = super().__getitem__(name)  # a missing field: KeyError, reported as such
        if value is None:
            raise _NullField(name)
        return value


def target_text(value: object) -> str | None:
    """A record's target as text: a string, or a number or boolean as str() writes it; None for null, a list or
    an object (str() would turn them into "None" or Python's repr, a label nobody wrote)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def _json_kind(value: object) -> str:
    return "null" if value is None else "a list" if isinstance(value, list) else "an object"


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSONL(.gz) or CSV(.gz) file (CSV: the header row names the fields)."""
    return [record for _, record in numbered_records(path)]


def numbered_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) of each record of a JSONL(.gz) or CSV(.gz) file, so that an error about a record can
    name its line (a CSV record's first line; blank lines are skipped, so a record's index is not its line)."""
    path = Path(path)
    if not path.is_file():
        raise PtlabError(f"task file not found: {path}")
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # not gzip, or cut short
            raise PtlabError(f"{path}: not a complete gzip file ({err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PtlabError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    if path.name.endswith((".csv", ".csv.gz")):
        return _csv_records(path, text)
    records = []
    # split("\n"), not splitlines(): a JSON string may hold U+2028 and other characters splitlines() breaks at
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        records.append((number, parse_json_object(line, path, number)))
    return records


def _csv_records(path: Path, text: str) -> list[tuple[int, dict]]:
    """Records of CSV text whose first row names the fields; a row with more or fewer cells than the header is an
    error (csv.DictReader would fill the gap with None, which becomes the label "None")."""
    # newline="": the csv module's own line splitting, which takes \r, \n and \r\n and keeps quoted line breaks
    rows = csv.reader(io.StringIO(text, newline=""))
    if len(text) > csv.field_size_limit():  # the default limit (131,072 characters) would refuse a long document
        csv.field_size_limit(len(text))
    records: list[tuple[int, dict]] = []
    header: list[str] | None = None
    try:
        first_line = 1  # the line the next row starts on (a quoted cell may hold line breaks)
        for row in rows:
            start, first_line = first_line, rows.line_num + 1
            if not row:
                continue
            if header is None:
                header = row
                if len(set(header)) != len(header):
                    raise PtlabError(f"{path} line {rows.line_num}: the header names a column twice")
                continue
            if len(row) != len(header):
                raise PtlabError(f"{path} line {rows.line_num}: {len(row)} cells, but the header has {len(header)}")
            records.append((start, dict(zip(header, row))))
    except csv.Error as err:  # e.g. a field longer than the csv module's limit, a NUL byte
        raise PtlabError(f"{path} line {rows.line_num}: malformed CSV ({err})") from None
    return records


def check_template(template: str, key: str = "task.input_template") -> None:
    """A template must name record fields only: "{text}", never "{}", "{0}" or a stray brace."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise PtlabError(f"config key '{key}': {template!r} is not a valid template ({err}); "
                         "write a literal brace as {{ or }}") from None
    for name in fields:
        if not name or name.isdigit():
            raise PtlabError(f"config key '{key}': {template!r} has a field without a name; name a "
                             "record field, e.g. {text}")


def check_verbalizer(verbalizer: object, labels: list[str]) -> dict[str, str]:
    """Every label, and only the labels, mapped to distinct non-empty words (a tie could never be ranked)."""
    key = "config key 'task.verbalizer'"
    if not isinstance(verbalizer, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                   for k, v in verbalizer.items()):
        raise PtlabError(f"{key}: expected a mapping of each label to non-empty words, got {verbalizer!r}")
    if not labels:
        raise PtlabError(f"{key}: only a classification task (with labels) takes a verbalizer")
    unknown = [k for k in verbalizer if k not in labels]
    missing = [label for label in labels if label not in verbalizer]
    if unknown or missing:
        raise PtlabError(f"{key}: " + "; ".join(filter(None, [
            unknown and f"{', '.join(map(repr, unknown))} not among the labels {labels}",
            missing and f"no words for {', '.join(map(repr, missing))}"])))
    if len(set(verbalizer.values())) < len(verbalizer):
        raise PtlabError(f"{key}: two labels have the same words ({verbalizer!r})")
    return dict(verbalizer)


def custom_task_name(train_file: Path) -> str:
    """A custom task's name from its training file: `reviews.csv` -> reviews, `my_task/train.jsonl.gz` -> my_task."""
    name = train_file.name.split(".", 1)[0]
    return train_file.resolve().parent.name if name in (*SPLITS, "dev") else name


def resolve_task(cfg: TaskConfig, tasks_dir: Path = TASKS_DIR) -> Task:
    """A registered task (with any keys the config sets overriding it) or a custom one from files."""
    spec = TASKS.get(cfg.name) if cfg.name else None
    if cfg.name and spec is None and not cfg.train:
        raise PtlabError(f"unknown task {cfg.name!r}; bundled tasks: {', '.join(TASKS)} (or give task.train, "
                         "task.input_template, task.target_field and task.metrics for your own)")
    files = {split: Path(getattr(cfg, split)) if getattr(cfg, split) else (
        tasks_dir / cfg.name / f"{split}.jsonl.gz" if spec else None) for split in SPLITS}
    template = cfg.input_template or (spec.input_template if spec else None)
    target = cfg.target_field or (spec.target_field if spec else None)
    metrics = list(cfg.metrics) or (list(spec.metrics) if spec else [])
    for key, value in (("input_template", template), ("target_field", target), ("metrics", metrics)):
        if not value:
            raise PtlabError(f"config key 'task.{key}' is needed for a custom task")
    check_template(template)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise PtlabError(f"config key 'task.metrics': unknown {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}")
    labels = list(cfg.labels) or (list(spec.labels) if spec else [])
    task = Task(cfg.name or custom_task_name(Path(cfg.train)), files, template, target, metrics, labels, cfg.max_input_length,
                cfg.max_target_length if (cfg.max_target_length != 64 or not spec) else spec.max_target_length,
                cfg.max_train_examples, cfg.max_eval_examples)
    if not labels and set(metrics) & {"accuracy", "f1", "mcc"} and files["train"] is not None:
        # a custom classification task without labels: the distinct targets of the training file
        # (a record without a usable target is left out here; `examples` refuses it, naming its line)
        distinct = sorted({text for r in read_records(files["train"]) if (text := target_text(r.get(target)))
                           is not None})
        if len(distinct) <= 50:
            task.labels = distinct
    task.prompt = cfg.prompt or (spec.prompt if spec else "")
    if task.prompt:
        check_template(task.prompt, "task.prompt")
    verbalizer = cfg.verbalizer or (spec.verbalizer if spec and not cfg.labels else {})
    if verbalizer:
        task.verbalizer = check_verbalizer(verbalizer, task.labels)
    elif task.labels:  # each label's own name, after the space that follows a prompt
        task.verbalizer = {label: " " + label for label in task.labels}
    return task


TASK_PREFIX = "task:"


def task_input_texts(reference: str) -> tuple[str, list[str]]:
    """The input texts of a task's training split, without labels, for task-adaptive pre-training; `reference` is
    a bundled task's name or the path of a YAML task definition (the keys of a fine-tuning config's `task`
    section, at the top level or under `task:`). Returns a name for the task and its texts."""
    task = task_from_reference(reference, f"{TASK_PREFIX}{reference}")
    return task.name, [source for source, _ in task.examples("train")]


def task_from_reference(reference: str, where: str) -> Task:
    """A bundled task by name, or a task defined in a YAML file (the keys of a fine-tuning config's `task` section,
    at the top level or under `task:`); `where` names the reference in the error when it is neither."""
    if reference in TASKS:
        cfg = TaskConfig(name=reference)
    elif reference.endswith((".yaml", ".yml")):
        data = read_yaml(reference)
        section = data.get("task", data)
        cfg = from_dict(TaskConfig, section, "task.")
        cfg.validate()
    else:
        raise PtlabError(f"{where}: not a bundled task ({', '.join(TASKS)}) nor a task definition file (.yaml)")
    return resolve_task(cfg)
