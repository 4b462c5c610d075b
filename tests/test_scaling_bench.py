"""benchmarks/scaling.py's plan and its memory yardstick (the sweep itself runs in `make bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scaling  # noqa: E402


def test_every_point_is_a_valid_model_and_a_step_holds_the_token_budget():
    plan = scaling.points(["gpt2", "t5"], scaling.SWEEPS)
    assert {axis for axis, _ in plan} == {"seq", "width", "vocab"}
    for axis, point in plan:
        cfg = point.config()  # validates
        assert (cfg.d_model, cfg.vocab_size) == (point.width, point.vocab)
        assert all(getattr(point, other) == scaling.BASE[other] for other in scaling.BASE if other != axis)
        inputs, targets = point.lengths()
        batch = scaling.batch_for(point, inputs, targets, 1024)
        rows = batch["input_ids"].shape[0]
        assert rows == max(1, 1024 // point.seq)
        assert int(batch["input_ids"].max()) < point.vocab
    seq = sorted(p.seq for axis, p in plan if axis == "seq")
    assert seq[0] == 128 and seq[-1] == 4096


def test_peak_memory_reset_sees_a_new_allocation():
    """The yardstick: after a reset, the peak grows by what a step allocates, even memory freed before the reset."""
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed below: the reset must hand it back to the OS
    del big
    before = scaling._fresh_peak()
    grown = torch.ones(48 * 2**20 // 4)
    peak = scaling._resident_kib("VmHWM") - before
    del grown
    assert 46 * 1024 <= peak <= 64 * 1024
