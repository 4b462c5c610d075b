"""`ptlab scaling ladder`: train a grid of model sizes x token budgets, every point to a fully decayed learning rate,
and fit the scaling law to it.

Each point is a warmup-stable-decay (WSD) run, and a size's points share one run: the stable phase, trained once
at the peak learning rate (`stable/`, schedule `constant` with the same warmup), with each budget's decay branched
from it (`decay-<steps>/`). A WSD run of b steps has the learning rate of the stable run up to its decay start, so
its first steps ARE the stable run's: the stable run is trained in segments, stopping at each branch step, and the
branch's run directory is seeded with a copy of the stable run's checkpoint there (weights, optimizer, RNG and data
position; and its metrics), then resumed with its own `train.schedule: wsd` and `train.max_steps`. Resuming is
exact in ptlab (the learning rate is a pure function of the step and the config, a batch of the seed and the
step), so a branch is bit for bit the WSD run trained from scratch, at the cost of one stable run plus one decay per
budget instead of a run per budget. The branch step is where the two schedules' learning rates first differ
(`branch_step`), computed from `lr_factor` itself; the checkpoint's data settings are the branch's, so the trainer's
resume check passes unchanged, and nothing about ordinary runs changes.

    RUN_DIR/<size>/stable/            the stable phase: checkpoints at every branch step
    RUN_DIR/<size>/decay-<steps>/     a point: the stable run's checkpoint, then its decay; point.json when done
    RUN_DIR/points.csv                one row per point, as `ptlab scaling fit` reads it (loss = validation bpb)
    RUN_DIR/fit.json, fit.png, predict.png

With `cells` (strategies compared as curves), each cell has all of this under RUN_DIR/cells/<cell>/, and
RUN_DIR/compare.json and compare.png set the cells' laws side by side (`ptlab.lab.scaling.compare`).

A point records N with and without embeddings (`params_total`, `params_non_embedding`; `params` is the one the
fit uses, `fit.params`), D (the corpus tokens its examples were cut from: steps x batch x the objective's raw
chunk), C (the trainer's FLOP count, `ptlab.models.flops`, of every step the point took, its share of the stable
run included) and the final validation loss and bits per byte.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptlab.config import Config, load_config
from ptlab.errors import PtlabError
from ptlab.files import json_text, write_text_atomic
from ptlab.lab.cost import _si
from ptlab.lab.scaling.approaches import compute_frontier, isoflop_parabolas
from ptlab.lab.scaling.compare import Curve, compare, format_comparison
from ptlab.lab.scaling.fit import GRIDS, Fit, fit_law
from ptlab.lab.scaling.plot import plot_comparison, plot_scaling
from ptlab.lab.scaling.predict import predict_holdout
from ptlab.lab.scaling.report import format_fit, format_holdout
from ptlab.lab.scaling.runs import PARAMETERS, read_runs
from ptlab.lab.study.estimate import objective_lengths
from ptlab.lab.study.plan import data_key, flatten, override_text
from ptlab.lab.study.schedule import Job, run_jobs

PARAMS = ("non_embedding", "total")  # fit.params: which N the law is fitted to
# Keys every ladder run takes unless the ladder's `common` says otherwise: decay to zero, no trackers
DEFAULTS = {"train.min_lr_ratio": 0.0, "train.loggers": []}
STABLE = "constant"  # the stable run's schedule: the WSD warmup, then the peak learning rate


@dataclass
class LadderSize:
    """A model size: its `model` keys (d_model, num_layers, ...), any other overrides in `set`, and its own token
    budgets in `tokens` (default: the ladder's)."""

    name: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    tokens: list[float] = field(default_factory=list)


@dataclass
class LadderCell:
    """A strategy with a law of its own: an objective, a model family, or any overrides (`set`)."""

    name: str = ""
    objective: str = ""  # objective.name
    family: str = ""  # model.family
    set: dict[str, Any] = field(default_factory=dict)


@dataclass
class LadderFit:
    params: str = "non_embedding"  # non_embedding (Kaplan et al.) | total (Hoffmann et al.)
    bootstrap: int = 200
    seed: int = 0
    grid: str = "coarse"
    holdout: int = 1  # the largest-compute points predicted by a fit without them; 0: none


@dataclass
class LadderConfig:
    run_dir: str = "runs/scaling"
    base: str = ""  # the pre-training config every point starts from (relative to the ladder file)
    common: dict[str, Any] = field(default_factory=dict)  # overrides of the base for every point
    tokens: list[float] = field(default_factory=list)  # token budgets D of every size
    sizes: list[LadderSize] = field(default_factory=list)
    cells: list[LadderCell] = field(default_factory=list)  # empty: one law, of the base config
    fit: LadderFit = field(default_factory=LadderFit)

    def validate(self) -> None:
        if not self.base:
            raise PtlabError("config key 'base': a ladder needs the pre-training config its points start from")
        if len(self.sizes) < 3:
            raise PtlabError(f"config key 'sizes': {len(self.sizes)} size(s); the law needs at least 3 to tell "
                             "A/N^alpha from E")
        _unique_names("sizes", self.sizes)
        _unique_names("cells", self.cells)
        budgets = set()
        for i, size in enumerate(self.sizes):
            tokens = size.tokens or self.tokens
            if not tokens:
                raise PtlabError(f"config key 'sizes[{i}].tokens': size {size.name!r} has no token budgets (and the "
                                 "ladder has no 'tokens')")
            bad = next((t for t in tokens if not t > 0), None)
            if bad is not None:
                raise PtlabError(f"config key 'sizes[{i}].tokens': budgets must be positive, got {bad:g}")
            budgets.update(tokens)
        if len(budgets) < 3:
            raise PtlabError(f"config key 'tokens': {len(budgets)} distinct budget(s); the law needs at least 3 to "
                             "tell B/D^beta from E")
        fit = self.fit
        if fit.params not in PARAMS:
            raise PtlabError(f"config key 'fit.params': unknown {fit.params!r} (known: {', '.join(PARAMS)})")
        if fit.grid not in GRIDS:
            raise PtlabError(f"config key 'fit.grid': unknown {fit.grid!r} (known: {', '.join(GRIDS)})")
        if fit.bootstrap < 0 or fit.holdout < 0:
            raise PtlabError("config keys 'fit.bootstrap' and 'fit.holdout' must be 0 or more")
        points = sum(len(s.tokens or self.tokens) for s in self.sizes)
        if points - fit.holdout < PARAMETERS:
            raise PtlabError(f"config key 'fit.holdout': {points} points less {fit.holdout} held out leave fewer "
                             f"than the {PARAMETERS} runs a fit needs")


def _unique_names(key: str, items: list) -> None:
    slugs = [slug(item.name) for item in items]
    for i, item in enumerate(items):
        if not item.name:
            raise PtlabError(f"config key '{key}[{i}].name': every entry needs a name")
        if slugs[i] in slugs[:i]:
            raise PtlabError(f"config key '{key}[{i}].name': {item.name!r} is used twice")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def load_ladder(path: str | Path, overrides: list[str] | None = None) -> tuple[LadderConfig, Path]:
    """The ladder config (with `key=value` overrides, e.g. fit.bootstrap=50) and the directory its relative `base`
    path is read from."""
    return load_config(path, overrides, cls=LadderConfig), Path(path).parent


# ---------------------------------------------------------------- the plan


@dataclass
class Point:
    """One (cell, size, budget): a WSD run of `steps` steps that starts as a copy of its size's stable run at
    `branch_step`."""

    cell: str
    size: str
    budget: float  # the tokens asked for; `tokens` is what the steps give
    steps: int
    branch_step: int
    tokens: int
    cfg: Config

    @property
    def name(self) -> str:
        return f"{self.size}-{_si(self.budget)}"

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)


