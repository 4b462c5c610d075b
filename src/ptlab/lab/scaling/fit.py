"""Chinchilla's law L(N, D) = E + A / N^alpha + B / D^beta fitted the way Besiroglu et al. 2024 replicated
Hoffmann et al. 2022's approach 3.

With E = exp(e), A = exp(a), B = exp(b), the predicted log-loss is logsumexp(a - alpha log N, b - beta log D, e), and
the fit minimises the SUM over runs of Huber(delta = 1e-3) of (predicted - measured log-loss) with L-BFGS-B from
every start of a grid, keeping the best. The sum matters: L-BFGS's stopping tolerances are not scaled to the
objective, so an average over runs, n times smaller, stops the optimiser short of the optimum (Besiroglu et al. trace
the imprecision of Hoffmann's published fit to this). Intervals come from the bootstrap: resample the runs with
replacement, refit, take percentiles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber
from threadpoolctl import threadpool_limits

from ptlab.errors import PtlabError
from ptlab.lab.scaling.runs import Runs

HUBER_DELTA = 1e-3
NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta, in the units of the losses it was fitted to."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_theta(cls, theta: Sequence[float]) -> Law:
        e, a, b, alpha, beta = (float(x) for x in theta)
        return cls(math.exp(e), math.exp(a), math.exp(b), alpha, beta)

    @property
    def theta(self) -> np.ndarray:
        """The optimiser's coordinates: (log E, log A, log B, alpha, beta)."""
        return np.array([math.log(self.E), math.log(self.A), math.log(self.B), self.alpha, self.beta])

    def values(self) -> tuple[float, ...]:
        return self.E, self.A, self.B, self.alpha, self.beta

    def loss(self, params, tokens):
        with np.errstate(over="ignore", divide="ignore"):  # a far-off bootstrap law may overflow: inf, left out
            return self.E + self.A / np.power(params, self.alpha) + self.B / np.power(tokens, self.beta)

    def optimal(self, flops):
        """(N*, D*) minimising L on the line 6ND = C, in closed form (Hoffmann et al. 2022, appendix D.2):
        G = (alpha A / (beta B))^(1 / (alpha + beta)), N* = G (C/6)^(beta / (alpha + beta)),
        D* = (C/6)^(alpha / (alpha + beta)) / G."""
        if not (self.alpha > 0 and self.beta > 0):
            raise PtlabError(f"the fitted law does not improve with both size and data (alpha {self.alpha:.3g}, "
                             f"beta {self.beta:.3g}); it has no compute-optimal allocation")
        total = self.alpha + self.beta
        # in logs: A and B may be far beyond a float's range in a fit to odd data
        log_g = (math.log(self.alpha / self.beta) + math.log(self.A) - math.log(self.B)) / total
        log_c6 = np.log(np.asarray(flops, dtype=float) / 6)
        with np.errstate(over="ignore"):  # an overflow is an infinite N* or D*, for the caller to refuse
            return np.exp(log_g + log_c6 * self.beta / total), np.exp(-log_g + log_c6 * self.alpha / total)

    @property
    def params_exponent(self) -> float:
        """a in N* ∝ C^a (D* ∝ C^(1 - a))."""
        return self.beta / (self.alpha + self.beta)


HOFFMANN = Law(1.69, 406.4, 410.7, 0.34, 0.28)  # Hoffmann et al. 2022, equation 10
BESIROGLU = Law(1.8172, 482.01, 2085.43, 0.3478, 0.3658)  # their refit of Hoffmann's data, 2024


def hoffmann_grid() -> np.ndarray:
    """Hoffmann et al.'s starting points, as (e, a, b, alpha, beta): alpha, beta in {0, 0.5, ..., 2}, e in
    {-1, -0.5, ..., 1}, a and b in {0, 5, ..., 25}: 4,500 starts, a few minutes of L-BFGS-B."""
    exponents, e, ab = np.arange(0, 2.01, 0.5), np.arange(-1, 1.01, 0.5), np.arange(0, 25.1, 5)
    return np.array(list(itertools.product(e, ab, ab, exponents, exponents)))


