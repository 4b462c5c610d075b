"""Experiments: study grids, cost estimates, baselines, the demo, plots and objective previews."""