@dataclass
class Rung:
    """A size of a cell: its stable run (`stable`, trained in segments to each branch step) and its points."""

    cell: str
    size: str
    stable: Config
    points: list[Point]

    @property
    def segments(self) -> list[int]:
        return sorted({p.branch_step for p in self.points})


@dataclass
class CellPlan:
    name: str
    directory: Path  # points.csv, fit.json, the plots
    objective: str
    rungs: list[Rung] = field(default_factory=list)

    @property
    def points(self) -> list[Point]:
        return [p for rung in self.rungs for p in rung.points]


@dataclass
class LadderPlan:
    ladder: LadderConfig
    run_dir: Path
    cells: list[CellPlan]


def _where(cell: LadderCell | None, size: LadderSize) -> str:
    return f"ladder {'cell ' + repr(cell.name) + ', ' if cell else ''}size {size.name!r}"


def _point_config(ladder: LadderConfig, base: Path, cell: LadderCell | None, size: LadderSize,
                  run_dir: Path) -> Config:
    """base, then the ladder's defaults, `common`, the cell, the size; a WSD schedule."""
    overrides = dict(DEFAULTS)
    overrides.update(flatten(ladder.common))
    if cell is not None:
        overrides.update({k: v for k, v in (("objective.name", cell.objective), ("model.family", cell.family)) if v})
        overrides.update(flatten(cell.set))
    overrides.update({f"model.{k}": v for k, v in flatten(size.model).items()})
    overrides.update(flatten(size.set))
    overrides.update({"train.schedule": "wsd", "run_dir": str(run_dir)})
    where = _where(cell, size)
    try:
        cfg = load_config(base, [override_text(k, v) for k, v in overrides.items()])
    except PtlabError as err:
        raise PtlabError(f"{where}: {err}") from None
    if not (cfg.data.validation_files or any(s.validation_files for s in cfg.data.mixture)):
        raise PtlabError(f"{where}: a ladder point's loss is its validation bits per byte; name "
                         "data.validation_files")
    if cfg.train.batch_warmup_steps:
        raise PtlabError(f"{where}: train.batch_warmup_steps changes the tokens per step; a ladder's budgets need "
                         "fixed batches")
    return cfg