def coarse_grid() -> np.ndarray:
    """The default starts: the middle of Hoffmann et al.'s box, thinned to 72 (e in {-0.5, 0.5}, a and b in
    {2.5, 10, 17.5}, alpha and beta in {0.25, 0.75}). On synthetic ladders drawn from Hoffmann's, Besiroglu's and
    odder laws (E 0.3, alpha 0.6, beta 0.15; ptlab-sized N and D) every one of these grids and Hoffmann's finds the
    same optimum, from 40-90% of their starts, so 72 starts leave a wide margin at 1/60 of the time."""
    return np.array(list(itertools.product((-0.5, 0.5), (2.5, 10, 17.5), (2.5, 10, 17.5), (0.25, 0.75),
                                           (0.25, 0.75))))


GRIDS: dict[str, Callable[[], np.ndarray]] = {"coarse": coarse_grid, "hoffmann": hoffmann_grid}


@dataclass(frozen=True)
class Logs:
    """log N, log D and log L of the runs, the objective's inputs."""
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray

    @classmethod
    def of(cls, runs: Runs) -> Logs:
        return cls(np.log(runs.params), np.log(runs.tokens), np.log(runs.loss))


def objective_and_gradient(theta: np.ndarray, logs: Logs, delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """The sum over runs of Huber(delta) of (predicted - measured log-loss), and its gradient in theta =
    (e, a, b, alpha, beta)."""
    e, a, b, alpha, beta = theta
    terms = np.stack([np.full_like(logs.loss, e), a - alpha * logs.params, b - beta * logs.tokens])
    # logsumexp over the three terms, written out: scipy's is several times slower on arrays this small, and the
    # shares are the gradient's too
    top = terms.max(axis=0)
    share = np.exp(terms - top)
    total = share.sum(axis=0)
    share /= total  # d predicted / d term: each term's share of the predicted loss
    residual = top + np.log(total) - logs.loss
    value = huber(delta, residual).sum()  # SUM, not mean: see the module docstring
    slope = np.clip(residual, -delta, delta)  # Huber's derivative: r inside delta, +-delta outside
    by_term = share @ slope
    gradient = np.array([by_term[0], by_term[1], by_term[2], -(slope * share[1]) @ logs.params,
                         -(slope * share[2]) @ logs.tokens])
    return float(value), gradient


def objective(law_or_theta: Law | Sequence[float], runs: Runs, delta: float = HUBER_DELTA) -> float:
    """The fit's objective for a law on a set of runs (summed over runs: duplicating every run doubles it)."""
    theta = law_or_theta.theta if isinstance(law_or_theta, Law) else np.asarray(law_or_theta, dtype=float)
    return objective_and_gradient(theta, Logs.of(runs), delta)[0]


def _minimise(logs: Logs, starts: np.ndarray, delta: float) -> list[tuple[float, np.ndarray]]:
    """(objective, theta) from L-BFGS-B at every start whose end is finite, best first."""
    ends = []
    # One BLAS thread: L-BFGS-B's small matrix products gain nothing from more, and OpenBLAS's threads waiting on a
    # busy CPU made a fit 15 times slower. (threadpoolctl comes with scikit-learn, a dependency.)
    with threadpool_limits(1, user_api="blas"), np.errstate(all="ignore"):  # far starts may overflow on the way
        for start in starts:
            result = minimize(objective_and_gradient, start, args=(logs, delta), jac=True, method="L-BFGS-B",
                              # the objective is ~1e-5 per run and L-BFGS-B's ftol is relative to max(|f|, 1): the
                              # default would stop early, the fault Besiroglu et al. found in Hoffmann's fit
                              options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-10})
            if np.isfinite(result.fun) and np.all(np.isfinite(result.x)) and np.abs(result.x[:3]).max() < 700:
                ends.append((float(result.fun), result.x))  # exp(+-700): near the float range
    ends.sort(key=lambda end: end[0])
    return ends


