"""benchmarks/memory.py's report: the setting `train.loss_chunk_tokens: auto` picks is marked from today's rule, and
the overheads and ratios are computed from the measured rows (the runs themselves are `make bench`'s)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory  # noqa: E402


def _row(vocab, chunk, precision, with_val, without_val, runs):
    return {"vocab": vocab, "loss_chunk_tokens": chunk, "precision": precision, "steps": 40, "machine": "test",
            "peak_mb_with_validation": with_val, "peak_mb_without_validation": without_val,
            "tokens_per_second": sorted(runs)[len(runs) // 2], "tokens_per_second_runs": runs}


def test_the_report_marks_auto_by_vocabulary_and_precision(tmp_path):
    rows = [_row(2048, 8192, "bf16", 760, 690, [9000.0]), _row(2048, 0, "bf16", 750, 680, [9000.0]),
            _row(32768, 512, "bf16", 1050, 940, [4000.0]), _row(32768, 0, "bf16", 1010, 1000, [5000.0]),
            _row(131072, 256, "bf16", 1500, 1400, [1000.0]), _row(131072, 0, "bf16", 3500, 3400, [1200.0])]
    text = memory.render(rows, tmp_path / "memory")
    assert (tmp_path / "memory.md").read_text() == text + "\n"
    marked = [line.split("|")[1:4] for line in text.splitlines() if line.startswith("| ") and "yes" in line]
    # bf16: the whole logits up to 64k, fused from 128k
    assert [(v.strip(), c.strip()) for v, c, _ in marked] == [("2,048", "0"), ("32,768", "0"), ("131,072", "256")]
    assert "Overhead of 32,768 over 2,048 with validation, loss_chunk_tokens auto: 260 MB" in text
    assert "Overhead of 131,072 over 2,048 with validation, loss_chunk_tokens auto: 750 MB" in text
    assert "At 32,768, fused (512) against whole logits (0): tokens/s 0.80x" in text
    assert "peak RSS with validation -2,000 MB, without -2,000 MB" in text


def test_in_float32_auto_fuses_from_64k(tmp_path):
    rows = [_row(65536, 256, "fp32", 1200, 1100, [2000.0]), _row(65536, 0, "fp32", 2000, 1900, [2100.0]),
            _row(32768, 512, "fp32", 1000, 1080, [2200.0]), _row(32768, 0, "fp32", 1400, 1380, [2500.0])]
    text = memory.render(rows, tmp_path / "memory")
    marked = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ") and "yes" in line]
    assert [(v.strip(), c.strip()) for v, c in marked] == [("65,536", "256"), ("32,768", "0")]
    assert "Overhead of 65,536 over 32,768 with validation, loss_chunk_tokens auto: -200 MB" in text
