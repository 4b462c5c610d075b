"""Fine-tuning runs on the trainer's step machinery: a killed fine-tune resumes to the scores of an uninterrupted
one, SIGTERM saves and exits, non-finite steps are skipped and stop the run with the last good weights."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ptlab.config import FinetuneConfig, load_config
from ptlab.downstream.finetune import finetune
from ptlab.errors import PtlabError
from ptlab.train.checkpoint import list_checkpoints
from ptlab.train.runlog import read_metrics

WORDS = {"liked": ["great", "superb", "moving", "charming"], "disliked": ["awful", "boring", "dull", "clumsy"]}


def write_config(directory: Path, tokenizer_dir: Path, **train) -> Path:
    """A fine-tuning config in `directory`; the task's files in its sibling `reviews/` (the task's name)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    (directory.parent / "reviews").mkdir(exist_ok=True)
    for split, count in (("train", 160), ("validation", 24), ("test", 24)):
        files[split] = directory.parent / "reviews" / f"{split}.csv"
        with open(files[split], "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "verdict"])
            for _ in range(count):
                label = "liked" if rng.random() < 0.5 else "disliked"
                writer.writerow([f"the film was {rng.choice(WORDS[label])} to watch", label])
    config = {"run_dir": str(directory / "run"), "seed": 0, "init": "none", "tokenizer": str(tokenizer_dir),
              "model": {"family": "t5", "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 1,
                        "dropout": 0.1},
              "task": {**{split: str(path) for split, path in files.items()}, "input_template": "review: {review}",
                       "target_field": "verdict", "metrics": ["accuracy"]},
              "train": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_every": 5, "precision": "fp32",
                        "threads": 1, "optimizer": "adamw", "log_every": 1, "tensorboard": False, **train},
              "epochs": 2, "patience": 100}
    path = directory / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_finetune(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptlab", "finetune", "--config", str(config), "--quiet", *extra],
                          capture_output=True, text=True, timeout=600)


def outcome(run_dir: Path) -> tuple[dict, list]:
    scores = json.loads((run_dir / "scores.json").read_text())
    scores.pop("seconds")
    records = [r for r in read_metrics(run_dir) if "event" not in r]
    weights = load_file(str(run_dir / "best" / "model.safetensors"))
    return scores, records, {k: v.tolist() for k, v in weights.items()}


def test_a_fine_tune_killed_with_sigkill_resumes_to_identical_scores(tmp_path, tokenizer_dir, kill_after):
    reference = write_config(tmp_path / "a", tokenizer_dir)
    done = run_finetune(reference)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = outcome(tmp_path / "a" / "run")
    assert expected[0]["task"] == "reviews"  # a custom task is named after its files' folder, not "train"

    config = write_config(tmp_path / "b", tokenizer_dir)
    run_dir = tmp_path / "b" / "run"
    assert kill_after(["-m", "ptlab", "finetune", "--config", str(config), "--quiet"], run_dir, 22)
    assert list_checkpoints(run_dir) and not (run_dir / "scores.json").exists()  # killed mid-run, after a checkpoint
    resumed = run_finetune(config)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert outcome(run_dir) == expected

    again = run_finetune(config, "--resume")  # a finished run resumes to the same scores without training
    assert again.returncode == 0, again.stderr[-2000:]
    assert outcome(run_dir) == expected
    restarted = run_finetune(config, "--restart", "train.lr=1e-2")  # --restart may change the settings
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert outcome(run_dir)[1] != expected[1]
    refused = run_finetune(config, "train.lr=3e-3")  # resuming under other settings is refused in one line
    assert refused.returncode != 0 and "changed" in refused.stderr and "Traceback" not in refused.stderr


def test_sigterm_checkpoints_and_exits_then_the_run_resumes(tmp_path, tokenizer_dir):
    config = write_config(tmp_path / "a", tokenizer_dir, eval_every=1000)
    run_dir = tmp_path / "a" / "run"
    process = subprocess.Popen([sys.executable, "-m", "ptlab", "finetune", "--config", str(config), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(r.get("step", 0) >= 3 for r in read_metrics(run_dir)):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert "run the same command again to resume" in err
    assert list_checkpoints(run_dir)
    resumed = run_finetune(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "scores.json").read_text())["test"]["accuracy"] >= 0


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_non_finite_steps_are_skipped_and_stop_with_the_last_good_weights(tmp_path, tokenizer_dir, monkeypatch,
                                                                           fault):
    import ptlab.train.loop as loop

    real = loop.summed_loss
    calls = {"n": 0}

    def faulty(model, batch, *chunking):
        calls["n"] += 1
        loss = real(model, batch, *chunking)
        if calls["n"] <= 2:
            return loss
        if fault == "loss":
            return loss * float("nan")
        return loss + _inf_gradient(model)

    monkeypatch.setattr(loop, "summed_loss", faulty)
    cfg = load_config(write_config(tmp_path / "a", tokenizer_dir, max_bad_steps=3, checkpoint_every=2), [],
                      cls=FinetuneConfig)
    with pytest.raises(PtlabError, match="not finite for 3 steps in a row"):
        finetune(cfg, show_progress=False)
    run_dir = tmp_path / "a" / "run"
    skipped = [r for r in read_metrics(run_dir) if r.get("event") == "skipped_step"]
    assert [r["step"] for r in skipped] == [3, 4, 5] and {r["reason"] for r in skipped} == {fault}
    if fault == "gradient":
        assert all(np.isfinite(r["loss"]) for r in skipped)
    good = load_file(str(list_checkpoints(run_dir)[0] / "model.safetensors"))  # steps 3 and 4 were skipped
    last = load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))  # the stop checkpoint
    assert list_checkpoints(run_dir)[-1].name == "step_0000005"
    assert all(torch.equal(good[k], last[k]) for k in good)


def _inf_gradient(model) -> torch.Tensor:
    """Zero in value, not finite in gradient (sqrt's derivative at 0 times zero)."""
    weight = next(model.parameters())
    return torch.sqrt((weight.flatten()[0] - weight.flatten()[0].detach()) ** 2)