def branch_step(stable, decayed) -> int:
    """Steps the stable run (`TrainConfig`) and a WSD run share: those before their learning rates first differ."""
    from ptlab.train.optim import lr_factor

    return next((s for s in range(decayed.max_steps) if lr_factor(s, stable) != lr_factor(s, decayed)),
                decayed.max_steps)


def _resolve_compile(cfg: Config, shortest: int) -> None:
    """`train.compile: auto` decided once for a size's runs, by its shortest piece (a segment of the stable run or a
    decay), so that the stable run and its branches take the same numerics."""
    import torch

    from ptlab.train.distributed import pick_device
    from ptlab.train.loop import compile_enabled

    if cfg.train.compile != "auto":
        return
    device = torch.device("cuda") if cfg.train.device == "cuda" else pick_device(cfg.train.device)  # no GPU: a plan
    cfg.train.compile = compile_enabled(dataclasses.replace(cfg.train, max_steps=shortest), device)


# Keys that do not change what a run computes: a run directory trained under other values is still its point's.
# (The stable run is trained in segments, so its saved train.max_steps is the last segment's.)
BOOKKEEPING = {"train.threads", "train.max_steps", "train.keep_checkpoints", "train.checkpoint_every",
               "train.async_checkpoint", "train.eval_every", "train.log_every", "train.loggers", "train.tensorboard",
               "train.experiment", "train.run_name", "train.tracking_uri", "train.tags", "train.peak_tflops",
               "train.compile", "train.device"}


