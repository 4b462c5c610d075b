"""GPU training throughput and MFU, bf16 autocast, fused AdamW, with and without torch.compile:
GPT-2 124M (seq 1024), a Llama ~1B-shaped stack (TinyLlama's shape, seq 2048) and T5-base (512 -> 114).
Synthetic tokens, so only the model and optimizer are measured.

    python benchmarks/gpu.py [--steps 20] [--only gpt2,llama,t5]

Fits in about 5 minutes on one H100/H200 (most of it compiling). MFU is against the datasheet bf16 dense peak
(ptlab.models.flops.GPU_PEAK_TFLOPS). Prints a markdown table, appending each row to $OUT/gpu.md (when $OUT is set) as
soon as it is measured, so a run cut short keeps what it measured. `--device cpu --tiny` checks the script itself.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from ptlab.config import ModelConfig, TrainConfig
from ptlab.models import build_model, count_parameters
from ptlab.models.flops import peak_tflops, training_flops
from ptlab.train.loop import training_loss
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


def tiny(cfg: ModelConfig) -> ModelConfig:
    return ModelConfig(**{**cfg.__dict__, "vocab_size": 512, "d_model": 64, "num_heads": 4, "num_layers": 2,
                          "d_ff": 128, "d_kv": None if cfg.family != "t5" else 16,
                          "num_kv_heads": 2 if cfg.num_kv_heads else None})


def measure(cfg: ModelConfig, batch: int, inputs: int, targets: int, compile_model: bool, steps: int,
            device: torch.device) -> dict:
    torch.manual_seed(0)
    torch._dynamo.reset()  # a fresh compile per shape: no recompilation with dynamic shapes
    model = build_model(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.1))
    vocab = cfg.vocab_size
    if cfg.is_encoder_decoder:
        x = torch.randint(3, vocab, (batch, inputs), device=device)
        y = torch.randint(3, vocab, (batch, targets), device=device)
        start = torch.zeros((batch, 1), dtype=torch.long, device=device)
        data = {"input_ids": x, "decoder_input_ids": torch.cat([start, y[:, :-1]], 1), "labels": y}  # no padding
        tokens, flops = batch * (inputs + targets), batch * training_flops(cfg, inputs, targets)
    else:
        sequence = torch.randint(0, vocab, (batch, inputs + 1), device=device)
        x = sequence[:, :-1].contiguous()
        data = {"input_ids": x, "labels": sequence[:, 1:].contiguous(),
                "position_ids": torch.arange(inputs, device=device)[None].expand_as(x)}  # no packing, no prefix
        tokens, flops = batch * inputs, batch * training_flops(cfg, 0, inputs)
    # the trainer's own loss: model and cross-entropy compiled as one graph
    summed = training_loss(model, compile_model)
    count = data["labels"].numel()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        with autocast:
            loss = summed(data) / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    sync()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", default="gpt2,llama,t5", help="comma-separated subset of gpt2, llama, t5")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default=None,
                        help="compiled batch sizes to try instead of the plan's, e.g. 32,64")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, to check the script on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA GPU here (use --device cpu --tiny to check the script)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak, source = peak_tflops(device, "bf16")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = os.path.join(os.environ["OUT"], "gpu.md") if os.environ.get("OUT") else None
    lines = [f"{name}; peak {peak:.0f} TFLOP/s ({source}); torch {torch.__version__}", "",
             "| model | compile | batch | tokens/s | TFLOP/s | MFU | warm-up s | peak memory GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)
        if out:
            with open(out, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

    for line in lines[:]:
        print(line)
    wanted = set(args.only.split(","))
    for key, label, cfg, settings, inputs, targets in PLAN:
        if key not in wanted:
            continue
        if args.tiny:
            cfg, inputs, targets = tiny(cfg), min(inputs, 64), min(targets, 16)
        if args.batches:
            settings = [(int(b), True) for b in args.batches.split(",")]
        for batch, compile_model in settings:
            batch = min(batch, 2) if args.tiny else batch
            try:
                r = measure(cfg, batch, inputs, targets, compile_model, args.steps, device)
            except torch.OutOfMemoryError:
                emit(f"| {label} | {'on' if compile_model else 'off'} | {batch} | out of memory | | | | |")
                continue
            compiled = "on" if compile_model else "off"
            emit(f"| {label} ({r['parameters'] / 1e6:.0f}M) | {compiled} | {batch} | "
                 f"{r['tokens_per_second']:,.0f} | {r['tflops']:.1f} | {r['mfu']:.1%} | "
                 f"{r['warmup_seconds']:.0f} | {r['memory_gb']:.1f} |")


if __name__ == "__main__":
    main()
