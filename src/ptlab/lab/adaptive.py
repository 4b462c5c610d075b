"""Task-adaptive pre-training (TAPT, Gururangan et al. 2020, "Don't Stop Pretraining"): continue pre-training a
checkpoint on the unlabeled inputs of one task's training split, with the checkpoint's own objective, then fine-tune
from the adapted weights. `ptlab tapt` runs both steps; a study's `adapt: task` cells use the same data rules.

    tapt(load_config("ft.yaml", cls=FinetuneConfig))   # OUT/adapt (continued pre-training), OUT/finetune (scores)

Only the training split's inputs are pre-training text: no labels, and neither the validation nor the test split
(the adaptation run has no validation files), so the fine-tune's scores stay honest.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ptlab.config import (
    Config,
    DataConfig,
    FinetuneConfig,
    TaskConfig,
    config_from_dict,
)
from ptlab.data.tasks import TASK_PREFIX, TASKS, custom_task_name, task_input_texts
from ptlab.errors import PtlabError
from ptlab.files import write_text_atomic

TAPT_EPOCHS = 3  # default adaptation: about this many passes over the task's training inputs
TAPT_STEPS_RANGE = (20, 2000)  # ... within these bounds


def task_label(task: TaskConfig) -> str:
    """A task's name in run directories and tables: its bundled name, or its training file's."""
    return task.name or (custom_task_name(Path(task.train)) if task.train else "custom")


def is_bundled_as_is(task: TaskConfig) -> bool:
    """A bundled task whose files and format the config leaves alone (caps and lengths do not matter here)."""
    return task.name in TASKS and not any((task.train, task.validation, task.test, task.input_template,
                                           task.target_field))


def task_reference(task: TaskConfig, directory: Path) -> str:
    """The `data.train_files` entry for a task's training inputs: `task:NAME` for a bundled task, else the task
    definition that `write_task_definition` puts in `directory`."""
    if is_bundled_as_is(task):
        return TASK_PREFIX + task.name
    return TASK_PREFIX + str(directory / f"task-{task_label(task)}.yaml")


def write_task_definition(task: TaskConfig, directory: Path) -> None:
    """Write the YAML definition `task_reference` names (nothing for a bundled task): the task's keys, its files
    as absolute paths, and no cap on the training examples (all of the split's inputs are adaptation text)."""
    if is_bundled_as_is(task):
        return
    definition = dataclasses.asdict(task)
    for split in ("train", "validation", "test"):
        if definition[split]:
            definition[split] = str(Path(definition[split]).resolve())
    definition["max_train_examples"] = 0
    write_text_atomic(directory / f"task-{task_label(task)}.yaml", yaml.safe_dump(definition, sort_keys=False))


def adapt_data(data: DataConfig, reference: str) -> None:
    """Point pre-training data at one task's training inputs only: no other text, no corpus source filter (the
    task's documents are their own source) and no validation split (no validation or test text in the run)."""
    data.train_files = [reference]
    data.validation_files = []
    data.mixture = []
    data.sources = []


# ---------------------------------------------------------------- ptlab tapt


@dataclass
class TaptResult:
    adapt_dir: Path  # the continued pre-training run
    steps: int
    finetune: object  # ptlab.downstream.finetune.FinetuneResult
    interrupted: str | None = None


def pretraining_config(init: str) -> tuple[Config, Path]:
    """The run config a checkpoint was pre-trained with (the config.yaml of its run directory, else its own), and
    the checkpoint directory."""
    from ptlab.train.checkpoint import resolve_checkpoint
    from ptlab.train.continued import is_hf_directory

    path = Path(init)
    if not path.exists():
        raise PtlabError(f"config key 'init': {init} does not exist")
    if is_hf_directory(path):
        raise PtlabError(f"config key 'init': {init} is a Hugging Face model without a ptlab pre-training config; "
                         "TAPT continues with the objective recorded in a ptlab run (import it with "
                         "`ptlab import-hf` and pre-train it with `init:` instead)")
    checkpoint = resolve_checkpoint(path)
    # the run directory holds checkpoints/step_N (or a fine-tune's best/); a checkpoint copied elsewhere has its own
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else (
        checkpoint.parent if checkpoint.name == "best" else checkpoint)
    candidates = [run_dir, checkpoint]
    found = next((d / "config.yaml" for d in candidates if (d / "config.yaml").is_file()), None)
    if found is None:
        raise PtlabError(f"config key 'init': no config.yaml in {path} or its run directory, so its pre-training "
                         "objective is unknown; TAPT needs a ptlab pre-training checkpoint")
    data = yaml.safe_load(found.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "task" in data or "objective" not in data:
        raise PtlabError(f"config key 'init': {found} is not a pre-training config; TAPT continues a pre-trained "
                         "checkpoint, not a fine-tuned one")
    return config_from_dict(data), checkpoint


def default_tapt_steps(texts: list[str], tokens_per_text, tokens_per_step: int) -> int:
    """About TAPT_EPOCHS passes over the task's inputs, within TAPT_STEPS_RANGE."""
    tokens = sum(tokens_per_text(texts))
    low, high = TAPT_STEPS_RANGE
    return min(high, max(low, math.ceil(TAPT_EPOCHS * tokens / tokens_per_step)))


def adaptation_config(pretrained: Config, ft: FinetuneConfig, adapt_dir: Path, reference: str,
                      steps: int | None) -> Config:
    """The continued pre-training run: the checkpoint's model, objective and optimizer recipe, on the task's
    training inputs; `steps` None: the default from the task's size (counted later, with the tokenizer)."""
    cfg = copy.deepcopy(pretrained)
    cfg.run_dir = str(adapt_dir)
    cfg.seed = ft.seed
    cfg.init = ft.init
    cfg.data.tokenizer = str(adapt_dir / "tokenizer")  # the init's, copied there
    cfg.data.shards_dir = None
    adapt_data(cfg.data, reference)
    train = cfg.train
    train.max_steps = steps or TAPT_STEPS_RANGE[0]
    train.device, train.threads = ft.train.device, ft.train.threads or train.threads
    train.experiment = train.run_name = train.tracking_uri = ""
    train.loggers, train.tensorboard = [], None
    return cfg


def fit_schedule(cfg: Config, steps: int) -> None:
    """The pre-training recipe over `steps`: warmup at most a tenth of them, checkpoints along the way (resume)."""
    train = cfg.train
    train.max_steps = steps
    train.warmup_steps = min(train.warmup_steps, steps // 10)
    train.checkpoint_every = max(1, min(train.checkpoint_every or 100, steps // 4 or 1))
    train.keep_checkpoints = 1
    cfg.validate()


def tapt(ft: FinetuneConfig, steps: int | None = None, out: str | None = None, show_progress: bool = True,
         log=sys.stderr) -> TaptResult:
    """Continue pre-training `ft.init` on the training inputs of `ft.task` for `steps` (default: about
    TAPT_EPOCHS passes), then fine-tune from the adapted weights with `ft`'s recipe. OUT (default `ft.run_dir`)
    holds adapt/ and finetune/; a second call resumes whichever of them is unfinished."""
    from ptlab.data.tokenizer import load_tokenizer
    from ptlab.downstream.finetune import finetune
    from ptlab.train.loop import pretrain

    if ft.init == "none":
        raise PtlabError("config key 'init': TAPT continues pre-training a checkpoint; init is none")
    if steps is not None and steps < 1:
        raise PtlabError(f"--steps must be at least 1, got {steps}")
    pretrained, checkpoint = pretraining_config(ft.init)
    root = Path(out or ft.run_dir)
    adapt_dir = root / "adapt"
    reference = task_reference(ft.task, adapt_dir)
    cfg = adaptation_config(pretrained, ft, adapt_dir, reference, steps)
    write_task_definition(ft.task, adapt_dir)
    name, texts = task_input_texts(reference[len(TASK_PREFIX):])
    if steps is None:
        tokenizer = load_tokenizer(checkpoint)
        steps = default_tapt_steps(texts, lambda t: map(len, tokenizer.encode_batch(t)),
                                   cfg.train.batch_size * cfg.objective.inputs_length)
        print(f"tapt: {steps} steps of continued pre-training (about {TAPT_EPOCHS} passes over the "
              f"{len(texts):,} training inputs of {name}, within {TAPT_STEPS_RANGE[0]}-{TAPT_STEPS_RANGE[1]}); "
              "--steps N to choose", file=log, flush=True)
    fit_schedule(cfg, steps)
    marker = adapt_dir / "adapt-done.json"
    done = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    if done.get("steps") != steps:
        result = pretrain(cfg, show_progress=show_progress, resume="auto")
        if result.interrupted:
            return TaptResult(adapt_dir, result.steps, None, result.interrupted)
        write_text_atomic(marker, json.dumps({"steps": steps, "checkpoint": str(result.checkpoint),
                                              "task": name, "init": ft.init}, indent=2) + "\n")
    tuned = copy.deepcopy(ft)
    tuned.init, tuned.run_dir = str(adapt_dir), str(root / "finetune")
    tuned.validate()
    result = finetune(tuned, show_progress=show_progress)
    return TaptResult(adapt_dir, steps, result, result.interrupted)
