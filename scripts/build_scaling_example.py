#!/usr/bin/env python3
"""Write data/scaling/hoffmann-synthetic.csv: an isoFLOP ladder drawn from Hoffmann et al. 2022's fitted law.

Usage::

    .venv/bin/python scripts/build_scaling_example.py [--out data/scaling/hoffmann-synthetic.csv]

L(N, D) = 1.69 + 406.4 / N^0.34 + 410.7 / D^0.28 (their equation 10), at five compute budgets from 1e18 to 1e22
FLOPs with seven model sizes each, spread over a factor of 30 around the law's compute-optimal size (as their
isoFLOP runs were), D = C / 6N, times a seeded multiplicative noise of 0.3% (log-normal); losses rounded to 4
decimals. Small enough for `ptlab scaling fit` to run in seconds, shaped so that all three of Hoffmann's approaches
apply. The output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import csv
import io

import numpy as np

from ptlab.files import write_text_atomic
from ptlab.lab.scaling import HOFFMANN

BUDGETS = (1e18, 1e19, 1e20, 1e21, 1e22)
SIZES_AROUND_OPTIMUM = np.geomspace(1 / 5.5, 5.5, 7)  # 30x from the smallest to the largest size
NOISE = 0.003
SEED = 2022


def rows() -> list[dict]:
    rng = np.random.default_rng(SEED)
    out = []
    for flops in BUDGETS:
        optimal, _ = HOFFMANN.optimal(flops)
        for factor in SIZES_AROUND_OPTIMUM:
            params = float(f"{optimal * factor:.3g}")  # sizes as a ladder would round them
            tokens = round(flops / (6 * params))
            loss = HOFFMANN.loss(params, tokens) * np.exp(rng.normal(0, NOISE))
            out.append({"name": f"C{flops:.0e}-N{params:.3g}", "params": f"{params:.6g}", "tokens": tokens,
                        "loss": f"{loss:.4f}"})
    return out


def table_text() -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, ["name", "params", "tokens", "loss"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows())
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/scaling/hoffmann-synthetic.csv")
    args = parser.parse_args()
    write_text_atomic(args.out, table_text())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
