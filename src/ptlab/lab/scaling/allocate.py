"""What a budget should buy according to a fitted law: the compute-optimal N*(C) and D*(C) on the line C = 6ND, the
tokens per parameter there, and the price of training that model (`ptlab.lab.cost`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ptlab.errors import PtlabError
from ptlab.lab.cost import Estimate, estimate_size
from ptlab.lab.scaling.fit import Fit, Law

CHINCHILLA_FLOPS = 5.76e23  # Chinchilla's and Gopher's training budget (Hoffmann et al. 2022, Table 3)


@dataclass(frozen=True)
class Allocation:
    """The compute-optimal model for `flops`, with the bootstrap laws' percentile intervals where the law came
    from a fit with a bootstrap."""
    flops: float
    params: float
    tokens: float
    loss: float
    params_interval: tuple[float, float] | None = None
    tokens_interval: tuple[float, float] | None = None
    tokens_per_param_interval: tuple[float, float] | None = None
    loss_interval: tuple[float, float] | None = None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def check_flops(flops: object) -> float:
    if isinstance(flops, bool) or not (isinstance(flops, numbers.Real) and math.isfinite(flops) and flops > 0):
        raise PtlabError(f"--flops must be a positive number, got {flops!r}")
    return float(flops)


def allocate(fitted: Fit | Law, flops: float) -> Allocation:
    """N*, D* and the loss the law predicts there, for a budget of `flops` = 6 N D."""
    flops = check_flops(flops)
    law = fitted.law if isinstance(fitted, Fit) else fitted
    params, tokens = (float(x) for x in law.optimal(flops))
    if not all(math.isfinite(x) and x > 0 for x in (params, tokens)):
        raise PtlabError(f"the law's optimum for {flops:g} FLOPs is out of a float's range (N* {params:g}, "
                         f"D* {tokens:g})")
    intervals: list[tuple[float, float] | None] = [None] * 4
    if isinstance(fitted, Fit) and len(fitted.samples):
        optima = np.array([_optimum(law, flops) for law in fitted.bootstrap_laws])
        losses = [law.loss(n, d) for law, (n, d) in zip(fitted.bootstrap_laws, optima)]
        intervals = [fitted.percentiles(optima[:, 0]), fitted.percentiles(optima[:, 1]),
                     fitted.percentiles(optima[:, 1] / optima[:, 0]), fitted.percentiles(losses)]
    return Allocation(float(flops), params, tokens, float(law.loss(params, tokens)), *intervals)


def _optimum(law: Law, flops: float) -> tuple[float, float]:
    try:
        return tuple(float(x) for x in law.optimal(flops))
    except PtlabError:  # a bootstrap law without an optimum (alpha or beta <= 0) gives no value
        return math.nan, math.nan


def price(allocation: Allocation, gpu: str = "h100", mfu: float = 0.4, price_per_hour: float | None = None
          ) -> Estimate:
    """GPU-hours and money of training the allocation's model, through `ptlab.lab.cost` (6N FLOPs per token, so
    its FLOPs are the allocation's budget)."""
    return estimate_size(allocation.params, allocation.tokens, gpu, mfu, price_per_hour,
                         name=f"compute-optimal model for {allocation.flops:.3g} FLOPs")
