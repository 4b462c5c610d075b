import gzip
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

from ptlab.data.tokenizer import train_tokenizer

# Property-based tests: the default profile keeps `make test` fast and repeatable (fixed seeds); PTLAB_FUZZ=1 (`make
# fuzz`) multiplies every test's example count by 10 with fresh random seeds (see tests/fuzz_strategies.py).
settings.register_profile("ptlab", deadline=None, database=None, derandomize=True)
settings.register_profile("fuzz", deadline=None, database=None, derandomize=False)
settings.load_profile("fuzz" if os.environ.get("PTLAB_FUZZ") else "ptlab")

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "corpus"


def read_docs(path: Path, limit: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in itertools.islice(f, limit)]


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def sample_docs() -> list[dict]:
    """A few hundred real documents of the bundled validation split, every source represented."""
    docs = read_docs(CORPUS / "validation.jsonl.gz", 100_000)
    by_source: dict[str, list[dict]] = {}
    for doc in docs:
        by_source.setdefault(doc["source"], []).append(doc)
    return [d for group in by_source.values() for d in group[:60]]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, sample_docs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    split = int(len(sample_docs) * 0.85)
    return {"train": write_jsonl(root / "train.jsonl.gz", sample_docs[:split]),
            "validation": write_jsonl(root / "validation.jsonl.gz", sample_docs[split:])}


@pytest.fixture(scope="session")
def unigram_tokenizer(sample_docs):
    return train_tokenizer((d["text"] for d in sample_docs), "unigram", 2000, 100, show_progress=False)


@pytest.fixture(scope="session")
def bpe_tokenizer(sample_docs):
    return train_tokenizer((d["text"] for d in sample_docs), "bpe", 2000, 100, show_progress=False)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, unigram_tokenizer):
    """The unigram tokenizer saved to a directory of this test module's own (shards get built inside it)."""
    path = tmp_path_factory.mktemp("tok")
    unigram_tokenizer.save(path)
    return path


class KilledProcess:
    """`kill_after(command, run_dir, step)`: start COMMAND (a list of arguments after the Python interpreter), wait
    until RUN_DIR's metrics.jsonl records a step at or past STEP (then `pause` seconds more), and SIGKILL it with
    every process it started (torchrun's ranks), as a crash or a lost machine would. Returns whether the process
    was still running when it was killed (False: it ended first)."""

    def __call__(self, command: list[str], run_dir: Path, step: int, pause: float = 0.0, timeout: float = 300,
                 env: dict | None = None, stderr=subprocess.DEVNULL) -> bool:
        from ptlab.train.runlog import read_metrics

        process = subprocess.Popen([sys.executable, *command], stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, **(env or {})})
        deadline = time.time() + timeout
        try:
            while (time.time() < deadline and process.poll() is None
                   and not any(r.get("step", 0) >= step for r in read_metrics(run_dir))):
                time.sleep(0.02)
            time.sleep(pause)
            running = process.poll() is None
        finally:
            kill_tree(process.pid)
            process.wait()
        return running


def kill_tree(pid: int) -> None:
    """SIGKILL PID and every process below it. torchrun starts each rank in a session of its own, so killing the
    launcher's session alone would leave the ranks training on: each is stopped first, then all are killed."""
    def children(parent: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
        return found

    tree, frontier = [pid], [pid]
    while frontier:
        for member in frontier:
            try:
                os.kill(member, signal.SIGSTOP)  # no more children, no more writes
            except ProcessLookupError:
                pass
        frontier = [child for member in frontier for child in children(member)]
        tree += frontier
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def kill_after() -> KilledProcess:
    return KilledProcess()
