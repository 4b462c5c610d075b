"""Data-side throughput: objectives (examples/s at 512 input tokens, single thread of numpy), tokenizers (MB/s of
text through `tokenizers`' batch encoder), and C4 cleaning (documents/s through `ptlab clean`'s local engine, one
worker, every rule on, language ID included).

    .venv/bin/python benchmarks/data.py [--seconds 2] [--clean-docs 1500]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from objectives import rate  # benchmarks/objectives.py

from ptlab.clean.engine import clean_files
from ptlab.data.corpus import sample_texts
from ptlab.data.tokenizer import train_tokenizer
from ptlab.objectives import build_objective

INPUTS_LENGTH = 512
OBJECTIVES = ("span_corruption", "iid_replace_spans", "bert_style", "deshuffle", "prefix_lm", "bart", "ul2",
              "causal_lm")


def run(seconds: float = 2.0, clean_docs: int = 1500) -> tuple[dict, list[str]]:
    texts = list(sample_texts(["data/corpus/train.jsonl.gz"], (), 2_000_000))
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    report: dict = {"objectives": {}, "tokenizers": {}}
    lines = ["| data stage | setting | throughput |", "|---|---|---:|"]
    tokenizers = {}
    for kind in ("unigram", "bpe"):
        started = time.perf_counter()
        tokenizer = train_tokenizer(texts, kind, 8192, 100, show_progress=False)
        trained = time.perf_counter() - started
        tokenizers[kind] = tokenizer
        started = time.perf_counter()
        ids = tokenizer.encode_batch(texts)
        encoding = time.perf_counter() - started
        tokens = sum(map(len, ids))
        report["tokenizers"][kind] = {"mb_per_second": megabytes / encoding, "tokens_per_second": tokens / encoding,
                                      "train_seconds_per_mb": trained / megabytes}
        lines.append(f"| tokenizer encode | {kind} 8k, batch encoder | {megabytes / encoding:.1f} MB/s "
                     f"({tokens / encoding / 1e6:.2f}M tokens/s) |")
        lines.append(f"| tokenizer training | {kind} 8k on {megabytes:.1f} MB | {megabytes / trained:.2f} MB/s |")

    tokenizer = tokenizers["unigram"]
    specials = tokenizer.specials
    stream = np.asarray([i for row in tokenizer.encode_batch(texts) for i in row + [specials.eos]], dtype=np.int64)
    rng = np.random.default_rng(0)
    for name in OBJECTIVES:
        objective, _ = build_objective(name)
        raw = objective.lengths(INPUTS_LENGTH, specials).raw
        starts = itertools.cycle(range(0, len(stream) - raw, raw))
        needed = objective.spec.sentinels(INPUTS_LENGTH, objective.params, specials)
        own = specials
        if needed > len(specials.sentinels):  # UL2's extreme denoisers: time them with enough sentinel ids
            import dataclasses

            own = dataclasses.replace(specials, sentinels=tuple(range(specials.vocab_size - 1,
                                                                      specials.vocab_size - 1 - needed, -1)))

        def one():
            start = next(starts)
            objective(stream[start:start + raw], rng, own, INPUTS_LENGTH)
        per_second = rate(one, seconds)
        report["objectives"][name] = per_second
        lines.append(f"| objective | {name} at {INPUTS_LENGTH} tokens | {per_second:,.0f} examples/s |")

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "messy.jsonl.gz"
        with gzip.open("data/messy/spam_assassin.jsonl.gz", "rt", encoding="utf-8") as f, \
                gzip.open(subset, "wt", encoding="utf-8") as out:
            for line in itertools.islice(f, clean_docs):
                out.write(line)
        started = time.perf_counter()
        cleaned = clean_files([subset], Path(tmp) / "clean.jsonl.gz", show_progress=False)
        elapsed = time.perf_counter() - started
    report["cleaning_docs_per_second"] = cleaned.docs_in / elapsed
    lines.append(f"| C4 cleaning | {cleaned.docs_in:,} SpamAssassin emails, all rules, 1 worker | "
                 f"{cleaned.docs_in / elapsed:,.0f} docs/s |")
    return report, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--clean-docs", type=int, default=1500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report, lines = run(args.seconds, args.clean_docs)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
