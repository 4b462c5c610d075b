"""`make bench`: every benchmark in one run, one report. Training throughput of ptlab against HF transformers
(benchmarks/train.py: tiny and small T5, BART, GPT-2 and Llama, fp32 and each side's best), then the data side
(benchmarks/data.py: objectives, tokenizers, cleaning), then tokenization at scale (benchmarks/tokenization.py: ptlab
tokenize with 1 and 2 workers against datasets.map), then the scaling curves (benchmarks/scaling.py: tokens/s and
peak memory against sequence length, width and vocabulary, ptlab against HF; benchmarks/results/scaling-cpu.md and
.png), then the fused head and loss against the unfused one in the compiled step (benchmarks/head_loss.py: peak
memory and tokens/s at 8k, 32k and 128k vocabularies; benchmarks/results/head-loss-cpu.md), then the training
process peak memory as a user sees it (benchmarks/memory.py; memory-cpu.md), then the training recipe's time to
target against the previous recipe (benchmarks/time_to_target.py; time-to-target-cpu.md). Writes
benchmarks/results/bench.json (compare it across changes) and exits 1 when ptlab is slower than HF at equal
precision for any family.

    .venv/bin/python benchmarks/run.py [--sizes tiny,small] [--seconds 6] [--loss-steps 0] [--scaling full|quick|off]
                                       [--head-loss on|off] [--memory on|off] [--time-to-target on|off]
                                       [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tokenization  # noqa: E402
import train  # noqa: E402

import data  # noqa: E402
import head_loss  # noqa: E402
import memory  # noqa: E402
import scaling  # noqa: E402
import time_to_target  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--families", default="t5,bart,gpt2,llama")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per training setting")
    parser.add_argument("--loss-steps", type=int, default=0, help="also compare loss curves over this many steps")
    parser.add_argument("--tokenize-mb", type=float, default=300.0,
                        help="corpus size for the tokenization benchmark (0 skips it)")
    parser.add_argument("--scaling", choices=("full", "quick", "off"), default="full",
                        help="the scaling curves' sweep (quick: fewer points)")
    parser.add_argument("--head-loss", choices=("on", "off"), default="on",
                        help="the fused head and loss's memory and speed (about 10 minutes)")
    parser.add_argument("--memory", choices=("on", "off"), default="on",
                        help="process peak memory of ptlab pretrain at 2k, 32k and 64k vocabularies (about 15 minutes)")
    parser.add_argument("--time-to-target", choices=("on", "off"), default="on",
                        help="the recipe's time to target against the previous one, 5 seeds a side (about 1.5 hours)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/bench.json"))
    args = parser.parse_args()
    settings = ["HF default", "HF best", "ptlab fp32", "ptlab eager", "ptlab"]
    training, train_lines, failures = train.run(args.sizes.split(","), args.families.split(","), settings,
                                                args.seconds, 3, args.loss_steps)
    pipeline, data_lines = data.run()
    tokenizing, tokenize_lines = tokenization.run(args.tokenize_mb) if args.tokenize_mb else ({}, [])
    curves, scaling_lines = [], []
    if args.scaling != "off":
        curves, scaling_lines = scaling.run(["gpt2", "t5"], scaling.QUICK_SWEEPS if args.scaling == "quick"
                                            else scaling.SWEEPS)
        scaling.write(curves, scaling_lines, Path("benchmarks/results/scaling-cpu"),
                      f"benchmarks/run.py --scaling {args.scaling}")
    fused = []
    if args.head_loss == "on":
        fused = head_loss.run([8192, 32768, 131072], [128, 256, 0], compiled=True, steps=8)
        head_loss.write(fused, Path("benchmarks/results/head-loss-cpu"), "cpu", compiled=True)
        scaling_lines += ["", head_loss.markdown(fused, "cpu", compiled=True)]
    if args.memory == "on":
        scaling_lines += ["", memory.run_all([2048, 32768, 65536], 40, memory.RESULTS / "memory-cpu")]
    if args.time_to_target == "on":
        scaling_lines += ["", time_to_target.run(["gpt2", "t5"], 5, time_to_target.RESULTS / "time-to-target-cpu")]
    print("\n" + "\n".join(train_lines) + "\n\n" + "\n".join(data_lines) + "\n\n" + "\n".join(tokenize_lines)
          + "\n\n" + "\n".join(scaling_lines))
    return train.finish({"training": training, "data": pipeline, "tokenize": tokenizing, "scaling": curves,
                         "head_loss": fused},
                        args.json, failures)


if __name__ == "__main__":
    sys.exit(main())
