"""What a study plan costs before it runs: parameters and FLOPs per cell, and a wall-clock estimate per cell from
its pre-training runs and fine-tunes (`ptlab study --dry-run`).

The estimate times real work instead of dividing FLOPs by a matmul peak (which missed by 5x: a small model on a
CPU runs far below the peak, by how much depends on its shapes, and bf16 on a CPU without bf16 instructions is
20x slower than fp32). For each distinct model, recipe and batch shape, the cell's own model takes a few optimizer
steps (after warmup ones) with the run's optimizer, precision, device and threads; an evaluation's forward pass, a
generation task's decoding and a checkpoint are timed the same way. A run's time is then what it does that many
times, times what each takes:

- pre-training: measuring the matmul peak for its MFU, `train.max_steps` steps of `train.batch_size` examples at
  the objective's input and target lengths, `train.eval_batches` forward passes at step 0, every `train.eval_every`
  steps and at the end, and its checkpoints;
- fine-tuning: the steps its epochs take over the task's training examples, each batch padded to its longest
  example (lengths from the study's tokenizer; guessed from the text's bytes when it is not trained yet), and at
  each evaluation a checkpoint, the best weights and the scoring of the validation split; the test split's at the
  end (a generation task decodes `task.max_target_length` tokens).

Left out: what a study does once (the tokenizer and the shards, a process's first imports), what takes little
(building models, reading task files) and compilation: steps are timed eagerly, and a run that compiles
(`train.compile`, auto from 1,000 CPU steps) pays tens of seconds to compile, then runs its steps faster. Early
stopping can only make a fine-tune shorter.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ptlab.config import Config, ModelConfig, TaskConfig, TrainConfig
from ptlab.data.tasks import Task, resolve_task
from ptlab.lab.study.plan import Plan, StudyFinetune

WARMUP_STEPS = 1  # the first step allocates memory and picks kernels
TIMED_STEPS = 3  # their median: one step slowed by another process does not skew it
# A first step this slow is taken as the step's time, to keep the dry run short (e.g. bf16 on a CPU without bf16
# instructions, 20x slower than fp32): its one-time costs are then a small part of it.
SLOW_STEP_SECONDS = 1.0
FORWARD_SHARE = 1 / 3  # of a training step: a pre-training evaluation batch (forward 2N FLOPs, backward 4N)
# Without the study's tokenizer (trained when the study starts), fine-tuning lengths are guessed from the text's
# bytes: about 2 bytes per token at a 1k vocabulary (measured on the bundled tasks), 0.4 more per doubling.
BYTES_PER_TOKEN_AT_1K = 2.0
BYTES_PER_TOKEN_PER_DOUBLING = 0.4
# Train keys that change nothing in a step's time (how many rows, when and where things happen, what the run is
# called): cells and fine-tunes that differ only in these share their timings.
_NOT_TIMED = {"batch_size", "batch_warmup_steps", "batch_warmup_start", "max_steps", "lr", "schedule",
              "warmup_steps", "min_lr_ratio", "decay_ratio", "eval_every", "eval_batches", "checkpoint_every",
              "keep_checkpoints", "async_checkpoint", "log_every", "loggers", "tensorboard", "experiment", "run_name",
              "tracking_uri", "tags", "peak_tflops", "max_bad_steps"}


def example_lengths(cfg: Config) -> tuple[int, int]:
    """Nominal (encoder inputs, targets) of one pre-training example, without needing the tokenizer."""
    lengths = objective_lengths(cfg)
    return lengths.inputs, lengths.targets  # a decoder-only model reads them as one sequence


def objective_lengths(cfg: Config):
    """The objective's `Lengths` at the config's inputs_length: the raw chunk of corpus tokens one example is cut
    from, and the nominal inputs and targets, without needing the tokenizer."""
    from ptlab.objectives.base import SpecialIds
    from ptlab.objectives.registry import build_objective

    vocab = cfg.data.vocab_size
    sentinels = tuple(range(vocab - cfg.data.num_sentinels, vocab))
    specials = SpecialIds(pad=0, eos=1, unk=2, sentinels=sentinels, mask=3, bos=4, vocab_size=vocab,
                          modes={"R": (5,), "X": (6,), "S": (7,)})
    objective, _ = build_objective(cfg.objective.name, cfg.objective.params, cfg.objective.inherited)
    return objective.lengths(cfg.objective.inputs_length, specials)


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


class StepTimer:
    """Seconds a step takes on this machine, timed on real steps once per distinct model, recipe and batch shape
    (a study's cells mostly share their model, so a grid of cells costs a few timings). A slow step (longer than
    SLOW_STEP_SECONDS) is compute-bound: its time grows with its tokens, so other shapes of the same model and
    recipe are priced from it instead of each waiting for a slow step of its own."""

    def __init__(self, threads: int = 0):
        self.threads = threads  # intra-op threads of every run (0: each run's train.threads, else torch's default)
        self._seconds: dict[str, float] = {}
        self._slow: dict[str, tuple[float, int]] = {}  # per model and recipe: a slow step's (seconds, tokens)

    def train_step(self, model: ModelConfig, train: TrainConfig, rows: int, inputs: int, targets: int,
                   padded: bool = False) -> float:
        """One optimizer step over `rows` examples of `inputs` and `targets` tokens, as the trainer takes it;
        `padded`: some rows are shorter (a fine-tuning batch), so the model takes the padding masks."""
        return self._timed(("train", model, _recipe(train)), (rows, inputs, targets, padded),
                           rows * (inputs + targets), train,
                           lambda: self._trainer(model, train, _batch(model, rows, inputs, targets, padded))[2])

    def forward(self, model: ModelConfig, train: TrainConfig, rows: int, inputs: int, targets: int,
                padded: bool = False) -> float:
        """One evaluation batch: the forward pass and the loss, without gradients."""
        return self._timed(("forward", model, train.precision, train.device), (rows, inputs, targets, padded),
                           rows * (inputs + targets), train,
                           lambda: self._forward(model, train, _batch(model, rows, inputs, targets, padded)))

    def generation(self, model: ModelConfig, train: TrainConfig, rows: int, inputs: int, new_tokens: int) -> float:
        """Greedy decoding of `new_tokens` tokens (none ends early) for `rows` inputs of `inputs` tokens."""
        return self._timed(("generate", model, train.precision, train.device), (rows, inputs, new_tokens),
                           rows * (inputs + new_tokens), train,
                           lambda: self._generate(model, train, rows, inputs, new_tokens))

    def checkpoint(self, model: ModelConfig, train: TrainConfig, optimizer_state: bool = True) -> float:
        """Writing a checkpoint of the model (with its optimizer's state, as a run's checkpoints; without, as a
        fine-tune's best weights), checksummed and synced as runs write them, and deleting it (as older ones are)."""
        # once: writing is slow for a large model, and a first write has no one-time costs to warm up
        return self._timed(("checkpoint", model, _recipe(train), optimizer_state), (), 0, train,
                           lambda: self._checkpoint(model, train, optimizer_state), once=True)

    def run_start(self, train: TrainConfig) -> float:
        """What a pre-training run does once before its first step that takes long: measuring the CPU's matmul
        peak for its MFU (unless train.peak_tflops is set)."""
        def measure():
            from ptlab.models.flops import peak_tflops
            from ptlab.train.distributed import pick_device

            return lambda: peak_tflops(pick_device(train.device), train.precision, train.peak_tflops)
        return self._timed(("start", train.device, train.precision, train.peak_tflops), (), 0, train, measure,
                           once=True)

    def _timed(self, what: tuple, shape: tuple, tokens: int, train: TrainConfig,
               measure: Callable[[], Callable[[], object]], once: bool = False) -> float:
        """Seconds of the step `measure` sets up for `what` (a model and recipe) at `shape`, a batch of `tokens`
        tokens (0: a step without a shape): the median of TIMED_STEPS calls after WARMUP_STEPS, or the first call's
        when it takes more than SLOW_STEP_SECONDS or `once`."""
        import torch

        from ptlab.train.host import configure_host, denormals_restored

        threads = self.threads or train.threads or torch.get_num_threads()
        family = json.dumps([*what, threads], default=_plain, sort_keys=True)
        name = json.dumps([family, *shape])
        if name in self._seconds:
            return self._seconds[name]
        if family in self._slow and tokens:
            seconds, measured = self._slow[family]
            self._seconds[name] = seconds * tokens / measured
            return self._seconds[name]
        before = torch.get_num_threads()
        try:
            with denormals_restored():
                configure_host(threads)  # as the run will have it: its threads, denormals flushed
                step = measure()
                timings = [_seconds(step)]
                if not once and timings[0] <= SLOW_STEP_SECONDS:
                    for _ in range(WARMUP_STEPS - 1):
                        step()
                    timings = [_seconds(step) for _ in range(TIMED_STEPS)]
        finally:
            torch.set_num_threads(before)
        self._seconds[name] = statistics.median(timings)
        if tokens and self._seconds[name] > SLOW_STEP_SECONDS:
            self._slow[family] = (self._seconds[name], tokens)
        return self._seconds[name]

    @staticmethod
    def _trainer(model_cfg: ModelConfig, train: TrainConfig, batch: dict[str, np.ndarray]) -> tuple:
        """(model, optimizer, a call that takes one optimizer step on `batch`) as a run builds them."""
        from ptlab.models.head_loss import training_chunk_tokens
        from ptlab.train.distributed import Runtime, pick_device
        from ptlab.train.loop import enable_activation_checkpointing, training_loss
        from ptlab.train.optim import build_optimizer
        from ptlab.train.step import label_count, optimizer_step

        device = pick_device(train.device)
        model = _model(model_cfg, device).train()
        if train.activation_checkpointing:
            enable_activation_checkpointing(model)
        optimizer = build_optimizer(model, train)
        chunk_tokens = training_chunk_tokens(train.loss_chunk_tokens, model.config.vocab_size, train.precision)
        loss_fn = training_loss(model, compiled=False, chunk_tokens=chunk_tokens)
        runtime, labels = Runtime(0, 1, device), label_count(batch)

        def step():  # optimizer_step reads the loss back: its time includes waiting for the device, as runs do
            return optimizer_step(model, optimizer, loss_fn, batch, train.lr, labels, train, runtime)
        return model, optimizer, step

    @classmethod
    def _checkpoint(cls, model_cfg: ModelConfig, train: TrainConfig, optimizer_state: bool) -> Callable[[], object]:
        import shutil
        import tempfile

        from ptlab.train.checkpoint import write_checkpoint

        model, optimizer, step = cls._trainer(model_cfg, train, _batch(model_cfg, 2, 8, 8, padded=False))
        step()  # the optimizer's state exists after a step
        config = Config(model=model_cfg)

        def write():
            target = Path(tempfile.mkdtemp(prefix="ptlab-estimate-")) / "checkpoint"
            try:
                state = {"optimizer": optimizer.state_dict()} if optimizer_state else None
                write_checkpoint(target, model, config, None, trainer_state=state)
            finally:
                shutil.rmtree(target.parent)
        return write

    @staticmethod
    def _forward(model_cfg: ModelConfig, train: TrainConfig, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        from ptlab.train.batches import model_inputs, to_tensors
        from ptlab.train.distributed import pick_device
        from ptlab.train.loop import evaluate_loss

        device = pick_device(train.device)
        model = _model(model_cfg, device)
        tensors = [to_tensors(model_inputs(batch), device)]
        return lambda: evaluate_loss(model, tensors, train.precision, device)  # returns a float: a device sync

    @staticmethod
    def _generate(model_cfg: ModelConfig, train: TrainConfig, rows: int, inputs: int,
                  new_tokens: int) -> Callable[[], object]:
        import torch

        from ptlab.models.generate import generate
        from ptlab.train.batches import autocast
        from ptlab.train.distributed import pick_device

        device = pick_device(train.device)
        model = _model(model_cfg, device)
        ids = torch.from_numpy(_tokens(np.random.default_rng(0), model_cfg, (rows, inputs))).to(device)
        mask = torch.ones_like(ids)

        def decode():
            with torch.no_grad(), autocast(train.precision, device):
                # eos -1: no row ends early, as a fine-tuned model's long answers do not
                return generate(model, ids, mask, max_new_tokens=new_tokens, eos_token_id=-1, pad_token_id=0,
                                decoder_start_token_id=0).cpu()
        return decode


def _recipe(train: TrainConfig) -> dict:
    """The train keys that can change a step's time."""
    return {k: v for k, v in dataclasses.asdict(train).items() if k not in _NOT_TIMED}


def _model(cfg: ModelConfig, device):
    from ptlab.models import build_model

    return build_model(copy.deepcopy(cfg)).to(device)


def _seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _plain(value: object) -> object:
    """Dataclasses in a timing's key as dicts."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


def _tokens(rng: np.random.Generator, model: ModelConfig, shape) -> np.ndarray:
    return rng.integers(8, model.vocab_size, size=shape, dtype=np.int64)  # past the special ids


def _batch(model: ModelConfig, rows: int, inputs: int, targets: int, padded: bool) -> dict[str, np.ndarray]:
    """A batch of random tokens laid out as the trainer's batches are, for `model`'s architecture."""
    from ptlab.data.pipeline import decoder_batch, encoder_decoder_batch
    from ptlab.objectives import Example

    rng = np.random.default_rng(0)
    shorter = 1 if padded and rows > 1 else 0  # the last row one token shorter: the batch has padding
    examples = [Example(_tokens(rng, model, inputs - shorter * (i == rows - 1)),
                        _tokens(rng, model, targets - shorter * (i == rows - 1))) for i in range(rows)]
    if model.is_encoder_decoder:
        return encoder_decoder_batch(examples, inputs, targets, pad_id=0, decoder_start_id=0)
    return decoder_batch(examples, 0, pad_id=0)


def _with_vocab(cfg: Config) -> ModelConfig:
    model = copy.deepcopy(cfg.model)
    model.vocab_size = model.vocab_size or cfg.data.vocab_size
    model.validate()
    return model


def pretraining_seconds(cfg: Config, timer: StepTimer) -> float:
    """A pre-training run: its start, its steps, its evaluations (at step 0, every train.eval_every steps and at
    the end; a small part of a run, so priced from the step's time instead of timed on their own) and its
    checkpoints (every train.checkpoint_every steps and at the end)."""
    train, model = cfg.train, _with_vocab(cfg)
    inputs, targets = example_lengths(cfg)
    step = timer.train_step(model, train, train.batch_size, inputs, targets)
    evaluations = 0
    if cfg.data.validation_files or any(s.validation_files for s in cfg.data.mixture):
        evaluations = 2 + _every(train.max_steps - 1, train.eval_every)
    checkpoints = 1 + _every(train.max_steps - 1, train.checkpoint_every)
    return (timer.run_start(train) + (train.max_steps + evaluations * train.eval_batches * FORWARD_SHARE) * step
            + checkpoints * timer.checkpoint(model, train))


def _every(steps: int, period: int) -> int:
    """How many of `steps` steps fall on a multiple of `period` (0: none)."""
    return steps // period if period else 0


class TaskLengths:
    """A task's examples as token counts (input and target, each cut to its limit and ended with EOS, as
    fine-tuning encodes them): from the study's tokenizer when it exists, else guessed from bytes."""

    def __init__(self, tokenizer_dir: str, vocab_size: int):
        from ptlab.data.tokenizer import load_tokenizer

        path = Path(tokenizer_dir)
        self.tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
        doublings = math.log2(max(vocab_size, 2) / 1024)
        self.bytes_per_token = max(1.0, BYTES_PER_TOKEN_AT_1K + BYTES_PER_TOKEN_PER_DOUBLING * doublings)

    def count(self, texts: list[str]) -> list[int]:
        if self.tokenizer is not None:
            return [len(ids) for ids in self.tokenizer.encode_batch(texts)]
        return [math.ceil(len(text.encode("utf-8")) / self.bytes_per_token) for text in texts]

    def pairs(self, pairs: list[tuple[str, str]], task: TaskConfig) -> tuple[np.ndarray, np.ndarray]:
        sources = np.minimum(self.count([s for s, _ in pairs]), task.max_input_length - 1) + 1
        targets = np.minimum(self.count([t for _, t in pairs]), task.max_target_length - 1) + 1
        return sources, targets


def _mean_longest(lengths: np.ndarray, rows: int, order: np.ndarray | None = None) -> int:
    """The mean over batches of `rows` examples (in `order`) of the batch's longest example: a padded batch's
    length, rounded up."""
    lengths = lengths if order is None else lengths[order]
    batches = [lengths[i:i + rows] for i in range(0, len(lengths), rows)]
    return math.ceil(np.mean([batch.max() for batch in batches]))


def finetune_seconds(cfg: Config, task_cfg: TaskConfig, ft: StudyFinetune, timer: StepTimer,
                     lengths: TaskLengths) -> float:
    """A fine-tune of a cell's model on a task with the study's recipe `ft`: its steps, its checkpoints and best
    weights, the scoring of the validation split at each evaluation and of the test split at the end."""
    model = _with_vocab(cfg)
    train = dataclasses.replace(ft.train, device=cfg.train.device, threads=cfg.train.threads)  # as the run's
    task = resolve_task(task_cfg)
    sources, targets = lengths.pairs(task.examples("train"), task_cfg)
    rows = train.batch_size
    steps_per_epoch = math.ceil(len(sources) / rows)
    steps = ft.max_steps or max(1, round(ft.epochs * steps_per_epoch))
    order = np.random.default_rng(0).permutation(len(sources))  # batches are drawn in a shuffled order
    seconds = steps * timer.train_step(model, train, rows, _mean_longest(sources, rows, order),
                                       _mean_longest(targets, rows, order), padded=True)
    # an evaluation every eval_every steps and at the last: a checkpoint, and with a validation split its scoring
    # and the best weights so far (counted each time: early on most evaluations improve)
    evaluations = math.ceil(steps / (train.eval_every or steps_per_epoch))
    validated = task.files.get("validation") is not None and task.files["validation"].is_file()
    seconds += ((evaluations + _every(steps, train.checkpoint_every)) * timer.checkpoint(model, train)
                + (evaluations if validated else 1) * timer.checkpoint(model, train, optimizer_state=False))
    scorings = {"validation": evaluations if validated else 0, "test": 1}
    for split, times in scorings.items():
        if times and task.files.get(split) is not None and task.files[split].is_file():
            seconds += times * _scoring_seconds(model, train, task, split, task_cfg, timer, lengths)
    return seconds


def _scoring_seconds(model: ModelConfig, train: TrainConfig, task: Task, split: str, task_cfg: TaskConfig,
                     timer: StepTimer, lengths: TaskLengths) -> float:
    """Scoring a split as `ptlab.downstream.evaluate.predict` does: each label ranked by a forward pass
    (classification), or each answer decoded."""
    from ptlab.downstream.evaluate import EVAL_BATCH_SIZE

    sources, _ = lengths.pairs(task.examples(split), task_cfg)
    if task.labels:  # each example once per label, EVAL_BATCH_SIZE rows at a time
        per_batch = max(1, EVAL_BATCH_SIZE // len(task.labels))
        label_tokens = max(lengths.count(task.labels)) + 1
        rows = per_batch * len(task.labels)
        batch = timer.forward(model, train, rows, _mean_longest(sources, per_batch), label_tokens, padded=True)
        return len(sources) / per_batch * batch
    batch = timer.generation(model, train, EVAL_BATCH_SIZE, _mean_longest(sources, EVAL_BATCH_SIZE),
                             task.max_target_length)
    return len(sources) / EVAL_BATCH_SIZE * batch


def estimate_seconds(plan: Plan, jobs: int = 1) -> dict[str, float]:
    """Wall-clock seconds per cell (all its pre-training runs and fine-tunes) from steps timed on this machine, with
    the threads each run gets when `jobs` run side by side. Cells whose `train.device` this machine lacks are left
    out (they cannot be timed here)."""
    from ptlab.errors import PtlabError
    from ptlab.train.distributed import pick_device
    from ptlab.train.host import thread_share

    timer = StepTimer(thread_share(jobs) if jobs > 1 else 0)
    lengths: dict[str, TaskLengths] = {}
    finetunes: dict[str, float] = {}  # the seeds of a (model, task) fine-tune all take the same time
    estimates: dict[str, float] = {}
    for cell, cfg in plan.cells:
        try:
            pick_device(cfg.train.device)
        except PtlabError:
            continue
        seconds = sum(pretraining_seconds(run.cfg, timer) for run in plan.pretrains if run.cell.name == cell.name)
        for run in (r for r in plan.finetunes if r.cell.name == cell.name):
            tokenizer = run.pretrain.tokenizer if run.pretrain else run.cfg.data.tokenizer
            key = json.dumps([_with_vocab(run.cfg), run.task, tokenizer, run.cfg.train.device, run.cfg.train.threads],
                             default=_plain, sort_keys=True)
            if key not in finetunes:
                if tokenizer not in lengths:
                    lengths[tokenizer] = TaskLengths(tokenizer, run.cfg.data.vocab_size)
                finetunes[key] = finetune_seconds(run.cfg, run.task, plan.study.finetune, timer, lengths[tokenizer])
            seconds += finetunes[key]
        estimates[cell.name] = seconds
    return estimates


def format_plan(plan: Plan, estimates: dict[str, float] | None = None, jobs: int = 1) -> str:
    study = plan.study
    seeds = (f"{len(study.pretrain_seeds)} pre-training x " if study.pretrain_seeds else "") + \
        f"{len(study.seeds)} fine-tuning seeds"
    lines = [(f"study {plan.run_dir}: {len(plan.cells)} cells x {len(study.tasks)} tasks x {seeds} (size "
              f"{study.size}): {len(plan.pretrains)} pre-training runs, {len(plan.finetunes)} fine-tunes"), "",
             ("| cell | architecture | objective | starts from | params | FLOPs/example | pre-train tokens per run | "
              "pre-training runs | fine-tunes | est. minutes |"),
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for cell, cfg in plan.cells:
        figures = cell_figures(cfg)
        runs = [r for r in plan.pretrains if r.cell.name == cell.name]
        finetunes = sum(1 for r in plan.finetunes if r.cell.name == cell.name)
        objective = cfg.objective.name if cell.pretrain else "(none)"
        data = "the task's inputs" if cell.adapt == "task" else ""
        start = " + ".join(x for x in (f"cell {cell.init!r}" if cell.init else "", data) if x) or "-"
        tokens = f"{figures['pretrain_tokens'] / 1e6:.1f}M" if cell.pretrain else "0"
        minutes = f"{estimates[cell.name] / 60:.1f}" if estimates and cell.name in estimates else "-"
        lines.append(f"| {cell.name} | {cell.architecture} | {objective} | {start} | "
                     f"{figures['parameters'] / 1e6:.1f}M | {figures['flops_per_example'] / 1e9:.2f}G | {tokens} | "
                     f"{len(runs)} | {finetunes} | {minutes} |")
    if estimates:
        side = f"{jobs} jobs side by side" if jobs > 1 else "one job"
        lines += ["", (f"estimated total: {sum(estimates.values()) / 60 / jobs:.0f} minutes ({side}; each cell's "
                       "steps timed on this machine, see docs/studies.md)")]
        if len(estimates) < len(plan.cells):
            lines.append("cells marked - run on a device this machine does not have: not timed")
    return "\n".join(lines)
