"""Faults during saves. A campaign of SIGKILLs at random moments of a run that checkpoints every step, with
synchronous and background saves, on one process and on two FSDP ranks writing sharded checkpoints: after each kill
every checkpoint on disk verifies, the next start resumes from one, and the finished run is the uninterrupted run,
record for record. And a full disk while saving: one line naming the last good checkpoint, which stays loadable.

The default suite runs a short campaign (one process, 3 kills a setting); `make test-slow` the full one (20 kills
in each of the four settings)."""

import errno
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import ptlab.train.checkpoint as checkpoint_module
from ptlab.config import load_config
from ptlab.errors import PtlabError
from ptlab.train.checkpoint import latest_valid_checkpoint, list_checkpoints, load_model, verify_checkpoint
from ptlab.train.loop import pretrain
from ptlab.train.runlog import read_metrics

SETTINGS = {"one-process": (1, False), "one-process-async": (1, True), "fsdp2": (2, False), "fsdp2-async": (2, True)}
ENV = {"OMP_NUM_THREADS": "1"}


def write_config(directory: Path, small_corpus, tokenizer_dir, **train) -> Path:
    config = {
        "run_dir": str(directory / "run"), "seed": 3,
        "model": {"family": "gpt2", "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 2},
        "objective": {"name": "causal_lm", "inputs_length": 32},
        "data": {"train_files": [str(small_corpus["train"])], "validation_files": [str(small_corpus["validation"])],
                 "tokenizer": str(tokenizer_dir), "vocab_size": 2000, "shards_dir": str(tokenizer_dir / "shards")},
        "train": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1, "eval_every": 10,
                  "eval_batches": 1, "checkpoint_every": 1, "keep_checkpoints": 2, "precision": "fp32",
                  "threads": 1, "tensorboard": False, "peak_tflops": 1.0, "compile": False, "distributed": "fsdp",
                  **train},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path, processes: int) -> list[str]:
    launcher = (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [])
    return [*launcher, "-m", "ptlab", "pretrain", "--config", str(config), "--quiet"]


def curve(run_dir: Path) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss"), r.get("lr"), r.get("grad_norm"))
            for r in read_metrics(run_dir) if "event" not in r]


def newest_step(run_dir: Path) -> int:
    return max((r.get("step", 0) for r in read_metrics(run_dir)), default=0)


def campaign(tmp_path, small_corpus, tokenizer_dir, kill_after, setting: str, kills: int, steps: int) -> None:
    processes, asynchronous = SETTINGS[setting]
    train = {"max_steps": steps, "async_checkpoint": asynchronous}
    reference = write_config(tmp_path / "reference", small_corpus, tokenizer_dir, **train)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *command(reference, processes)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stderr[-2000:]
    seconds_a_step = (time.perf_counter() - started) / steps  # start-up included: an upper bound
    expected = curve(tmp_path / "reference" / "run")

    config = write_config(tmp_path / "killed", small_corpus, tokenizer_dir, **train)
    run_dir = tmp_path / "killed" / "run"
    rng = random.Random(f"{setting}-{kills}")
    log = tmp_path / "stderr.txt"
    resumed_from = []
    for kill in range(kills):
        saved = list_checkpoints(run_dir)
        # a random moment after this start has made progress: inside a step, its save or its background write
        with open(log, "w") as stderr:
            assert kill_after(command(config, processes), run_dir, newest_step(run_dir) + 1,
                              pause=rng.uniform(0, 2 * seconds_a_step), env=ENV, stderr=stderr), \
                f"{setting}: the run ended before kill {kill + 1} of {kills}; raise its steps"
        found = re.search(r"resuming .* from step (\d+)", log.read_text())
        if saved:  # the start resumed from the newest checkpoint the previous kill left
            assert found and int(found.group(1)) == int(saved[-1].name.split("_")[1]), (setting, kill, saved[-1])
            resumed_from.append(int(found.group(1)))
        else:  # killed before its first checkpoint was whole: the next start begins afresh
            assert not found, (setting, kill)
        for directory in list_checkpoints(run_dir):  # every checkpoint a reader can see is whole: none torn
            assert verify_checkpoint(directory) is None, (setting, kill, directory, verify_checkpoint(directory))
    finished = subprocess.run([sys.executable, *command(config, processes)], capture_output=True, text=True,
                              timeout=600, env={**os.environ, **ENV})
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resuming" in finished.stderr
    assert len(resumed_from) >= kills - 3 and resumed_from[-1] < steps  # most starts resumed from a checkpoint
    assert curve(run_dir) == expected, setting  # the uninterrupted run's curve, record for record
    assert load_model(list_checkpoints(run_dir)[-1]) is not None


@pytest.mark.parametrize("setting", ["one-process", "one-process-async"])
def test_a_short_kill_campaign_resumes_onto_the_uninterrupted_curve(tmp_path, small_corpus, tokenizer_dir,
                                                                    kill_after, setting):
    campaign(tmp_path, small_corpus, tokenizer_dir, kill_after, setting, kills=3, steps=24)


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_twenty_kills_at_random_moments_resume_onto_the_uninterrupted_curve(tmp_path, small_corpus, tokenizer_dir,
                                                                             kill_after, setting):
    campaign(tmp_path, small_corpus, tokenizer_dir, kill_after, setting, kills=20, steps=120)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint(tmp_path, small_corpus, tokenizer_dir, monkeypatch,
                                                                 asynchronous):
    real = checkpoint_module.save_file

    def disk_full_from_step_6(state, path, **kwargs):
        if "step_0000006" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(state, path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full_from_step_6)
    config = write_config(tmp_path, small_corpus, tokenizer_dir, max_steps=10, checkpoint_every=2,
                          keep_checkpoints=5, async_checkpoint=asynchronous)
    with pytest.raises(PtlabError) as raised:
        pretrain(load_config(config), show_progress=False)
    message = str(raised.value)
    assert "No space left on device" in message and "step_0000006" in message
    assert "step_0000004" in message.split(";")[-1]  # names the checkpoint to resume from
    run_dir = tmp_path / "run"
    assert [c.name for c in list_checkpoints(run_dir)] == ["step_0000002", "step_0000004"]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # nothing half-written left behind
    assert latest_valid_checkpoint(run_dir).name == "step_0000004"
    assert load_model(run_dir / "checkpoints" / "step_0000004") is not None

    monkeypatch.setattr(checkpoint_module, "save_file", real)  # space again: the run resumes from step 4
    result = pretrain(load_config(config), show_progress=False)
    assert result.resumed_from == 4 and result.steps == 10


def test_a_full_disk_is_one_line_from_the_command_line(tmp_path, small_corpus, tokenizer_dir):
    """The CLI's view of the same fault, in a child process whose writer fails (a sitecustomize hook)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os\n"
        "import safetensors.torch as st\n"
        "real = st.save_file\n"
        "def full(state, path, **kwargs):\n"
        "    if 'step_0000004' in str(path):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)\n"
        "    return real(state, path, **kwargs)\n"
        "st.save_file = full\n")
    config = write_config(tmp_path, small_corpus, tokenizer_dir, max_steps=6, checkpoint_every=2)
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, *command(config, 1)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert "No space left on device" in lines[0] and "step_0000002" in lines[0]
