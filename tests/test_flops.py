"""`ptlab.models.flops` against FLOPs counted by PyTorch on real forward and backward passes."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ptlab.config import ModelConfig
from ptlab.models import build_model
from ptlab.models.flops import gpu_peak_tflops, training_flops


def counted_training_flops(cfg: ModelConfig, inputs: int, targets: int, batch: int = 2) -> float:
    """Matmul FLOPs of one training step per example, as FlopCounterMode sees them. SDPA's math backend spells
    attention out as batched matmuls, which the counter sees (its CPU flash kernel is invisible to it)."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if cfg.is_encoder_decoder:
        args = (torch.randint(3, cfg.vocab_size, (batch, inputs)), torch.randint(3, cfg.vocab_size, (batch, targets)))
    else:
        args = (torch.randint(3, cfg.vocab_size, (batch, inputs + targets)),)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(*args).float().logsumexp(-1).sum().backward()
    return counter.get_total_flops() / batch


FAMILIES = [("t5", {}), ("t5", {"feed_forward": "relu", "num_decoder_layers": 3}), ("bart", {}), ("gpt2", {}),
            ("llama", {"num_kv_heads": 2}), ("gpt2", {"prefix_lm": True})]


@pytest.mark.parametrize("family,extra", FAMILIES)
def test_training_flops_match_a_counted_forward_and_backward(family, extra):
    # long sequences against a small d_model: attention is a third or more of the count, so a wrong attention
    # term cannot hide inside the tolerance
    cfg = ModelConfig(family=family, vocab_size=256, d_model=64, num_heads=4, num_layers=2, d_ff=128,
                      max_position_embeddings=256, **extra)
    inputs, targets = 96, 40
    counted = counted_training_flops(cfg, inputs, targets)
    # every matmul, attention's included, is counted once forward and twice backward: agreement to 0.1%
    assert training_flops(cfg, inputs, targets) == pytest.approx(counted, rel=1e-3)


def test_gpt2_124m_on_the_meta_device():
    """The full-size model, counted on the meta device (no memory, no arithmetic)."""
    cfg = ModelConfig(family="gpt2", vocab_size=50304, d_model=768, num_heads=12, num_layers=12, d_ff=3072,
                      max_position_embeddings=1024)
    with torch.device("meta"):
        model = build_model(cfg).train()
        x = torch.randint(0, 50304, (1, 1024))
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            model(x).sum().backward()
    assert training_flops(cfg, 0, 1024) == pytest.approx(counter.get_total_flops(), rel=1e-3)


def test_gpu_peaks_by_device_name():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_peak_tflops("Some Unknown Accelerator") is None
