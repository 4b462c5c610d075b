"""Planning a study: the study file, its cells as pre-training configs, and the runs they make: each pre-trained
cell once per pre-training seed (and per task for a cell that adapts to each task, after the cell it starts from),
then each fine-tune per task, pre-training seed and fine-tuning seed."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptlab.config import (
    Config,
    DataConfig,
    FinetuneConfig,
    TaskConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    read_yaml,
    seed_problem,
)
from ptlab.errors import PtlabError
from ptlab.lab.adaptive import adapt_data, task_label, task_reference

ARCHITECTURES = ("encoder-decoder", "shared", "half-layers", "lm", "prefix-lm")
ADAPT = ("task",)  # a cell's `adapt`: pre-train per task on that task's own training inputs (TAPT)

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
    init: str = ""  # an earlier cell: continue pre-training its final checkpoint of the same pre-training seed
    adapt: str = ""  # "task": pre-train once per task on that task's training-split inputs only, then fine-tune
    tasks: list[str] = field(default_factory=list)  # only these of the study's tasks (empty: all)


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
    pretrain_seeds: list[int] = field(default_factory=list)  # each pre-training per seed; empty: the base's seed
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
        labels = [task_label(t) for t in self.tasks]
        for key, seeds in (("seeds", self.seeds), ("pretrain_seeds", self.pretrain_seeds)):
            if len(set(seeds)) != len(seeds) or any(seed_problem(s) for s in seeds):
                raise PtlabError(f"config key '{key}': seeds must be distinct and in [0, 2**63), got {seeds}")
        earlier: dict[str, StudyCell] = {}
        for i, cell in enumerate(self.cells):
            if not cell.name:
                raise PtlabError(f"config key 'cells[{i}].name': every cell needs a name")
            if cell.architecture not in ARCHITECTURES:
                raise PtlabError(f"config key 'cells[{i}].architecture': unknown {cell.architecture!r} "
                                 f"(known: {', '.join(ARCHITECTURES)})")
            if names.count(names[i]) > 1:
                raise PtlabError(f"config key 'cells[{i}].name': {cell.name!r} is used twice")
            if cell.adapt and cell.adapt not in ADAPT:
                raise PtlabError(f"config key 'cells[{i}].adapt': unknown {cell.adapt!r} (known: {', '.join(ADAPT)})")
            unknown = [t for t in cell.tasks if t not in labels]
            if unknown:
                raise PtlabError(f"config key 'cells[{i}].tasks': unknown task {unknown[0]!r} (the study's tasks: "
                                 f"{', '.join(labels)})")
            if (cell.init or cell.adapt) and not cell.pretrain:
                raise PtlabError(f"config key 'cells[{i}].pretrain': a cell with init or adapt pre-trains")
            if cell.init:
                self._check_init(i, cell, earlier)
            earlier[cell.name] = cell
        for i, task in enumerate(self.tasks):
            task.validate()
        self.finetune.train.validate()

    def _check_init(self, i: int, cell: StudyCell, earlier: dict[str, StudyCell]) -> None:
        source = earlier.get(cell.init)
        if source is None:
            known = f"earlier cells: {', '.join(earlier)}" if earlier else "it is the first cell"
            raise PtlabError(f"config key 'cells[{i}].init': no earlier cell is named {cell.init!r} ({known})")
        if not source.pretrain:
            raise PtlabError(f"config key 'cells[{i}].init': cell {cell.init!r} does not pre-train")
        if source.architecture != cell.architecture:
            raise PtlabError(f"config key 'cells[{i}].init': cell {cell.init!r} has another architecture "
                             f"({source.architecture}, not {cell.architecture})")
        if adapts_per_task(self, source):
            missing = [t for t in cell_task_labels(self, cell) if t not in cell_task_labels(self, source)]
            if missing:
                raise PtlabError(f"config key 'cells[{i}].tasks': init cell {cell.init!r} pre-trains per task and "
                                 f"not for {missing[0]!r}; restrict this cell's tasks to its own")

    def cell_named(self, name: str) -> StudyCell:
        return next(c for c in self.cells if c.name == name)


def cell_tasks(study: StudyConfig, cell: StudyCell) -> list[TaskConfig]:
    """The study's tasks this cell is fine-tuned on (its `tasks`, or all)."""
    return [t for t in study.tasks if not cell.tasks or task_label(t) in cell.tasks]


def cell_task_labels(study: StudyConfig, cell: StudyCell) -> list[str]:
    return [task_label(t) for t in cell_tasks(study, cell)]


