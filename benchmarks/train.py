"""Training throughput of ptlab against HF transformers: the same config, the same weights (exported through
ptlab's HF interop and checked logit for logit), the same batches, in the same process, measured in alternation.

    .venv/bin/python benchmarks/train.py [--sizes tiny,small] [--families t5,bart,gpt2,llama] [--seconds 6]
                                         [--loss-steps 200] [--json benchmarks/results/train.json]

Settings per family and size:
  HF default   fp32, eager attention, the loss HF computes from `labels`
  HF best      bf16 autocast, SDPA attention where the model has it, torch.compile
  ptlab fp32   ptlab's model and trainer step in fp32, eager
  ptlab eager  bf16 autocast, not compiled
  ptlab        ptlab's default trainer step (TrainConfig defaults: bf16 autocast, fused AdamW, and
               train.compile=auto, which compiles runs of 1,000 steps or more such as the default's)
Every setting uses the same optimizer (torch's fused AdamW, with ptlab's defaults), so they differ in the
model and the step only. Each is timed as training tokens/s (inputs + targets) over several alternating rounds (median), and as achieved
GFLOP/s against this machine's measured matmul peak at the same precision. With --loss-steps N, ptlab's default
step and HF's default step also train from the same weights on the same real-text batches for N steps, and the
loss curves are compared. Exits 1 when ptlab is slower than HF at equal precision for any family.
The whole process runs with ptlab's host settings (`configure_host`: denormals flushed, freed memory kept by
glibc's malloc), which speed HF's steps as much as ptlab's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ptlab.config import ModelConfig, TrainConfig
from ptlab.models import build_model
from ptlab.models.flops import measure_matmul_tflops, training_flops
from ptlab.models.hf import hf_config_from_model, to_hf_state_dict
from ptlab.train.host import configure_host
from ptlab.train.loop import autocast, compile_enabled, model_inputs, training_loss
from ptlab.train.optim import build_optimizer

VOCAB = 8192
BATCH = 8
ENC_DEC_LENGTHS = (512, 114)  # T5's input and target lengths for 15% span corruption at 512
DECODER_LENGTH = 512

SHAPES = {
    "tiny": dict(d_model=256, num_heads=4, num_layers=4, d_ff=1024),
    "small": dict(d_model=512, num_heads=8, num_layers=6, d_ff=2048),
}


def model_config(family: str, size: str) -> ModelConfig:
    shape = dict(SHAPES[size])
    extra: dict = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if family == "t5":
        # tied, because transformers 5.x cannot hold T5 v1.1's untied head (see ptlab.models.hf)
        extra.update(d_kv=64, tie_word_embeddings=True, decoder_start_token_id=0)
    elif family == "bart":
        extra.update(max_position_embeddings=1024, decoder_start_token_id=1)
    elif family == "gpt2":
        extra.update(max_position_embeddings=1024)
    else:
        shape["d_ff"] = {256: 688, 512: 1376}[shape["d_model"]]  # SwiGLU at 8/3 d_model
        extra.update(num_kv_heads=shape["num_heads"] // 2, max_position_embeddings=2048)
    cfg = ModelConfig(family=family, **shape, **extra)
    cfg.validate()
    return cfg


def hf_model(cfg: ModelConfig, state: dict[str, torch.Tensor], attention: str) -> torch.nn.Module:
    import transformers

    hf_cfg, _ = hf_config_from_model(cfg)
    hf_cfg = {k: v for k, v in hf_cfg.items() if k != "architectures"}
    config = transformers.AutoConfig.for_model(**hf_cfg)
    auto = transformers.AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else transformers.AutoModelForCausalLM
    try:
        model = auto.from_config(config, attn_implementation=attention)
    except (ValueError, ImportError):  # this architecture has no such attention implementation
        model = auto.from_config(config)
    missing, unexpected = model.load_state_dict(to_hf_state_dict(state, cfg), strict=False)
    tied = ("lm_head.weight", "embed_tokens.weight")  # aliases of the shared embedding (checked by the logits)
    if unexpected or any("bias" not in k and not k.endswith(tied) for k in missing):
        raise RuntimeError(f"HF weights do not line up: missing {missing}, unexpected {unexpected}")
    return model.train()


def real_batches(count: int, cfg: ModelConfig, batch: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches of real text: encoder-decoders continue a 512-token passage with its next 114 tokens; decoder-only
    models predict the next token. Token ids come from a unigram tokenizer trained on part of the bundled corpus."""
    tokens = corpus_tokens()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if cfg.is_encoder_decoder:
            inputs, targets = ENC_DEC_LENGTHS
            starts = rng.integers(0, len(tokens) - inputs - targets, batch)
            x = np.stack([tokens[s:s + inputs] for s in starts])
            y = np.stack([tokens[s + inputs:s + inputs + targets] for s in starts])
            out.append(encoder_decoder_tensors(cfg, torch.from_numpy(x), torch.from_numpy(y)))
        else:
            starts = rng.integers(0, len(tokens) - DECODER_LENGTH - 1, batch)
            x = torch.from_numpy(np.stack([tokens[s:s + DECODER_LENGTH + 1] for s in starts]))
            out.append({"input_ids": x, "labels": x})
    return out