def check_unchanged(cfg: Config, where: str) -> None:
    """A run directory the ladder would reuse (resume, branch from or take as finished) must have been trained
    with the config the ladder now plans for it, or its figures would be reported under settings they were not
    trained with. Keys the config file did not hold, or that the trainer fills in (None in the plan), pass."""
    from ptlab.schema import read_yaml

    saved_path = Path(cfg.run_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = flatten(read_yaml(saved_path))
    except PtlabError as err:  # a point taken as finished never reaches the trainer's own check
        raise PtlabError(f"{where}: {err}; delete {cfg.run_dir} to train this point again") from None
    planned = flatten(cfg.to_dict())
    for key, value in planned.items():
        if key in BOOKKEEPING or value is None or key not in saved or saved[key] == value:
            continue
        raise PtlabError(f"{where}: {cfg.run_dir} was trained with {key} {saved[key]!r}, the ladder now sets "
                         f"{value!r}; delete {Path(cfg.run_dir).parent} to train this size again, or set the "
                         "key back")


def plan_ladder(ladder: LadderConfig, base_dir: Path) -> LadderPlan:
    """Every point's config, checked: a bad key, a budget too small for the warmup or two budgets of one size
    that come to the same steps are one-line errors before anything is written."""
    run_dir = Path(ladder.run_dir)
    base = Path(ladder.base)
    if not base.is_absolute() and not base.is_file():
        base = base_dir / base
    if not base.is_file():
        raise PtlabError(f"config key 'base': not found: {base}")
    plan = LadderPlan(ladder, run_dir, [])
    for cell in ladder.cells or [None]:
        cell_dir = run_dir / "cells" / slug(cell.name) if cell is not None else run_dir
        cell_plan = CellPlan(cell.name if cell else "ladder", cell_dir, "")
        for size in ladder.sizes:
            size_dir = cell_dir / slug(size.name)
            cfg = _point_config(ladder, base, cell, size, size_dir / "stable")
            cfg.data.shards_dir = cfg.data.shards_dir or str(run_dir / "shards" / data_key(cfg))
            cell_plan.objective = cfg.objective.name
            per_step = cfg.train.batch_size * objective_lengths(cfg).raw
            points = []
            for budget in sorted(size.tokens or ladder.tokens):
                steps = round(budget / per_step)
                where = f"ladder size {size.name!r}, budget {budget:g} tokens"
                if steps <= cfg.train.warmup_steps:
                    raise PtlabError(f"{where}: {steps} steps of {per_step:,} tokens, not more than "
                                     f"train.warmup_steps ({cfg.train.warmup_steps}); no room to decay")
                if points and points[-1].steps == steps:
                    raise PtlabError(f"{where}: the same {steps} steps as budget {points[-1].budget:g}; space the "
                                     "budgets further apart")
                point_cfg = copy.deepcopy(cfg)
                point_cfg.train.max_steps = steps
                point_cfg.run_dir = str(size_dir / f"decay-{steps}")
                stable = dataclasses.replace(cfg.train, schedule=STABLE)
                points.append(Point(cell_plan.name, size.name, budget, steps, branch_step(stable, point_cfg.train),
                                    steps * per_step, point_cfg))
            stable_cfg = copy.deepcopy(cfg)
            stable_cfg.train.schedule = STABLE
            stable_cfg.train.keep_checkpoints += len(points)  # every branch step's checkpoint outlives its segment
            rung = Rung(cell_plan.name, size.name, stable_cfg, points)
            for piece in [stable_cfg, *(p.cfg for p in points)]:
                check_unchanged(piece, _where(cell, size))
            pieces = [b - a for a, b in zip([0, *rung.segments], rung.segments)] + [p.steps - p.branch_step
                                                                                   for p in points]
            for piece in [stable_cfg, *(p.cfg for p in points)]:
                _resolve_compile(piece, min(pieces))
            cell_plan.rungs.append(rung)
        plan.cells.append(cell_plan)
    return plan


# ---------------------------------------------------------------- running


def _done_marker(point: Point) -> Path:
    return point.run_dir / "point.json"


def finished_point(point: Point) -> dict | None:
    marker = _done_marker(point)
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
    else:  # the kind, not the value: a damaged marker's value may be anything, of any length
        problem = None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
    if problem is not None:  # a half-written or edited marker: its figures cannot be trusted
        raise PtlabError(f"{marker}: not a finished point's record ({problem}); delete it to train the point again")
    return record


def _seeded(point: Point) -> bool:
    from ptlab.train.checkpoint import list_checkpoints

    return finished_point(point) is not None or bool(list_checkpoints(point.run_dir))


def seed_branch(stable_dir: str | Path, step: int, branch_dir: str | Path) -> None:
    """Start a branch's run directory as the stable run at `step`: a copy of its checkpoint there (checked against
    the checksums) and of its metrics, so that resuming the branch continues exactly where the stable run was.
    The checkpoint lands last, under its final name by a rename: a branch with a checkpoint is seeded whole."""
    import os

    from ptlab.train.checkpoint import checkpoint_dir, verify_checkpoint

    source = checkpoint_dir(stable_dir, step)
    problem = verify_checkpoint(source) if source.is_dir() else "it does not exist"
    if problem is not None:
        raise PtlabError(f"cannot branch from {source}: {problem}")
    target = checkpoint_dir(branch_dir, step)
    staging = target.with_name(target.name + ".copying")  # not a checkpoint name until the rename
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging)
    metrics = Path(stable_dir) / "metrics.jsonl"
    if metrics.is_file():  # the resumed branch keeps the records up to `step` (`MetricsLog`)
        shutil.copyfile(metrics, Path(branch_dir) / "metrics.jsonl")
    os.replace(staging, target)


