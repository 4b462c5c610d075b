"""`ptlab demo`: the whole path on the bundled corpus, in a few minutes on a laptop CPU.

Train (or reuse) a tokenizer, build token shards, pre-train a tiny T5 v1.1 with span corruption, then show that it
learned: validation loss at start and end against a sentinel-aware unigram baseline, throughput, the model's own
predictions for the masked spans of held-out passages, and rt_polarity sentiment accuracy after fine-tuning, next
to the same architecture fine-tuned from scratch.
"""

from __future__ import annotations

import copy
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from ptlab.config import Config, FinetuneConfig, TaskConfig, TrainConfig, load_config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.pipeline import IGNORE_INDEX, pretrain_batches, resolve_objective, validation_batches
from ptlab.data.tasks import resolve_task
from ptlab.data.tokenizer import PtlabTokenizer
from ptlab.downstream.finetune import finetune
from ptlab.errors import PtlabError
from ptlab.lab.baselines import unigram_target_baseline
from ptlab.models.generate import generate
from ptlab.train.checkpoint import load_model
from ptlab.train.loop import pretrain

DEFAULT_CONFIG = "configs/demo.yaml"


def _show(tokenizer: PtlabTokenizer, ids: np.ndarray) -> str:
    """Token ids as text, sentinels visible, EOS and padding dropped."""
    keep = [int(i) for i in ids if int(i) not in (tokenizer.specials.eos, tokenizer.specials.pad, IGNORE_INDEX)]
    return tokenizer.decode(keep, skip_special_tokens=False).replace("\n", " ")


def _wrap(label: str, text: str, width: int = 100) -> str:
    return textwrap.fill(text, width=width, initial_indent=f"  {label:<11}", subsequent_indent=" " * 13)


def run_demo(config_path: str | None = DEFAULT_CONFIG, overrides: list[str] | None = None,
             show_progress: bool = True, out=sys.stdout) -> dict:
    started = time.perf_counter()
    if config_path is not None and not Path(config_path).is_file():
        config_path = None  # installed without the repository's configs/: use the built-in defaults
    cfg: Config = load_config(config_path, overrides)
    print("ptlab demo: T5 v1.1 span-corruption pre-training on the bundled corpus", file=out)
    tokenizer = ensure_tokenizer(cfg.data, show_progress)
    train_shard, val_shard = ensure_shards(cfg.data, tokenizer, show_progress)
    if val_shard is None:
        raise PtlabError("config key 'data.validation_files': the demo needs validation files")
    print(f"  tokenizer   {cfg.data.tokenizer_kind}, {tokenizer.vocab_size:,} ids ({cfg.data.tokenizer})", file=out)
    print(f"  corpus      {train_shard.num_tokens:,} training tokens in {train_shard.index['num_documents']:,} "
          f"documents; {val_shard.num_tokens:,} validation tokens", file=out)
    objective = resolve_objective(cfg.objective)
    settings = ", ".join(f"{k} {v}" for k, v in objective.as_dict().items())
    print(f"  objective   {objective.name} ({settings}), {cfg.objective.inputs_length} input tokens", file=out)
    print(f"  training    {cfg.train.max_steps} steps x {cfg.train.batch_size} examples, lr {cfg.train.lr} "
          f"({cfg.train.schedule}), {cfg.train.precision}", file=out)

    result = pretrain(cfg, show_progress)

    specials = tokenizer.specials
    # the same examples the trainer validated on
    eval_batches = validation_batches(pretrain_batches(cfg, objective, val_shard, specials, validation=True), cfg)
    eval_labels = np.concatenate([b["labels"].reshape(-1) for b in eval_batches])
    baseline = unigram_target_baseline(train_shard.tokens, eval_labels, specials, tokenizer.vocab_size)
    margin = baseline - result.final_val_loss
    print("", file=out)
    print("Results", file=out)
    print(f"  parameters                        {result.parameters:,}", file=out)
    print(f"  validation loss at start          {result.initial_val_loss:.3f} nats", file=out)
    print(f"  validation loss at end            {result.final_val_loss:.3f} nats", file=out)
    print(f"  sentinel-aware unigram baseline   {baseline:.3f} nats", file=out)
    print(f"  end loss below the baseline by    {margin:.3f} nats "
          f"({'uses context' if margin >= 0.5 else 'NOT clearly beyond token frequencies'})", file=out)
    print(f"  training throughput               {result.tokens_per_second:,.0f} tokens/s "
          f"(inputs + targets, {torch.get_num_threads()} threads)", file=out)
    print(f"  checkpoint                        {result.checkpoint}", file=out)

    model = load_model(result.checkpoint)
    sample = eval_batches[0]
    picks = np.linspace(0, len(sample["input_ids"]) - 1, 3).astype(int)
    inputs = torch.from_numpy(sample["input_ids"][picks])
    mask = torch.from_numpy(sample["attention_mask"][picks])
    predicted = generate(model, inputs, mask, max_new_tokens=sample["labels"].shape[1]).numpy()
    print("", file=out)
    print("Held-out validation passages (greedy predictions for the masked spans)", file=out)
    for n, row in enumerate(picks):
        print(f"[{n + 1}]", file=out)
        print(_wrap("input", _show(tokenizer, sample["input_ids"][row])), file=out)
        print(_wrap("predicted", _show(tokenizer, predicted[n])), file=out)
        print(_wrap("true", _show(tokenizer, sample["labels"][row])), file=out)
    downstream = compare_on_rt_polarity(cfg, result.checkpoint, show_progress, out)
    elapsed = time.perf_counter() - started
    print(f"\ndemo finished in {elapsed / 60:.1f} min", file=out)
    return {"initial_val_loss": result.initial_val_loss, "final_val_loss": result.final_val_loss,
            "baseline": baseline, "tokens_per_second": result.tokens_per_second, "seconds": elapsed,
            "checkpoint": str(result.checkpoint), **downstream}


