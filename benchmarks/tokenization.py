"""Tokenization at scale: tokens/s of `ptlab tokenize` with 1 and 2 workers against `datasets.Dataset.map(batched=True,
num_proc=N)` with the same `tokenizers` tokenizer (an 8k Unigram trained on the bundled corpus), on a JSONL corpus of
a few hundred MB made by repeating data/corpus/train.jsonl.gz.

Every setting runs in a fresh process. HF tokenizers' batch encoder spreads a batch over all cores with its own
threads unless TOKENIZERS_PARALLELISM=false, so each single-process setting is timed both ways: "1 thread" (the
honest base for scaling) and "tokenizer threads" (what a default run does). ptlab's time covers reading the JSONL,
tokenizing and writing the shard; `datasets`' covers `map` only, after `load_dataset("json")` has built its Arrow
cache (timed separately and reported). Tokens are counted without the EOS ptlab appends. (Not named tokenize.py: run
as a script from benchmarks/, that would shadow the standard library's `tokenize`, which torch and datasets import.)

    .venv/bin/python benchmarks/tokenization.py [--megabytes 300] [--rounds 1] [--workdir runs/bench-tokenize]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SOURCE = Path("data/corpus/train.jsonl.gz")
SETTINGS = {  # name: (engine, processes, tokenizer threads on)
    "ptlab, 1 worker, 1 thread": ("ptlab", 1, False),
    "ptlab, 1 worker, tokenizer threads": ("ptlab", 1, True),
    "ptlab, 2 workers": ("ptlab", 2, False),
    "datasets.map, num_proc=1, 1 thread": ("datasets", 1, False),
    "datasets.map, num_proc=1, tokenizer threads": ("datasets", 1, True),
    "datasets.map, num_proc=2": ("datasets", 2, False),
}


def make_corpus(path: Path, megabytes: float) -> float:
    """JSONL of the bundled training split repeated up to `megabytes`; reused when it is already there."""
    target = int(megabytes * 1e6)
    if path.is_file() and path.stat().st_size >= target:
        return path.stat().st_size / 1e6
    with gzip.open(SOURCE, "rt", encoding="utf-8") as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as out:
        while written < target:
            for line in lines:
                out.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    os.replace(tmp, path)
    return written / 1e6


def make_tokenizer(directory: Path) -> None:
    from ptlab.data.corpus import sample_texts
    from ptlab.data.tokenizer import train_tokenizer

    if not (directory / "tokenizer.json").is_file():
        texts = sample_texts([str(SOURCE)], (), 5_000_000)
        train_tokenizer(texts, "unigram", 8192, 100, show_progress=False).save(directory)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(setting: str, corpus: Path, tokenizer_dir: Path, out: Path) -> dict:
    """One setting, in this (fresh) process: seconds, CPU seconds and token count."""
    engine, processes, threads = SETTINGS[setting]
    shutil.rmtree(out, ignore_errors=True)
    if engine == "ptlab":
        from ptlab.data.tokenize_parallel import tokenize_to_shard
        from ptlab.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
        started, cpu = time.perf_counter(), cpu_seconds()
        shard = tokenize_to_shard([str(corpus)], tokenizer, out, workers=processes, show_progress=False)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu,
                "tokens": shard.num_tokens - shard.index["num_documents"]}

    import datasets
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    started = time.perf_counter()
    data = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(out / "cache"))
    loading = time.perf_counter() - started

    def encode(batch):
        return {"ids": [e.ids for e in tokenizer.encode_batch(batch["text"], add_special_tokens=False)]}

    started, cpu = time.perf_counter(), cpu_seconds()
    encoded = data.map(encode, batched=True, num_proc=processes if processes > 1 else None,
                       remove_columns=data.column_names, cache_file_name=str(out / "ids.arrow"))
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    tokens = sum(len(ids) for batch in encoded.iter(batch_size=10_000) for ids in batch["ids"])
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "load_seconds": loading}


def reading_rate(corpus: Path) -> float:
    """MB/s of the reader alone (what the parent does while workers tokenize)."""
    from ptlab.data.corpus import iter_texts

    started = time.perf_counter()
    for _ in iter_texts([str(corpus)]):
        pass
    return corpus.stat().st_size / 1e6 / (time.perf_counter() - started)


def measure_in_child(setting: str, corpus: Path, workdir: Path) -> dict:
    _, _, threads = SETTINGS[setting]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true" if threads else "false", "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "--measure", setting, "--corpus", str(corpus),
                           "--tokenizer", str(workdir / "tokenizer"), "--out", str(workdir / "out")],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{setting} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(tokens_per_second=result["tokens"] / result["seconds"], load_average_before=load,
                  tokens_per_cpu_second=result["tokens"] / result["cpu_seconds"])
    return result


def run(megabytes: float = 300.0, workdir: Path = Path("runs/bench-tokenize"),
        rounds: int = 1) -> tuple[dict, list[str]]:
    """Every setting once per round, rounds one after another (so a burst of load from elsewhere hits settings
    alike); each setting's fastest round is reported."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = workdir / "corpus.jsonl"
    size = make_corpus(corpus, megabytes)
    make_tokenizer(workdir / "tokenizer")
    results: dict = {}
    for _ in range(rounds):
        for setting in SETTINGS:
            result = measure_in_child(setting, corpus, workdir)
            if setting not in results or result["tokens_per_second"] > results[setting]["tokens_per_second"]:
                results[setting] = result
            print(f"  {setting}: {result['tokens_per_second'] / 1e6:.2f}M tokens/s "
                  f"(load {result['load_average_before']:.1f})", file=sys.stderr)
    shutil.rmtree(workdir / "out", ignore_errors=True)
    counts = {r["tokens"] for r in results.values()}
    if len(counts) != 1:
        raise SystemExit(f"the settings tokenized different token counts: {counts}")
    rate = {k: v["tokens_per_second"] for k, v in results.items()}
    report = {"corpus_mb": size, "tokens": counts.pop(), "rounds": rounds, "settings": results,
              "reader_mb_per_second": reading_rate(corpus),
              "scaling_ptlab_2_vs_1_thread": rate["ptlab, 2 workers"] / rate["ptlab, 1 worker, 1 thread"],
              "scaling_datasets_2_vs_1_thread": rate["datasets.map, num_proc=2"]
              / rate["datasets.map, num_proc=1, 1 thread"],
              "ptlab_2_vs_datasets_2": rate["ptlab, 2 workers"] / rate["datasets.map, num_proc=2"]}
    lines = [f"Tokenizing {size:.0f} MB of JSONL ({report['tokens'] / 1e6:.1f}M tokens, 8k Unigram), best of "
             f"{rounds} round(s):", "",
             "| setting | seconds | tokens/s | tokens per CPU-second | load average before |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['seconds']:.1f} | {v['tokens_per_second'] / 1e6:.2f}M | "
              f"{v['tokens_per_cpu_second'] / 1e6:.2f}M | {v['load_average_before']:.1f} |" for k, v in results.items()]
    loads = [v["load_seconds"] for v in results.values() if "load_seconds" in v]
    lines += ["", f"ptlab 2 workers / 1 worker (1 thread): {report['scaling_ptlab_2_vs_1_thread']:.2f}x; "
              f"datasets num_proc=2 / 1 (1 thread): {report['scaling_datasets_2_vs_1_thread']:.2f}x; "
              f"ptlab 2 workers / datasets num_proc=2: {report['ptlab_2_vs_datasets_2']:.2f}x. "
              f"datasets' load_dataset (not in its time) took {min(loads):.1f}-{max(loads):.1f} s; "
              f"ptlab's reader alone: {report['reader_mb_per_second']:.0f} MB/s."]
    return report, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=300.0)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-tokenize"))
    parser.add_argument("--rounds", type=int, default=1, help="time every setting this many times, keep the best")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--measure", choices=list(SETTINGS), help=argparse.SUPPRESS)  # one setting, in a child
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.corpus, args.tokenizer, args.out)))
        return 0
    report, lines = run(args.megabytes, args.workdir, args.rounds)
    print("\n".join(lines))
    if args.json:
        from ptlab.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
