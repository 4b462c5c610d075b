"""Process-wide settings that make training on a CPU fast, alone or side by side with other runs: thread count,
OpenMP waiting, denormals, and the host allocator.

torch is imported only inside functions: the OpenMP settings here must reach the environment before torch (and
with it the OpenMP runtime) loads, which reads them once. See docs/cpu-sharing.md for the measurements."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4

# How long an idle OpenMP thread spins before it sleeps: GNU libgomp (torch's Linux wheels), its spin count, and
# Intel's runtime. A user who set any of them has chosen, and ptlab leaves the choice alone.
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def prefer_passive_waiting(environ=os.environ) -> bool:
    """Let idle OpenMP threads sleep at once instead of spinning, unless the user chose a waiting policy; True
    when this call set it.

    By default libgomp spins a thread that waits at a barrier or for work for 300,000 turns (a fraction of a
    millisecond to a few) before it sleeps, and a training step has thousands of such waits. Alone, that spinning
    only burns a core nobody needs; beside another busy process it takes that process's core, and two runs side by
    side slowed each other far more than twofold. Takes effect only when it runs before the OpenMP runtime loads
    (before `import torch`), in this process or in the children it starts."""
    if any(name in environ for name in WAIT_SETTINGS):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_share(jobs: int, cores: int | None = None) -> int:
    """Intra-op threads for each of `jobs` processes sharing `cores` (default: this process's), at least one: more
    threads than cores make each process's threads wait on each other's time slices."""
    return max(1, (cores or available_cores()) // max(1, jobs))


def _start_job(threads: int) -> None:
    # Runs in each new job process before it imports torch, so the OpenMP runtime starts with the share and
    # sleeping waiters; torch.set_num_threads(threads) later would fix only the count.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    prefer_passive_waiting()


def job_pool(jobs: int) -> ProcessPoolExecutor:
    """`jobs` fresh worker processes that split this machine's cores between them (`thread_share`), each with
    passive OpenMP waiting unless the user chose otherwise."""
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start_job,
                               initargs=(thread_share(jobs),))


def configure_host(threads: int | None = None) -> None:
    """Use `threads` intra-op threads (None or 0: PyTorch's default), flush denormals to zero, keep freed memory.

    Tiny optimizer statistics become subnormal floats after a few hundred steps, which x86 CPUs handle in
    microcode, doubling step time; flushing them to zero changes nothing measurable in training."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()


@contextlib.contextmanager
def denormals_restored() -> Iterator[None]:
    """Whatever `configure_host` does to the process-wide flush-to-zero flag inside, the caller's setting is back
    afterwards (a Python session that trains, then computes with tiny floats, must not find them flushed)."""
    import torch

    before = torch.tensor([1e-38], dtype=torch.float32).div(1e4).item() == 0.0  # a subnormal result, flushed?
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


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