def _distinct(ends: list[tuple[float, np.ndarray]], count: int) -> np.ndarray:
    """The thetas of up to `count` optima with different objectives among `ends` (best first): the basins a
    refit should try. (A basin such as E -> 0 ends at many thetas with one objective.)"""
    kept: list[tuple[float, np.ndarray]] = []
    for value, theta in ends:
        if all(abs(value - other) > 1e-6 * abs(other) for other, _ in kept):
            kept.append((value, theta))
        if len(kept) == count:
            break
    return np.array([theta for _, theta in kept])


@dataclass(frozen=True)
class Fit:
    """A law fitted to runs, with the laws refitted to its bootstrap resamples (`samples`, one row of E, A, B,
    alpha, beta each) for percentile intervals at `level`."""
    law: Law
    runs: Runs
    objective: float
    samples: np.ndarray
    level: float = 0.95

    @property
    def bootstrap_laws(self) -> list[Law]:
        return [Law(*row) for row in self.samples]

    def spread(self, quantity: Callable[[Law], float]) -> tuple[float, float] | None:
        """The percentile interval of `quantity(law)` over the bootstrap laws (None without a bootstrap)."""
        return self.percentiles([quantity(law) for law in self.bootstrap_laws])

    def percentiles(self, values) -> tuple[float, float] | None:
        """The interval at `level` of one value per bootstrap law; non-finite values are left out."""
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            return None
        tail = (1 - self.level) / 2 * 100
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    def interval(self, name: str) -> tuple[float, float] | None:
        return self.spread(lambda law: getattr(law, name))

    def to_json(self) -> dict:
        """{"E": {"value": ..., "interval": [low, high] or null}, "A": ..., "B": ..., "alpha": ..., "beta": ...}."""
        out = {}
        for name in NAMES:
            interval = self.interval(name)
            out[name] = {"value": getattr(self.law, name), "interval": list(interval) if interval else None}
        return out


def fit_law(runs: Runs, resamples: int = 200, seed: int = 0, grid: str | np.ndarray = "coarse",
            level: float = 0.95, delta: float = HUBER_DELTA) -> Fit:
    """Fit L(N, D) to `runs` by L-BFGS-B from every start of `grid` ("coarse", "hoffmann" or an array of (e, a, b,
    alpha, beta) rows) and keep the best; then refit `resamples` bootstrap resamples (seeded by `seed`) for the
    intervals. A resample is the same ladder with some runs counted twice and others left out, so each refit starts
    from the optima the full fit found (its best and the next best basin) rather than from the whole grid."""
    if resamples < 0:
        raise PtlabError(f"--bootstrap must be 0 or more, got {resamples}")
    if not 0 < level < 1:
        raise PtlabError(f"the interval level must be in (0, 1), got {level}")
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise PtlabError(f"unknown grid {grid!r} (known: {', '.join(GRIDS)})")
        grid = GRIDS[grid]()
    grid = np.asarray(grid, dtype=float).reshape(-1, len(NAMES))
    ends = _minimise(Logs.of(runs), grid, delta)
    if not ends:
        raise PtlabError(f"{runs.source}: the fit did not converge from any of its {len(grid)} starts")
    best_value, best_theta = ends[0]
    law = Law.from_theta(best_theta)
    starts = _distinct(ends, 2)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        resample = runs.subset(rng.integers(0, len(runs), len(runs)))
        refits = _minimise(Logs.of(resample), starts, delta)
        if refits:  # a resample that fits from no start is left out of the percentiles
            samples.append(Law.from_theta(refits[0][1]).values())
    return Fit(law, runs, best_value, np.array(samples, dtype=float).reshape(-1, len(NAMES)), level)


def fit_from_json(data: dict, source: str) -> Law:
    """The law a `ptlab scaling fit --json` file holds (a bare number per name is accepted too)."""
    values = []
    for name in NAMES:
        entry = data.get(name)
        value = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PtlabError(f"{source}: {name!r} needs a finite number as its value, got {value!r}")
        if name in ("E", "A", "B") and value <= 0:
            raise PtlabError(f"{source}: {name!r} must be positive, got {value:g}")
        values.append(float(value))
    return Law(*values)
