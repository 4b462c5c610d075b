"""C4 cleaning speed and agreement: ptlab's `clean_page` against datatrove's `C4QualityFilter` configured with
C4's constants (3 sentences, 5 words per line), on the same documents, single process, in one run.

    .venv/bin/python benchmarks/clean.py [--input data/messy/spam_assassin.jsonl.gz] [--limit 3000]

Needs `pip install datatrove spacy` (not a ptlab dependency). Reports docs/s of both, the full ptlab pipeline's
docs/s (with de-duplication, langdetect and bad words, one worker), and how often the two agree: the same
keep/drop decision, and the same cleaned text when both keep a page.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import tempfile
import time
from pathlib import Path

from ptlab.clean.engine import clean_files
from ptlab.clean.rules import CleanConfig, Report, clean_page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="data/messy/spam_assassin.jsonl.gz")
    parser.add_argument("--limit", type=int, default=3000, help="documents to use (default: %(default)s)")
    args = parser.parse_args()
    with gzip.open(args.input, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in itertools.islice(f, args.limit)]

    cfg = CleanConfig()
    started = time.perf_counter()
    ours = [clean_page(text, cfg, Report()) for text in docs]
    ours_rate = len(docs) / (time.perf_counter() - started)

    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter

    c4 = C4QualityFilter(min_num_sentences=3, min_words_per_line=5)  # C4's constants (datatrove's defaults differ)
    c4.filter(Document(text="Warm-up sentence one here. And two.", id="warm"))  # loads spaCy outside the timing
    theirs = []
    started = time.perf_counter()
    for i, text in enumerate(docs):
        document = Document(text=text, id=str(i))
        verdict = c4.filter(document)
        theirs.append(document.text if verdict is True else None)
    theirs_rate = len(docs) / (time.perf_counter() - started)

    same_decision = sum((a is None) == (b is None) for a, b in zip(ours, theirs))
    both_kept = [(a, b) for a, b in zip(ours, theirs) if a is not None and b is not None]
    same_text = sum(a == b for a, b in both_kept)

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.jsonl"
        source.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs)))
        started = time.perf_counter()
        report = clean_files([source], Path(tmp) / "out.jsonl", show_progress=False)
        pipeline_rate = len(docs) / (time.perf_counter() - started)

    print(f"{len(docs):,} documents from {args.input}")
    print("| | docs/s (1 process) |\n|---|---:|")
    print(f"| ptlab clean_page | {ours_rate:,.0f} |")
    print(f"| datatrove C4QualityFilter (C4 constants) | {theirs_rate:,.0f} |")
    print(f"| ptlab full pipeline (dedup, langdetect, bad words) | {pipeline_rate:,.0f} |")
    print(f"\nspeed ratio clean_page / C4QualityFilter: {ours_rate / theirs_rate:.1f}x")
    print(f"same keep/drop decision: {same_decision / len(docs):.1%} ({same_decision:,} of {len(docs):,}); "
          f"kept by ptlab {sum(a is not None for a in ours):,}, by datatrove {sum(b is not None for b in theirs):,}")
    print(f"same cleaned text where both keep the page: {same_text:,} of {len(both_kept):,}")
    print(f"full pipeline kept {report.docs_out:,} of {report.docs_in:,}")


if __name__ == "__main__":
    main()