def compare_on_rt_polarity(cfg: Config, checkpoint: Path, show_progress: bool, out, train_examples: int = 3000,
                           eval_examples: int = 400, epochs: float = 2.0) -> dict:
    """Fine-tune the pre-trained model and the same architecture from scratch on a subset of rt_polarity (movie
    review sentiment, text-to-text: "sst2 sentence: ..." -> "positive"/"negative") and report both accuracies."""
    task = TaskConfig(name="rt_polarity", max_train_examples=train_examples, max_eval_examples=eval_examples,
                      max_input_length=96)
    # RMS-scaled AdamW, as in pre-training: plain AdamW hardly moves T5's std-1 embeddings, and both arms then stay
    # at the majority class
    train = TrainConfig(batch_size=32, optimizer="adamw_scale", lr=1e-2, schedule="linear", warmup_steps=30,
                        min_lr_ratio=0.0, eval_every=60, precision=cfg.train.precision, tensorboard=False)
    accuracy = {}
    for name, init in (("pre-trained", str(checkpoint)), ("from scratch", "none")):
        ft = FinetuneConfig(run_dir=str(Path(cfg.run_dir) / f"rt_polarity-{name.replace(' ', '-')}"), seed=cfg.seed,
                            init=init, tokenizer=cfg.data.tokenizer, model=copy.deepcopy(cfg.model), task=task,
                            train=copy.deepcopy(train), epochs=epochs, patience=3)
        ft.validate()
        result = finetune(ft, show_progress, resume="never")
        accuracy[name] = result.test["accuracy"]
    print("", file=out)
    tested = [t for _, t in resolve_task(task).examples("test")]
    majority = 100 * max(tested.count(label) for label in set(tested)) / len(tested)
    print(f"Downstream: rt_polarity sentiment, {train_examples:,} training reviews, {epochs:g} epochs, test on "
          f"{eval_examples:,} (always answering the majority label: {majority:.1f}%)", file=out)
    for name, value in accuracy.items():
        print(f"  {name:<14} accuracy {value:.1f}%", file=out)
    return {"rt_polarity_pretrained": accuracy["pre-trained"], "rt_polarity_scratch": accuracy["from scratch"]}
