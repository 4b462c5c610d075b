"""benchmarks/gpu.py checked on CPU: its options parse, each one that exists on CPU trains one tiny step, and the
ones that need a GPU (CUDA graphs, float8, flex_attention's backward) stop with one line saying so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu  # noqa: E402

from ptlab.config import ModelConfig  # noqa: E402
from ptlab.models import build_model  # noqa: E402

CPU = ["--device", "cpu", "--tiny", "--steps", "1"]


def _rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| ") and not line.startswith("| model")]


def test_one_tiny_step_per_cpu_option(capsys):
    gpu.main(CPU + ["--eager", "--only", "gpt2,t5", "--loss-chunk-tokens", "0,16", "--flex", "auto,off"])
    rows = _rows(capsys.readouterr().out)
    # model, compile, mode, loss chunk, attention, float8, batch, tokens/s, ...
    got = {(r[0].split(",")[0], r[3], r[4]) for r in rows}
    assert got == {("GPT-2 124M", "0", "sdpa"), ("GPT-2 124M", "16", "sdpa"),
                   ("T5-base", "0", "dense"), ("T5-base", "16", "dense")}
    assert len(rows) == 2 + 4  # T5 once per --flex value: auto is the dense path on CPU
    assert all(r[1] == "off" and r[5] == "off" and r[6] == "2" for r in rows)
    assert all(float(r[7].replace(",", "")) > 0 for r in rows)


@pytest.mark.parametrize("argv, needs", [
    (["--compile-mode", "default,max-autotune"], "CUDA graphs"),
    (["--float8"], "float8"),
    (["--flex", "on", "--only", "t5"], "flex_attention"),
])
def test_gpu_only_options_stop_with_one_line_on_cpu(argv, needs):
    with pytest.raises(SystemExit) as stopped:
        gpu.main(CPU + argv)
    message = str(stopped.value.code)
    assert needs in message and "GPU" in message and "\n" not in message


@pytest.mark.parametrize("argv", [["--compile-mode", "fast"], ["--flex", "maybe"], ["--loss-chunk-tokens", "-1"],
                                  ["--loss-chunk-tokens", "x"], ["--only", "bert"], ["--loss-steps", "200"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        gpu.parse_args(argv)
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_option_lists_multiply_compiled_rows_only():
    args = gpu.parse_args(["--loss-chunk-tokens", "0,4096", "--flex", "auto,off",
                           "--compile-mode", "default,max-autotune", "--float8"])
    t5 = gpu.settings_for([(64, False), (64, True)], args, t5=True)
    assert len([s for s in t5 if not s.compiled]) == 2 * 2  # chunks x flex; no mode or float8 when eager
    assert len([s for s in t5 if s.compiled]) == 2 * 2 * 2 * 2
    gpt2 = gpu.settings_for([(16, True)], args, t5=False)
    assert {s.flex for s in gpt2} == {"auto"} and len(gpt2) == 2 * 2 * 2


def test_float8_skips_the_head_and_dimensions_not_multiple_of_16():
    cfg = ModelConfig(family="llama", vocab_size=512, d_model=64, num_heads=4, num_kv_heads=2, num_layers=2,
                      d_ff=120, tie_word_embeddings=False, max_position_embeddings=64)
    cfg.validate()
    model = build_model(cfg)
    linear = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    converted = {name for name, m in linear.items() if gpu.float8_eligible(m, name)}
    assert "lm_head" in linear and "lm_head" not in converted
    assert converted and all(n.split(".")[-1] in ("q", "k", "v", "o") for n in converted)  # d_ff 120: FFN kept
    assert len(converted) == 4 * cfg.num_layers


@pytest.mark.slow
def test_compile_mode_runs_on_cpu(capsys):
    """A compiled step in max-autotune-no-cudagraphs (minutes of compiling on a CPU)."""
    gpu.main(CPU + ["--only", "gpt2", "--batches", "2", "--compile-mode", "max-autotune-no-cudagraphs"])
    rows = _rows(capsys.readouterr().out)
    assert [r[1:3] for r in rows] == [["on", "max-autotune-no-cudagraphs"]]
