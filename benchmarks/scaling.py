"""Scaling curves: training tokens/s and peak memory of ptlab and HF transformers against sequence length, model
width and vocabulary size, for a decoder (GPT-2) and for T5.

    .venv/bin/python benchmarks/scaling.py [--quick] [--families gpt2,t5] [--steps 6] [--tokens 1024]
                                           [--threads 0] [--out benchmarks/results/scaling-cpu]

Every point builds both models from the same weights (benchmarks/train.py's HF machinery) and times their steps
alternately in this process, so each ratio comes from one run under the same load. Both sides train in bf16
autocast, eagerly (a CPU compiles one model for minutes; benchmarks/train.py compares the compiled steps), with
torch's fused AdamW; ptlab with its defaults otherwise (the whole batch's logits, then the loss:
`train.loss_chunk_tokens` 0; benchmarks/head_loss.py measures the fused head and loss). The sweeps vary
one axis from a base point (width 256, 4 layers, vocabulary 8,192, sequence 512); the tokens of a step are held
at --tokens (1,024) by the batch size, one row being the least (4,096 tokens at sequence 4,096). T5's targets
are a quarter of its inputs.

Peak memory is the process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs) above its
resident set before the side's model was built, with freed memory handed back to the OS before each side
(malloc_trim): weights, gradients, optimizer state and the activations of a step.
Writes OUT.md (a table, with the load average while it ran) and OUT.png (the curves), atomically.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train  # noqa: E402

from ptlab.files import prepare_output, write_text_atomic  # noqa: E402
from ptlab.models import build_model  # noqa: E402
from ptlab.train.host import configure_host  # noqa: E402
from ptlab.train.optim import build_optimizer  # noqa: E402

BASE = {"seq": 512, "width": 256, "vocab": 8192}
SWEEPS = {
    "seq": [128, 256, 512, 1024, 2048, 4096],
    "width": [256, 512, 1024],
    "vocab": [1024, 8192, 32768, 131072],
}
QUICK_SWEEPS = {"seq": [128, 1024, 4096], "width": [256, 1024], "vocab": [1024, 131072]}  # the ends of each range
LABELS = {"seq": "sequence length (tokens)", "width": "width (d_model)", "vocab": "vocabulary size"}
FAMILIES = {"gpt2": "GPT-2", "t5": "T5"}


@dataclasses.dataclass(frozen=True)
class Point:
    family: str
    seq: int
    width: int
    vocab: int

    def config(self):
        cfg = train.model_config(self.family, "tiny")
        heads = self.width // 64
        # num_kv_heads (and a decoder's d_kv) left for validate() to derive from the new number of heads
        changes = dict(d_model=self.width, num_heads=heads, num_kv_heads=None, d_ff=4 * self.width,
                       vocab_size=self.vocab)
        if self.family != "t5":
            # HF's GPT-2 reads seq + 1 positions (it shifts the labels itself)
            changes.update(d_kv=None, max_position_embeddings=2 * max(512, self.seq))
        cfg = dataclasses.replace(cfg, **changes)
        cfg.validate()
        return cfg

    def lengths(self) -> tuple[int, int]:
        """(inputs, targets): T5 reads `seq` tokens and writes a quarter as many; a decoder predicts `seq`."""
        return (self.seq, max(16, self.seq // 4)) if self.family == "t5" else (0, self.seq)


def points(families: list[str], sweeps: dict[str, list[int]]) -> list[tuple[str, Point]]:
    """(axis, point) for every sweep of every family; a point several sweeps share is measured once."""
    out = []
    for family in families:
        for axis, values in sweeps.items():
            out += [(axis, Point(family, **{**BASE, axis: value})) for value in values]
    return out


def batch_for(point: Point, inputs: int, targets: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rows = max(1, tokens // point.seq)
    g = torch.Generator().manual_seed(seed)
    cfg = point.config()
    if cfg.is_encoder_decoder:
        return train.encoder_decoder_tensors(cfg, torch.randint(3, point.vocab, (rows, inputs), generator=g),
                                             torch.randint(3, point.vocab, (rows, targets), generator=g))
    x = torch.randint(3, point.vocab, (rows, point.seq + 1), generator=g)
    return {"input_ids": x, "labels": x}  # HF shifts the labels itself; ptlab's batch is built by train.ptlab_batch


_LIBC = ctypes.CDLL(None)


def _resident_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _fresh_peak() -> int:
    """Hand freed memory back to the OS, reset the peak resident set to the current one; return the current (KiB)."""
    gc.collect()
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    return _resident_kib("VmRSS")


def build_side(name: str, cfg, state: dict, batch: dict, warmup: int) -> tuple[train.Runner, float]:
    """One side's runner, built and warmed up; the peak resident memory that took (MiB)."""
    before = _fresh_peak()
    if name == "HF":
        model = train.hf_model(cfg, state, "sdpa")
    else:
        model = build_model(cfg)
        model.load_state_dict(state)
        model.train()
    runner = train.Runner(name, model, name == "HF", "bf16", False, build_optimizer(model, train.TrainConfig()))
    for _ in range(warmup):
        runner.step(batch)
    return runner, (_resident_kib("VmHWM") - before) / 1024


