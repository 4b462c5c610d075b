"""Zero- and few-shot prompting against pre-training tokens and model size: GPT-2's (zero-shot) and GPT-3's
(in-context learning) claims, measured in miniature. Pre-trains every model of the study file (each run keeps its
checkpoints), prompts each checkpoint, and the random-weights model (step 0), on the study's classification tasks
with each number of demonstrations and demonstration seed, and writes OUT/{results.jsonl, table.md, incontext.png}.

    python studies/incontext.py configs/study-incontext.yaml            # the full grid: many hours on 2 cores
    python studies/incontext.py configs/study-incontext.yaml --quick    # a smoke version (9 CPU-minutes)

Finished pre-training runs and evaluations already in results.jsonl are reused when the script is run again.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

from ptlab.config import Config, TaskConfig, load_config, read_yaml
from ptlab.data.tasks import resolve_task
from ptlab.downstream.incontext import context_length, score_prompted
from ptlab.errors import PtlabError
from ptlab.files import json_text, write_text_atomic
from ptlab.models import build_model
from ptlab.train.checkpoint import (
    list_checkpoints,
    load_checkpoint_config,
    load_checkpoint_tokenizer,
    load_model,
)
from ptlab.train.loop import pretrain
from ptlab.train.runlog import read_metrics

KEYS = {"out": str, "tasks": list, "shots": list, "demo_seeds": list, "eval_examples": int, "overrides": list,
        "models": dict, "quick": dict}


def load_study(path: str, quick: bool) -> dict:
    """The study file, with its `quick` keys in place of the others when `quick`; one-line errors for bad keys."""
    study = read_yaml(path)
    for key, value in study.items():
        if key not in KEYS:
            raise PtlabError(f"{path}: unknown key {key!r}; keys: {', '.join(KEYS)}")
        if not isinstance(value, KEYS[key]):
            raise PtlabError(f"{path}: {key} must be a {KEYS[key].__name__}")
    missing = [k for k in KEYS if k not in study and k not in ("quick", "overrides")]
    if missing:
        raise PtlabError(f"{path}: missing {', '.join(missing)}")
    if quick:
        extra = dict(study.get("quick") or {})
        model_overrides = extra.pop("model_overrides", {})
        study = {**study, **extra}
        study["models"] = {name: {**spec, "overrides": list(spec.get("overrides", [])) +
                                  list(model_overrides.get(name, []))} for name, spec in study["models"].items()}
    for name, spec in study["models"].items():
        if not isinstance(spec, dict) or "config" not in spec:
            raise PtlabError(f"{path}: models.{name} needs a config (and optional overrides)")
    for task in study["tasks"]:
        if not resolve_task(TaskConfig(name=task)).is_classification:
            raise PtlabError(f"{path}: task {task} is not a classification task")
    return study


def run_config(study: dict, name: str, out: Path) -> Config:
    """A model's pre-training config: its base config, the study's overrides, its own; run and tokenizer in OUT."""
    spec = study["models"][name]
    base = read_yaml(spec["config"])
    kind = base.get("data", {}).get("tokenizer_kind", "unigram")
    overrides = [*study.get("overrides", []), *spec.get("overrides", []), f"run_dir={out / name}",
                 f"data.tokenizer={out / f'tokenizer-{kind}'}", "train.loggers=[]"]
    return load_config(spec["config"], overrides)


def tokens_at(run_dir: Path, step: int) -> int:
    """Tokens trained on by `step`, as last logged before it."""
    logged = [r["tokens"] for r in read_metrics(run_dir) if "tokens" in r and "loss" in r and r["step"] <= step]
    return int(logged[-1]) if logged else 0


def random_weights(checkpoint: Path, device: str):
    """The run's architecture freshly initialised (its seed): the floor every pre-trained step must beat."""
    config = load_checkpoint_config(checkpoint)
    torch.manual_seed(config.seed)
    return build_model(config.model).to(device).eval()


def evaluate_run(study: dict, name: str, cfg: Config, done: set, results: Path, device: str = "cpu") -> None:
    run_dir = Path(cfg.run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise PtlabError(f"{run_dir}: no checkpoints (set train.checkpoint_every)")
    tokenizer = load_checkpoint_tokenizer(checkpoints[-1])
    budget = context_length(load_checkpoint_config(checkpoints[-1]))
    points = [(0, lambda: random_weights(checkpoints[-1], device))]
    points += [(int(c.name.split("_")[1]), lambda c=c: load_model(c, device)) for c in checkpoints]
    for step, build in points:
        model = None
        for task_name in study["tasks"]:
            task = resolve_task(TaskConfig(name=task_name, max_eval_examples=study["eval_examples"]))
            for shots in study["shots"]:
                for seed in (study["demo_seeds"] if shots else study["demo_seeds"][:1]):
                    key = (name, step, task_name, shots, seed)
                    if key in done:
                        continue
                    model = model or build()
                    scores, _ = score_prompted(model, tokenizer, task, "test", shots, seed, budget, device=device)
                    row = {"model": name, "family": cfg.model.family, "step": step,
                           "tokens": tokens_at(run_dir, step), "parameters": sum(p.numel() for p in model.parameters()),
                           "task": task_name, **scores}
                    with open(results, "a", encoding="utf-8") as f:
                        f.write(json_text(row) + "\n")
                    done.add(key)
                    print(f"{name} step {step} {task_name} {shots}-shot seed {seed}: accuracy "
                          f"{scores['accuracy']:.1f} (per token {scores['accuracy_per_token']:.1f}), "
                          f"{scores['shots_fitted_mean']:.1f} shots fitted", flush=True)


def read_rows(results: Path) -> list[dict]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]


