"""`ptlab cost`: what a pre-training run costs in FLOPs, GPU-hours and money.

FLOPs per token are 6N (N = parameters, forward 2N and backward 4N) plus attention's 12 * layers * d_model *
sequence length (see ptlab.models.flops); in an encoder-decoder each token passes through one of the two stacks (3N), and
the decoder's tokens are counted on top of the encoder's. GPU-hours = FLOPs / (MFU * peak); money = GPU-hours * hourly price. Published
models come as presets with the sizes and token counts their papers state, and the hardware generation they were
trained on, so the estimate answers "what did it cost then"; `--gpu h100` answers "what would it cost now".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from ptlab.errors import PtlabError
from ptlab.models.flops import GPU_PEAK_TFLOPS, flops_per_token, training_flops

# bf16/fp16 dense tensor peak (TFLOP/s, datasheets) and an on-demand cloud price per GPU-hour (USD; AWS list prices
# of p3 / p4d / p5 instances divided by their 8 GPUs, 2024; pass --price-per-hour for your own).
GPUS: dict[str, tuple[float, float]] = {name.lower(): (GPU_PEAK_TFLOPS[name], price) for name, price in (
    ("V100", 3.06), ("A100", 4.10), ("H100", 6.88), ("H200", 7.91), ("B200", 14.24))}


@dataclass(frozen=True)
class Preset:
    description: str
    parameters: float  # N, as published
    layers: int
    d_model: int
    sequence: int
    tokens: float
    tokens_source: str
    gpu: str  # the generation it was trained on
    reported_gpu_hours: float | None = None  # where the authors published them
    targets_per_input: float = 0.0  # encoder-decoders: decoder tokens per encoder token (T5: 114 / 512)


PRESETS: dict[str, Preset] = {
    "bert-base": Preset("BERT-base (Devlin et al. 2018)", 110e6, 12, 768, 512, 1e6 * 256 * 512,
                        "1M steps x 256 sequences x 512 tokens", "v100"),
    "bert-large": Preset("BERT-large (Devlin et al. 2018)", 340e6, 24, 1024, 512, 1e6 * 256 * 512,
                         "1M steps x 256 sequences x 512 tokens", "v100"),
    "gpt2": Preset("GPT-2 1.5B (Radford et al. 2019)", 1.5e9, 48, 1600, 1024, 100e9,
                   "not published; assumed ~100B (about 10 epochs of WebText's ~10B tokens)", "v100"),
    "gpt3": Preset("GPT-3 175B (Brown et al. 2020)", 175e9, 96, 12288, 2048, 300e9, "300B (paper, Table 2.2)",
                   "v100"),
    "t5-base": Preset("T5-base (Raffel et al. 2020), released model", 220e6, 12, 768, 512, 2**40,
                      "1M steps x 2^11 sequences x 512 input tokens = 2^40", "v100", targets_per_input=114 / 512),
    "t5-11b": Preset("T5-11B (Raffel et al. 2020)", 11e9, 24, 1024, 512, 2**40,
                     "1M steps x 2^11 sequences x 512 input tokens = 2^40", "v100", targets_per_input=114 / 512),
    "llama-7b": Preset("LLaMA 7B (Touvron et al. 2023)", 6.7e9, 32, 4096, 2048, 1.0e12, "1.0T (paper, Table 2)",
                       "a100", 82_432),
    "llama-13b": Preset("LLaMA 13B (Touvron et al. 2023)", 13.0e9, 40, 5120, 2048, 1.0e12, "1.0T (paper, Table 2)",
                        "a100", 135_168),
    "llama-33b": Preset("LLaMA 33B (Touvron et al. 2023)", 32.5e9, 60, 6656, 2048, 1.4e12, "1.4T (paper, Table 2)",
                        "a100", 530_432),
    "llama-65b": Preset("LLaMA 65B (Touvron et al. 2023)", 65.2e9, 80, 8192, 2048, 1.4e12, "1.4T (paper, Table 2)",
                        "a100", 1_022_362),
}

CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022: compute-optimal at about 20 tokens per parameter


@dataclass
class Estimate:
    name: str
    parameters: float
    tokens: float
    tokens_source: str
    flops_per_token: float
    gpu: str
    mfu: float
    price_per_hour: float
    reported_gpu_hours: float | None = None

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens

    @property
    def gpu_hours(self) -> float:
        return self.flops / (self.mfu * GPUS[self.gpu][0] * 1e12) / 3600

    @property
    def dollars(self) -> float:
        return self.gpu_hours * self.price_per_hour

    @property
    def chinchilla_tokens(self) -> float:
        return CHINCHILLA_TOKENS_PER_PARAMETER * self.parameters


def _check_gpu(gpu: str) -> str:
    gpu = gpu.lower()
    if gpu not in GPUS:
        raise PtlabError(f"unknown GPU {gpu!r} (known: {', '.join(GPUS)})")
    return gpu


def estimate(target: str, tokens: float | None = None, gpu: str | None = None, mfu: float = 0.4,
             price_per_hour: float | None = None) -> Estimate:
    """Cost of a preset name (see PRESETS) or a ptlab pre-training config file."""
    if not 0 < mfu <= 1:
        raise PtlabError(f"--mfu must be in (0, 1], got {mfu}")
    if tokens is not None and tokens <= 0:
        raise PtlabError(f"--tokens must be positive, got {tokens:g}")
    key = target.lower()
    if key in PRESETS:
        p = PRESETS[key]
        per_token = flops_per_token(p.parameters, p.layers, p.d_model, p.sequence, p.targets_per_input)
        chosen = _check_gpu(gpu or p.gpu)
        return Estimate(p.description, p.parameters, tokens or p.tokens,
                        "given" if tokens else p.tokens_source, per_token, chosen, mfu,
                        price_per_hour if price_per_hour is not None else GPUS[chosen][1],
                        p.reported_gpu_hours if chosen == p.gpu and not tokens and mfu else None)
    path = Path(target)
    if not path.is_file():
        raise PtlabError(f"{target!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
    return _config_estimate(path, tokens, _check_gpu(gpu or "h100"), mfu, price_per_hour)


def estimate_size(parameters: float, tokens: float, gpu: str = "h100", mfu: float = 0.4,
                  price_per_hour: float | None = None, name: str = "") -> Estimate:
    """Cost of training `parameters` on `tokens` where only the two are known (a scaling law's compute-optimal
    model): 6N FLOPs per token, attention left out, as the shapes that set it are unknown."""
    if not 0 < mfu <= 1:
        raise PtlabError(f"--mfu must be in (0, 1], got {mfu}")
    chosen = _check_gpu(gpu)
    return Estimate(name or f"{_si(parameters)} parameters on {_si(tokens)} tokens", parameters, tokens, "given",
                    6 * parameters, chosen, mfu, price_per_hour if price_per_hour is not None else GPUS[chosen][1])


def _config_estimate(path: Path, tokens: float | None, gpu: str, mfu: float, price: float | None) -> Estimate:
    import torch

    from ptlab.config import load_config
    from ptlab.lab.study import example_lengths
    from ptlab.models import build_model, count_parameters

    cfg = load_config(path)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.vocab_size = model_cfg.vocab_size or cfg.data.vocab_size
    model_cfg.validate()
    with torch.device("meta"):
        parameters = count_parameters(build_model(model_cfg))
    inputs, targets = example_lengths(cfg)
    per_token = training_flops(model_cfg, inputs, targets) / (inputs + targets)
    run_tokens = cfg.train.max_steps * cfg.train.batch_size * (inputs + targets)
    source = "given" if tokens else f"the config: {cfg.train.max_steps:,} steps x {cfg.train.batch_size} x " \
                                    f"{inputs + targets} tokens"
    return Estimate(f"{path} ({model_cfg.family})", parameters, tokens or run_tokens, source, per_token, gpu, mfu,
                    price if price is not None else GPUS[gpu][1])


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def format_estimate(e: Estimate) -> str:
    peak, _ = GPUS[e.gpu]
    lines = [
        e.name,
        f"  parameters        {_si(e.parameters)}",
        f"  tokens            {_si(e.tokens)}  ({e.tokens_source})",
        f"  FLOPs             {e.flops:.3g}  ({_si(e.flops_per_token)} per token: 6N + attention)",
        f"  hardware          {e.gpu.upper()} at {peak:g} TFLOP/s peak, MFU {e.mfu:.0%}, ${e.price_per_hour:.2f}/GPU-hour",
        f"  GPU-hours         {e.gpu_hours:,.0f}  ({e.gpu_hours / 24 / 1024:,.1f} days on 1,024 GPUs)",
        f"  cost              ${e.dollars:,.0f}",
    ]
    if e.reported_gpu_hours:
        lines.append(f"  reported          {e.reported_gpu_hours:,.0f} GPU-hours (estimate / reported = "
                     f"{e.gpu_hours / e.reported_gpu_hours:.2f})")
    optimal = e.chinchilla_tokens
    lines.append(f"  Chinchilla-optimal tokens for this size: {_si(optimal)} (20 per parameter; "
                 f"{e.tokens / optimal:.2g}x that here), ${e.dollars * optimal / e.tokens:,.0f} at the same rate")
    return "\n".join(lines)
