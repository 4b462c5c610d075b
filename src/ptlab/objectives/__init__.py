"""Pre-training objectives: pure, seeded numpy functions from a raw token chunk to (inputs, targets).

The registry maps a config name (`objective.name`) to the objective's function and to how long a raw chunk it needs
for a given encoder length. Objectives never see torch or tokenizer objects; special-token ids come in `SpecialIds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ptlab.errors import PtlabError
from ptlab.objectives.t5 import random_spans_helper, span_corruption


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    eos: int
    unk: int
    sentinels: tuple[int, ...]  # sentinels[i] is the id of <extra_id_i>

    @property
    def sentinel_array(self) -> np.ndarray:
        return np.asarray(self.sentinels, dtype=np.int64)


@dataclass(frozen=True)
class Objective:
    name: str
    # (raw tokens, rng, specials, params) -> (inputs, targets)
    apply: Callable[[np.ndarray, np.random.Generator, SpecialIds, dict], tuple[np.ndarray, np.ndarray]]
    # (inputs_length, params) -> (raw chunk length, targets length)
    lengths: Callable[[int, dict], tuple[int, int]]


def _span_corruption(tokens, rng, specials: SpecialIds, params: dict):
    return span_corruption(tokens, rng, sentinels=specials.sentinel_array, eos_id=specials.eos,
                           noise_density=params["noise_density"], mean_span_length=params["mean_span_length"],
                           random_roll=params.get("random_roll", False))


def _span_corruption_lengths(inputs_length: int, params: dict) -> tuple[int, int]:
    return random_spans_helper(inputs_length, params["noise_density"], params["mean_span_length"])


REGISTRY: dict[str, Objective] = {
    "span_corruption": Objective("span_corruption", _span_corruption, _span_corruption_lengths),
}


def get_objective(name: str) -> Objective:
    if name not in REGISTRY:
        raise PtlabError(f"unknown objective {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "Objective", "SpecialIds", "get_objective", "random_spans_helper", "span_corruption"]