def _mean(rows: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def write_table(study: dict, rows: list[dict], path: Path) -> None:
    """Per task: a row per model and checkpoint, a column per number of shots: accuracy summed / per token
    (averaged over the demonstration seeds), the shots that fitted, and the floors."""
    lines = []
    for task in study["tasks"]:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        floor = task_rows[0]
        lines += [f"### {task} ({floor['examples']} test examples)", "",
                  (f"Majority class ({floor['majority_class']}): accuracy {floor['majority_accuracy']:.1f}. "
                   "Each cell: accuracy with labels ranked by summed / per-token log-likelihood, mean over "
                   "demonstration seeds; [shots that fitted in the context, on average]. Step 0 is the "
                   "random-weights model."), "",
                  "| model | params | step | tokens | " + " | ".join(f"{k}-shot" for k in study["shots"]) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(study["shots"])]
        for model in study["models"]:
            steps = sorted({r["step"] for r in task_rows if r["model"] == model})
            for step in steps:
                at = [r for r in task_rows if r["model"] == model and r["step"] == step]
                cells = []
                for shots in study["shots"]:
                    cell = [r for r in at if r["shots"] == shots]
                    cells.append(f"{_mean(cell, 'accuracy'):.1f} / {_mean(cell, 'accuracy_per_token'):.1f}"
                                 + (f" [{_mean(cell, 'shots_fitted_mean'):.1f}]" if shots else "") if cell else "-")
                lines.append(f"| {model} | {at[0]['parameters'] / 1e6:.2f}M | {step} | {at[0]['tokens'] / 1e6:.2f}M | "
                             + " | ".join(cells) + " |")
        lines.append("")
    write_text_atomic(path, "\n".join(lines))


def write_plot(study: dict, rows: list[dict], path: Path) -> None:
    """Per task: accuracy against pre-training tokens (one line per model and number of shots) and, at each run's
    last checkpoint, against parameters; the majority class dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in study["tasks"] if any(r["task"] == t for r in rows)]
    figure, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.5 * len(tasks)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for (left, right), task in zip(axes, tasks):
        task_rows = [r for r in rows if r["task"] == task]
        for m, model in enumerate(study["models"]):
            for s, shots in enumerate(study["shots"]):
                points = sorted({(r["tokens"], r["step"]) for r in task_rows if r["model"] == model
                                 and r["shots"] == shots})
                ys = [_mean([r for r in task_rows if r["model"] == model and r["shots"] == shots and r["step"] == st],
                            "accuracy") for _, st in points]
                if points:
                    left.plot([t / 1e6 for t, _ in points], ys, styles[s % 4], color=f"C{m}", marker="o",
                              markersize=3, label=f"{model} {shots}-shot")
        for s, shots in enumerate(study["shots"]):
            for family, marker in (("gpt2", "o"), ("llama", "s"), ("t5", "^"), ("bart", "v")):
                finals = []
                for model in study["models"]:
                    mine = [r for r in task_rows if r["model"] == model and r["family"] == family
                            and r["shots"] == shots]
                    if mine:
                        last = max(r["step"] for r in mine)
                        at = [r for r in mine if r["step"] == last]
                        finals.append((at[0]["parameters"] / 1e6, _mean(at, "accuracy")))
                if finals:
                    finals.sort()
                    right.plot(*zip(*finals), styles[s % 4], marker=marker, color=f"C{s}",
                               label=f"{family} {shots}-shot")
        floor = task_rows[0]["majority_accuracy"]
        for axis, xlabel in ((left, "pre-training tokens (millions)"), (right, "parameters (millions), last checkpoint")):
            axis.axhline(floor, color="grey", linestyle="--", linewidth=1, label="majority class")
            axis.set_xlabel(xlabel)
            axis.set_ylabel(f"{task} accuracy (%)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=6, ncol=2)
        right.set_xscale("log")
    figure.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="the study file, e.g. configs/study-incontext.yaml")
    parser.add_argument("--quick", action="store_true", help="the study's `quick` variant (a few CPU minutes)")
    parser.add_argument("--out", help="output folder (default: the study's `out`)")
    parser.add_argument("--device", default="cpu", help="where the checkpoints are prompted (default: %(default)s; "
                                                        "pre-training follows train.device, e.g. an override)")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.study, args.quick)
        out = Path(args.out or study["out"])
        out.mkdir(parents=True, exist_ok=True)
        results = out / "results.jsonl"
        done = {(r["model"], r["step"], r["task"], r["shots"], r["seed"]) for r in read_rows(results)}
        for name in study["models"]:
            cfg = run_config(study, name, out)
            pretrain(copy.deepcopy(cfg), show_progress=False)
            evaluate_run(study, name, cfg, done, results, args.device)
        rows = read_rows(results)
        write_table(study, rows, out / "table.md")
        write_plot(study, rows, out / "incontext.png")
        print(f"wrote {out / 'table.md'} and {out / 'incontext.png'}")
    except PtlabError as err:
        sys.exit(f"incontext: error: {err}")


if __name__ == "__main__":
    main()
