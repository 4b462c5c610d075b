"""The test a scaling law exists for: fit it without the largest-compute run(s), then predict their loss."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ptlab.errors import PtlabError
from ptlab.lab.scaling.fit import Fit, fit_law
from ptlab.lab.scaling.runs import Runs, check_fittable


@dataclass(frozen=True)
class Prediction:
    name: str
    params: float
    tokens: float
    flops: float
    measured: float
    predicted: float
    interval: tuple[float, float] | None  # the bootstrap laws' percentile interval of the prediction

    @property
    def relative_error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted - self.measured) / self.measured

    @property
    def covered(self) -> bool | None:
        """Whether the measured loss lies inside the interval (None without one)."""
        return None if self.interval is None else self.interval[0] <= self.measured <= self.interval[1]


@dataclass(frozen=True)
class Holdout:
    fit: Fit  # fitted on the runs that were not held out
    predictions: list[Prediction]


def predict_holdout(runs: Runs, holdout: int = 1, resamples: int = 200, seed: int = 0,
                    grid: str | np.ndarray = "coarse") -> Holdout:
    """Hold out the `holdout` runs with the largest compute (the table's flops, else 6ND), fit the law to the rest
    (`fit_law`'s other arguments), and predict the held-out runs' losses with their bootstrap intervals."""
    if not 1 <= holdout < len(runs):
        raise PtlabError(f"--holdout must be between 1 and {len(runs) - 1} (the table has {len(runs)} runs), "
                         f"got {holdout}")
    order = runs.by_compute()
    rest = dataclasses.replace(runs.subset(order[:-holdout]),
                               source=f"{runs.source} without its {holdout} largest-compute run(s)")
    check_fittable(rest)
    fit = fit_law(rest, resamples, seed, grid)
    predictions = []
    for i in order[-holdout:]:
        n, d = runs.params[i], runs.tokens[i]
        predictions.append(Prediction(runs.names[i], float(n), float(d), float(runs.flops[i]), float(runs.loss[i]),
                                      float(fit.law.loss(n, d)), fit.spread(lambda law: law.loss(n, d))))
    return Holdout(fit, predictions)
