"""Scaling laws: fit Chinchilla's L(N, D) = E + A / N^alpha + B / D^beta to a table of runs (Besiroglu et al.
2024's method), predict held-out larger runs, and allocate a compute budget between size and data (`ptlab
scaling`). A ladder runner hands its records to `runs_from_records`, then to `fit_law`, `predict_holdout` and
`allocate`; `ptlab.lab.scaling.ladder` is ptlab's own (`ptlab scaling ladder`), and `compare` sets the laws of
several strategies side by side as curves (`ptlab scaling compare`)."""

from ptlab.lab.scaling.allocate import Allocation, allocate, price
from ptlab.lab.scaling.approaches import Approach, compute_frontier, isoflop_parabolas
from ptlab.lab.scaling.compare import Comparison, Curve, compare
from ptlab.lab.scaling.fit import BESIROGLU, HOFFMANN, Fit, Law, fit_from_json, fit_law, objective
from ptlab.lab.scaling.plot import plot_scaling
from ptlab.lab.scaling.predict import Holdout, Prediction, predict_holdout
from ptlab.lab.scaling.runs import Runs, read_runs, runs_from_records

__all__ = ["Allocation", "Approach", "BESIROGLU", "Comparison", "Curve", "Fit", "HOFFMANN", "Holdout", "Law",
           "Prediction", "Runs", "allocate", "compare", "compute_frontier", "fit_from_json", "fit_law",
           "isoflop_parabolas", "objective",
           "plot_scaling", "predict_holdout", "price", "read_runs", "runs_from_records"]
