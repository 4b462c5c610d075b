"""GPU training throughput and MFU, bf16 autocast, fused AdamW, with and without torch.compile:
GPT-2 124M (seq 1024), a Llama ~1B-shaped stack (TinyLlama's shape, seq 2048) and T5-base (512 -> 114).
Synthetic tokens, so only the model and optimizer are measured.

    python benchmarks/gpu.py [--steps 20] [--only gpt2,llama,t5] [--loss-chunk-tokens 0,4096] [--flex auto,off]
                             [--compile-mode default,max-autotune-no-cudagraphs,max-autotune] [--float8]
                             [--loss-steps 200]

The options that take lists measure every combination on each compiled row of the plan:
  --loss-chunk-tokens   train.loss_chunk_tokens: the head and loss fused in chunks of that many tokens (0: the
                        whole batch's logits, then the loss)
  --flex                T5's attention: `auto` (flex_attention when compiled on CUDA), `off` (the dense bias)
  --compile-mode        torch.compile's mode; `max-autotune` adds CUDA graphs to `max-autotune-no-cudagraphs`
  --float8              also each row with float8 linear layers (torchao, `pip install 'ptlab[float8]'`; H100-class
                        GPUs), skipping the head and layers whose dimensions are not multiples of 16
  --loss-steps N        with --float8: train bf16 and float8 from the same weights on the same real-text batches for
                        N steps and compare the losses (and bf16 on another draw of batches, for the noise)

The default run fits in about 5 minutes on one H100/H200 (most of it compiling). MFU is against the datasheet bf16
dense peak (ptlab.models.flops.GPU_PEAK_TFLOPS). Prints a markdown table, appending each row to $OUT/gpu.md (when
$OUT is set) as soon as it is measured, so a run cut short keeps what it measured. `--device cpu --tiny [--eager]`
checks the script itself (tests/test_gpu_script.py); CUDA graphs, float8 and flex's backward need a GPU and say so
on CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ptlab.config import ModelConfig, TrainConfig
from ptlab.models import build_model, count_parameters
from ptlab.models.flops import peak_tflops, training_flops
from ptlab.train.loop import summed_loss, training_loss
from ptlab.train.optim import build_optimizer

GPT2_124M = ModelConfig(family="gpt2", vocab_size=50304, d_model=768, num_heads=12, num_layers=12, d_ff=3072,
                        max_position_embeddings=1024)
LLAMA_1B = ModelConfig(family="llama", vocab_size=32000, d_model=2048, num_heads=32, num_kv_heads=4, num_layers=22,
                       d_ff=5632, max_position_embeddings=2048)
T5_BASE = ModelConfig(family="t5", vocab_size=32128, d_model=768, d_kv=64, num_heads=12, num_layers=12, d_ff=2048)

# (key, label, config, [(batch, compile)], inputs, targets)
PLAN = [
    ("gpt2", "GPT-2 124M, seq 1024", GPT2_124M, [(16, False), (16, True), (64, True)], 1024, 0),
    ("llama", "Llama ~1B shape, seq 2048", LLAMA_1B, [(8, True)], 2048, 0),
    ("t5", "T5-base, 512 -> 114", T5_BASE, [(64, False), (64, True)], 512, 114),
]
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune")
FLEX = {"auto": None, "on": True, "off": False}  # T5.flex_attention


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measured row: how the step is built."""
    batch: int
    compiled: bool
    mode: str = "default"
    chunk_tokens: int = 0
    flex: str = "auto"
    float8: bool = False


def tiny(cfg: ModelConfig) -> ModelConfig:
    return ModelConfig(**{**cfg.__dict__, "vocab_size": 512, "d_model": 64, "num_heads": 4, "num_layers": 2,
                          "d_ff": 128, "d_kv": None if cfg.family != "t5" else 16,
                          "num_kv_heads": 2 if cfg.num_kv_heads else None})


