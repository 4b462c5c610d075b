"""Optimizer and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ptlab.config import TrainConfig


class AdamWScale(torch.optim.Optimizer):
    """AdamW whose step on each tensor is multiplied by that tensor's root-mean-square (nanoT5's optimizer).

    T5 initialises embeddings at std 1 and projections near d_model**-0.5: plain AdamW moves every weight by about
    lr per step whatever its scale, so at a learning rate that suits the projections the embeddings hardly move.
    Scaling by RMS makes the step relative, as Adafactor's `scale_parameter` does, which is what T5 was trained
    with; nanoT5 found it essential for AdamW on T5 (its default lr is 2e-2).
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(param.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                rms = max(1e-3, float(param.detach().float().pow(2).mean().sqrt()))
                step_size = group["lr"] * rms * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                denom = exp_avg_sq.sqrt().add_(group["eps"] * math.sqrt(1 - beta2**step))
                param.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"]:
                    param.add_(param, alpha=-group["lr"] * group["weight_decay"])
        return loss


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (`adamw`) or RMS-scaled AdamW (`adamw_scale`); weight decay only on matrices, not on norms, biases
    or position-bias tables."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "position_bias" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw_scale":
        return AdamWScale(groups, lr=cfg.lr, betas=betas, eps=1e-8)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8, foreach=True)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warmup, then the chosen decay."""
    warmup = cfg.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":
        # T5: 1/sqrt(max(step, warmup)), normalised so the factor is 1 at the end of warmup
        return math.sqrt(max(warmup, 1) / max(step + 1, warmup, 1))
    progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)  # linear


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
