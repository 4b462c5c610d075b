"""Which precision a run computes in: `train.precision: auto` is bf16 where the hardware multiplies bf16 matrices
natively and fp32 where PyTorch would emulate them. torch is imported only inside the functions (configs are read
without it)."""

from __future__ import annotations

import functools


@functools.cache
def native_bf16(device_type: str = "cpu") -> bool:
    """Whether this machine multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU with AMX
    or AVX-512 BF16. Elsewhere PyTorch emulates bf16 matmuls from fp32 ones, and bf16 costs time instead of saving
    it: on a 2-core AVX-512 Xeon without either, 57 GFLOP/s against 200 in fp32, and the demo's pre-training ran
    at 1,200 tokens/s against 2,550 (docs/training.md)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # torch's own CPUID checks (private, so absent in some build: then no native bf16 is assumed)
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_amx_tile_supported",
                                                                       "_is_avx512_bf16_supported"))


def resolve_precision(precision: str, device: str = "auto") -> str:
    """`train.precision` as the run uses it: `auto` is bf16 where the device computes it natively (`native_bf16`)
    and fp32 elsewhere; `bf16` and `fp32` are kept as they are. `device` is `train.device` or a torch device."""
    if precision != "auto":
        return precision
    import torch

    kind = getattr(device, "type", device)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if native_bf16("cuda" if kind == "cuda" else "cpu") else "fp32"