def measure(point: Point, tokens: int, steps: int) -> dict:
    cfg = point.config()
    inputs, targets = point.lengths()
    batch = batch_for(point, inputs, targets, tokens)
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in build_model(cfg).state_dict().items()}
    runners, memory = {}, {}
    for name in ("ptlab", "HF"):
        runners[name], memory[name] = build_side(name, cfg, state, batch, warmup=1)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(steps):  # alternating, so both sides see the same load
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.step(batch)
            seconds[name].append(time.perf_counter() - started)
    rows = batch["input_ids"].shape[0]
    step_tokens = rows * (inputs + targets)
    result = {"batch": rows, "step_tokens": step_tokens, "parameters": sum(p.numel() for p in state.values())}
    for name in runners:
        result[name] = {"tokens_per_second": step_tokens / statistics.median(seconds[name]),
                        "peak_mib": memory[name]}
    del runners
    _fresh_peak()
    return result


def run(families: list[str], sweeps: dict[str, list[int]], tokens: int = 1024, steps: int = 6, threads: int = 0,
        log=print) -> tuple[list[dict], list[str]]:
    """Measure every point; returns the records and the markdown table's lines. `threads` 0: torch's default."""
    configure_host(threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    header = ("| family | axis | sequence | width | vocabulary | batch | tokens/step | ptlab tokens/s | HF tokens/s | "
              "ptlab / HF | ptlab peak MiB | HF peak MiB | memory ptlab / HF |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    log(header)
    records, done = [], {}
    for axis, point in points(families, sweeps):
        if point not in done:
            try:
                done[point] = measure(point, tokens, steps)
            except (RuntimeError, MemoryError) as error:  # one point failing (out of memory) keeps the others
                done[point] = {"error": str(error).splitlines()[0][:200]}
        r = done[point]
        records.append({"axis": axis, **dataclasses.asdict(point), **r})
        cells = f"| {FAMILIES[point.family]} | {axis} | {point.seq} | {point.width} | {point.vocab} |"
        if "error" in r:
            lines.append(f"{cells} | | | failed: {r['error']} | | | | | |")
        else:
            ours, theirs = r["ptlab"], r["HF"]
            lines.append(f"{cells} {r['batch']} | {r['step_tokens']:,} | {ours['tokens_per_second']:,.0f} | "
                         f"{theirs['tokens_per_second']:,.0f} | "
                         f"{ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}x | "
                         f"{ours['peak_mib']:,.0f} | {theirs['peak_mib']:,.0f} | "
                         f"{ours['peak_mib'] / theirs['peak_mib']:.2f} |")
        log(lines[-1])
    load_after = os.getloadavg()
    minutes = (time.perf_counter() - started) / 60
    lines = [f"torch {torch.__version__}, intra-op threads: {torch.get_num_threads()}; bf16 autocast, eager, fused "
             f"AdamW on both sides; {tokens:,} tokens a step (at least one row), median of {steps} alternating "
             f"steps after one warm-up; {minutes:.1f} minutes. Load average (1, 5, 15 min) before: "
             f"{', '.join(f'{x:.1f}' for x in load_before)}; after: {', '.join(f'{x:.1f}' for x in load_after)} "
             f"(on {os.cpu_count()} cores: a load above that slows both sides alike).", ""] + lines
    return records, lines


def plot(records: list[dict], path: Path) -> None:
    """Tokens/s (top) and peak memory (bottom) against each axis; ptlab solid, HF dashed, one colour per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = [a for a in SWEEPS if any(r["axis"] == a for r in records)]
    fig, axes = plt.subplots(2, len(axes_names), figsize=(4.2 * len(axes_names), 7), squeeze=False)
    colours = {"gpt2": "tab:blue", "t5": "tab:orange"}
    for column, axis in enumerate(axes_names):
        for family in FAMILIES:
            rows = sorted((r for r in records if r["axis"] == axis and r["family"] == family and "error" not in r),
                          key=lambda r: r[axis])
            if not rows:
                continue
            x = [r[axis] for r in rows]
            for side, style in (("ptlab", "-"), ("HF", "--")):
                label = f"{side} {FAMILIES[family]}"
                axes[0][column].plot(x, [r[side]["tokens_per_second"] for r in rows], style, marker="o",
                                     color=colours[family], label=label)
                axes[1][column].plot(x, [r[side]["peak_mib"] for r in rows], style, marker="o",
                                     color=colours[family], label=label)
        for row, ylabel in ((0, "training tokens/s"), (1, "peak memory (MiB)")):
            ax = axes[row][column]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(LABELS[axis])
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("ptlab (solid) against HF transformers (dashed), CPU, bf16, eager")
    fig.tight_layout()
    path = prepare_output(path, "plot")
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def write(records: list[dict], lines: list[str], out: Path, command: str) -> None:
    write_text_atomic(out.with_suffix(".md"), f"# Scaling curves, CPU\n\n`{command}`\n\n" + "\n".join(lines)
                      + f"\n\n![curves]({out.with_suffix('.png').name})\n")
    plot(records, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points per sweep")
    parser.add_argument("--families", default="gpt2,t5")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per step (a row at least)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads (0: torch's default; 1 on a CPU other jobs keep busy)")
    parser.add_argument("--steps", type=int, default=6,
                        help="timed steps per side and point (with 3, single points moved by a fifth between runs)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling-cpu"),
                        help="writes OUT.md and OUT.png")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",")]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)} (choose from {', '.join(FAMILIES)})")
    records, lines = run(families, QUICK_SWEEPS if args.quick else SWEEPS, args.tokens, args.steps, args.threads)
    write(records, lines, args.out, " ".join(["benchmarks/scaling.py"] + sys.argv[1:]))
    print("\n".join(lines) + f"\n\nresults: {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