def float8_eligible(module: torch.nn.Module, name: str) -> bool:
    """torchao's module filter: a linear layer other than the head, with both dimensions multiples of 16 (the
    float8 matmul's requirement)."""
    if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] == "lm_head":
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def to_float8(model: torch.nn.Module) -> torch.nn.Module:
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise SystemExit("benchmarks/gpu.py: --float8 needs torchao (pip install 'ptlab[float8]')") from None
    return convert_to_float8_training(model, module_filter_fn=float8_eligible)


def check_device(device: torch.device, settings: list[Setting]) -> None:
    """Refuse, in one line, what this device cannot run."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py: no CUDA GPU here (use --device cpu --tiny to check the script)")
        if any(s.float8 for s in settings) and torch.cuda.get_device_capability(device) < (8, 9):
            raise SystemExit(f"benchmarks/gpu.py: --float8 needs compute capability 8.9 or higher (H100-class); "
                             f"{torch.cuda.get_device_name(device)} has "
                             f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}")
        return
    if any(s.mode == "max-autotune" for s in settings):
        raise SystemExit("benchmarks/gpu.py: --compile-mode max-autotune uses CUDA graphs, which need a CUDA GPU "
                         "(max-autotune-no-cudagraphs runs on CPU)")
    if any(s.float8 for s in settings):
        raise SystemExit("benchmarks/gpu.py: --float8 needs a CUDA GPU with float8 matmuls (H100-class)")
    if any(s.flex == "on" for s in settings):
        raise SystemExit("benchmarks/gpu.py: --flex on needs a CUDA GPU (torch has no flex_attention backward on CPU)")


def build(cfg: ModelConfig, setting: Setting, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    torch._dynamo.reset()  # a fresh compile per shape: no recompilation with dynamic shapes
    model = build_model(cfg).to(device).train()
    if cfg.family == "t5":
        model.flex_attention = FLEX[setting.flex]
    if setting.float8:
        model = to_float8(model)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.1))
    if not setting.compiled or setting.mode == "default":
        # the trainer's own loss: model and cross-entropy compiled as one graph
        summed = training_loss(model, setting.compiled, chunk_tokens=setting.chunk_tokens)
    else:
        summed = torch.compile(functools.partial(summed_loss, model, chunk_tokens=setting.chunk_tokens),
                               mode=setting.mode)
    return model, optimizer, summed


def synthetic_batch(cfg: ModelConfig, batch: int, inputs: int, targets: int, device: torch.device) -> dict:
    vocab = cfg.vocab_size
    if cfg.is_encoder_decoder:
        x = torch.randint(3, vocab, (batch, inputs), device=device)
        y = torch.randint(3, vocab, (batch, targets), device=device)
        return encoder_decoder_batch(x, y)
    return decoder_batch(torch.randint(0, vocab, (batch, inputs + 1), device=device))


def encoder_decoder_batch(x: torch.Tensor, y: torch.Tensor) -> dict:
    start = torch.zeros((y.shape[0], 1), dtype=torch.long, device=y.device)
    return {"input_ids": x, "decoder_input_ids": torch.cat([start, y[:, :-1]], 1), "labels": y}  # no padding


def decoder_batch(sequence: torch.Tensor) -> dict:
    x = sequence[:, :-1].contiguous()
    return {"input_ids": x, "labels": sequence[:, 1:].contiguous(),
            "position_ids": torch.arange(x.shape[1], device=x.device)[None].expand_as(x)}  # no packing, no prefix


def make_step(model, optimizer, summed, device: torch.device):
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(data: dict) -> torch.Tensor:
        with autocast:
            loss = summed(data) / data["labels"].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(cfg: ModelConfig, setting: Setting, inputs: int, targets: int, steps: int, device: torch.device) -> dict:
    model, optimizer, summed = build(cfg, setting, device)
    data = synthetic_batch(cfg, setting.batch, inputs, targets, device)
    batch = setting.batch
    if cfg.is_encoder_decoder:
        tokens, flops = batch * (inputs + targets), batch * training_flops(cfg, inputs, targets)
    else:
        tokens, flops = batch * inputs, batch * training_flops(cfg, 0, inputs)
    step = make_step(model, optimizer, summed, device)
    started = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step(data)
    sync(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step(data)
    sync(device)
    seconds = (time.perf_counter() - started) / steps
    peak, _ = peak_tflops(device, "bf16")
    memory = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    result = {"parameters": count_parameters(model), "tokens_per_second": tokens / seconds,
              "tflops": flops / seconds / 1e12, "mfu": flops / seconds / 1e12 / peak, "warmup_seconds": warmup,
              "memory_gb": memory}
    del model, optimizer, summed
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def real_batches(cfg: ModelConfig, batch: int, inputs: int, targets: int, count: int, seed: int,
                 device: torch.device) -> list[dict]:
    """Windows of the bundled corpus, tokenized as benchmarks/train.py does (ids below its 8,192 vocabulary)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train

    tokens = train.corpus_tokens()
    rng = np.random.default_rng(seed)
    width = inputs + targets if cfg.is_encoder_decoder else inputs + 1
    out = []
    for _ in range(count):
        starts = rng.integers(0, len(tokens) - width, batch)
        rows = torch.from_numpy(np.stack([tokens[s:s + width] for s in starts])).to(device)
        out.append(encoder_decoder_batch(rows[:, :inputs], rows[:, inputs:]) if cfg.is_encoder_decoder
                   else decoder_batch(rows))
    return out


