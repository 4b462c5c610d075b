"""Process-wide settings that make training on a CPU fast: thread count, denormals, and the host allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def configure_host(threads: int | None = None) -> None:
    """Use `threads` intra-op threads (None or 0: PyTorch's default), flush denormals to zero, keep freed memory.

    Tiny optimizer statistics become subnormal floats after a few hundred steps, which x86 CPUs handle in
    microcode, doubling step time; flushing them to zero changes nothing measurable in training."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()


@functools.cache
def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and never trim it; False where the C library is not glibc.

    glibc hands each allocation over its mmap threshold (at most 32 MiB) straight to the kernel and returns it on
    free, so a training step's large tensors (logits, attention scores, activations) arrive as fresh pages that
    fault in one at a time: a quarter of a CPU step can go to page faults. Kept, the next step reuses the same
    pages. The process holds on to its peak memory instead of returning it; jemalloc or tcmalloc (LD_PRELOAD)
    do the same."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: other C libraries lack it, or give mallopt other meanings
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
