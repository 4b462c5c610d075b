import math

import pytest
import torch

from ptlab.config import TrainConfig
from ptlab.train.optim import AdamWScale, lr_factor


def test_adamw_scale_is_adamw_times_parameter_rms():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(8, 16) * 0.3)
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.AdamW([a], lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    scaled = AdamWScale([b], lr=1e-2, betas=(0.9, 0.98))
    for _ in range(3):
        grad = torch.randn(8, 16)
        rms = b.detach().pow(2).mean().sqrt().item()
        before_a, before_b = a.detach().clone(), b.detach().clone()
        a.grad, b.grad = grad.clone(), grad.clone()
        reference.step()
        scaled.step()
        torch.testing.assert_close(b.detach() - before_b, (a.detach() - before_a) * rms, rtol=1e-4, atol=1e-7)
        a.data.copy_(b.data)  # keep both at the same point so the next step compares like with like


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "inverse_sqrt"])
def test_schedules_warm_up_linearly_then_decay(schedule):
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(x <= y + 1e-12 for x, y in zip(factors[:10], factors[1:10]))
    tail = factors[10:]
    assert all(x >= y - 1e-12 for x, y in zip(tail, tail[1:]))
    if schedule in ("cosine", "linear"):
        assert factors[-1] == pytest.approx(0.1, abs=0.02)
    if schedule == "inverse_sqrt":
        assert factors[39] == pytest.approx(math.sqrt(10 / 40))


def test_wsd_holds_the_peak_then_decays_over_the_last_share():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule="wsd", decay_ratio=0.2, min_lr_ratio=0.0)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[9] == pytest.approx(1.0) and all(f == 1.0 for f in factors[10:80])
    assert factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)


def test_adamw_scale_decays_like_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 4))
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.AdamW([a], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))
    scaled = AdamWScale([b], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))
    a.grad, b.grad = torch.zeros(4, 4), torch.zeros(4, 4)  # a zero gradient leaves only the decay
    reference.step()
    scaled.step()
    torch.testing.assert_close(a.detach(), b.detach())


@pytest.mark.parametrize("name", ["adamw", "adamw_scale", "adafactor"])
def test_every_optimizer_reduces_a_loss(name):
    from ptlab.train.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = build_optimizer(model, TrainConfig(optimizer=name, lr=1e-2))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
