"""Planning a study: the study file, its cells as pre-training configs, and what they will cost."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptlab.config import (
    Config,
    FinetuneConfig,
    TaskConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    read_yaml,
)
from ptlab.data.tasks import custom_task_name
from ptlab.errors import PtlabError

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

    from ptlab.models import build_model, count_parameters
    from ptlab.models.flops import training_flops

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

    from ptlab.data.tasks import resolve_task
    from ptlab.models.flops import measure_matmul_tflops, training_flops

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
    return task.name or (custom_task_name(Path(task.train)) if task.train else "custom")


# ---------------------------------------------------------------- tables
