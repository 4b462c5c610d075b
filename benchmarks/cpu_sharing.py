"""Two ptlab runs side by side on one machine: how much of its solo speed each keeps, with libgomp's spinning
waiters (ptlab before the fix) and with what the CLI does now (passive OpenMP waiting), with torch's default
thread count and with each run's share of the cores (what `ptlab study --jobs 2` gives each job).

    .venv/bin/python benchmarks/cpu_sharing.py [--steps 120] [--json benchmarks/results/cpu_sharing.json]

Each run is a real `python -m ptlab pretrain` of configs/t5-tiny.yaml (2+2 layers, d_model 256, batch 16 x 128,
bf16, not compiled) for --steps steps on the bundled validation text; its speed is steps/s over the logged steps
after the first log interval (start-up and warm-up excluded), read from its metrics.jsonl. Per setting: one run
alone, then two copies started together. Settings:
  spinning          GOMP_SPINCOUNT=300000: libgomp's own default, i.e. every ptlab run before the fix
  passive           nothing set: the CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads (ptlab's default now)
  passive-share     passive plus train.threads=cores//2, each run's share of the cores
  spinning-share    spinning waiters with each run's share of the cores
Measure on an otherwise idle machine: anything else running shows up as a slowdown of every setting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-cpu-sharing"


def settings() -> dict[str, tuple[dict[str, str], list[str]]]:
    from ptlab.train.host import thread_share

    return {"spinning": ({"GOMP_SPINCOUNT": "300000"}, []),
            "passive": ({}, []),
            "passive-share": ({}, [f"train.threads={thread_share(2)}"]),
            "spinning-share": ({"GOMP_SPINCOUNT": "300000"}, [f"train.threads={thread_share(2)}"])}


def _command(run_dir: Path, steps: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "ptlab", "pretrain", "--config", str(ROOT / "configs" / "t5-tiny.yaml"), "--quiet",
            f"run_dir={run_dir}", f"train.max_steps={steps}", "train.compile=false", "train.eval_every=0",
            "train.checkpoint_every=0", "train.tensorboard=false", "train.log_every=10",
            f"data.train_files=[{ROOT / 'data' / 'corpus' / 'validation.jsonl.gz'}]", "data.validation_files=[]",
            f"data.tokenizer={WORK / 'tokenizer'}", f"data.shards_dir={WORK / 'shards'}", *overrides]


def _environment(extra: dict[str, str]) -> dict[str, str]:
    from ptlab.train.host import WAIT_SETTINGS

    env = {k: v for k, v in os.environ.items() if k not in (*WAIT_SETTINGS, "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, **extra}


def steps_per_second(run_dir: Path) -> float:
    """Steps/s between the first and the last logged step (the first interval holds start-up and warm-up)."""
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    logged = [r for r in logged if "seconds" in r and "step" in r and "event" not in r]
    first, last = logged[0], logged[-1]
    return (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])


def run_together(copies: int, steps: int, env: dict[str, str], overrides: list[str]) -> list[Path]:
    """Start `copies` identical runs at once and wait for them; their run directories."""
    run_dirs = [WORK / f"run{i}" for i in range(copies)]
    for run_dir in run_dirs:
        shutil.rmtree(run_dir, ignore_errors=True)
    procs = [subprocess.Popen(_command(d, steps, overrides), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for d in run_dirs]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"ptlab pretrain failed ({proc.returncode}):\n{err[-2000:]}")
    return run_dirs


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--settings", default=",".join(settings()), help="comma-separated subset of the settings")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cpu_sharing.json"))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    # Tokenizer and shards are built once, by a short run alone, so that no timed run builds them.
    if not (WORK / "shards").exists():
        run_together(1, 2, _environment({}), [])
    chosen = {name: setting for name, setting in settings().items() if name in args.settings.split(",")}
    results, lines = {}, []
    print(f"{os.cpu_count()} cores; load average {load_average():.2f} before the runs", flush=True)
    for name, (extra, overrides) in chosen.items():
        env = _environment(extra)
        started = time.perf_counter()
        solo = steps_per_second(run_together(1, args.steps, env, overrides)[0])
        pair = [steps_per_second(d) for d in run_together(2, args.steps, env, overrides)]
        results[name] = {"alone": solo, "side_by_side": pair, "load_average": load_average(),
                         "seconds": time.perf_counter() - started}
        line = (f"{name:<15} alone {solo:5.2f} steps/s   side by side {pair[0]:5.2f} and {pair[1]:5.2f} steps/s"
                f"   kept {pair[0] / solo:4.0%} and {pair[1] / solo:4.0%} of solo")
        lines.append(line)
        print(line, flush=True)
    if "spinning" in results:
        reference = results["spinning"]["alone"]
        print(f"\nagainst one run alone before the fix ({reference:.2f} steps/s):")
        for name, result in results.items():
            kept = [s / reference for s in (result["alone"], *result["side_by_side"])]
            result["kept_of_spinning_alone"] = kept
            print(f"{name:<15} alone {kept[0]:4.0%}   side by side {kept[1]:4.0%} and {kept[2]:4.0%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps({"steps": args.steps, "cores": os.cpu_count(), "results": results}, indent=2) + "\n")
    os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
