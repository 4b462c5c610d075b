"""Training FLOPs of a model config, and the peak FLOP/s to measure utilisation (MFU) against.

FLOPs are counted as the matmuls do: a token through a weight matrix W costs 2|W| forward and 4|W| backward
(6N per token for N non-embedding weights, Kaplan et al.), plus attention's score and value products
(2 * 2 * keys * d_attn forward per token and layer, over all keys even when causal, as PaLM's MFU and nanoGPT
count: 6N + 12 * layers * d_attn * length per token). The LM head counts as a matrix; embedding lookups do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ptlab.config import ModelConfig
from ptlab.families import GATED_FEED_FORWARDS
from ptlab.precision import resolve_precision

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity).
GPU_PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0,
    "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "RTX 4090": 165.0,
    "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0, "B200": 2250.0, "MI300X": 1307.0,
}


@dataclass(frozen=True)
class StackShape:
    layers: int
    d_model: int
    attn_inner: int  # num_heads * d_kv
    kv_inner: int  # num_kv_heads * d_kv
    ffn_matrices: int  # 2 (plain) or 3 (gated)
    d_ff: int

    @property
    def self_attention_weights(self) -> int:
        return self.d_model * (2 * self.attn_inner + 2 * self.kv_inner)

    @property
    def ffn_weights(self) -> int:
        return self.ffn_matrices * self.d_model * self.d_ff


def _stack(cfg: ModelConfig, layers: int) -> StackShape:
    gated = (cfg.spec.feed_forward or cfg.feed_forward) in GATED_FEED_FORWARDS
    return StackShape(layers, cfg.d_model, cfg.num_heads * cfg.d_kv, (cfg.num_kv_heads or cfg.num_heads) * cfg.d_kv,
                      3 if gated else 2, cfg.d_ff)


def forward_flops(cfg: ModelConfig, inputs: int, targets: int) -> float:
    """Forward FLOPs of one example: `inputs` encoder tokens and `targets` decoder tokens (decoder-only models:
    a sequence of `inputs + targets` tokens; pass `inputs=0` for plain LM windows)."""
    cfg.validate()
    head = 2 * cfg.d_model * cfg.vocab_size
    if cfg.is_encoder_decoder:
        enc, dec = _stack(cfg, cfg.num_layers), _stack(cfg, cfg.num_decoder_layers or cfg.num_layers)
        encoder = inputs * enc.layers * (2 * (enc.self_attention_weights + enc.ffn_weights)
                                         + 4 * inputs * enc.attn_inner)
        cross_kv = inputs * dec.layers * 2 * (2 * dec.d_model * dec.kv_inner)  # keys/values of the encoder output
        decoder = targets * dec.layers * (
            2 * (dec.self_attention_weights + dec.ffn_weights + 2 * dec.d_model * dec.attn_inner)  # + cross q, o
            + 4 * targets * dec.attn_inner + 4 * inputs * dec.attn_inner)  # self-attention, cross-attention
        return encoder + cross_kv + decoder + targets * head
    stack, length = _stack(cfg, cfg.num_layers), inputs + targets
    return length * stack.layers * (2 * (stack.self_attention_weights + stack.ffn_weights)
                                    + 4 * length * stack.attn_inner) + length * head


def flops_per_token(parameters: float, layers: int, d_attn: int, sequence: int, targets_per_input: float = 0.0
                    ) -> float:
    """Training FLOPs per token from a published size, where the exact shapes are unknown: 6N plus attention's
    12 * layers * d_attn * sequence. In an encoder-decoder (`targets_per_input` decoder tokens per encoder token)
    each token passes through one of the two stacks (3N), and the decoder's tokens are counted on top."""
    if targets_per_input:
        return (3 * parameters + 12 * layers * d_attn * sequence) * (1 + targets_per_input)
    return 6 * parameters + 12 * layers * d_attn * sequence


def training_flops(cfg: ModelConfig, inputs: int, targets: int) -> float:
    """Forward plus backward (twice the forward) FLOPs of one training example."""
    return 3.0 * forward_flops(cfg, inputs, targets)


def gpu_peak_tflops(name: str) -> float | None:
    """Datasheet bf16 peak for a CUDA device name such as 'NVIDIA H100 80GB HBM3' (longest matching key)."""
    matches = [key for key in GPU_PEAK_TFLOPS if key.replace(" ", "").lower() in name.replace(" ", "").lower()]
    return GPU_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def measure_matmul_tflops(dtype: torch.dtype = torch.bfloat16, size: int = 1024, seconds: float = 0.5,
                          device: str = "cpu") -> float:
    """This machine's sustained matmul TFLOP/s at `dtype` (square matrices, all of torch's threads)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e12


def peak_tflops(device: torch.device, precision: str, override: float | None = None) -> tuple[float, str]:
    """The peak to compute MFU against, and where it came from."""
    if override:
        return override, "configured (train.peak_tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_tflops(name)
        if peak is not None:
            return peak, f"{name} datasheet bf16 dense"
        return measure_matmul_tflops(device=str(device)), f"{name}, measured bf16 matmul"
    precision = resolve_precision(precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measure_matmul_tflops(dtype), f"this CPU's measured {precision} matmul ({torch.get_num_threads()} threads)"