def run_segment(rung: Rung, upto: int, needed: Any = None, threads: int = 0, show_progress: bool = False) -> str:
    """Train the stable run to step `upto` (resuming its newest checkpoint) and seed the points that branch there,
    unless they are seeded already."""
    from ptlab.train.checkpoint import checkpoint_dir, latest_valid_checkpoint, verify_checkpoint
    from ptlab.train.loop import pretrain

    waiting = [p for p in rung.points if p.branch_step == upto and not _seeded(p)]
    checkpoint = checkpoint_dir(rung.stable.run_dir, upto)
    if not waiting:
        return str(checkpoint)
    if not (checkpoint.is_dir() and verify_checkpoint(checkpoint) is None):
        newest = latest_valid_checkpoint(rung.stable.run_dir)
        if newest is not None and newest.name > checkpoint.name:
            raise PtlabError(f"{rung.stable.run_dir} has trained past step {upto} without its checkpoint there, "
                             f"which {waiting[0].run_dir} branches from; delete {Path(rung.stable.run_dir).parent} to "
                             "train this size again")
        cfg = copy.deepcopy(rung.stable)
        cfg.train.max_steps = upto
        cfg.train.threads = threads or cfg.train.threads
        result = pretrain(cfg, show_progress=show_progress, resume="auto")
        if result.interrupted:
            raise KeyboardInterrupt(f"the stable run of {rung.size} interrupted ({result.interrupted})")
    for point in waiting:
        seed_branch(rung.stable.run_dir, upto, point.run_dir)
    return str(checkpoint)


def run_point(point: Point, needed: Any = None, threads: int = 0, show_progress: bool = False) -> dict:
    """Decay one point from its seeded branch to its last step, unless done; returns its record."""
    from ptlab.train.checkpoint import load_trainer_state
    from ptlab.train.loop import pretrain

    record = finished_point(point)
    if record is not None:
        return record
    cfg = copy.deepcopy(point.cfg)
    cfg.train.threads = threads or cfg.train.threads
    result = pretrain(cfg, show_progress=show_progress, resume="always")
    if result.interrupted:
        raise KeyboardInterrupt(f"{point.name} interrupted ({result.interrupted})")
    if result.steps != point.steps or result.final_val_bpb is None:
        raise PtlabError(f"{point.run_dir}: ended at step {result.steps} with validation bpb "
                         f"{result.final_val_bpb}; the point needs {point.steps} steps and a bpb")
    total, non_embedding = parameter_counts(cfg.model)  # the model config now holds the tokenizer's vocabulary
    record = {"name": point.name, "cell": point.cell, "size": point.size, "budget": point.budget,
              "steps": point.steps, "branch_step": point.branch_step, "params_total": total,
              "params_non_embedding": non_embedding, "tokens": point.tokens,
              "flops": load_trainer_state(result.checkpoint)["progress"]["flops"],
              "val_bpb": result.final_val_bpb, "val_loss": result.final_val_loss,
              "final_lr": _final_lr(point.run_dir), "seconds": result.train_seconds}
    write_text_atomic(_done_marker(point), json.dumps(record, indent=2) + "\n")
    return record


def _final_lr(run_dir: Path) -> float | None:
    from ptlab.train.runlog import read_metrics

    return next((r["lr"] for r in reversed(read_metrics(run_dir)) if "lr" in r), None)


def parameter_counts(model_cfg) -> tuple[int, int]:
    """(all parameters, those outside the embeddings): the token and position embeddings (T5's relative position
    buckets too) and an untied output head are embeddings, as Kaplan et al. counted."""
    import torch
    from torch import nn

    from ptlab.models import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(model_cfg)
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    embeddings.add(id(model.output_head().weight))
    return count_parameters(model), sum(p.numel() for p in model.parameters()
                                        if p.requires_grad and id(p) not in embeddings)


def prepare_data(plan: LadderPlan, show_progress: bool = True) -> None:
    """The tokenizer and the shards of every distinct data setting, once, before runs go side by side."""
    from ptlab.data import ensure_shards, ensure_tokenizer

    built = set()
    for cell in plan.cells:
        for rung in cell.rungs:
            data = rung.stable.data
            if (data.tokenizer, data.shards_dir) not in built:
                ensure_shards(data, ensure_tokenizer(data, show_progress), show_progress)
                built.add((data.tokenizer, data.shards_dir))


