"""Peak memory and speed of one training step with the LM head and loss fused in chunks (`train.loss_chunk_tokens`)
against today's unfused path (the whole batch's logits, then the loss), at vocabularies of 8k, 32k and 128k.

    .venv/bin/python benchmarks/head_loss.py [--vocabs 8192,32768,131072] [--chunks 128,256,0] [--compile]
                                             [--steps 3] [--output benchmarks/results/head-loss-cpu]

The model is a GPT-2-style decoder of small width (d_model 256, 4 layers), batch 8 x 512, bf16 autocast, AdamW:
a step is forward, backward and the optimizer update, as `ptlab.train.step` runs it. Each setting runs in a fresh
process, twice:
- memory: on CPU, the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just
  before the measured step) minus its resident set at rest before that step; glibc is told to map every block of
  64 KiB or more on its own (MALLOC_MMAP_THRESHOLD_), so a freed tensor leaves the resident set at once and the
  mark follows the live tensors. On CUDA, `torch.cuda.max_memory_allocated` over the step minus the memory
  allocated before it.
- speed: ptlab's host settings (`configure_host`), the median of `--steps` timed steps after a warm-up step.
Writes OUTPUT.json and OUTPUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCH, LENGTH = 8, 512
SHAPE = dict(d_model=256, num_heads=4, num_layers=4, d_ff=1024)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_setting(vocab: int, chunk: int, mode: str, compiled: bool, steps: int, device: str) -> dict:
    """One setting in this process (the child's side)."""
    import torch

    from ptlab.config import ModelConfig, TrainConfig
    from ptlab.models import build_model
    from ptlab.train.distributed import Runtime
    from ptlab.train.host import configure_host
    from ptlab.train.loop import training_loss
    from ptlab.train.optim import build_optimizer
    from ptlab.train.step import optimizer_step

    if mode == "speed":
        configure_host()
    cfg = ModelConfig(family="gpt2", vocab_size=vocab, max_position_embeddings=LENGTH, pad_token_id=0,
                      eos_token_id=1, bos_token_id=2, **SHAPE)
    cfg.validate()
    torch.manual_seed(0)
    target = torch.device(device)
    model = build_model(cfg).to(target).train()
    train_cfg = TrainConfig(max_steps=100, batch_size=BATCH, loss_chunk_tokens=chunk, precision="bf16",
                            compile=compiled)
    optimizer = build_optimizer(model, train_cfg)
    loss_fn = training_loss(model, compiled, chunk_tokens=chunk)
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (BATCH, LENGTH + 1))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:],
             "position_ids": np.broadcast_to(np.arange(LENGTH), (BATCH, LENGTH)).copy(),
             "segment_ids": np.ones((BATCH, LENGTH), dtype=np.int64)}
    runtime = Runtime(0, 1, target)
    labels = float(BATCH * LENGTH)

    def step():
        outcome = optimizer_step(model, optimizer, loss_fn, batch, 1e-4, labels, train_cfg, runtime)
        if target.type == "cuda":
            torch.cuda.synchronize()
        return outcome

    started = time.perf_counter()
    step()  # warm-up: compiles, creates the optimizer state
    warmup = time.perf_counter() - started
    result = {"vocab": vocab, "chunk_tokens": chunk, "compiled": compiled, "device": device, "mode": mode,
              "warmup_seconds": round(warmup, 2)}
    if mode == "memory":
        if target.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            rest = torch.cuda.memory_allocated()
            step()
            result["step_peak_mib"] = (torch.cuda.max_memory_allocated() - rest) / 2**20
        else:
            rest = _rss_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            step()
            result["step_peak_mib"] = (_rss_kib("VmHWM") - rest) / 1024
            result["process_peak_mib"] = _rss_kib("VmHWM") / 1024
        return result
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    result["step_seconds"] = statistics.median(times)
    result["tokens_per_second"] = BATCH * LENGTH / result["step_seconds"]
    return result


def measure(vocab: int, chunk: int, mode: str, compiled: bool, steps: int, device: str) -> dict:
    """Run one setting in a fresh process (memory is a per-process high-water mark)."""
    env = dict(os.environ)
    if mode == "memory":
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    args = [sys.executable, __file__, "--child", json.dumps([vocab, chunk, mode, compiled, steps, device])]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"setting vocab={vocab} chunk={chunk} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], device: str, compiled: bool) -> str:
    lines = [f"# Fused, chunked head and loss against the unfused path ({device}, "
             f"{'compiled' if compiled else 'eager'}, bf16)", "",
             f"GPT-2-style decoder, d_model {SHAPE['d_model']}, {SHAPE['num_layers']} layers, batch {BATCH} x "
             f"{LENGTH}, one training step (forward, backward, AdamW). Written by `benchmarks/head_loss.py`.", "",
             "| vocabulary | path | step peak memory (MiB) | tokens/s |", "|---:|---|---:|---:|"]
    for row in rows:
        path = f"fused, {row['chunk_tokens']}-token chunks" if row["chunk_tokens"] else "unfused (today's)"
        lines.append(f"| {row['vocab']:,} | {path} | {row['step_peak_mib']:,.0f} | {row['tokens_per_second']:,.0f} |")
    lines.append("")
    for vocab in sorted({r["vocab"] for r in rows}):
        unfused = next((r for r in rows if r["vocab"] == vocab and not r["chunk_tokens"]), None)
        if unfused is None:
            continue
        for fused in (r for r in rows if r["vocab"] == vocab and r["chunk_tokens"]):
            lines.append(f"- {vocab:,}, {fused['chunk_tokens']}-token chunks: fused peak "
                         f"{fused['step_peak_mib'] / unfused['step_peak_mib']:.0%} of unfused, speed "
                         f"{fused['tokens_per_second'] / unfused['tokens_per_second']:.2f}x")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", default="8192,32768,131072")
    parser.add_argument("--chunks", default="128,256,0", help="loss_chunk_tokens settings; 0 is the unfused path")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step (train.compile=true)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="benchmarks/results/head-loss-cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_setting(*json.loads(args.child))))
        return
    rows = run([int(v) for v in args.vocabs.split(",")], [int(c) for c in args.chunks.split(",")], args.compile,
               args.steps, args.device)
    write(rows, Path(args.output), args.device, args.compile)
    print(markdown(rows, args.device, args.compile))


def run(vocabs: list[int], chunks: list[int], compiled: bool, steps: int = 3, device: str = "cpu") -> list[dict]:
    """Every (vocabulary, chunk) setting, memory and speed each in a fresh process."""
    rows = []
    for vocab in vocabs:
        for chunk in chunks:
            memory = measure(vocab, chunk, "memory", compiled, steps, device)
            speed = measure(vocab, chunk, "speed", compiled, steps, device)
            row = {**speed, "step_peak_mib": memory["step_peak_mib"]}
            row.pop("mode")
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def write(rows: list[dict], output: Path, device: str, compiled: bool) -> None:
    from ptlab.files import write_text_atomic

    write_text_atomic(output.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    write_text_atomic(output.with_suffix(".md"), markdown(rows, device, compiled))


if __name__ == "__main__":
    main()
