"""GPU training throughput and MFU: GPT-2 124M (1024 tokens) and a T5-base-sized encoder-decoder (512 -> 114),
bf16 autocast, fused AdamW, with and without torch.compile. Synthetic tokens, so only the model is measured.

    python benchmarks/gpu.py [--steps 20] [--batch-gpt2 16] [--batch-t5 64]

Runs in about 3-4 minutes on one H100 (most of it compiling). MFU is against the datasheet bf16 dense peak
(ptlab.flops.GPU_PEAK_TFLOPS). Prints a markdown table and writes it to $OUT/gpu.md when $OUT is set.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from ptlab.config import ModelConfig, TrainConfig
from ptlab.flops import peak_tflops, training_flops
from ptlab.models import build_model, count_parameters
from ptlab.train.optim import build_optimizer

GPT2_124M = ModelConfig(family="gpt2", vocab_size=50304, d_model=768, num_heads=12, num_layers=12, d_ff=3072,
                        max_position_embeddings=1024)
T5_BASE = ModelConfig(family="t5", vocab_size=32128, d_model=768, d_kv=64, num_heads=12, num_layers=12, d_ff=2048)


def measure(cfg: ModelConfig, batch: int, inputs: int, targets: int, compile_model: bool, steps: int,
            device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.1), device)
    forward = torch.compile(model) if compile_model else model
    vocab = cfg.vocab_size

    if cfg.is_encoder_decoder:
        x = torch.randint(3, vocab, (batch, inputs), device=device)
        y = torch.randint(3, vocab, (batch, targets), device=device)

        def loss_fn():
            logits = forward(x, y)
            return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        tokens, flops = batch * (inputs + targets), batch * training_flops(cfg, inputs, targets)
    else:
        x = torch.randint(0, vocab, (batch, inputs + 1), device=device)

        def loss_fn():
            logits = forward(x[:, :-1])
            return F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        tokens, flops = batch * inputs, batch * training_flops(cfg, 0, inputs)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak, _ = peak_tflops(device, "bf16")
    result = {"parameters": count_parameters(model), "tokens_per_second": tokens / seconds,
              "tflops": flops / seconds / 1e12, "mfu": flops / seconds / 1e12 / peak, "warmup_seconds": warmup,
              "memory_gb": torch.cuda.max_memory_allocated(device) / 1e9}
    del model, optimizer, forward
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-gpt2", type=int, default=16)
    parser.add_argument("--batch-t5", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    peak, source = peak_tflops(device, "bf16")
    lines = [f"{torch.cuda.get_device_name(device)}; peak {peak:.0f} TFLOP/s ({source}); torch {torch.__version__}",
             "", "| model | compile | batch | tokens/s | TFLOP/s | MFU | warm-up s | peak memory GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    runs = [("GPT-2 124M, seq 1024", GPT2_124M, args.batch_gpt2, 1024, 0),
            ("T5-base size, 512 -> 114", T5_BASE, args.batch_t5, 512, 114)]
    for name, cfg, batch, inputs, targets in runs:
        for compile_model in (False, True):
            r = measure(cfg, batch, inputs, targets, compile_model, args.steps, device)
            lines.append(f"| {name} ({r['parameters'] / 1e6:.0f}M) | {'on' if compile_model else 'off'} | {batch} | "
                         f"{r['tokens_per_second']:,.0f} | {r['tflops']:.0f} | {r['mfu']:.1%} | "
                         f"{r['warmup_seconds']:.0f} | {r['memory_gb']:.1f} |")
            print(lines[-1], flush=True)
    report = "\n".join(lines)
    print("\n" + report)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu.md"), "w", encoding="utf-8") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