def _jobs(plan: LadderPlan) -> list[Job]:
    """Per size, the stable run's segments in order (each after the one before) and each point after the segment
    it branches from; finished points as jobs that are done."""
    jobs: list[Job] = []
    for cell in plan.cells:
        for rung in cell.rungs:
            segments: dict[int, Job] = {}
            previous = None
            for upto in rung.segments:
                done = "seeded" if all(_seeded(p) for p in rung.points if p.branch_step == upto) else None
                previous = segments[upto] = Job(f"{cell.name} / {rung.size} stable to step {upto}", run_segment,
                                                (rung, upto), previous, done, urgent=True)
                jobs.append(previous)
            for point in rung.points:
                jobs.append(Job(f"{cell.name} / {point.name}", run_point, (point,), segments[point.branch_step],
                                finished_point(point)))
    return jobs


POINT_COLUMNS = ("name", "cell", "size", "params", "tokens", "flops", "loss", "params_total",
                 "params_non_embedding", "val_bpb", "val_loss", "steps", "branch_step", "budget", "final_lr")


def points_csv(records: list[dict], params: str) -> str:
    """The table `ptlab scaling fit` reads: params (the fit's N), tokens, flops and loss (validation bpb), then the
    rest of each record."""
    out = io.StringIO()
    writer = csv.DictWriter(out, POINT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "params": record[f"params_{params}"], "loss": record["val_bpb"]})
    return out.getvalue()


@dataclass
class LadderResult:
    plan: LadderPlan
    records: dict[str, list[dict]]  # per cell, in plan order
    tables: dict[str, Path]  # per cell: its points.csv


def run_ladder(plan: LadderPlan, jobs: int = 1, show_progress: bool = True, out=None) -> LadderResult:
    """Train every unfinished point (`jobs` side by side; a size's stable run one segment after another, each
    point after the segment it branches from), then write each cell's points.csv. Prints to `out` (stdout)."""
    out = out or sys.stdout
    todo = _jobs(plan)
    points = [j for j in todo if j.function is run_point]
    remaining = [j for j in points if j.done is None]
    print(f"ladder {plan.run_dir}: {len(points) - len(remaining)}/{len(points)} points done; {len(remaining)} to "
          "train", file=out, flush=True)
    started = time.perf_counter()
    if remaining:
        prepare_data(plan, show_progress)
    records: dict[int, dict] = {}
    for job, result in run_jobs(todo, jobs, show_progress):
        if job.function is run_point:
            records[id(job.args[0])] = result
            if job.done is None:
                print(f"done: {job.name}: {result['val_bpb']:.4f} bits per byte after {result['steps']} steps",
                      file=out, flush=True)
    if remaining:
        print(f"trained {len(remaining)} points in {(time.perf_counter() - started) / 60:.1f} minutes", file=out,
              flush=True)
    result = LadderResult(plan, {}, {})
    for cell in plan.cells:
        cell_records = [records[id(p)] for p in cell.points]
        short = [r for r, p in zip(cell_records, cell.points) if r["steps"] != p.steps]
        if short:
            raise PtlabError(f"{short[0]['name']} trained {short[0]['steps']} steps, not its budget's")
        table = cell.directory / "points.csv"
        write_text_atomic(table, points_csv(cell_records, plan.ladder.fit.params))
        result.records[cell.name], result.tables[cell.name] = cell_records, table
    return result


# ---------------------------------------------------------------- the dry run


def estimate_seconds(plan: LadderPlan, jobs: int = 1) -> dict[str, float]:
    """Seconds per cell, from steps timed on this machine (`ptlab.lab.study.estimate`): each segment of a stable
    run and each decay priced as a run of its own length."""
    from ptlab.lab.study.estimate import StepTimer, pretraining_seconds
    from ptlab.train.host import thread_share

    timer = StepTimer(thread_share(jobs) if jobs > 1 else 0)
    estimates = {}
    for cell in plan.cells:
        seconds = 0.0
        for rung in cell.rungs:
            pieces = [(rung.stable, b - a) for a, b in zip([0, *rung.segments], rung.segments)]
            pieces += [(p.cfg, p.steps - p.branch_step) for p in rung.points]
            for cfg, steps in pieces:
                piece = copy.deepcopy(cfg)
                piece.train.max_steps = steps
                seconds += pretraining_seconds(piece, timer)
        estimates[cell.name] = seconds
    return estimates


