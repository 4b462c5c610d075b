"""The model card (README.md) that `export_hf` writes beside an exported model: the architecture, what it was
trained on and for how long, how well it did, and how to make it again.

Everything is read from the checkpoint (config.yaml, meta.json, trainer_state.pt) and, when the checkpoint lies in
a run directory (RUN_DIR/checkpoints/step_*, or a fine-tune's RUN_DIR/best), from the run's config.yaml and
metrics.jsonl. What a checkpoint does not record (an imported model's training, a run directory that was moved
away) is written as "not recorded", never guessed.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from ptlab.config import ModelConfig
from ptlab.errors import PtlabError
from ptlab.families import POSITIONS
from ptlab.models.hf import UNTIED_T5_NOTE
from ptlab.train.checkpoint import CHECKPOINTS
from ptlab.train.runlog import read_metrics

UNKNOWN = "not recorded"
PIPELINES = {True: "text2text-generation", False: "text-generation"}  # by whether the model is an encoder-decoder


def run_directory(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint was saved in: one with the run's metrics.jsonl and config.yaml."""
    candidates = [checkpoint.parent.parent] if checkpoint.parent.name == CHECKPOINTS else [checkpoint.parent]
    return next((d for d in candidates if (d / "metrics.jsonl").is_file() and (d / "config.yaml").is_file()), None)


