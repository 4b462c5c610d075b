"""`ptlab demo`: does pre-training pay off? The whole path on the bundled corpus, in about ten minutes on a laptop CPU.

Train (or reuse) a tokenizer; tokenize the corpus, leaving out every document that overlaps the two downstream
tasks' validation and test texts; pre-train a tiny T5 v1.1 with BART's text infilling and sentence permutation;
show what it learned (validation loss against a unigram baseline, the top-5 guesses for a masked word). Then
fine-tune it and the same architecture from scratch on two tasks and compare, each with a verdict computed from the
figures:
- `debian_summaries` (one-line summaries of package descriptions, ROUGE-L), where general pre-training transfers;
- `rt_polarity` (movie-review sentiment, accuracy), where it does not at this scale, so the pre-trained model is
  first adapted to the task's own unlabeled reviews (task-adaptive pre-training, Gururangan et al. 2020).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ptlab.config import Config, FinetuneConfig, TaskConfig, TrainConfig, load_config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.pipeline import pretrain_batches, resolve_objective, validation_batches
from ptlab.data.tasks import resolve_task
from ptlab.data.tokenizer import PtlabTokenizer
from ptlab.downstream.finetune import finetune
from ptlab.downstream.incontext import majority_floor
from ptlab.downstream.metrics import PER_EXAMPLE, paired_bootstrap
from ptlab.errors import PtlabError
from ptlab.lab.adaptive import adaptation_config, fit_schedule, task_reference
from ptlab.lab.baselines import unigram_target_baseline
from ptlab.lab.study.schedule import Job, run_jobs
from ptlab.train.checkpoint import load_model
from ptlab.train.host import available_cores
from ptlab.train.loop import pretrain
from ptlab.train.optim import MUON_OPTIMIZERS

DEFAULT_CONFIG = "configs/demo.yaml"

# The downstream half. Small training sets are where pre-training matters most (and what fits in the minutes).
SUMMARIES = TaskConfig(name="debian_summaries", max_train_examples=1500, max_eval_examples=200, max_input_length=128,
                       max_target_length=24)
SENTIMENT = TaskConfig(name="rt_polarity", max_train_examples=2000, max_eval_examples=500, max_input_length=96)
TAPT_SHARE = 0.2  # continued pre-training on the sentiment task's ~10k unlabeled reviews: a fifth of the steps
# RMS-scaled AdamW, as in pre-training: plain AdamW hardly moves T5's std-1 embeddings
FINETUNE = TrainConfig(batch_size=32, optimizer="adamw_scale", lr=1e-2, schedule="linear", warmup_steps=30,
                       min_lr_ratio=0.0, eval_every=50, loggers=[])
FINETUNE_EPOCHS = 2.0


def _wrap(label: str, text: str, width: int = 100) -> str:
    return textwrap.fill(text, width=width, initial_indent=f"  {label:<13}", subsequent_indent=" " * 15)


def run_demo(config_path: str | None = DEFAULT_CONFIG, overrides: list[str] | None = None,
             show_progress: bool = True, out=sys.stdout) -> dict:
    started = time.perf_counter()
    if config_path is not None and not Path(config_path).is_file():
        config_path = None  # installed without the repository's configs/: use the built-in defaults
    cfg: Config = load_config(config_path, overrides)
    print("ptlab demo: does pre-training pay off? A tiny T5 pre-trained on the bundled corpus, then fine-tuned next "
          "to the same model from scratch", file=out)
    tokenizer = ensure_tokenizer(cfg.data, show_progress)
    train_shard, val_shard = ensure_shards(cfg.data, tokenizer, show_progress)
    if val_shard is None:
        raise PtlabError("config key 'data.validation_files': the demo needs validation files")
    print(f"  tokenizer   {cfg.data.tokenizer_kind}, {tokenizer.vocab_size:,} ids ({cfg.data.tokenizer})", file=out)
    print(f"  corpus      {train_shard.num_tokens:,} training tokens in {train_shard.index['num_documents']:,} "
          f"documents; {val_shard.num_tokens:,} validation tokens", file=out)
    if cfg.data.decontaminate:
        print(f"              without the documents that share a 13-word sequence with the validation or test "
              f"texts of {', '.join(cfg.data.decontaminate)}", file=out)
    objective = resolve_objective(cfg.objective)
    settings = ", ".join(f"{k} {v}" for k, v in objective.as_dict().items())
    print(f"  objective   {objective.name} ({settings}), {cfg.objective.inputs_length} input tokens", file=out)
    train = cfg.train
    rates = f"lr {train.lr}" + (f", matrices {train.muon_lr}" if train.optimizer in MUON_OPTIMIZERS else "") + (
        f", embeddings {train.embedding_lr}" if train.embedding_lr else "")
    print(f"  training    {train.max_steps} steps x {train.batch_size} examples, {train.optimizer} ({rates}), "
          f"{train.schedule} schedule, {train.precision}", file=out)

    result = pretrain(cfg, show_progress)
    specials = tokenizer.specials
    eval_batches = validation_batches(pretrain_batches(cfg, objective, val_shard, specials, validation=True), cfg)
    eval_labels = np.concatenate([b["labels"].reshape(-1) for b in eval_batches])
    baseline = unigram_target_baseline(train_shard.tokens, eval_labels, specials, tokenizer.vocab_size)
    print(file=out)
    print("Pre-training", file=out)
    print(f"  parameters                 {result.parameters:,}", file=out)
    print(f"  validation loss            {result.initial_val_loss:.3f} -> {result.final_val_loss:.3f} nats "
          f"(a unigram model of the targets: {baseline:.3f})", file=out)
    if result.final_val_bpb is not None:
        print(f"  validation bits per byte   {result.initial_val_bpb:.3f} -> {result.final_val_bpb:.3f} "
              f"(of the text the targets decode to)", file=out)
    print(f"  training throughput        {result.tokens_per_second:,.0f} tokens/s (inputs + targets, "
          f"{torch.get_num_threads()} threads)", file=out)
    print(f"  checkpoint                 {result.checkpoint}", file=out)
    model = load_model(result.checkpoint)
    passage = _held_out_passage(tokenizer, cfg)
    if passage is not None:
        _show_masked_word(model, tokenizer, passage, out)

    summaries, sentiment = downstream(cfg, result.checkpoint, show_progress, out)
    elapsed = time.perf_counter() - started
    print(file=out)
    print("Verdicts (95% intervals over the test examples, one fine-tuning seed; across pre-training and "
          "fine-tuning seeds see docs/results/does-pretraining-help.md)", file=out)
    for comparison in (summaries, sentiment):
        print(f"  {comparison.verdict()}", file=out)
    print(f"\ndemo finished in {elapsed / 60:.1f} min", file=out)
    return {"initial_val_loss": result.initial_val_loss, "final_val_loss": result.final_val_loss,
            "initial_val_bpb": result.initial_val_bpb, "final_val_bpb": result.final_val_bpb,
            "baseline": baseline, "tokens_per_second": result.tokens_per_second, "seconds": elapsed,
            "checkpoint": str(result.checkpoint), **summaries.figures(), **sentiment.figures()}


# ---------------------------------------------------------------- what the pre-trained model learned


def _held_out_passage(tokenizer: PtlabTokenizer, cfg: Config, words: int = 40) -> list[str] | None:
    """The first `words` words of the first validation document with that many (the same one on every run)."""
    from ptlab.data.readers import iter_texts, reader_options

    for text in iter_texts(cfg.data.validation_files, sources=cfg.data.sources, **reader_options(cfg.data)):
        split = text.split()
        if len(split) >= words:
            return split[:words]
    return None


@torch.no_grad()
def _show_masked_word(model: torch.nn.Module, tokenizer: PtlabTokenizer, passage: list[str], out) -> None:
    """Mask one word of a held-out passage the way text infilling does and show the model's five most likely first
    pieces for it (the decoder reconstructs the passage; its prediction at the masked word is read given the true
    text before it). The word is one the passage used before, if any: a model that reads its context can recover it,
    one that learned only word frequencies cannot."""
    specials = tokenizer.specials
    bare = [w.strip(".,;:!?\"'()").lower() for w in passage]
    repeated = [i for i in range(10, len(passage)) if len(bare[i]) >= 4 and bare[i] in bare[:i]]
    target = repeated[-1] if repeated else max(range(len(passage)), key=lambda i: len(bare[i]))
    before, word, after = " ".join(passage[:target]), passage[target], " ".join(passage[target + 1:])
    prefix_ids = tokenizer.encode(before) if before else []
    masked = prefix_ids + [specials.mask] + tokenizer.encode(after) + [specials.eos]
    decoder_input = [specials.pad] + prefix_ids  # T5 starts decoding from the pad id
    model.eval()
    logits = model(torch.tensor([masked]), torch.tensor([decoder_input]), torch.ones(1, len(masked), dtype=torch.long))
    top = torch.topk(torch.softmax(logits[0, -1].float(), dim=-1), 5)
    guesses = ", ".join(f"{_piece(tokenizer, int(i))} {100 * float(p):.0f}%" for p, i in zip(top.values, top.indices))
    print(file=out)
    print("A held-out passage with one word masked (the model's five likeliest first pieces for it)", file=out)
    print(_wrap("input", f"{before} <mask> {after}"), file=out)
    print(_wrap("masked", word), file=out)
    print(_wrap("top-5", guesses), file=out)


def _piece(tokenizer: PtlabTokenizer, token: int) -> str:
    """A vocabulary piece as the reader sees it: "▁the" is the word "the", "s" continues a word."""
    piece = tokenizer.id_to_token(token)
    return piece.replace("\u2581", "_") if piece else repr(tokenizer.decode([token]))


# ---------------------------------------------------------------- task-adaptive pre-training


def task_adaptive_pretraining(cfg: Config, checkpoint: Path, task: str, steps: int, show_progress: bool) -> Path:
    """Continue pre-training `checkpoint` with the same objective on the unlabeled inputs of `task`'s training
    split, never its validation or test texts (`ptlab tapt`'s first half); returns the adapted checkpoint."""
    adapt_dir = Path(cfg.run_dir) / f"tapt-{task}"
    ft = FinetuneConfig(run_dir=str(adapt_dir), seed=cfg.seed, init=str(checkpoint), task=TaskConfig(name=task))
    adapt = adaptation_config(cfg, ft, adapt_dir, task_reference(ft.task, adapt_dir), steps)
    fit_schedule(adapt, steps)
    return pretrain(adapt, show_progress, resume="never").checkpoint


# ---------------------------------------------------------------- downstream comparisons

ARMS = ("pre-trained", "from scratch")


@dataclass
class Comparison:
    task: str
    metric: str
    pretrained: float
    scratch: float
    difference: float
    low: float
    high: float
    rows: dict[str, list[dict]]  # per arm, the test predictions

    def verdict(self) -> str:
        gap = f"{self.difference:+.1f} {self.metric} (95% interval {self.low:+.1f} to {self.high:+.1f})"
        if self.low > 0:
            return f"{self.task}: pre-training pays off, {gap}."
        if self.high < 0:
            return f"{self.task}: pre-training hurts, {gap}."
        return f"{self.task}: no clear difference, {gap}; the interval includes zero."

    def figures(self) -> dict:
        return {f"{self.task}_pretrained": self.pretrained, f"{self.task}_scratch": self.scratch,
                f"{self.task}_difference": self.difference}


def downstream(cfg: Config, checkpoint: Path, show_progress: bool, out) -> tuple[Comparison, Comparison]:
    """The five downstream runs (the adaptation, then four fine-tunes), two at a time on a machine with two cores
    or more: on a small CPU two single-threaded runs side by side do more work than one run on both cores. Returns
    the summaries' and the sentiment comparisons, printed in that order."""
    tapt_steps = max(1, round(TAPT_SHARE * cfg.train.max_steps))
    adapt = Job("task-adaptive pre-training on rt_polarity", _adapt_job,
                (cfg, str(checkpoint), SENTIMENT.name, tapt_steps), urgent=True)  # a fine-tune waits for it
    jobs, arms = [adapt], {}
    # the summaries' pre-trained arm starts from the checkpoint, the sentiment's from the adaptation's result. In
    # the order that keeps both workers busy: the longest run first, beside the adaptation (the summaries from
    # scratch: an untrained model decodes every summary to the length limit), then the sentiment arms as soon as
    # the adaptation is done; the summaries' pre-trained arm last (in task order the five took 192 s, one worker
    # idle for the last minute)
    for task, arm, init, waits_for in ((SUMMARIES, ARMS[1], "none", None), (SENTIMENT, ARMS[0], None, adapt),
                                       (SENTIMENT, ARMS[1], "none", None),
                                       (SUMMARIES, ARMS[0], str(checkpoint), None)):
        job = Job(f"fine-tuning {task.name}, {arm}", _finetune_job, (_finetune_config(cfg, task, arm, init),),
                  after=waits_for)
        jobs.append(job)
        arms[id(job)] = (task.name, arm)
    workers = 2 if available_cores() >= 2 else 1
    finished: dict[tuple[str, str], dict[str, float]] = {}
    with tqdm(total=len(jobs), desc=f"downstream ({workers} runs at a time)", unit=" runs",
              disable=not show_progress or workers == 1) as bar:
        for job, outcome in run_jobs(jobs, workers, show_progress=show_progress):
            bar.update()
            if id(job) in arms:
                finished[arms[id(job)]] = outcome
    summaries = compare(cfg, SUMMARIES, finished, out, "general pre-training: the checkpoint above")
    _show_summaries(summaries, out)
    sentiment = compare(cfg, SENTIMENT, finished, out,
                        f"general pre-training, then {tapt_steps:,} steps on the task's unlabeled training reviews")
    return summaries, sentiment


def _adapt_job(cfg: Config, checkpoint: str, task: str, steps: int, _needed, threads: int,
               show_progress: bool) -> str:
    cfg = copy.deepcopy(cfg)
    cfg.train.threads = threads
    if cfg.train.compile is True:  # set for the general run's length; a fifth of it may not repay compiling
        cfg.train.compile = "auto"
    return str(task_adaptive_pretraining(cfg, Path(checkpoint), task, steps, show_progress))


def _finetune_job(ft: FinetuneConfig, adapted: str | None, threads: int, show_progress: bool) -> dict[str, float]:
    """One fine-tune (from the adapted checkpoint when the job waited for one); its test scores."""
    ft = copy.deepcopy(ft)
    ft.train.threads = threads
    if adapted is not None:
        ft.init = adapted
    ft.validate()
    return finetune(ft, show_progress, resume="never").test


def _finetune_config(cfg: Config, task: TaskConfig, arm: str, init: str | None) -> FinetuneConfig:
    """One recipe for both arms: the pre-training's architecture, RMS-scaled AdamW, `FINETUNE_EPOCHS` passes
    (`init` None: the adapted checkpoint, known when its job ends)."""
    return FinetuneConfig(run_dir=_arm_dir(cfg, task, arm), seed=cfg.seed, init=init or "none",
                          tokenizer=cfg.data.tokenizer, model=copy.deepcopy(cfg.model), task=copy.deepcopy(task),
                          train=dataclasses.replace(FINETUNE, precision=cfg.train.precision),
                          epochs=FINETUNE_EPOCHS, patience=3)


def _arm_dir(cfg: Config, task: TaskConfig, arm: str) -> str:
    return str(Path(cfg.run_dir) / f"{task.name}-{arm.replace(' ', '-')}")


def compare(cfg: Config, task: TaskConfig, finished: dict, out, how: str) -> Comparison:
    """Both arms' test scores on `task`, and the paired difference with its bootstrap interval over the test
    examples."""
    resolved = resolve_task(task)
    metric = resolved.metrics[0]
    scores, rows = {}, {}
    for arm in ARMS:
        scores[arm] = finished[(task.name, arm)][metric]
        with open(Path(_arm_dir(cfg, task, arm)) / "test_predictions.jsonl", encoding="utf-8") as lines:
            rows[arm] = [json.loads(line) for line in lines]
    per_example = {arm: PER_EXAMPLE[metric]([r["prediction"] for r in arm_rows], [r["target"] for r in arm_rows])
                   for arm, arm_rows in rows.items()}
    difference, low, high = paired_bootstrap(per_example["pre-trained"], per_example["from scratch"], seed=cfg.seed)
    print(file=out)
    n_train = task.max_train_examples
    print(f"Downstream: {task.name}, {n_train:,} training examples, {FINETUNE_EPOCHS:g} epochs, "
          f"{len(rows['pre-trained']):,} test examples ({metric})", file=out)
    print(f"  {'pre-trained':<16}{scores['pre-trained']:>6.1f}   ({how})", file=out)
    print(f"  {'from scratch':<16}{scores['from scratch']:>6.1f}", file=out)
    if resolved.is_classification:
        _, majority = majority_floor(resolved, [r["target"] for r in rows["pre-trained"]])
        print(f"  {'majority label':<16}{majority:>6.1f}   (always answering the training split's most frequent "
              "label)", file=out)
    return Comparison(task.name, metric, scores["pre-trained"], scores["from scratch"], difference, low, high, rows)


def _show_summaries(comparison: Comparison, out) -> None:
    """The first test document, with both models' summaries and the reference."""
    first = {arm: rows[0] for arm, rows in comparison.rows.items()}
    document = first["pre-trained"]["input"].split(":", 1)[-1].strip()
    print("  one held-out package description:", file=out)
    print(_wrap("document", document[:400] + (" ..." if len(document) > 400 else "")), file=out)
    print(_wrap("reference", first["pre-trained"]["target"]), file=out)
    print(_wrap("pre-trained", first["pre-trained"]["prediction"]), file=out)
    print(_wrap("scratch", first["from scratch"]["prediction"]), file=out)
