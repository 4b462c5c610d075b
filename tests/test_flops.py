import pytest
import torch

from ptlab.config import ModelConfig
from ptlab.flops import gpu_peak_tflops, training_flops
from ptlab.models import build_model, count_parameters


def test_gpt2_124m_matches_the_standard_estimate():
    cfg = ModelConfig(family="gpt2", vocab_size=50304, d_model=768, num_heads=12, num_layers=12, d_ff=3072,
                      max_position_embeddings=1024)
    non_embedding = count_parameters(build_model(cfg)) - 50304 * 768 - 1024 * 768  # wte (tied head) and wpe
    per_token = training_flops(cfg, 0, 1024) / 1024
    # 6N (N: non-embedding weights plus the head) + 12 * layers * d_model * length
    expected = 6 * (non_embedding + 50304 * 768) + 12 * 12 * 768 * 1024
    assert per_token == pytest.approx(expected, rel=0.01)


def test_flops_count_matches_a_profiled_forward():
    cfg = ModelConfig(family="t5", vocab_size=512, d_model=64, num_heads=4, num_layers=2, d_ff=128)
    model = build_model(cfg).eval()
    x, y = torch.randint(3, 512, (2, 40)), torch.randint(3, 512, (2, 12))
    with torch.profiler.profile(with_flops=True) as prof:
        with torch.no_grad():
            model(x, y)
    measured = sum(e.flops for e in prof.key_averages() if e.flops)
    assert measured == pytest.approx(2 * training_flops(cfg, 40, 12) / 3, rel=0.1)


def test_gpu_peaks_by_device_name():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_peak_tflops("Some Unknown Accelerator") is None
