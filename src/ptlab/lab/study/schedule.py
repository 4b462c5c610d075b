"""Running a study's jobs, some of which need another's result (a fine-tune needs its pre-training run, a
continued pre-training the run it continues): serially in the given order, or on a pool of processes where a job
is submitted only once the job it needs has finished, pre-training runs before fine-tunes (others wait on them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Any

from ptlab.train.host import job_pool, thread_share


@dataclass(eq=False)
class Job:
    name: str
    function: Callable  # called as function(*args, result of `after` or None, threads=N, show_progress=bool)
    args: tuple
    after: Job | None = None  # the job whose result this one needs
    done: Any = None  # a result known without running (e.g. a pre-training finished earlier)
    urgent: bool = False  # run before other ready jobs: others wait on it


def run_jobs(jobs: list[Job], workers: int = 1, show_progress: bool = False) -> Iterator[tuple[Job, Any]]:
    """Run `jobs` (each after its `after`, which must come earlier in the list); yields (job, result) as each
    finishes. An exception in a job stops the run (jobs already running on a pool finish first)."""
    results: dict[int, Any] = {}
    if workers <= 1:
        for job in jobs:
            results[id(job)] = job.done if job.done is not None else job.function(
                *job.args, results[id(job.after)] if job.after else None, threads=0, show_progress=show_progress)
            yield job, results[id(job)]
        return
    threads = thread_share(workers)
    waiting = list(jobs)
    with job_pool(workers) as pool:
        running: dict = {}
        while waiting or running:
            ready = [j for j in waiting if j.after is None or id(j.after) in results]
            for job in [j for j in ready if j.done is not None]:
                results[id(job)] = job.done
                waiting.remove(job)
                yield job, job.done
            ready = sorted((j for j in ready if j.done is None), key=lambda j: not j.urgent)  # stable: plan order
            while ready and len(running) < workers:
                job = ready.pop(0)
                waiting.remove(job)
                needed = results[id(job.after)] if job.after else None
                running[pool.submit(_call, job.function, job.args, needed, threads)] = job
            if not running:
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                results[id(job)] = future.result()
                yield job, results[id(job)]


def _call(function: Callable, args: tuple, needed: Any, threads: int) -> Any:
    return function(*args, needed, threads=threads, show_progress=False)