def format_ladder_plan(plan: LadderPlan, estimates: dict[str, float] | None = None, jobs: int = 1) -> str:
    from ptlab.lab.study.estimate import cell_figures

    fit_params = plan.ladder.fit.params
    lines = [f"ladder {plan.run_dir}: {len(plan.cells)} cell(s) x {len(plan.ladder.sizes)} sizes, "
             f"{sum(len(c.points) for c in plan.cells)} points; the fit's N: {fit_params.replace('_', '-')} "
             "parameters; loss: validation bits per byte", "",
             "| cell | size | params | non-embedding | tokens (steps, decay from) | FLOPs | steps trained |",
             "|---|---|---:|---:|---|---:|---:|"]
    for cell in plan.cells:
        for rung in cell.rungs:
            model = copy.deepcopy(rung.stable.model)
            model.vocab_size = model.vocab_size or rung.stable.data.vocab_size
            total, non_embedding = parameter_counts(model)
            per_step = cell_figures(rung.points[0].cfg)["pretrain_flops"] / rung.points[0].steps
            budgets = ", ".join(f"{_si(p.tokens)} ({p.steps}, {p.branch_step})" for p in rung.points)
            flops = ", ".join(f"{per_step * p.steps:.2g}" for p in rung.points)
            trained = rung.segments[-1] + sum(p.steps - p.branch_step for p in rung.points)
            lines.append(f"| {cell.name} | {rung.size} | {_si(total)} | {_si(non_embedding)} | {budgets} | {flops} | "
                         f"{trained:,} (not {sum(p.steps for p in rung.points):,}) |")
    if estimates:
        side = f"{jobs} jobs side by side" if jobs > 1 else "one job"
        minutes = sum(estimates.values()) / 60 / jobs
        lines += ["", f"estimated total: {minutes:.{0 if minutes >= 10 else 1}f} minutes ({side}; steps timed on "
                      "this machine, see docs/studies.md)"]
    return "\n".join(lines)


# ---------------------------------------------------------------- the fits


def fit_ladder(result: LadderResult, out=None) -> dict[str, Fit]:
    """Per cell: the law fitted to its points.csv (printed with the compute-optimal allocation; fit.json, fit.png),
    the held-out prediction of its largest-compute points (predict.png); with two cells or more, the comparison
    (compare.json, compare.png). Prints to `out` (stdout)."""
    out = out or sys.stdout
    options, plan = result.plan.ladder.fit, result.plan
    fits: dict[str, Fit] = {}
    for cell in plan.cells:
        runs = read_runs(result.tables[cell.name])
        print(f"\n{cell.name}: {len(runs)} points of {runs.source}; N = {options.params.replace('_', '-')} "
              "parameters, D = corpus tokens, loss = validation bits per byte", file=out)
        fit = fits[cell.name] = fit_law(runs, options.bootstrap, options.seed, options.grid)
        isoflops = isoflop_parabolas(runs)
        print(format_fit(fit, len(GRIDS[options.grid]()), [compute_frontier(runs), isoflops]), file=out)
        write_text_atomic(cell.directory / "fit.json", json_text({**fit.to_json(), "params": options.params,
                                                                   "loss": "val_bpb"}, indent=2) + "\n")
        outputs = [cell.directory / "fit.json", plot_scaling(fit, cell.directory / "fit.png", isoflops)]
        if options.holdout:
            holdout = predict_holdout(runs, options.holdout, options.bootstrap, options.seed, options.grid)
            print(format_holdout(holdout), file=out)
            outputs.append(plot_scaling(holdout.fit, cell.directory / "predict.png", holdout=holdout))
        print(f"wrote {', '.join(str(o) for o in outputs)}", file=out, flush=True)
    if len(fits) > 1:
        comparison = compare([Curve.of(name, fit) for name, fit in fits.items()])
        objectives = {cell.objective for cell in plan.cells}
        note = ("note: the cells' objectives differ, so their losses score different targets; their exponents "
                "compare, their levels (and so where the curves cross) only as far as the targets do"
                if len(objectives) > 1 else "")
        print("\n" + format_comparison(comparison, note), file=out)
        write_text_atomic(plan.run_dir / "compare.json", json_text(comparison.to_json(), indent=2) + "\n")
        print(f"wrote {plan.run_dir / 'compare.json'}, {plot_comparison(comparison, plan.run_dir / 'compare.png')}",
              file=out, flush=True)
    return fits
