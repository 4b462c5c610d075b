"""Process peak memory as a user sees it: `ptlab pretrain` run as a command, its peak resident set (the kernel's
high-water mark for that one process, from wait4) at a small and a large vocabulary, with and without a
validation set, with `train.loss_chunk_tokens` fused (in the chunk its default, auto, fuses with) and at 0 (the
whole logits), marking the one auto picks in the run's precision; and tokens/s of a longer run of each, measured
between two log steps after the first (so compiling is left out).

A compiled GPT-2 tiny (d_model 256, 4 layers, batch 8 x 512), as `configs/gpt2-tiny.yaml` trains it. Writes
benchmarks/results/memory-cpu.{json,md}.

    .venv/bin/python benchmarks/memory.py [--vocabs 2048,32768] [--steps 40]
    PTLAB_BENCH_PRECISION=fp32 .venv/bin/python benchmarks/memory.py --vocabs 32768 --output benchmarks/results/memory-cpu-fp32
    .venv/bin/python benchmarks/memory.py --render   # rewrite the .md from the .json, after a change to the rule
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from ptlab.models.head_loss import fused_chunk_tokens, training_chunk_tokens
from ptlab.train.runlog import read_metrics

RUNS = Path("runs/bench/memory")
# bf16 as shipped where the CPU computes it natively; on an AVX2-only CPU (emulated bf16, ten times slower)
# PTLAB_BENCH_PRECISION=fp32 keeps the runs short: the head and loss memory this measures scale the same way
PRECISION = os.environ.get("PTLAB_BENCH_PRECISION", "bf16")
RESULTS = Path("benchmarks/results")


def run(vocab: int, chunk: str, steps: int, validation: bool, tag: str) -> tuple[float, float | None]:
    """(peak RSS in MB, tokens/s between the 10th and the last step or None for a 1-step run)."""
    run_dir = RUNS / f"v{vocab}-{chunk}-{tag}"
    overrides = [f"run_dir={run_dir}", f"data.tokenizer=runs/bench/tok-bpe-{vocab}", f"data.vocab_size={vocab}",
                 "data.tokenizer_kind=bpe", "data.tokenizer_sample_bytes=5000000", "objective.inputs_length=512",
                 "train.batch_size=8", f"train.max_steps={steps}", "train.compile=true", "train.log_every=10",
                 f"train.loss_chunk_tokens={chunk}", "train.checkpoint_every=0", "train.loggers=[]",
                 "train.eval_every=0", "train.threads=2", f"train.precision={PRECISION}"]
    if not validation:
        overrides.append("data.validation_files=[]")
    command = [sys.executable, "-m", "ptlab", "pretrain", "--config", "configs/gpt2-tiny.yaml", "--quiet",
               "--restart", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    records = [r for r in read_metrics(run_dir) if "tokens_per_second" in r and "event" not in r]
    rate = None
    if len(records) >= 2:
        first, last = records[0], records[-1]
        rate = (last["tokens"] - first["tokens"]) / (last["seconds"] - first["seconds"])
    return usage.ru_maxrss / 1024, rate


def run_all(vocabs: list[int], steps: int, output: Path, repeats: int = 2) -> str:
    """Every row, written to OUTPUT.{json,md}; returns the markdown. Per vocabulary the fused head (in the chunk
    auto fuses with) against the whole logits (0). The tokens/s runs are repeated `repeats` times, the two
    settings alternating so that a change in the machine's load touches both; the table gives their median and the
    JSON each one."""
    rows = []
    for vocab in vocabs:
        settings = (fused_chunk_tokens(vocab), 0)
        run(vocab, str(settings[0]), 1, True, "warm")  # trains the tokenizer and writes the shards: not measured
        rates: dict[int, list[float]] = {chunk: [] for chunk in settings}
        for _ in range(repeats):
            for chunk in rates:
                rates[chunk].append(run(vocab, str(chunk), steps, False, "speed")[1])
        for chunk in rates:
            with_val, _ = run(vocab, str(chunk), 1, True, "val")
            without_val, _ = run(vocab, str(chunk), 1, False, "noval")
            rows.append({"vocab": vocab, "loss_chunk_tokens": chunk, "precision": PRECISION, "steps": steps,
                         "peak_mb_with_validation": with_val, "peak_mb_without_validation": without_val,
                         "tokens_per_second": statistics.median(rates[chunk]), "tokens_per_second_runs": rates[chunk],
                         "machine": platform.processor() or platform.machine()})
            print(rows[-1], file=sys.stderr, flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return render(rows, output)


def render(rows: list[dict], output: Path) -> str:
    """OUTPUT.md from the measured rows, marking the setting `train.loss_chunk_tokens: auto` picks today (a
    function of the vocabulary and the precision, so a changed rule re-renders without re-measuring)."""
    precision, steps = rows[0]["precision"], rows[0]["steps"]
    repeats = len(rows[0]["tokens_per_second_runs"])
    lines = ["# Process peak memory (CPU)", "", "`benchmarks/memory.py`: `ptlab pretrain` on configs/gpt2-tiny.yaml "
             "(compiled, batch 8 x 512), each as its own process after one that trained the tokenizer and wrote "
             "the shards; peak RSS from the kernel (wait4), one step; "
             f"tokens/s between step 10 and step {steps} of a longer run, the median of {repeats}; {precision}, "
             f"{rows[0]['machine']}.", "",
             "| vocabulary | loss_chunk_tokens | auto's choice | peak RSS, with validation (MB) | without (MB) "
             "| tokens/s |", "|---:|---:|---|---:|---:|---:|"]
    auto = {r["vocab"]: training_chunk_tokens("auto", r["vocab"], precision) for r in rows}
    for r in rows:
        lines.append(f"| {r['vocab']:,} | {r['loss_chunk_tokens']} "
                     f"| {'yes' if r['loss_chunk_tokens'] == auto[r['vocab']] else ''} "
                     f"| {r['peak_mb_with_validation']:,.0f} | {r['peak_mb_without_validation']:,.0f} "
                     f"| {r['tokens_per_second'] or float('nan'):,.0f} |")
    picked = {r["vocab"]: r for r in rows if r["loss_chunk_tokens"] == auto[r["vocab"]]}
    small = min(picked)
    for large in sorted(picked)[1:]:
        lines.append(f"\nOverhead of {large:,} over {small:,} with validation, loss_chunk_tokens auto: "
                     f"{picked[large]['peak_mb_with_validation'] - picked[small]['peak_mb_with_validation']:,.0f} MB")
    for vocab in sorted(auto):
        by_chunk = {r["loss_chunk_tokens"]: r for r in rows if r["vocab"] == vocab}
        fused, whole = by_chunk.get(fused_chunk_tokens(vocab)), by_chunk.get(0)
        if fused is None or whole is None:
            continue
        lines.append(f"\nAt {vocab:,}, fused ({fused_chunk_tokens(vocab)}) against whole logits (0): tokens/s "
                     f"{fused['tokens_per_second'] / whole['tokens_per_second']:.2f}x (runs: "
                     f"{', '.join(f'{x:,.0f}' for x in fused['tokens_per_second_runs'])} against "
                     f"{', '.join(f'{x:,.0f}' for x in whole['tokens_per_second_runs'])}), peak RSS with validation "
                     f"{fused['peak_mb_with_validation'] - whole['peak_mb_with_validation']:+,.0f} MB, without "
                     f"{fused['peak_mb_without_validation'] - whole['peak_mb_without_validation']:+,.0f} MB")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", default="2048,32768")
    parser.add_argument("--steps", type=int, default=40, help="steps of the tokens/s runs")
    parser.add_argument("--repeats", type=int, default=2, help="tokens/s runs of each setting")
    parser.add_argument("--output", type=Path, default=RESULTS / "memory-cpu")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite OUTPUT.md from OUTPUT.json (after a change to the auto rule)")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.output.with_suffix(".json").read_text()), args.output))
        return 0
    print(run_all([int(v) for v in args.vocabs.split(",")], args.steps, args.output, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
