"""What a study plan costs before it runs: parameters and FLOPs per cell, and a rough wall-clock estimate per cell
from its pre-training runs and fine-tunes (`ptlab study --dry-run`)."""

from __future__ import annotations

import copy
import math

from ptlab.config import Config
from ptlab.lab.study.plan import Plan


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
    """Rough wall-clock per cell (all its pre-training runs and fine-tunes): FLOPs at `efficiency` of this
    machine's measured matmul peak (fine-tunes counted at their maximum length). The first finished study gives
    real times in its table."""
    import torch

    from ptlab.data.tasks import resolve_task
    from ptlab.models.flops import measure_matmul_tflops, training_flops

    first = plan.cells[0][1]
    cuda = first.train.device == "cuda" or (first.train.device == "auto" and torch.cuda.is_available())
    dtype = torch.bfloat16 if first.train.precision == "bf16" else torch.float32
    peak = measure_matmul_tflops(dtype, device="cuda" if cuda and torch.cuda.is_available() else "cpu") * 1e12
    ft = plan.study.finetune
    estimates = {cell.name: 0.0 for cell, _ in plan.cells}
    for run in plan.pretrains:
        estimates[run.cell.name] += cell_figures(run.cfg)["pretrain_flops"] / (peak * efficiency)
    examples = {}
    for run in plan.finetunes:
        task_cfg = run.task
        key = id(task_cfg)
        if key not in examples:
            examples[key] = task_cfg.max_train_examples or sum(1 for _ in resolve_task(task_cfg).examples("train"))
        steps = ft.max_steps or math.ceil(ft.epochs * examples[key] / ft.train.batch_size)
        per_example = training_flops(_with_vocab(run.cfg), task_cfg.max_input_length, task_cfg.max_target_length)
        estimates[run.cell.name] += steps * ft.train.batch_size * per_example / (peak * efficiency)
    return estimates


def _with_vocab(cfg: Config):
    model = copy.deepcopy(cfg.model)
    model.vocab_size = model.vocab_size or cfg.data.vocab_size
    model.validate()
    return model


def format_plan(plan: Plan, estimates: dict[str, float] | None = None) -> str:
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
        minutes = f"{estimates[cell.name] / 60:.1f}" if estimates else "-"
        lines.append(f"| {cell.name} | {cell.architecture} | {objective} | {start} | "
                     f"{figures['parameters'] / 1e6:.1f}M | {figures['flops_per_example'] / 1e9:.2f}G | {tokens} | "
                     f"{len(runs)} | {finetunes} | {minutes} |")
    if estimates:
        lines += ["", (f"estimated total: {sum(estimates.values()) / 60:.0f} minutes (one job; a rough FLOP-based "
                       "estimate)")]
    return "\n".join(lines)