def model_card(checkpoint: Path, cfg: ModelConfig, parameters: int, notes: list[str]) -> str:
    """The README.md of the export of `checkpoint` (a model `cfg` of `parameters` parameters), with the export's
    notes."""
    run_dir = run_directory(checkpoint)
    config_text = _read_text(run_dir / "config.yaml") if run_dir else ""
    run_config = _parse_yaml(config_text)
    try:
        records = read_metrics(run_dir) if run_dir else []
        unread = ""
    except PtlabError as err:  # the card says so; the export itself does not depend on the history
        records, unread = [], str(err)
    meta = _read_json(checkpoint / "meta.json")
    step = meta.get("step")
    finetuned = "task" in run_config
    architecture = cfg.spec.hf_class
    name = run_dir.name if run_dir else checkpoint.name
    made = "fine-tuned with ptlab and " if finetuned else "pre-trained with ptlab and " if run_dir else ""
    lines = ["---", "library_name: transformers", f"pipeline_tag: {PIPELINES[cfg.is_encoder_decoder]}",
             f"tags: [ptlab, {cfg.family}]", "---", "", f"# {name}", "",
             f"A {cfg.family} model ({architecture}) {made}exported by `ptlab export-hf` from `{checkpoint}`.", "",
             "## Architecture", "", "| | |", "|---|---|", *_rows(_architecture(cfg, architecture, parameters)), ""]
    lines += ["## Training", ""]
    if run_dir is None:
        lines += [f"Not recorded: `{checkpoint}` is not inside a run directory (one holding config.yaml and "
                  "metrics.jsonl), e.g. a model imported with `ptlab import-hf`.", ""]
    else:
        facts = _finetuning(run_config, records, step) if finetuned else _pretraining(run_config, records, step,
                                                                                        checkpoint)
        lines += ["| | |", "|---|---|", *_rows(facts), ""]
        if unread:
            lines += [f"The run's history could not be read: {unread}", ""]
        command = "finetune" if finetuned else "pretrain"
        lines += ["## How it was made", "",
                  f"With ptlab {_version()}: `ptlab {command} --config config.yaml`, where config.yaml is the run's "
                  "complete config as the run saved it (command-line overrides included):", "", "```yaml",
                  config_text.rstrip() or f"# {run_dir / 'config.yaml'} could not be read", "```", ""]
    loader = "AutoModelForSeq2SeqLM" if cfg.is_encoder_decoder else "AutoModelForCausalLM"
    tokenizer = (checkpoint / "tokenizer.json").is_file()  # exported beside the model when the checkpoint has one
    lines += ["## Use", "", "```python", f"from transformers import {'AutoTokenizer, ' * tokenizer}{loader}", "",
              f'model = {loader}.from_pretrained("path/to/this/directory")']
    if UNTIED_T5_NOTE in notes:
        lines += ["model.config.tie_word_embeddings = False  # keeps its own output head (see the note below)"]
    if tokenizer:
        lines += ['tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")']
    lines += ["```", ""]
    lines += [f"Note: {note}." for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def _architecture(cfg: ModelConfig, architecture: str, parameters: int) -> list[tuple[str, Any]]:
    layers = (f"{cfg.num_layers} encoder, {cfg.num_decoder_layers or cfg.num_layers} decoder"
              if cfg.is_encoder_decoder else f"{cfg.num_layers}")
    heads = f"{cfg.num_heads}" + (f" ({cfg.num_kv_heads} key/value)" if cfg.spec.grouped_query and cfg.num_kv_heads
                                  and cfg.num_kv_heads != cfg.num_heads else "")
    rows = [("family", f"{cfg.family} (transformers `{architecture}`)"), ("parameters", f"{parameters:,}"),
            ("layers", layers), ("d_model", cfg.d_model), ("d_ff", cfg.d_ff), ("attention heads", heads),
            ("d_kv (per head)", cfg.d_kv or cfg.d_model // cfg.num_heads), ("vocabulary", f"{cfg.vocab_size:,}"),
            ("positions", POSITIONS[cfg.spec.positions])]
    if cfg.spec.feed_forward is None:  # the config picks it
        rows.append(("feed-forward", cfg.feed_forward))
    rows.append(("output head", "tied to the input embedding" if cfg.tie_word_embeddings else
                 "its own (untied from the input embedding)"))
    return rows


def _pretraining(run: dict, records: list[dict], step: int | None, checkpoint: Path) -> list[tuple[str, Any]]:
    objective = dict(run.get("objective") or {})
    name = objective.pop("name", UNKNOWN)
    length = objective.pop("inputs_length", None)
    objective.pop("pack", None)
    described = f"`{name}`" + (f", {length} input tokens per example" if length else "") + (
        "; " + ", ".join(f"{k}={v}" for k, v in objective.items()) if objective else "")
    data, train = run.get("data") or {}, run.get("train") or {}
    if data.get("mixture"):
        total = sum(float(s.get("weight") or 0) for s in data["mixture"]) or 1.0
        sources = "; ".join(f"{s.get('name')} {float(s.get('weight') or 0) / total:.0%} ({_files(s.get('files'))})"
                            for s in data["mixture"])
        data_row = ("data (mixture)", sources)
    else:
        data_row = ("data", _files(data.get("train_files")))
    tokens = _tokens(checkpoint, records, step)
    return [("objective", described), data_row,
            ("validation data", _files(data.get("validation_files")) or "none"),
            ("tokenizer", f"`{data.get('tokenizer', UNKNOWN)}` ({data.get('tokenizer_kind', UNKNOWN)})"),
            ("initialised from", f"`{run['init']}`" if run.get("init") else "random weights"),
            ("steps", _steps(step, train.get("max_steps"))), ("batch size", train.get("batch_size", UNKNOWN)),
            ("tokens trained", f"{tokens:,.0f}" if tokens is not None else UNKNOWN),
            ("optimizer", f"{train.get('optimizer', UNKNOWN)}, lr {train.get('lr', UNKNOWN)}, "
                          f"{train.get('schedule', UNKNOWN)} schedule"),
            ("final validation loss", _val_loss(records, step)),
            ("final validation bits per byte", _val_loss(records, step, "val_bpb"))]


def _finetuning(run: dict, records: list[dict], step: int | None) -> list[tuple[str, Any]]:
    task = run.get("task") or {}
    end = next((r for r in reversed(records) if r.get("event") == "end"), {})
    validation = {k[4:]: v for r in records if r.get("step") == step and "event" not in r
                  for k, v in r.items() if k.startswith("val_")}
    test = {k[5:]: v for k, v in end.items() if k.startswith("test_")}
    trained = max((r["step"] for r in records if "event" not in r and "step" in r), default=None)  # the last logged
    steps = _steps(trained, None) + (f"; these weights are step {step:,}'s, the best on validation"
                                     if step is not None and step != trained else "")
    name = task.get("name")
    files = _files([task.get(split) for split in ("train", "validation", "test") if task.get(split)])
    return [("objective", f"fine-tuned on the task `{name}` (text-to-text)" if name else
             "fine-tuned on a task of its own (text-to-text)"),
            ("data", files or f"ptlab's bundled `{name}` task"),
            ("tokenizer", f"`{run['tokenizer']}`" if run.get("tokenizer") else "the initial checkpoint's"),
            ("initialised from", f"`{run['init']}`" if run.get("init") not in (None, "none") else "random weights"),
            ("steps", steps),
            ("validation", _scores(validation)), ("test", _scores(test))]


def _tokens(checkpoint: Path, records: list[dict], step: int | None) -> float | None:
    """Tokens trained up to the checkpoint: its trainer state's count (memory-mapped: the optimizer state in the
    same file is not read), else the history's last count at or before its step."""
    state = checkpoint / "trainer_state.pt"
    if state.is_file():
        try:
            progress = torch.load(state, map_location="cpu", weights_only=True, mmap=True).get("progress") or {}
            if progress.get("tokens"):
                return float(progress["tokens"])
        except Exception:  # noqa: BLE001 - an unreadable state leaves the history to say it
            pass
    counts = [r["tokens"] for r in records if "tokens" in r and "event" not in r
              and (step is None or r.get("step", 0) <= step)]
    return float(counts[-1]) if counts else None


def _val_loss(records: list[dict], step: int | None, key: str = "val_loss") -> str:
    """The last evaluation's `key` (val_loss, or val_bpb: absent in runs older than it) at or before `step`."""
    losses = [(r["step"], r[key]) for r in records if r.get(key) is not None and "event" not in r
              and (step is None or r.get("step", 0) <= step)]
    return f"{losses[-1][1]:.4f} (step {losses[-1][0]})" if losses else UNKNOWN


def _steps(step: int | None, planned: Any) -> str:
    if step is None:
        return UNKNOWN
    return f"{step:,}" + (f" of {planned:,} planned" if isinstance(planned, int) and planned != step else "")


def _scores(scores: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if isinstance(v, (int, float))) or UNKNOWN


def _files(files: Any) -> str:
    return ", ".join(f"`{f}`" for f in files or [])


def _rows(facts: list[tuple[str, Any]]) -> list[str]:
    return [f"| {key} | {str(value).replace('|', '/')} |" for key, value in facts]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _parse_yaml(text: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(_read_text(path) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _version() -> str:
    try:
        return metadata.version("ptlab")
    except metadata.PackageNotFoundError:
        return "(version unknown)"
