"""Objective throughput: examples/s at 512 input tokens, against the tiny model's training consumption and against
HF transformers' `DataCollatorForLanguageModeling` (BERT-style masking) on the same tokens, in the same process.

    .venv/bin/python benchmarks/objectives.py [--tokenizer runs/tokenizer-unigram-8k] [--seconds 2]

Prints a markdown table; needs the `[dev]` extra (transformers) for the collator comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from ptlab.config import load_config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.pipeline import IGNORE_INDEX, PretrainBatches, encoder_decoder_batch, resolve_objective
from ptlab.models import build_model
from ptlab.objectives import REGISTRY, build_objective
from ptlab.train.host import configure_host
from ptlab.train.loop import autocast, summed_loss, to_tensors
from ptlab.train.optim import build_optimizer

INPUTS_LENGTH = 512
BATCH = 32


def rate(fn, seconds: float) -> float:
    """Calls of `fn` per second, measured for about `seconds` after one warm-up call."""
    fn()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - started)


def model_consumption(cfg, shard, specials, steps: int = 3) -> float:
    """Examples/s of training steps of the tiny model (forward, backward, optimizer) at 512 input tokens."""
    torch.manual_seed(0)
    cfg.model.vocab_size = specials.vocab_size
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    data = PretrainBatches(shard, resolve_objective(cfg.objective), INPUTS_LENGTH, specials, seed=0)
    batches = [to_tensors(data.batch(i * 8, 8)) for i in range(steps + 1)]

    def step(batch):
        with autocast(cfg.train.precision):
            loss = summed_loss(model, batch)
        (loss / (batch["labels"] != IGNORE_INDEX).sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    started = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return 8 * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/t5-tiny.yaml", help="the tiny model and its tokenizer")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per objective")
    args = parser.parse_args()
    configure_host()
    cfg = load_config(args.config, [f"objective.inputs_length={INPUTS_LENGTH}"])
    tokenizer = ensure_tokenizer(cfg.data)
    shard, _ = ensure_shards(cfg.data, tokenizer)
    specials = tokenizer.specials

    consumption = model_consumption(cfg, shard, specials)
    print(f"tiny model ({args.config}) trains on {consumption:.1f} examples/s at {INPUTS_LENGTH} input tokens "
          f"({torch.get_num_threads()} threads)\n")

    rows = []
    for name in REGISTRY:
        objective, _ = build_objective(name)
        architecture = "decoder" if objective.decoder_only else "encoder_decoder"
        needed = objective.spec.sentinels(INPUTS_LENGTH, objective.params, specials)
        own = specials
        if needed > len(specials.sentinels):  # UL2's X-denoisers need ~126 at 512 tokens: time it with more ids
            own = dataclasses.replace(specials, sentinels=tuple(range(specials.vocab_size - 1,
                                                                      specials.vocab_size - 1 - needed, -1)))
        data = PretrainBatches(shard, objective, INPUTS_LENGTH, own, seed=0, architecture=architecture)
        position = iter(range(0, 10**9, BATCH))
        per_second = rate(lambda: data.batch(next(position), BATCH), args.seconds) * BATCH
        rows.append((name, per_second, f" ({needed} sentinels)" if own is not specials else ""))

    print("| objective | examples/s (batched) | x tiny model's consumption |")
    print("|---|---:|---:|")
    for name, per_second, note in rows:
        print(f"| {name}{note} | {per_second:,.0f} | {per_second / consumption:,.0f}x |")

    # BERT-style masking against HF's collator on the same 512-token chunks.
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.tokenizer, pad_token="<pad>",
                                           mask_token="<mask>", unk_token="<unk>", eos_token="</s>")
    collator = DataCollatorForLanguageModeling(hf_tokenizer, mlm_probability=0.15, return_tensors="np")
    chunks = [np.asarray(shard.tokens[i * INPUTS_LENGTH:(i + 1) * INPUTS_LENGTH], dtype=np.int64)
              for i in range(BATCH)]
    features = [{"input_ids": c} for c in chunks]
    bert = PretrainBatches(shard, build_objective("bert_style")[0], INPUTS_LENGTH, specials, seed=0)
    rng = np.random.default_rng(0)

    def ours():
        examples = [bert.objective(c[:-1], rng, specials) for c in chunks]
        return encoder_decoder_batch(examples, INPUTS_LENGTH, INPUTS_LENGTH, specials.pad, specials.pad)

    ours_rate = rate(ours, args.seconds) * BATCH
    hf_rate = rate(lambda: collator(features), args.seconds) * BATCH
    print(f"\nBERT-style on the same {BATCH} x {INPUTS_LENGTH} tokens: ptlab {ours_rate:,.0f} examples/s, "
          f"transformers DataCollatorForLanguageModeling {hf_rate:,.0f} examples/s "
          f"(ratio {ours_rate / hf_rate:.2f})")


if __name__ == "__main__":
    main()
