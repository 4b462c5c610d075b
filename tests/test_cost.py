"""`ptlab cost` against the lecture's figures and the LLaMA paper's reported GPU-hours."""

import subprocess
import sys
from pathlib import Path

import pytest

from ptlab.cost import estimate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset, lecture_dollars", [("bert-large", 7_000), ("gpt2", 25_000), ("gpt3", 10_000_000)])
def test_lecture_cost_figures_are_reproduced_to_the_order_of_magnitude(preset, lecture_dollars):
    # V100s (the generation these were trained on) at 40% MFU and $3.06 per GPU-hour
    dollars = estimate(preset).dollars
    assert lecture_dollars / 2 < dollars < lecture_dollars * 2


def test_gpt3_flops_match_the_published_3e23():
    e = estimate("gpt3")
    assert e.flops == pytest.approx(3.14e23, rel=0.05)  # Brown et al.: 3.14e23 training FLOPs


@pytest.mark.parametrize("preset", ["llama-7b", "llama-65b"])
def test_llama_gpu_hours_are_close_to_those_meta_reported(preset):
    e = estimate(preset)  # A100-80GB at 40% MFU
    assert 0.8 < e.gpu_hours / e.reported_gpu_hours < 1.5


def test_overrides_and_a_config_file():
    e = estimate("bert-large", tokens=1e9, gpu="h100", mfu=0.5, price_per_hour=2.0)
    assert e.flops == pytest.approx(e.flops_per_token * 1e9)
    assert e.dollars == pytest.approx(e.flops / (0.5 * 989e12) / 3600 * 2.0)
    tiny = estimate(str(ROOT / "configs" / "t5-tiny.yaml"))
    assert 5e6 < tiny.parameters < 2e7 and tiny.gpu == "h100"
    assert tiny.chinchilla_tokens == pytest.approx(20 * tiny.parameters)


def test_cost_cli_prints_every_preset_and_rejects_bad_input():
    out = subprocess.run([sys.executable, "-m", "ptlab", "cost", "all"], capture_output=True, text=True, check=True)
    assert out.stdout.count("Chinchilla-optimal") == 10
    bad = subprocess.run([sys.executable, "-m", "ptlab", "cost", "gpt5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "neither a preset" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "ptlab", "cost", "gpt3", "--gpu", "tpu"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown GPU" in bad.stderr