def random_batch(cfg: ModelConfig, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if cfg.is_encoder_decoder:
        inputs, targets = ENC_DEC_LENGTHS
        return encoder_decoder_tensors(cfg, torch.randint(3, VOCAB, (batch, inputs), generator=g),
                                       torch.randint(3, VOCAB, (batch, targets), generator=g))
    x = torch.randint(3, VOCAB, (batch, DECODER_LENGTH + 1), generator=g)
    return {"input_ids": x, "labels": x}


def encoder_decoder_tensors(cfg: ModelConfig, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    start = torch.full((y.shape[0], 1), cfg.decoder_start_token_id)
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "decoder_input_ids": torch.cat([start, y[:, :-1]], 1),
            "labels": y}


_TOKENS: np.ndarray | None = None


def corpus_tokens() -> np.ndarray:
    global _TOKENS
    if _TOKENS is None:
        from ptlab.data.corpus import sample_texts
        from ptlab.data.tokenizer import train_tokenizer

        texts = list(sample_texts(["data/corpus/train.jsonl.gz"], (), 3_000_000))
        tokenizer = train_tokenizer(texts, "unigram", VOCAB, 100, show_progress=False)
        ids = [i for t in texts for i in tokenizer.encode(t) + [tokenizer.specials.eos]]
        _TOKENS = np.asarray(ids, dtype=np.int64)
    return _TOKENS


class Runner:
    """One training setup: a model, its optimizer, and one training step on a batch. ptlab's step is the trainer's
    (`training_loss`, compiled or eager); HF's is what its users write (`model(**batch, labels=...).loss`)."""

    def __init__(self, name: str, model: torch.nn.Module, hf: bool, precision: str, compiled: bool,
                 optimizer: torch.optim.Optimizer):
        self.name, self.model, self.hf, self.precision, self.compiled = name, model, hf, precision, compiled
        self.optimizer = optimizer
        if hf:
            self.loss_fn = torch.compile(self._hf_loss) if compiled else self._hf_loss
        else:
            self.summed = training_loss(model, compiled)
            self.loss_fn = self._ptlab_loss

    def _hf_loss(self, batch):
        return self.model(**batch).loss

    def _ptlab_loss(self, batch):
        batch = ptlab_batch(batch)
        return self.summed(batch) / batch["labels"].numel()  # no label is ignored here

    def step(self, batch) -> float:
        with autocast(self.precision):
            loss = self.loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def ptlab_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainer's batch for the same tokens: decoder-only rows carry their shifted labels and positions."""
    if "decoder_input_ids" in batch:
        return model_inputs(batch)  # as the trainer does: no padding here, so no padding mask
    x = batch["input_ids"]
    inputs = x[:, :-1].contiguous()
    return {"input_ids": inputs, "labels": x[:, 1:].contiguous(),
            "position_ids": torch.arange(inputs.shape[1])[None].expand_as(inputs)}  # no packing, no prefix


def build_runners(cfg: ModelConfig, settings: list[str], lr: float = 1e-3) -> dict[str, Runner]:
    torch._dynamo.reset()  # a fresh compiler cache per model, as each training run gets
    torch.manual_seed(0)
    reference = build_model(cfg)
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    defaults = TrainConfig(lr=lr)
    runners = {}
    for name in settings:
        hf = name.startswith("HF")
        if hf:
            model = hf_model(cfg, state, "sdpa" if name == "HF best" else "eager")
        else:
            model = build_model(cfg)
            model.load_state_dict(state)
        # one optimizer for all (torch's fused AdamW, ptlab's defaults): the settings differ in the model only
        optimizer = build_optimizer(model, defaults)
        model.train()
        precision = "fp32" if name in ("HF default", "ptlab fp32") else defaults.precision
        compiled = name == "HF best" or (name == "ptlab" and compile_enabled(defaults, torch.device("cpu")))
        runners[name] = Runner(name, model, hf, precision, compiled, optimizer)
    return runners


def check_same_function(cfg: ModelConfig, runners: dict[str, Runner]) -> float:
    """Largest logit difference between ptlab's model and HF's on one batch, before any training."""
    batch = random_batch(cfg, 2)
    ours = next(r.model for r in runners.values() if not r.hf)
    theirs = next(r.model for r in runners.values() if r.hf)
    with torch.no_grad():
        if cfg.is_encoder_decoder:
            a = ours(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
            b = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits
        else:
            a, b = ours(batch["input_ids"]), theirs(input_ids=batch["input_ids"]).logits  # plain causal: no mask
    return float((a - b).abs().max())


def throughput(runners: dict[str, Runner], cfg: ModelConfig, seconds: float, rounds: int) -> dict[str, dict]:
    batch = random_batch(cfg, BATCH)
    tokens = BATCH * (sum(ENC_DEC_LENGTHS) if cfg.is_encoder_decoder else DECODER_LENGTH)
    inputs, targets = ENC_DEC_LENGTHS if cfg.is_encoder_decoder else (0, DECODER_LENGTH)
    flops = BATCH * training_flops(cfg, inputs, targets)
    warmup = {}
    for name, runner in runners.items():  # warm-up, including compilation
        started = time.perf_counter()
        for _ in range(2):
            runner.step(batch)
        warmup[name] = time.perf_counter() - started
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / rounds or count < 1:
                runner.step(batch)
                count += 1
            rates[name].append(count / (time.perf_counter() - started))
    results = {}
    for name, steps_per_second in rates.items():
        rate = statistics.median(steps_per_second)
        results[name] = {"tokens_per_second": rate * tokens, "gflops": rate * flops / 1e9,
                         "precision": runners[name].precision, "compiled": runners[name].compiled,
                         "warmup_seconds": warmup[name]}
    return results


def loss_curves(cfg: ModelConfig, steps: int, batch: int) -> dict[str, list[float]]:
    """ptlab's default step, ptlab in fp32 and HF's default step from the same weights on the same real batches,
    plus two yardsticks for the gaps: ptlab fp32 from weights perturbed by one part in a million (how far rounding
    alone moves a curve: training amplifies any difference) and ptlab fp32 on another draw of batches."""
    runners = build_runners(cfg, ["HF default", "ptlab fp32", "ptlab"])
    batches = real_batches(steps, cfg, batch, seed=1)
    curves = {name: [runner.step(b) for b in batches] for name, runner in runners.items()}
    perturbed = build_runners(cfg, ["ptlab fp32"])["ptlab fp32"]
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in perturbed.model.parameters():
            param.mul_(1 + 1e-6 * torch.randn(param.shape, generator=noise))
    curves["ptlab fp32, perturbed weights"] = [perturbed.step(b) for b in batches]
    other = build_runners(cfg, ["ptlab fp32"])["ptlab fp32"]
    curves["ptlab fp32, other batches"] = [other.step(b) for b in real_batches(steps, cfg, batch, seed=2)]
    return curves


def compare_losses(curves: dict[str, list[float]], window: int = 20) -> dict[str, float]:
    def smooth(values):
        return np.convolve(values, np.ones(window) / window, mode="valid")

    hf, ours, ours32, perturbed, other = (smooth(curves[k]) for k in (
        "HF default", "ptlab", "ptlab fp32", "ptlab fp32, perturbed weights", "ptlab fp32, other batches"))
    return {"final_hf": float(hf[-1]), "final_ptlab": float(ours[-1]), "final_ptlab_fp32": float(ours32[-1]),
            "max_gap_ptlab_vs_hf": float(np.abs(ours - hf).max()),
            "mean_gap_ptlab_vs_hf": float(np.abs(ours - hf).mean()),
            "max_gap_ptlab_vs_fp32": float(np.abs(ours - ours32).max()),
            "max_gap_fp32_vs_hf": float(np.abs(ours32 - hf).max()),
            "max_gap_perturbed_weights": float(np.abs(perturbed - ours32).max()),
            "max_gap_other_batches": float(np.abs(other - ours32).max())}


def run(sizes: list[str], families: list[str], settings: list[str], seconds: float = 6.0, rounds: int = 3,
        loss_steps: int = 0, loss_batch: int = 4) -> tuple[dict, list[str], list[str]]:
    """Measure; returns the JSON report, the table's lines, and the equal-precision comparisons ptlab lost."""
    configure_host()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    peaks = {"fp32": measure_matmul_tflops(torch.float32) * 1e3, "bf16": measure_matmul_tflops(torch.bfloat16) * 1e3}
    cpu = cpu_model()
    header = (f"{cpu}; torch {torch.__version__}, {threads} threads; measured matmul peak: fp32 {peaks['fp32']:.0f} "
              f"GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; batch {BATCH}, encoder-decoders {ENC_DEC_LENGTHS[0]} -> "
              f"{ENC_DEC_LENGTHS[1]}, decoders {DECODER_LENGTH} tokens")
    print(header, flush=True)
    report = {"cpu": cpu, "torch": torch.__version__, "threads": threads, "peak_gflops": peaks, "batch": BATCH,
              "runs": []}
    lines = [header, "", "| family | size | setting | precision | compile | tokens/s | GFLOP/s | % of peak | "
             "vs HF default | vs HF best |", "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    failures = []
    for size in sizes:
        for family in families:
            cfg = model_config(family, size)
            runners = build_runners(cfg, settings)
            both = any(r.hf for r in runners.values()) and not all(r.hf for r in runners.values())
            gap = check_same_function(cfg, runners) if both else float("nan")
            if gap > 1e-3:
                raise SystemExit(f"{family} {size}: HF's copy computes different logits (max gap {gap:.2g})")
            results = throughput(runners, cfg, seconds, rounds)
            hf_default = results.get("HF default", {}).get("tokens_per_second")
            hf_best = results.get("HF best", {}).get("tokens_per_second")
            for name, r in results.items():
                ratio = f"{r['tokens_per_second'] / hf_default:.2f}x" if hf_default else "-"
                ratio_best = f"{r['tokens_per_second'] / hf_best:.2f}x" if hf_best else "-"
                lines.append(f"| {family} | {size} | {name} | {r['precision']} | {'on' if r['compiled'] else 'off'} | "
                             f"{r['tokens_per_second']:,.0f} | {r['gflops']:.0f} | "
                             f"{100 * r['gflops'] / peaks[r['precision']]:.0f}% | {ratio} | {ratio_best} |")
                print(lines[-1], flush=True)
            # equal precision: ptlab fp32 against HF fp32; ptlab's bf16 default against HF's bf16 best
            for ours, theirs in (("ptlab fp32", "HF default"), ("ptlab", "HF best")):
                if ours in results and theirs in results and \
                        results[ours]["tokens_per_second"] < results[theirs]["tokens_per_second"]:
                    failures.append(f"{family} {size}: {ours} is slower than {theirs}")
            report["runs"].append({"family": family, "size": size, "max_logit_gap_vs_hf": gap,
                                   "config": dataclasses.asdict(cfg), "results": results})
            del runners
    if loss_steps:
        lines += ["", f"Loss over the first {loss_steps} steps (batch {loss_batch}, real text, the same weights and "
                      "batches; 20-step moving averages):", "",
                  "| family | HF default final | ptlab final | ptlab fp32 final | max gap: ptlab vs HF | "
                  "ptlab vs ptlab fp32 | ptlab fp32 vs HF | rounding (perturbed weights) | batches (other draw) | "
                  "mean gap: ptlab vs HF |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for family in families:
            cfg = model_config(family, "tiny")
            curves = loss_curves(cfg, loss_steps, loss_batch)
            c = compare_losses(curves)
            lines.append(f"| {family} | {c['final_hf']:.3f} | {c['final_ptlab']:.3f} | {c['final_ptlab_fp32']:.3f} | "
                         f"{c['max_gap_ptlab_vs_hf']:.3f} | {c['max_gap_ptlab_vs_fp32']:.3f} | "
                         f"{c['max_gap_fp32_vs_hf']:.3f} | {c['max_gap_perturbed_weights']:.3f} | "
                         f"{c['max_gap_other_batches']:.3f} | {c['mean_gap_ptlab_vs_hf']:.3f} |")
            print(lines[-1], flush=True)
            report.setdefault("loss", []).append({"family": family, "steps": loss_steps, **c, "curves": curves})
    report["table"] = "\n".join(lines)
    return report, lines, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--families", default="t5,bart,gpt2,llama")
    parser.add_argument("--settings", default="HF default,HF best,ptlab fp32,ptlab eager,ptlab")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per setting (split over rounds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loss-steps", type=int, default=0, help="also compare loss curves over this many steps")
    parser.add_argument("--loss-batch", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    report, lines, failures = run(args.sizes.split(","), args.families.split(","),
                                  [s.strip() for s in args.settings.split(",")], args.seconds, args.rounds,
                                  args.loss_steps, args.loss_batch)
    print("\n" + "\n".join(lines))
    return finish(report, args.json, failures)


def cpu_model() -> str:
    """The CPU's model name and whether it has AMX (bf16 tile matmuls: the bf16 peak is several times the fp32 one
    with it, about twice without), from /proc/cpuinfo; the ratios in these tables depend on both."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    return f"{name}, {'with' if 'amx_bf16' in info else 'without'} AMX"


def finish(report: dict, json_path: Path | None, failures: list[str]) -> int:
    """Write the JSON report (when asked) and turn lost equal-precision comparisons into exit status 1."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"\nresults: {json_path}")
    if failures:
        print("ptlab is slower than HF at equal precision: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