def adapts_per_task(study: StudyConfig, cell: StudyCell) -> bool:
    """Whether the cell pre-trains once per task: it adapts to each task, or starts from a cell that does."""
    return cell.adapt == "task" or (bool(cell.init) and adapts_per_task(study, study.cell_named(cell.init)))


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


def override_text(key: str, value: Any) -> str:
    """A dotted key and its value as the `key=value` override `load_config` reads (non-strings as JSON)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[StudyConfig, Path]:
    """The study config and the directory its relative `base` path is read from."""
    path = Path(path)
    data = read_yaml(path)
    apply_overrides(data, overrides, "key=value (e.g. size=small, common.train.device=cuda)")
    study = from_dict(StudyConfig, data, "")
    study.validate()
    return study, path.parent


def cell_config(study: StudyConfig, cell: StudyCell, base_dir: Path, run_name: str = "pretrain",
                tags: tuple[str, ...] = ()) -> Config:
    """The pre-training config of a cell: base, then size preset, then `common`, then the architecture, then the
    cell's own `set`, with the run directory inside the study (RUN_DIR/cells/<cell>/<run_name>)."""
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
    overrides["run_dir"] = str(Path(study.run_dir) / "cells" / cell_slug(cell) / run_name)
    try:
        cfg = load_config(base, [override_text(k, v) for k, v in overrides.items()])
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
    track_as_study_run(cfg.train, study, f"{cell_slug(cell)}/{run_name}", [f"cell={cell.name}", *tags])
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


# Data keys the shard key names outright, or that only shape the tokenizer (whose directory is in the key)
_KEYED = {"train_files", "validation_files", "sources", "tokenizer", "separator", "mixture", "shards_dir",
          "tokenizer_kind", "vocab_size", "num_sentinels", "tokenizer_sample_bytes"}


