"""`ptlab study`: the T5 paper's controlled comparisons in miniature.

A study is a grid of cells. Each cell is one pre-training setting (an objective, an architecture, a corruption
rate, a data mix, or no pre-training at all) derived from one base pre-training config, so every cell sees the same
steps, batch and input length (the same token budget), and is then fine-tuned with one shared recipe on every
task, once per seed. Results land in RUN_DIR/results.jsonl as each fine-tune finishes, so a killed study
restarts at the first unfinished piece of work; the table is written from that file.

    RUN_DIR/cells/<cell>/pretrain/         the cell's pre-training run (checkpoints, metrics)
    RUN_DIR/cells/<cell>/<task>-seed<N>/   each fine-tune (best weights, predictions, scores)
    RUN_DIR/results.jsonl, table.md, table.csv, chart.png
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptlab.config import (Config, FinetuneConfig, TaskConfig, TrainConfig, apply_overrides, from_dict, load_config,
                          read_yaml)
from ptlab.errors import PtlabError
from ptlab.files import write_text_atomic
from ptlab.train.host import job_pool, thread_share

ARCHITECTURES = ("encoder-decoder", "shared", "half-layers", "lm", "prefix-lm")

# Model sizes a study can be scaled to without editing it (`--size`): T5's small and base shapes (v1.1 widths).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},  # the base config's own model
    "small": {"d_model": 512, "d_kv": 64, "num_heads": 8, "num_layers": 6, "d_ff": 1024},
    "base": {"d_model": 768, "d_kv": 64, "num_heads": 12, "num_layers": 12, "d_ff": 2048},
}


@dataclass
class StudyCell:
    """One pre-training setting. `set` overrides the base pre-training config (dotted or nested keys);
    `architecture` derives the model from the base encoder-decoder the way T5's Table 2 does."""

    name: str = ""
    pretrain: bool = True  # false: fine-tune the architecture from random weights ("no pre-training")
    architecture: str = "encoder-decoder"
    set: dict[str, Any] = field(default_factory=dict)
    clean: bool = False  # pass the cell's training files through ptlab's C4 cleaning before pre-training


