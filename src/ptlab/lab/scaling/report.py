"""The text `ptlab scaling` prints: fitted parameters with intervals, the compute-optimal allocation beside
Chinchilla's, Hoffmann's approaches 1 and 2, held-out predictions and prices."""

from __future__ import annotations

from ptlab.errors import PtlabError
from ptlab.lab.cost import CHINCHILLA_TOKENS_PER_PARAMETER, Estimate, _si
from ptlab.lab.scaling.allocate import CHINCHILLA_FLOPS, Allocation, allocate
from ptlab.lab.scaling.approaches import Approach
from ptlab.lab.scaling.fit import NAMES, Fit, Law
from ptlab.lab.scaling.predict import Holdout


def _interval(interval: tuple[float, float] | None, fmt=lambda v: f"{v:.4g}") -> str:
    """ [low, high], or nothing without a bootstrap."""
    return f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else ""


def format_law(law: Law) -> str:
    return f"L(N, D) = {law.E:.4g} + {law.A:.4g} / N^{law.alpha:.4g} + {law.B:.4g} / D^{law.beta:.4g}"


def format_fit(fit: Fit, starts: int, approaches: list[Approach] = ()) -> str:
    percent = f"{fit.level:.0%}"
    lines = [format_law(fit.law),
             f"fitted to {len(fit.runs)} runs of {fit.runs.source}",
             f"  Huber (delta 1e-3) on log-loss summed over runs, L-BFGS-B from {starts} starts; {percent} intervals "
             f"from {len(fit.samples)} bootstrap resamples"]
    for name in NAMES:
        lines.append(f"  {name:<6} {getattr(fit.law, name):>10.4g} {_interval(fit.interval(name))}")
    lines.append(_allocation_lines(fit))
    for approach in approaches:
        lines.append(format_approach(approach))
    return "\n".join(lines)


def _allocation_lines(fit: Fit) -> str:
    law = fit.law
    if not (law.alpha > 0 and law.beta > 0):
        return "compute-optimal allocation: none (the law does not improve with both size and data)"
    exponent = fit.spread(lambda other: other.params_exponent if other.alpha + other.beta > 0 else float("nan"))
    lines = [f"compute-optimal allocation on C = 6ND (approach 3): N* ~ C^{law.params_exponent:.3f}"
             f"{_interval(exponent, lambda v: f'{v:.3f}')}, D* ~ C^{1 - law.params_exponent:.3f}"]
    largest = float((6 * fit.runs.params * fit.runs.tokens).max())
    for label, flops in (("the table's largest budget", largest), ("Chinchilla's budget", CHINCHILLA_FLOPS)):
        try:
            a = allocate(fit, flops)
        except PtlabError as err:  # an odd law's optimum may leave a float's range; the fit itself stands
            lines.append(f"  at {label}, C {flops:.3g}: {err}")
            continue
        lines.append(f"  at {label}, C {flops:.3g}: N* {_si(a.params)}, D* {_si(a.tokens)}, {a.tokens_per_param:.3g} "
                     f"tokens per parameter{_interval(a.tokens_per_param_interval, lambda v: f'{v:.3g}')} "
                     f"(Chinchilla: ~{CHINCHILLA_TOKENS_PER_PARAMETER})")
    return "\n".join(lines)


def format_approach(approach: Approach) -> str:
    if not approach.fitted:
        return f"{approach.name}: not fitted: {approach.reason}"
    line = (f"{approach.name}: N_opt ~ C^{approach.params_exponent:.3f}, D_opt ~ C^{approach.tokens_exponent:.3f} "
            f"from {len(approach.optima)} optima")
    if approach.notes:
        more = ", ..." if len(approach.notes) > 1 else ""
        line += f" ({len(approach.notes)} level(s) left out: {approach.notes[0]}{more})"
    return line


def format_holdout(holdout: Holdout) -> str:
    fit = holdout.fit
    lines = [f"fitted to {len(fit.runs)} runs ({fit.runs.source}): {format_law(fit.law)}",
             f"{'run':<16} {'params':>8} {'tokens':>8} {'FLOPs':>9} {'measured':>9} {'predicted':>9}  "
             f"{f'{fit.level:.0%} interval':<20} {'error':>7}"]
    for p in holdout.predictions:
        lines.append(f"{p.name[:16]:<16} {_si(p.params):>8} {_si(p.tokens):>8} {p.flops:>9.3g} {p.measured:>9.4f} "
                     f"{p.predicted:>9.4f} {_interval(p.interval, lambda v: f'{v:.4f}'):<21} "
                     f"{p.relative_error:>+7.2%}")
    return "\n".join(lines)


def format_allocation(allocation: Allocation, estimate: Estimate) -> str:
    a = allocation
    fmt = lambda v: _si(v)  # noqa: E731
    lines = [f"compute-optimal model for C = 6ND = {a.flops:.3g} FLOPs",
             f"  parameters N*        {_si(a.params):>8}{_interval(a.params_interval, fmt)}",
             f"  tokens D*            {_si(a.tokens):>8}{_interval(a.tokens_interval, fmt)}",
             f"  tokens per parameter {a.tokens_per_param:>8.3g}"
             f"{_interval(a.tokens_per_param_interval, lambda v: f'{v:.3g}')} (Chinchilla: "
             f"~{CHINCHILLA_TOKENS_PER_PARAMETER})",
             f"  predicted loss       {a.loss:>8.4f}{_interval(a.loss_interval, lambda v: f'{v:.4f}')}",
             f"  price                ${estimate.dollars:,.0f}: {estimate.gpu_hours:,.0f} GPU-hours of "
             f"{estimate.gpu.upper()} at {estimate.mfu:.0%} MFU and ${estimate.price_per_hour:.2f}/GPU-hour "
             f"(6N FLOPs per token)"]
    return "\n".join(lines)
