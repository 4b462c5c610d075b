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
        """One update; with a `found_inf` attribute set (a float tensor, 1 to skip, as a GradScaler sets it) the
        weights, moments and step count stay as they are, decided on the device without reading the flag."""
        loss = closure() if closure is not None else None
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            states = [self.state[p] for p in params]
            for param, state in zip(params, states):
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                elif state["step"].device != param.device:  # a checkpoint's step count, loaded on the host
                    state["step"] = state["step"].to(param.device)
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1 if found_inf is None else 1.0 - found_inf.to(steps[0].device))
            step = steps[0].double()  # every parameter steps together; bias corrections in float64, as in Python
            grads = [p.grad for p in params]
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            # RMS of each tensor before the update (a sharded tensor's full RMS, so FSDP changes nothing)
            rms = torch.stack([_full(p.detach().float().norm()) / p.numel() ** 0.5 for p in params]).clamp(min=1e-3)
            bias_correction2 = torch.sqrt(1 - beta2**step)
            step_sizes = (-group["lr"] * bias_correction2 / (1 - beta1**step)).float() * rms
            new_params = (torch._foreach_mul(params, 1 - group["lr"] * group["weight_decay"])
                          if group["weight_decay"] else [p.clone() for p in params])
            new_avgs = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
            new_sqs = torch._foreach_mul(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(new_sqs, grads, grads, value=1 - beta2)
            denoms = torch._foreach_sqrt(new_sqs)
            torch._foreach_add_(denoms, (group["eps"] * bias_correction2).float())
            updates = torch._foreach_div(new_avgs, denoms)
            torch._foreach_mul_(updates, [size.to(u.dtype) for size, u in zip(step_sizes.unbind(), updates)])
            torch._foreach_add_(new_params, updates)
            for olds, news in ((params, new_params), (exp_avgs, new_avgs), (exp_avg_sqs, new_sqs)):
                if found_inf is None:
                    torch._foreach_copy_(olds, news)
                else:
                    keep = found_inf.to(olds[0].device) > 0
                    for old, new in zip(olds, news):
                        old.copy_(torch.where(keep, old, new))
        return loss


def _full(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly sharded (DTensor) reduction."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused: one kernel for the whole update, on CPU as on GPU), RMS-scaled AdamW (`adamw_scale`) or
    Adafactor (T5's optimizer, with the relative step: `lr` caps it); weight decay only on matrices, not on norms,
    biases or position-bias tables."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "position_bias" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw_scale":
        return AdamWScale(groups, lr=cfg.lr, betas=betas, eps=1e-8)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=1e-8, fused=True)


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
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":  # warmup, stable at the peak, then a linear decay over the last decay_ratio of steps
        decay_steps = max(1, round(cfg.decay_ratio * cfg.max_steps))
        decay_start = max(warmup, cfg.max_steps - decay_steps)
        if step < decay_start:
            return 1.0
        return floor + (1 - floor) * max(0.0, 1 - (step - decay_start) / max(1, cfg.max_steps - decay_start))
    progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)  # linear