@dataclass
class StudyFinetune:
    """The one fine-tuning recipe every cell gets."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=32, optimizer="adamw_scale", lr=1e-2, schedule="linear", min_lr_ratio=0.0, warmup_steps=50,
        eval_every=100, loggers=[]))
    epochs: float = 2.0
    max_steps: int = 0
    patience: int = 3


@dataclass
class StudyConfig:
    run_dir: str = "runs/study"
    base: str = "t5-tiny.yaml"  # the pre-training config every cell starts from (relative to the study file)
    size: str = "tiny"  # tiny | small | base: the model size every cell is scaled to
    common: dict[str, Any] = field(default_factory=dict)  # overrides of the base for every cell
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # fine-tuning seeds
    tasks: list[TaskConfig] = field(default_factory=list)
    finetune: StudyFinetune = field(default_factory=StudyFinetune)
    cells: list[StudyCell] = field(default_factory=list)

    def validate(self) -> None:
        if self.size not in SIZES:
            raise PtlabError(f"config key 'size': unknown size {self.size!r} (known: {', '.join(SIZES)})")
        if not self.cells:
            raise PtlabError("config key 'cells': a study needs at least one cell")
        if not self.tasks:
            raise PtlabError("config key 'tasks': a study needs at least one downstream task")
        if not self.seeds:
            raise PtlabError("config key 'seeds': a study needs at least one seed")
        names = [cell_slug(c) for c in self.cells]
        for i, cell in enumerate(self.cells):
            if not cell.name:
                raise PtlabError(f"config key 'cells[{i}].name': every cell needs a name")
            if cell.architecture not in ARCHITECTURES:
                raise PtlabError(f"config key 'cells[{i}].architecture': unknown {cell.architecture!r} "
                                 f"(known: {', '.join(ARCHITECTURES)})")
            if names.count(names[i]) > 1:
                raise PtlabError(f"config key 'cells[{i}].name': {cell.name!r} is used twice")
        for i, task in enumerate(self.tasks):
            task.validate()
        self.finetune.train.validate()


def cell_slug(cell: StudyCell) -> str:
    return re.sub(r"[^a-z0-9]+", "-", cell.name.lower()).strip("-") or "cell"


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested or dotted keys -> {"a.b.c": value} (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _override(key: str, value: Any) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[StudyConfig, Path]:
    """The study config and the directory its relative `base` path is read from."""
    path = Path(path)
    data = read_yaml(path)
    apply_overrides(data, overrides, "key=value (e.g. size=small, common.train.device=cuda)")
    study = from_dict(StudyConfig, data, "")
    study.validate()
    return study, path.parent


def cell_config(study: StudyConfig, cell: StudyCell, base_dir: Path) -> Config:
    """The pre-training config of a cell: base, then size preset, then `common`, then the architecture, then the
    cell's own `set`, with the run directory inside the study."""
    base = Path(study.base)
    if not base.is_absolute() and not base.is_file():
        base = base_dir / base
    overrides = {f"model.{k}": v for k, v in SIZES[study.size].items()}
    overrides.update(flatten(study.common))
    arch = cell.architecture
    if arch == "shared":
        overrides["model.shared_encoder_decoder"] = True
    elif arch in ("lm", "prefix-lm"):
        # a decoder-only stack as deep as the encoder: about the encoder's P parameters and the pair's M FLOPs
        overrides.update({"model.family": "llama", "model.prefix_lm": arch == "prefix-lm"})
    overrides.update(flatten(cell.set))
    overrides["run_dir"] = str(Path(study.run_dir) / "cells" / cell_slug(cell) / "pretrain")
    try:
        cfg = load_config(base, [_override(k, v) for k, v in overrides.items()])
    except PtlabError as err:
        raise PtlabError(f"study cell {cell.name!r}: {err}") from None
    if cell.clean and cfg.data.mixture:
        raise PtlabError(f"study cell {cell.name!r}: clean: true cleans data.train_files, not a mixture's sources; "
                         "clean them with `ptlab clean` and name the cleaned files in the mixture")
    if arch == "half-layers":
        cfg.model.num_layers = max(1, cfg.model.num_layers // 2)
        if cfg.model.num_decoder_layers:
            cfg.model.num_decoder_layers = max(1, cfg.model.num_decoder_layers // 2)
    if arch in ("lm", "prefix-lm"):
        cfg.model.num_decoder_layers = None
        cfg.model.d_kv = None if cfg.model.d_model == cfg.model.num_heads * (cfg.model.d_kv or 0) else cfg.model.d_kv
        cfg.model.tie_word_embeddings = None
        cfg.model.layer_norm_eps = None
    track_as_study_run(cfg.train, study, f"{cell_slug(cell)}/pretrain", [f"cell={cell.name}"])
    cfg.validate()
    return cfg


def track_as_study_run(train: TrainConfig, study: StudyConfig, run_name: str, tags: list[str]) -> None:
    """Every pre-training and fine-tune of a study is a run of one experiment named after the study, in one MLflow
    store (RUN_DIR/mlruns unless train.tracking_uri or $MLFLOW_TRACKING_URI names another); keys set by the user
    win."""
    train.experiment = train.experiment or Path(study.run_dir).resolve().name
    train.run_name = train.run_name or run_name
    train.tags = [*tags, *train.tags]
    if not train.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        train.tracking_uri = (Path(study.run_dir).resolve() / "mlruns").as_uri()


def data_key(cfg: Config) -> str:
    """Cells with the same key share shards. A mixture's weights and caps change the sampling, not the shards."""
    sources = [[s.name, s.files, s.sources, s.validation_files] for s in cfg.data.mixture]
    identity = json.dumps([cfg.data.train_files, cfg.data.validation_files, cfg.data.sources, cfg.data.tokenizer,
                           cfg.data.separator] + ([sources] if sources else []))
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


@dataclass
class Plan:
    study: StudyConfig
    cells: list[tuple[StudyCell, Config]]
    run_dir: Path


def plan_study(study: StudyConfig, base_dir: Path) -> Plan:
    run_dir = Path(study.run_dir)
    cells = []
    for cell in study.cells:
        cfg = cell_config(study, cell, base_dir)
        cfg.data.shards_dir = str(run_dir / "shards" / data_key(cfg))  # cells with other data never share shards
        cells.append((cell, cfg))
    return Plan(study, cells, run_dir)


# ---------------------------------------------------------------- estimates


def example_lengths(cfg: Config) -> tuple[int, int]:
    """Nominal (encoder inputs, targets) of one pre-training example, without needing the tokenizer."""
    from ptlab.objectives.base import SpecialIds
    from ptlab.objectives.registry import build_objective

    vocab = cfg.data.vocab_size
    sentinels = tuple(range(vocab - cfg.data.num_sentinels, vocab))
    specials = SpecialIds(pad=0, eos=1, unk=2, sentinels=sentinels, mask=3, bos=4, vocab_size=vocab,
                          modes={"R": (5,), "X": (6,), "S": (7,)})
    objective, _ = build_objective(cfg.objective.name, cfg.objective.params, cfg.objective.inherited)
    lengths = objective.lengths(cfg.objective.inputs_length, specials)
    return lengths.inputs, lengths.targets  # a decoder-only model reads them as one sequence


def cell_figures(cfg: Config) -> dict[str, float]:
    """Parameters and FLOPs of a cell's model (the table's P and M columns) and its pre-training FLOPs."""
    import torch

    from ptlab.flops import training_flops
    from ptlab.models import build_model, count_parameters

    model_cfg = _with_vocab(cfg)
    with torch.device("meta"):
        parameters = count_parameters(build_model(model_cfg))
    inputs, targets = example_lengths(cfg)
    per_example = training_flops(model_cfg, inputs, targets)
    steps, batch = cfg.train.max_steps, cfg.train.batch_size
    return {"parameters": parameters, "flops_per_example": per_example, "pretrain_flops": steps * batch * per_example,
            "pretrain_tokens": steps * batch * (inputs + targets)}


def estimate_seconds(plan: Plan, efficiency: float = 0.25) -> dict[str, float]:
    """Rough wall-clock per cell: its FLOPs at `efficiency` of this machine's measured matmul peak (fine-tunes
    counted at their maximum length). The first finished study gives real times in its table."""
    import torch

    from ptlab.flops import measure_matmul_tflops, training_flops
    from ptlab.tasks import resolve_task

    cuda = plan.cells[0][1].train.device == "cuda" or (plan.cells[0][1].train.device == "auto"
                                                       and torch.cuda.is_available())
    precision = plan.cells[0][1].train.precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = measure_matmul_tflops(dtype, device="cuda" if cuda and torch.cuda.is_available() else "cpu") * 1e12
    ft = plan.study.finetune
    estimates = {}
    for cell, cfg in plan.cells:
        figures = cell_figures(cfg)
        seconds = figures["pretrain_flops"] / (peak * efficiency) if cell.pretrain else 0.0
        for task_cfg in plan.study.tasks:
            task = resolve_task(task_cfg)
            examples = task_cfg.max_train_examples or sum(1 for _ in task.examples("train"))
            steps = ft.max_steps or math.ceil(ft.epochs * examples / ft.train.batch_size)
            per_example = training_flops(_with_vocab(cfg), task_cfg.max_input_length, task_cfg.max_target_length)
            seconds += len(plan.study.seeds) * steps * ft.train.batch_size * per_example / (peak * efficiency)
        estimates[cell.name] = seconds
    return estimates


def _with_vocab(cfg: Config):
    model = copy.deepcopy(cfg.model)
    model.vocab_size = model.vocab_size or cfg.data.vocab_size
    model.validate()
    return model


def format_plan(plan: Plan, estimates: dict[str, float] | None = None) -> str:
    lines = [f"study {plan.run_dir}: {len(plan.cells)} cells x {len(plan.study.tasks)} tasks x "
             f"{len(plan.study.seeds)} seeds (size {plan.study.size})", "",
             "| cell | architecture | objective | params | FLOPs/example | pre-train tokens | est. minutes |",
             "|---|---|---|---:|---:|---:|---:|"]
    for cell, cfg in plan.cells:
        figures = cell_figures(cfg)
        objective = cfg.objective.name if cell.pretrain else "(none)"
        tokens = f"{figures['pretrain_tokens'] / 1e6:.1f}M" if cell.pretrain else "0"
        minutes = f"{estimates[cell.name] / 60:.1f}" if estimates else "-"
        lines.append(f"| {cell.name} | {cell.architecture} | {objective} | {figures['parameters'] / 1e6:.1f}M | "
                     f"{figures['flops_per_example'] / 1e9:.2f}G | {tokens} | {minutes} |")
    if estimates:
        lines += ["", f"estimated total: {sum(estimates.values()) / 60:.0f} minutes (one job; a rough FLOP-based "
                  "estimate)"]
    return "\n".join(lines)


# ---------------------------------------------------------------- running


def finetune_config(study: StudyConfig, cell: StudyCell, cfg: Config, task: TaskConfig, seed: int,
                    checkpoint: str | None) -> FinetuneConfig:
    ft = study.finetune
    train = dataclasses.replace(ft.train, device=cfg.train.device, threads=cfg.train.threads)
    track_as_study_run(train, study, f"{cell_slug(cell)}/{task_label(task)}-seed{seed}",
                       [f"cell={cell.name}", f"task={task_label(task)}", f"seed={seed}"])
    return FinetuneConfig(run_dir=str(Path(study.run_dir) / "cells" / cell_slug(cell) / f"{task_label(task)}-seed{seed}"),
                          seed=seed, init=checkpoint or "none", tokenizer=cfg.data.tokenizer,
                          model=copy.deepcopy(cfg.model), task=copy.deepcopy(task), train=train, epochs=ft.epochs,
                          max_steps=ft.max_steps, patience=ft.patience)


def task_label(task: TaskConfig) -> str:
    return task.name or Path(task.train or "custom").stem.split(".")[0]


def _done_marker(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "pretrain-done.json"


def run_cell(study: StudyConfig, cell: StudyCell, cfg: Config, finished: set[tuple[str, str, int]],
             results_path: Path, threads: int = 0, show_progress: bool = False) -> list[dict]:
    """Pre-train a cell (unless done or `pretrain: false`), then run its unfinished fine-tunes; each result is
    appended to `results_path` the moment it exists."""
    import torch

    from ptlab.finetune import finetune
    from ptlab.tasks import resolve_task
    from ptlab.train.loop import pretrain

    if threads:
        torch.set_num_threads(threads)
        cfg.train.threads = threads
    checkpoint, summary = None, {}
    if cell.pretrain:
        marker = _done_marker(cfg)
        if marker.is_file():
            summary = json.loads(marker.read_text(encoding="utf-8"))
        else:
            result = pretrain(cfg, show_progress=show_progress, resume="auto")
            if result.interrupted:
                raise KeyboardInterrupt(f"pre-training of {cell.name!r} interrupted ({result.interrupted})")
            summary = {"checkpoint": str(result.checkpoint), "final_val_loss": result.final_val_loss,
                       "seconds": result.train_seconds, "tokens_per_second": result.tokens_per_second,
                       "parameters": result.parameters}
            write_text_atomic(marker, json.dumps(summary, indent=2) + "\n")
        checkpoint = summary["checkpoint"]
    rows = []
    for task in study.tasks:
        for seed in study.seeds:
            if (cell.name, task_label(task), seed) in finished:
                continue
            ft_cfg = finetune_config(study, cell, cfg, task, seed, checkpoint)  # prepare_data made the tokenizer
            ft_cfg.validate()
            result = finetune(ft_cfg, show_progress=show_progress)
            metric = resolve_task(task).metrics[0]  # the task's headline metric, as fine-tuning early-stops on
            scores = result.test or result.validation
            row = {"cell": cell.name, "task": task_label(task), "seed": seed, "metric": metric,
                   "score": scores[metric], "scores": scores, "split": "test" if result.test else "validation",
                   "finetune_seconds": result.seconds, "pretrain_seconds": summary.get("seconds", 0.0),
                   "pretrain_val_loss": summary.get("final_val_loss")}
            with open(results_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def _run_cell_job(args: tuple) -> list[dict]:
    study, cell, cfg, finished, results_path, threads = args
    return run_cell(study, cell, cfg, finished, results_path, threads)


def read_results(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: that fine-tune runs again
                    continue
    return rows


def prepare_data(plan: Plan, show_progress: bool = True) -> None:
    """Clean (for `clean: true` cells), train the tokenizer and build every distinct shard set once, before cells run
    side by side."""
    from ptlab.cleaning import clean_files
    from ptlab.data import ensure_shards, ensure_tokenizer

    built = set()
    for cell, cfg in plan.cells:
        if cell.clean:
            raw = list(cfg.data.train_files)
            digest = hashlib.sha256(json.dumps(raw).encode()).hexdigest()[:12]
            cleaned = plan.run_dir / "data" / f"cleaned-{digest}.jsonl.gz"
            if not cleaned.is_file():
                report = clean_files(raw, cleaned, cleaned.with_suffix(".report.json"), show_progress=show_progress)
                if show_progress:
                    print(f"cleaned {', '.join(raw)}: kept {report.docs_out:,} of {report.docs_in:,} documents", file=sys.stderr)
            cfg.data.train_files = [str(cleaned)]
            cfg.data.shards_dir = str(plan.run_dir / "shards" / data_key(cfg))
        tokenizer = ensure_tokenizer(cfg.data, show_progress)
        if cell.pretrain and cfg.data.shards_dir not in built:
            ensure_shards(cfg.data, tokenizer, show_progress)
            built.add(cfg.data.shards_dir)


def run_study(plan: Plan, jobs: int = 1, show_progress: bool = True, out=sys.stdout) -> Path:
    """Run every unfinished cell (`jobs` side by side), then write the table; returns the table's path."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "study.yaml").write_text(yaml.safe_dump(dataclasses.asdict(plan.study), sort_keys=False),
                                             encoding="utf-8")
    results_path = plan.run_dir / "results.jsonl"
    finished = {(r["cell"], r["task"], r["seed"]) for r in read_results(results_path)}
    expected = {(cell.name, task_label(t), s) for cell, _ in plan.cells for t in plan.study.tasks
                for s in plan.study.seeds}
    todo = [(cell, cfg) for cell, cfg in plan.cells
            if any((cell.name, task_label(t), s) not in finished for t in plan.study.tasks for s in plan.study.seeds)]
    print(f"study {plan.run_dir}: {len(expected & finished)}/{len(expected)} fine-tunes done; "
          f"{len(todo)} of {len(plan.cells)} cells to run", file=out, flush=True)
    if todo:
        prepare_data(plan, show_progress)
    started = time.perf_counter()
    if jobs <= 1:
        for i, (cell, cfg) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {cell.name}", file=out, flush=True)
            run_cell(plan.study, cell, cfg, finished, results_path, show_progress=show_progress)
    else:
        threads = thread_share(jobs)
        work = [(plan.study, cell, cfg, finished, results_path, threads) for cell, cfg in todo]
        with job_pool(jobs) as pool:
            for (cell, _), rows in zip(todo, pool.map(_run_cell_job, work)):
                print(f"done: {cell.name} ({len(rows)} fine-tunes)", file=out, flush=True)
    if todo:
        print(f"ran {len(todo)} cells in {(time.perf_counter() - started) / 60:.1f} minutes", file=out, flush=True)
    return write_tables(plan, read_results(results_path), out)


# ---------------------------------------------------------------- tables


def summarize(plan: Plan, rows: list[dict]) -> list[dict]:
    """Per cell: mean and std over seeds per task, and the average over tasks of the task means."""
    tasks = [task_label(t) for t in plan.study.tasks]
    summary = []
    for cell, cfg in plan.cells:
        figures = cell_figures(cfg)
        entry = {"cell": cell.name, "architecture": cell.architecture,
                 "objective": cfg.objective.name if cell.pretrain else "none",
                 "parameters": figures["parameters"], "flops_per_example": figures["flops_per_example"],
                 "pretrain_tokens": figures["pretrain_tokens"] if cell.pretrain else 0, "tasks": {}}
        mine = [r for r in rows if r["cell"] == cell.name]
        for task in tasks:
            seen = [r for r in mine if r["task"] == task]
            scores = [r["score"] for r in seen]
            if seen:
                entry["metric_" + task] = seen[0]["metric"]
            entry["tasks"][task] = (statistics.mean(scores) if scores else None,
                                    statistics.stdev(scores) if len(scores) > 1 else 0.0, len(scores))
        entry["pretrain_val_loss"] = mine[0].get("pretrain_val_loss") if mine else None
        means = [m for m, _, n in entry["tasks"].values() if n]
        entry["average"] = statistics.mean(means) if len(means) == len(tasks) else None
        entry["minutes"] = (sum(r["finetune_seconds"] for r in mine) + (mine[0]["pretrain_seconds"] if mine else 0)) / 60
        summary.append(entry)
    return summary


def write_tables(plan: Plan, rows: list[dict], out=sys.stdout) -> Path:
    summary = summarize(plan, rows)
    tasks = [task_label(t) for t in plan.study.tasks]
    metric_of = {task: next((e["metric_" + task] for e in summary if "metric_" + task in e), "") for task in tasks}
    header = ["cell", "architecture", "objective", "params", "FLOPs/ex", "pre-train val loss"] + [
        f"{t} ({metric_of[t]})" for t in tasks] + ["average", "minutes"]
    md = [f"Study `{plan.run_dir}` (size {plan.study.size}; fine-tuning seeds {plan.study.seeds}; mean ± std over "
          "seeds; average = mean of the task means)", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    csv_rows = []
    for e in summary:
        cells = [e["cell"], e["architecture"], e["objective"], f"{e['parameters'] / 1e6:.1f}M",
                 f"{e['flops_per_example'] / 1e9:.2f}G",
                 f"{e['pretrain_val_loss']:.2f}" if e["pretrain_val_loss"] is not None else "-"]
        record = {"cell": e["cell"], "architecture": e["architecture"], "objective": e["objective"],
                  "parameters": e["parameters"], "flops_per_example": e["flops_per_example"],
                  "pretrain_tokens": e["pretrain_tokens"], "pretrain_val_loss": e["pretrain_val_loss"]}
        for task in tasks:
            mean, std, n = e["tasks"][task]
            cells.append(f"{mean:.1f} ± {std:.1f}" if n else "-")
            record[f"{task}_mean"], record[f"{task}_std"], record[f"{task}_seeds"] = mean, std, n
        cells.append(f"{e['average']:.1f}" if e["average"] is not None else "-")
        cells.append(f"{e['minutes']:.1f}")
        record["average"], record["minutes"] = e["average"], e["minutes"]
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append(record)
    table = "\n".join(md) + "\n"
    write_text_atomic(plan.run_dir / "table.md", table)
    tmp = plan.run_dir / "table.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    os.replace(tmp, plan.run_dir / "table.csv")
    _chart(summary, tasks, plan.run_dir / "chart.png")
    print("\n" + table, file=out, flush=True)
    return plan.run_dir / "table.md"


def _chart(summary: list[dict], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [e["cell"] for e in summary]
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
    for i, task in enumerate(tasks):
        means = [e["tasks"][task][0] if e["tasks"][task][2] else np.nan for e in summary]
        stds = [e["tasks"][task][1] for e in summary]
        ax.bar(np.arange(len(names)) + (i - (len(tasks) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=task)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