def data_key(cfg: Config) -> str:
    """Cells with the same key share shards. A mixture's weights and caps change the sampling, not the shards. Any
    other data key a cell sets away from its default (a reader option, a filter) keys the shards too; unset, it
    leaves the key as it always was, so a study's existing shards stay its own."""
    sources = [[s.name, s.files, s.sources, s.validation_files] for s in cfg.data.mixture]
    identity = [cfg.data.train_files, cfg.data.validation_files, cfg.data.sources, cfg.data.tokenizer,
                cfg.data.separator] + ([sources] if sources else [])
    default = DataConfig()
    others = {f.name: getattr(cfg.data, f.name) for f in dataclasses.fields(DataConfig)
              if f.name not in _KEYED and getattr(cfg.data, f.name) != getattr(default, f.name)}
    if others:
        identity.append(others)
    return hashlib.sha256(json.dumps(identity, default=str, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class PretrainRun:
    """One pre-training of a cell: per pre-training seed, and per task for a cell that adapts to each task."""

    cell: StudyCell
    cfg: Config
    pretrain_seed: int
    task: TaskConfig | None = None  # an adapting run: the task whose training inputs it pre-trains on
    init: PretrainRun | None = None  # the run whose final checkpoint this one continues
    tokenizer: str = ""  # the study's tokenizer, which builds the shards (an init run copies the same one)

    @property
    def name(self) -> str:
        return f"{self.cell.name} / {Path(self.cfg.run_dir).name}"


@dataclass
class FinetuneRun:
    cell: StudyCell
    cfg: Config  # the cell's (or its pre-training run's) config: model, tokenizer, device
    task: TaskConfig
    seed: int
    pretrain: PretrainRun | None  # None: from random weights
    directory: str  # under RUN_DIR/cells/<cell>/

    @property
    def key(self) -> tuple[str, str, int | None, int]:
        return self.cell.name, task_label(self.task), self.pretrain and self.pretrain.pretrain_seed, self.seed


@dataclass
class Plan:
    study: StudyConfig
    cells: list[tuple[StudyCell, Config]]  # each cell's config (its first pre-training run's, seed aside)
    run_dir: Path
    pretrains: list[PretrainRun] = field(default_factory=list)  # dependencies first
    finetunes: list[FinetuneRun] = field(default_factory=list)


def pretrain_seeds(study: StudyConfig, cfg: Config) -> list[int]:
    return list(study.pretrain_seeds) or [cfg.seed]


def pretrain_run_name(task: TaskConfig | None, seed: int, base_seed: int) -> str:
    """The base config's seed keeps the directory a single-seed study has always used."""
    return "pretrain" + (f"-{task_label(task)}" if task else "") + ("" if seed == base_seed else f"-seed{seed}")


def finetune_run_name(task: TaskConfig, seed: int, pretrain_seed: int | None, base_seed: int) -> str:
    suffix = "" if pretrain_seed is None or pretrain_seed == base_seed else f"-pretrain-seed{pretrain_seed}"
    return f"{task_label(task)}-seed{seed}{suffix}"


def plan_study(study: StudyConfig, base_dir: Path) -> Plan:
    run_dir = Path(study.run_dir)
    plan = Plan(study, [], run_dir)
    runs: dict[tuple[str, int, str | None], PretrainRun] = {}
    for cell in study.cells:
        cfg = cell_config(study, cell, base_dir)
        cfg.data.shards_dir = str(run_dir / "shards" / data_key(cfg))  # cells with other data never share shards
        plan.cells.append((cell, cfg))
        if not cell.pretrain:
            for task in cell_tasks(study, cell):
                plan.finetunes += [FinetuneRun(cell, cfg, task, seed, None, finetune_run_name(task, seed, None, 0))
                                   for seed in study.seeds]
            continue
        per_task = adapts_per_task(study, cell)
        for pretrain_seed in pretrain_seeds(study, cfg):
            for task in cell_tasks(study, cell) if per_task else [None]:
                init = None
                if cell.init:  # the init cell's run of this seed (and of this task, if it pre-trains per task)
                    per_task_init = adapts_per_task(study, study.cell_named(cell.init))
                    init = runs[(cell.init, pretrain_seed, task_label(task) if per_task_init else None)]
                run = pretrain_run(study, cell, base_dir, cfg.seed, pretrain_seed, task, init)
                runs[(cell.name, pretrain_seed, task_label(task) if task else None)] = run
                plan.pretrains.append(run)
                for ft_task in [task] if task else cell_tasks(study, cell):
                    plan.finetunes += [
                        FinetuneRun(cell, run.cfg, ft_task, seed, run,
                                    finetune_run_name(ft_task, seed, pretrain_seed, cfg.seed))
                        for seed in study.seeds]
    return plan


def pretrain_run(study: StudyConfig, cell: StudyCell, base_dir: Path, base_seed: int, pretrain_seed: int,
                 task: TaskConfig | None, init: PretrainRun | None) -> PretrainRun:
    """A cell's pre-training for one seed (and one task when it adapts): an adapting cell's data is the task's
    training inputs; a cell with `init` continues that cell's run of the same seed (and task)."""
    run_dir = Path(study.run_dir)
    tags = (f"pretrain_seed={pretrain_seed}",) + ((f"task={task_label(task)}",) if task else ())
    cfg = cell_config(study, cell, base_dir, pretrain_run_name(task, pretrain_seed, base_seed), tags)
    cfg.seed = pretrain_seed
    if cell.adapt == "task":
        adapt_data(cfg.data, task_reference(task, run_dir / "data"))
    tokenizer = cfg.data.tokenizer
    cfg.data.shards_dir = str(run_dir / "shards" / data_key(cfg))
    if init is not None:
        if cfg.model != init.cfg.model:
            raise PtlabError(f"study cell {cell.name!r}: its model differs from that of its init cell "
                             f"{init.cell.name!r}; continued pre-training keeps the init's model")
        cfg.init = init.cfg.run_dir
        cfg.data.tokenizer = str(Path(cfg.run_dir) / "tokenizer")  # the init's, copied there when the run starts
    cfg.validate()
    return PretrainRun(cell, cfg, pretrain_seed, task, init, tokenizer)


# ---------------------------------------------------------------- running


def finetune_config(study: StudyConfig, cell: StudyCell, cfg: Config, task: TaskConfig, seed: int,
                    checkpoint: str | None, name: str | None = None) -> FinetuneConfig:
    """A fine-tune of the study's recipe in RUN_DIR/cells/<cell>/<name> (default <task>-seed<N>)."""
    ft = study.finetune
    name = name or f"{task_label(task)}-seed{seed}"
    train = dataclasses.replace(ft.train, device=cfg.train.device, threads=cfg.train.threads)
    track_as_study_run(train, study, f"{cell_slug(cell)}/{name}",
                       [f"cell={cell.name}", f"task={task_label(task)}", f"seed={seed}"])
    return FinetuneConfig(run_dir=str(Path(study.run_dir) / "cells" / cell_slug(cell) / name),
                          seed=seed, init=checkpoint or "none", tokenizer=cfg.data.tokenizer,
                          model=copy.deepcopy(cfg.model), task=copy.deepcopy(task), train=train, epochs=ft.epochs,
                          max_steps=ft.max_steps, patience=ft.patience)