def float8_losses(cfg: ModelConfig, setting: Setting, inputs: int, targets: int, steps: int,
                  device: torch.device, window: int = 20) -> dict:
    """bf16 and float8 from the same weights on the same real batches; bf16 on another draw of batches shows how
    far the curve moves for reasons that have nothing to do with precision."""
    batches = real_batches(cfg, setting.batch, inputs, targets, steps, 1, device)
    runs = {"bf16": (dataclasses.replace(setting, float8=False), batches),
            "float8": (dataclasses.replace(setting, float8=True), batches),
            "bf16, other batches": (dataclasses.replace(setting, float8=False),
                                    real_batches(cfg, setting.batch, inputs, targets, steps, 2, device))}
    curves = {}
    for name, (run_setting, run_batches) in runs.items():
        step = make_step(*build(cfg, run_setting, device), device)
        curves[name] = torch.stack([step(b) for b in run_batches]).float().cpu().numpy()

    def smooth(values):
        width = min(window, len(values))
        return np.convolve(values, np.ones(width) / width, mode="valid")

    bf16, fp8, other = (smooth(curves[k]) for k in ("bf16", "float8", "bf16, other batches"))
    return {"final_bf16": float(bf16[-1]), "final_float8": float(fp8[-1]),
            "max_gap_float8": float(np.abs(fp8 - bf16).max()),
            "max_gap_other_batches": float(np.abs(other - bf16).max())}


def settings_for(plan_settings: list[tuple[int, bool]], args, t5: bool) -> list[Setting]:
    """The plan's rows, each compiled row in every combination of the options' values (--flex for T5 only)."""
    batches = [(int(b), True) for b in args.batches.split(",")] if args.batches else plan_settings
    if args.eager:
        batches = [(batch, False) for batch, _ in batches]
    out = []
    for batch, compiled in batches:
        batch = min(batch, 2) if args.tiny else batch
        for chunk in args.loss_chunk_tokens:
            for flex in args.flex if t5 else ["auto"]:
                if not compiled:
                    out.append(Setting(batch, False, chunk_tokens=chunk, flex=flex))
                    continue
                for mode in args.compile_mode:
                    out += [Setting(batch, True, mode, chunk, flex, float8)
                            for float8 in ((False, True) if args.float8 else (False,))]
    return list(dict.fromkeys(out))


