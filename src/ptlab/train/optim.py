"""Optimizer and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ptlab.config import TrainConfig
from ptlab.errors import PtlabError
from ptlab.precision import resolve_precision


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
                    for old, new in zip(olds, news):  # one by one: DTensors (FSDP) have no foreach copy
                        old.copy_(new)
                else:
                    keep = found_inf.to(olds[0].device) > 0
                    for old, new in zip(olds, news):
                        old.copy_(torch.where(keep, old, new))
        return loss


def _full(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly sharded (DTensor) reduction."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def hidden_matrices(model: nn.Module) -> list[str]:
    """Names of the weights Muon takes: every linear layer's matrix inside the blocks (attention and feed-forward
    projections), not the token or position embeddings, T5's relative-bias tables or the output head, whose
    gradients are not the "hidden layer" kind Newton-Schulz orthogonalisation is meant for (Keller Jordan's Muon,
    modded-nanogpt and torchtitan group them the same way)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad and not module_name.endswith("lm_head"):
            names.append(_plain_name(f"{module_name}.weight" if module_name else "weight"))
    return names


class MuonWithAdam(torch.optim.Optimizer):
    """`torch.optim.Muon` for the hidden matrices and an Adam variant for everything else, as one optimizer.

    The two inner optimizers share this one's `state` and param-group dicts (their parameters are disjoint), so
    the state dict, `torch.distributed.checkpoint` and the trainer see a single ordinary optimizer: resuming,
    resharding and the per-group learning rate (`lr_ratio`, see `ptlab.train.step`) work as for AdamW.

    Under FSDP a matrix is sharded by rows across ranks; Newton-Schulz needs the whole matrix, so each rank gathers
    every matrix with its gradient and momentum and updates it whole (`_Muon`). That costs three
    all-gathers of the matrices per step (weights, gradients, momentum: three times the weights' bytes, where
    FSDP's own forward and backward gather the weights twice) and the Newton-Schulz FLOPs on every rank instead
    of once in all: at this lab's sizes small next to the forward and backward, and exact (each rank computes
    what one process would). Sharding the Newton-Schulz work across ranks, as torchtitan's `dist_muon` does,
    is the step to take when that cost matters.
    """

    def __init__(self, muon: torch.optim.Optimizer, adam: torch.optim.Optimizer):
        self.parts = (muon, adam)
        super().__init__([group for part in self.parts for group in part.param_groups], {})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (after building or loading a state dict)."""
        start = 0
        for part in self.parts:
            count = len(part.param_groups)
            part.param_groups = self.param_groups[start:start + count]
            part.state = self.state
            start += count

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss


class _Muon(torch.optim.Muon):
    """torch's Muon with two changes, both about exactness, neither about the algorithm:

    - the matrices of a sharded (FSDP) model are updated whole: each rank gathers a matrix, its gradient and its
      momentum, runs the update on them (the same work on every rank, so no Newton-Schulz sees part of a matrix)
      and keeps its own rows;
    - in a float32 run (`train.precision: fp32`) Newton-Schulz runs in float32, where torch's runs in bfloat16:
      summed in another order, the gradient of two ranks differs from one process's in its last float32 bits, and
      bfloat16 rounding turned that into losses 1e-4 apart after a few steps (float32 keeps them within 1e-6).
    Everything else (the Nesterov momentum, the shape adjustment of the learning rate, the decoupled weight decay,
    the coefficients) is torch's own.
    """

    float32 = False  # set by `build_optimizer` for float32 runs

    @torch.no_grad()
    def step(self, closure=None):
        sharded = any(isinstance(p, DTensor) for group in self.param_groups for p in group["params"])
        if not sharded and not self.float32:
            return super().step(closure)
        for group in self.param_groups:
            hyper = {key: group[key] for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients",
                                                 "ns_steps", "eps", "adjust_lr_fn")}
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                weight, grad, momentum = (_whole(t) for t in (param, param.grad, state["momentum_buffer"]))
                if self.float32:
                    _muon_update_float32(weight, grad, momentum, **hyper)
                else:
                    torch.optim._muon.muon([weight], [grad], [momentum], has_complex=False, **hyper)
                for target, whole in ((param, weight), (state["momentum_buffer"], momentum)):
                    if isinstance(target, DTensor):
                        own = distribute_tensor(whole, target.device_mesh, target.placements, src_data_rank=None)
                        target.to_local().copy_(own.to_local())
        return None


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole; a plain one as it is (updated in place)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _muon_update_float32(param, grad, momentum_buffer, *, lr, weight_decay, momentum, nesterov, ns_coefficients,
                         ns_steps, eps, adjust_lr_fn) -> None:
    """torch's `_single_tensor_muon` for one matrix, with its Newton-Schulz iteration in float32."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    a, b, c = ns_coefficients
    x = update.float()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.T if tall else x
    param.mul_(1 - lr * weight_decay)
    param.add_(x.to(param.dtype), alpha=-torch.optim._muon._adjust_lr(lr, adjust_lr_fn, param.shape))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused: one kernel for the whole update, on CPU as on GPU), RMS-scaled AdamW (`adamw_scale`),
    Adafactor (T5's optimizer, with the relative step: `lr` caps it), or Muon for the hidden matrices with AdamW
    (`muon`) or RMS-scaled AdamW (`muon_scale`) for the rest. Weight decay only on matrices, not on norms, biases
    or position-bias tables."""
    muon_names = set(hidden_matrices(model)) if cfg.optimizer in MUON_OPTIMIZERS else set()
    if cfg.optimizer in MUON_OPTIMIZERS and not muon_names:
        raise PtlabError(f"config key 'train.optimizer': {cfg.optimizer} found no hidden matrices to optimize")
    # `train.embedding_lr` takes every embedding table: the tokens', learned positions' and T5's relative-position
    # bias tables. Left at `train.lr`, T5's tables grew slowly (RMS-scaled steps on a table initialised at std
    # d_model**-0.5) and the demo's encoder formed the previous-token head behind its copy transition late or
    # never (docs/results/demo.md)
    tables = {id(module.weight): "position_bias" in name for name, module in model.named_modules()
              if isinstance(module, nn.Embedding)} if cfg.embedding_lr else {}
    matrices, decay, no_decay, embedding, bias_tables = [], [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _plain_name(name) in muon_names:
            matrices.append(param)
        elif id(param) in tables:
            (bias_tables if tables[id(param)] else embedding).append(param)
        else:
            (decay if param.ndim >= 2 and "position_bias" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # their own rate, kept in step with the schedule as Muon's is (`lr_ratio`); the bias tables are not decayed
    for params, weight_decay in ((embedding, cfg.weight_decay), (bias_tables, 0.0)):
        if params:
            groups.append({"params": params, "weight_decay": weight_decay, "lr_ratio": cfg.embedding_lr / cfg.lr})
    adam = _build_adam(groups, cfg, "adamw_scale" if cfg.optimizer in ("adamw_scale", "muon_scale") else
                       cfg.optimizer)
    if not muon_names:
        return adam
    # Muon's own learning rate, scaled per matrix by sqrt(max(1, rows / columns)) (Keller Jordan's adjustment);
    # `lr_ratio` keeps it in step with the schedule, which sets every group's lr from train.lr
    # An attention whose scores are not scaled by 1/sqrt(d_head) (T5's) has that factor folded into its query
    # matrix's initialisation; its Muon step is scaled by the same factor, or the queries outgrow the keys at once
    folded = _query_folding(model)
    plain = [p for p in matrices if p not in folded]
    groups = [{"params": plain, "lr_ratio": cfg.muon_lr / cfg.lr}]
    for factor in sorted(set(folded.values())):
        groups.append({"params": [p for p, f in folded.items() if f == factor],
                       "lr_ratio": cfg.muon_lr / cfg.lr * factor})
    muon = _Muon(groups, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                 ns_steps=cfg.muon_ns_steps, adjust_lr_fn="original")
    muon.float32 = resolve_precision(cfg.precision, cfg.device) == "fp32"
    return MuonWithAdam(muon, adam)


MUON_OPTIMIZERS = ("muon", "muon_scale")


def _query_folding(model: nn.Module) -> dict[nn.Parameter, float]:
    """Query matrices of attentions whose scores are scaled by other than 1/sqrt(d_head), each with the factor
    1 / (scale x sqrt(d_head)) by which its init holds the missing scale (1/sqrt(d_head) for T5's unscaled
    attention)."""
    from ptlab.models.layers import Attention
    return {module.q.weight: 1.0 / (module.scale * module.d_head ** 0.5) for module in model.modules()
            if isinstance(module, Attention) and module.scale is not None and module.q.weight.requires_grad
            and abs(module.scale * module.d_head ** 0.5 - 1.0) > 1e-9}


def _plain_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (torch.compile's, DDP's, activation checkpointing's)."""
    for prefix in ("_orig_mod.", "module.", "_checkpoint_wrapped_module."):
        name = name.replace(prefix, "")
    return name


def _build_adam(groups: list[dict], cfg: TrainConfig, kind: str) -> torch.optim.Optimizer:
    betas = (cfg.beta1, cfg.beta2)
    if kind == "adamw_scale":
        return AdamWScale(groups, lr=cfg.lr, betas=betas, eps=1e-8)
    if kind == "adafactor":
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
