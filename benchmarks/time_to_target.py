"""Time to target: how much sooner the default recipe reaches what today's tuned baseline reaches.

For a GPT-2-style decoder (next-token prediction) and a T5 (span corruption) on the bundled corpus:
1. the baseline, the recipe ptlab shipped before Muon (AdamW, or RMS-scaled AdamW for T5, cosine decay), is swept
   over learning rates at one seed and run at the best one with `--seeds` seeds; its mean final validation loss
   (nats per token, on the fixed validation batches) is the target;
2. the new recipe runs `--seeds` seeds with a budget of its own (`Setup.budget`, a share of the baseline's steps,
   with room to reach the target), its schedule fully decayed at that budget, evaluated every 10 steps
   (`Setup.resolution`: its time to target is read at its first evaluation at or below the target);
3. reported: each side's training seconds and tokens, the new recipe's seconds and tokens to its first evaluation
   at or below the target, the ratio of wall-clocks, and two one-sided Welch t-tests (modded-nanogpt's p < 0.01
   rule): that the new recipe's final loss is below the target, and that its time to target is below the bound
   (half the baseline's wall-clock for GPT-2, two thirds for T5).

Training seconds are the trainer's own (steps only, no evaluation), measured in the same process one run after
another, the two sides interleaved seed by seed so that a busy machine slows both alike. Writes
benchmarks/results/time-to-target-cpu.{json,md}.

    .venv/bin/python benchmarks/time_to_target.py [--models gpt2,t5] [--seeds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats

from ptlab.config import load_config
from ptlab.precision import resolve_precision
from ptlab.train.loop import pretrain

RESULTS = Path("benchmarks/results")
RUNS = Path("runs/bench/time-to-target")
THREADS = int(os.environ.get("PTLAB_BENCH_THREADS", "2"))  # torch threads per run (the machine has two cores)
# Both sides at the precision a run takes by default (`train.precision: auto`): bf16 where the CPU has bf16 matrix
# units (AVX-512 BF16, AMX), fp32 where PyTorch would emulate bf16 matmuls
PRECISION = resolve_precision(os.environ.get("PTLAB_BENCH_PRECISION", "auto"), "cpu")

# The model each side trains: small enough for a run of a minute or two on two cores.
COMMON = ["model.d_model=128", "model.d_ff=512", "model.num_heads=4", "train.batch_size=16", "train.compile=false",
          "data.vocab_size=1024", "data.tokenizer_sample_bytes=3000000", "train.checkpoint_every=0",
          "train.loggers=[]", "train.eval_batches=8", f"train.threads={THREADS}", f"train.precision={PRECISION}"]


@dataclass
class Setup:
    name: str
    config: str
    steps: int
    overrides: list[str]
    baseline: list[str]  # the recipe before Muon
    baseline_lrs: list[float]
    new: list[str]  # what the shipped config now sets, restated so the benchmark does not drift with it
    # (`baseline` restates every key the shipped config changed since, for the same reason)
    bound: float  # the acceptance bound: the new recipe's time to target, as a share of the baseline's wall-clock
    eval_every: int  # the baseline's evaluations (its last one is what counts)
    budget: float = 0.8  # the new recipe's steps, as a share of the baseline's: room to reach the target
    # The new recipe's evaluations: its time to target is read at the first one at or below the target, so it is
    # known to this many steps (evaluation time is not counted, on either side)
    resolution: int = 10
    extra: dict = field(default_factory=dict)


SETUPS = {
    "gpt2": Setup(
        "GPT-2 (causal LM)", "configs/gpt2-tiny.yaml", 500,
        ["model.num_layers=4", "objective.inputs_length=128", "data.tokenizer=runs/bench/tok-bpe-1k",
         "data.tokenizer_kind=bpe", "model.max_position_embeddings=128"],
        ["train.optimizer=adamw", "train.embedding_lr=null", "train.schedule=cosine", "train.warmup_steps=100",
         "train.weight_decay=0.1", "train.beta2=0.95", "model.qk_norm=false", "model.zero_init_output=false",
         "model.tie_word_embeddings=true"],
        [1e-3, 3e-3, 1e-2],
        ["train.optimizer=muon", "train.lr=2e-2", "train.embedding_lr=0.1", "train.muon_lr=0.04",
         "train.muon_momentum=0.9", "train.weight_decay=0", "train.beta2=0.95", "train.schedule=wsd",
         "train.decay_ratio=0.7", "train.warmup_steps=20", "model.qk_norm=false", "model.zero_init_output=true",
         "model.tie_word_embeddings=false"],
        0.5, 25, budget=0.4),
    "t5": Setup(
        "T5 (span corruption)", "configs/t5-span-tiny.yaml", 500, ["data.tokenizer=runs/bench/tok-unigram-1k"],
        ["train.optimizer=adamw_scale", "train.embedding_lr=null", "train.schedule=cosine", "train.warmup_steps=100",
         "train.min_lr_ratio=0.1", "train.weight_decay=0", "model.qk_norm=false", "model.zero_init_output=false"],
        [1e-2, 3e-2, 1e-1],
        ["train.optimizer=muon_scale", "train.lr=0.1", "train.embedding_lr=0.3", "train.muon_lr=0.025",
         "train.muon_momentum=0.85", "train.muon_ns_steps=3", "train.weight_decay=0", "train.schedule=wsd",
         "train.decay_ratio=1.0", "train.min_lr_ratio=0", "train.warmup_steps=10", "model.qk_norm=false",
         "model.zero_init_output=false"],
        2 / 3, 25, budget=0.6),
}


@dataclass
class Run:
    seed: int
    steps: int
    seconds: float
    tokens: float
    final_loss: float
    curve: list[tuple[int, float, float, float]]  # (step, training seconds, tokens, validation loss)

    def reach(self, target: float) -> tuple[float, float] | None:
        """Seconds and tokens to the first evaluation at or below `target`."""
        return next(((s, t) for _, s, t, loss in self.curve if loss <= target), None)


def train(setup: Setup, recipe: list[str], seed: int, steps: int, tag: str, eval_every: int = 0) -> Run:
    eval_every = eval_every or setup.eval_every
    overrides = [*COMMON, *setup.overrides, *recipe, f"seed={seed}", f"train.max_steps={steps}",
                 f"train.eval_every={eval_every}", f"train.log_every={eval_every}",
                 f"run_dir={RUNS / setup.config.split('/')[-1].split('.')[0] / tag / f'seed{seed}'}"]
    result = pretrain(load_config(setup.config, overrides), show_progress=False, resume="never")
    timing = {r["step"]: (r["seconds"], r["tokens"]) for r in result.history if "seconds" in r and "step" in r}
    curve = [(r["step"], *timing[r["step"]], r["val_loss"]) for r in result.history
             if "val_loss" in r and r["step"] in timing]
    return Run(seed, steps, result.train_seconds, curve[-1][2] if curve else 0.0, result.final_val_loss, curve)


def welch_less(a: list[float], b: list[float]) -> float:
    """One-sided Welch t-test p-value that mean(a) < mean(b) (b may be a single repeated value)."""
    if len(set(b)) == 1:
        return float(stats.ttest_1samp(a, b[0], alternative="less").pvalue)
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def bench(name: str, setup: Setup, seeds: int, log) -> dict:
    sweep = {lr: train(setup, [*setup.baseline, f"train.lr={lr}"], 0, setup.steps, f"sweep-lr{lr:g}")
             for lr in setup.baseline_lrs}
    for lr, run in sweep.items():
        log(f"{name} baseline lr {lr:g}: final loss {run.final_loss:.4f} in {run.seconds:.0f} s")
    best_lr = min(sweep, key=lambda lr: sweep[lr].final_loss)
    baseline_recipe = [*setup.baseline, f"train.lr={best_lr}"]
    new_steps = round(setup.steps * setup.budget)
    baseline, new = [sweep[best_lr]], []
    for seed in range(seeds):  # interleaved, so a change in the machine's load touches both sides alike
        if seed:
            baseline.append(train(setup, baseline_recipe, seed, setup.steps, "baseline"))
        new.append(train(setup, setup.new, seed, new_steps, "new", setup.resolution))
        log(f"{name} seed {seed}: baseline {baseline[-1].final_loss:.4f} in {baseline[-1].seconds:.0f} s, "
            f"new {new[-1].final_loss:.4f} in {new[-1].seconds:.0f} s")
    target = statistics.mean(r.final_loss for r in baseline)
    reached = [r.reach(target) for r in new]
    # A seed that never reached the target counts as its whole run plus one evaluation interval: conservative
    to_target = [hit[0] if hit else r.seconds * (1 + setup.resolution / r.steps) for hit, r in zip(reached, new)]
    tokens_to_target = [hit[1] if hit else None for hit in reached]
    baseline_seconds = [r.seconds for r in baseline]
    return {
        "model": setup.name, "precision": PRECISION, "threads": THREADS, "machine": cpu_name(),
        "steps": setup.steps, "new_steps": new_steps, "best_lr": best_lr,
        "sweep": {f"{lr:g}": run.final_loss for lr, run in sweep.items()},
        "baseline_recipe": baseline_recipe, "new_recipe": setup.new, "target": target,
        "baseline": [r.__dict__ for r in baseline], "new": [r.__dict__ for r in new],
        "baseline_seconds": baseline_seconds, "baseline_tokens": baseline[0].tokens,
        "new_seconds": [r.seconds for r in new], "new_final_loss": [r.final_loss for r in new],
        "seconds_to_target": to_target, "tokens_to_target": tokens_to_target,
        "reached": sum(hit is not None for hit in reached), "bound": setup.bound,
        "time_ratio": statistics.mean(to_target) / statistics.mean(baseline_seconds),
        "p_loss_below_target": welch_less([r.final_loss for r in new], [target] * len(new)),
        "p_time_below_bound": welch_less(to_target, [setup.bound * s for s in baseline_seconds]),
    }


def markdown(results: dict, machine: str) -> str:
    lines = ["# Time to target (CPU)", "", f"Machine: {machine}. "
             "`benchmarks/time_to_target.py`; seconds are training seconds (evaluation excluded), both sides run one "
             "after another in one process, at the precision and torch threads a run the table gives.", "",
             "| model | precision, threads | baseline (best lr) | target loss | baseline s | new final loss "
             "| new s to target | ratio | tokens to target (baseline) | p(loss < target) | p(time < bound) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        tokens = [t for t in r["tokens_to_target"] if t is not None]
        lines.append(
            f"| {r['model']} | {r.get('precision', 'fp32')}, {r.get('threads', 1)} | lr {r['best_lr']:g} "
            f"| {r['target']:.4f} | {spread(r['baseline_seconds'])} "
            f"| {spread(r['new_final_loss'])} ({r['new_steps']} steps) | {spread(r['seconds_to_target'])} "
            f"({r['reached']}/{len(r['new'])} reached) | {r['time_ratio']:.2f} (bound {r['bound']:.2f}) | "
            f"{statistics.mean(tokens) if tokens else float('nan'):,.0f} ({r['baseline_tokens']:,.0f}) "
            f"| {r['p_loss_below_target']:.2g} | {r['p_time_below_bound']:.2g} |")
    lines += ["", "Learning-rate sweeps of the baseline (final loss, seed 0):", ""]
    lines += [f"- {r['model']}: " + ", ".join(f"lr {lr}: {loss:.4f}" for lr, loss in r["sweep"].items())
              for r in results.values()]
    lines += ["", "Recipes: " + "; ".join(f"{r['model']}: baseline `{' '.join(r['baseline_recipe'])}`, new "
                                          f"`{' '.join(r['new_recipe'])}`" for r in results.values())]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def run(models: list[str], seeds: int, output: Path, steps: int = 0, quick: bool = False) -> str:
    """Benchmark each model, writing OUTPUT.json after each; returns the markdown report (also OUTPUT.md)."""
    # Models benchmarked earlier stay in the report beside these: the file is read again before each write, so two
    # processes benchmarking different models side by side keep each other's results
    path, measured, results = output.with_suffix(".json"), {}, {}
    for name in models:
        setup = SETUPS[name]
        if steps or quick:
            setup.steps = steps or setup.steps // 4
            setup.eval_every = max(10, setup.steps // 24)
        measured[name] = bench(name, setup, seeds, lambda m: print(m, file=sys.stderr, flush=True))
        output.parent.mkdir(parents=True, exist_ok=True)
        results = {**(json.loads(path.read_text()) if path.exists() else {}), **measured}
        path.write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results, cpu_name())
    output.with_suffix(".md").write_text(report)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,t5")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="baseline steps (0: each setup's own)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, a quarter of the steps: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS / "time-to-target-cpu")
    args = parser.parse_args()
    print(run(args.models.split(","), 2 if args.quick else args.seeds, args.output, args.steps, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
