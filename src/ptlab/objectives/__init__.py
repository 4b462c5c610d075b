"""Pre-training objectives: pure, seeded numpy functions from a raw token chunk to an `Example` (inputs, targets).

One module per family (t5.py, bart.py, lm.py, ul2.py); `registry.py` maps each config name (`objective.name`) to its
function, its parameters and how long a raw chunk it needs. Objectives never see torch or tokenizer objects:
special-token ids and per-id facts come in `SpecialIds`.
"""

from __future__ import annotations

from ptlab.objectives.base import MODE_TOKENS, Example, SpecialIds
from ptlab.objectives.registry import (
                                       REGISTRY,
                                       BoundObjective,
                                       ObjectiveSpec,
                                       build_objective,
                                       get_objective_spec,
                                       parameter_defaults,
)
from ptlab.objectives.t5 import random_spans_helper, span_corruption

__all__ = ["MODE_TOKENS", "REGISTRY", "BoundObjective", "Example", "ObjectiveSpec", "SpecialIds", "build_objective",
           "get_objective_spec", "parameter_defaults", "random_spans_helper", "span_corruption"]