def _list(kind, choices=None):
    def parse(text: str):
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if choices is not None and v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list"
                                             + (f" of {', '.join(choices)}" if choices else ""))
        return values
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", default="gpt2,llama,t5", type=_list(str, ("gpt2", "llama", "t5")),
                        help="comma-separated subset of gpt2, llama, t5")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default=None,
                        help="compiled batch sizes to try instead of the plan's, e.g. 32,64")
    parser.add_argument("--loss-chunk-tokens", type=_list(int), default=[0],
                        help="train.loss_chunk_tokens values to compare (0: the whole batch's logits)")
    parser.add_argument("--flex", type=_list(str, tuple(FLEX)), default=["auto"],
                        help="T5's attention: auto (flex_attention when compiled on CUDA), on, off")
    parser.add_argument("--compile-mode", type=_list(str, COMPILE_MODES), default=["default"],
                        help="torch.compile modes to compare (max-autotune adds CUDA graphs)")
    parser.add_argument("--float8", action="store_true", help="also each compiled row with float8 linear layers")
    parser.add_argument("--loss-steps", type=int, default=0,
                        help="with --float8: compare float8's loss with bf16's over this many steps")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, to check the script on CPU")
    parser.add_argument("--eager", action="store_true",
                        help="every row uncompiled (checks the script in seconds: a CPU compile takes minutes)")
    args = parser.parse_args(argv)
    if any(c < 0 for c in args.loss_chunk_tokens):
        parser.error("--loss-chunk-tokens: must be >= 0 (0: no chunking)")
    if args.loss_steps and not args.float8:
        parser.error("--loss-steps compares float8 with bf16: it needs --float8")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    plan = [row for row in PLAN if row[0] in args.only]
    for key, _, _, plan_settings, _, _ in plan:
        check_device(device, settings_for(plan_settings, args, key == "t5"))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak, source = peak_tflops(device, "bf16")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = os.path.join(os.environ["OUT"], "gpu.md") if os.environ.get("OUT") else None
    lines = [f"{name}; peak {peak:.0f} TFLOP/s ({source}); torch {torch.__version__}", "",
             "| model | compile | mode | loss chunk | attention | float8 | batch | tokens/s | TFLOP/s | MFU | "
             "warm-up s | peak memory GB |", "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)
        if out:
            with open(out, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

    for line in lines[:]:
        print(line)
    for key, label, cfg, plan_settings, inputs, targets in plan:
        if args.tiny:
            cfg, inputs, targets = tiny(cfg), min(inputs, 64), min(targets, 16)
        for s in settings_for(plan_settings, args, key == "t5"):
            attention = ("flex" if s.flex == "on" or (s.flex == "auto" and s.compiled and device.type == "cuda")
                         else "dense") if key == "t5" else "sdpa"
            row = (f"{'on' if s.compiled else 'off'} | {s.mode if s.compiled else '-'} | {s.chunk_tokens} | "
                   f"{attention} | {'on' if s.float8 else 'off'} | {s.batch}")
            try:
                r = measure(cfg, s, inputs, targets, args.steps, device)
            except torch.OutOfMemoryError:
                emit(f"| {label} | {row} | out of memory | | | | |")
                continue
            emit(f"| {label} ({r['parameters'] / 1e6:.0f}M) | {row} | {r['tokens_per_second']:,.0f} | "
                 f"{r['tflops']:.1f} | {r['mfu']:.1%} | {r['warmup_seconds']:.0f} | {r['memory_gb']:.1f} |")
    if args.loss_steps:
        emit("")
        emit(f"Loss over {args.loss_steps} steps, bf16 against float8 (real text, same weights and batches; "
             "20-step moving averages; 'other batches' is bf16 on another draw, the noise yardstick):")
        emit("")
        emit("| model | bf16 final | float8 final | max gap float8 vs bf16 | max gap other batches |")
        emit("|---|---:|---:|---:|---:|")
        for key, label, cfg, plan_settings, inputs, targets in plan:
            if args.tiny:
                cfg, inputs, targets = tiny(cfg), min(inputs, 64), min(targets, 16)
            compiled = [s for s in settings_for(plan_settings, args, key == "t5") if s.compiled and not s.float8]
            c = float8_losses(cfg, compiled[0], inputs, targets, args.loss_steps, device)
            emit(f"| {label} | {c['final_bf16']:.3f} | {c['final_float8']:.3f} | {c['max_gap_float8']:.3f} | "
                 f"{c['max_gap_other_batches']:.3f} |")


if __name__ == "__main__":
    main()
