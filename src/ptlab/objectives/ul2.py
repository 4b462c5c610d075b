"""UL2's mixture of denoisers (Tay et al. 2022): per example, one of R/X/S, with a mode token prepended.

R-denoisers are T5 span corruption with short spans and low rates, X-denoisers are extreme (long spans or high
rates), and the S-denoiser is prefix LM. Every denoiser is sized so that its inputs, mode token included, fit the
same encoder length; each takes as much of the (longest needed) raw chunk as it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptlab.objectives.base import Example, SpecialIds, with_eos
from ptlab.objectives.t5 import num_noise_spans, random_spans_helper, random_spans_noise_mask, replace_spans


@dataclass(frozen=True)
class Denoiser:
    mode: str  # "R", "X" or "S"
    mean_span_length: float = 0.0  # unused by S
    noise_density: float = 0.0

    @property
    def label(self) -> str:
        if self.mode == "S":
            return "S (prefix LM)"
        return f"{self.mode} (mu={self.mean_span_length:g}, r={self.noise_density:g})"


UL2_DENOISERS = (
    Denoiser("R", 3, 0.15), Denoiser("R", 8, 0.15),
    Denoiser("X", 3, 0.5), Denoiser("X", 8, 0.5), Denoiser("X", 64, 0.15), Denoiser("X", 64, 0.5),
    Denoiser("S"),
)


def denoiser_lengths(denoiser: Denoiser, inputs_length: int) -> tuple[int, int]:
    """(raw chunk length, targets length) for `inputs_length` encoder tokens, excluding the mode token."""
    if denoiser.mode == "S":  # prefix of 1..L-1 tokens + EOS as inputs, the rest + EOS as targets
        return inputs_length, inputs_length
    return random_spans_helper(inputs_length, denoiser.noise_density, denoiser.mean_span_length)


def denoiser_spans(denoiser: Denoiser, inputs_length: int) -> int:
    if denoiser.mode == "S":
        return 0
    raw, _ = denoiser_lengths(denoiser, inputs_length)
    return num_noise_spans(raw, denoiser.noise_density, denoiser.mean_span_length)


def ul2_denoise(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds, *, inputs_length: int,
                probabilities: np.ndarray, denoisers: tuple[Denoiser, ...] = UL2_DENOISERS,
                mode_tokens: bool = True) -> Example:
    """Sample a denoiser by `probabilities`, corrupt the start of `tokens` with it, prepend its mode token."""
    denoiser = denoisers[int(rng.choice(len(denoisers), p=probabilities))]
    mode = np.asarray(specials.mode(denoiser.mode) if mode_tokens else (), dtype=np.int64)
    raw, _ = denoiser_lengths(denoiser, inputs_length - len(mode))
    chunk = np.asarray(tokens[:raw], dtype=np.int64)
    if denoiser.mode == "S":
        split = int(rng.integers(1, len(chunk)))
        example = Example(with_eos(chunk[:split], specials.eos), with_eos(chunk[split:], specials.eos))
    else:
        noise = random_spans_noise_mask(len(chunk), denoiser.noise_density, denoiser.mean_span_length, rng)
        example = replace_spans(chunk, noise, specials.sentinel_array, specials.eos)
    return Example(np.concatenate([mode, example.inputs]), example.targets)
