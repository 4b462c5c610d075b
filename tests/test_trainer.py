"""The trainer's promises: exact resume after SIGKILL, accumulation and data parallelism that do not change the
loss, FSDP2 checkpoints that resume on one process, corrupted checkpoints skipped, SIGTERM saves, steps with a NaN
loss or a non-finite gradient norm skipped."""

import copy
import json
import math
import os
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

from ptlab.config import load_config
from ptlab.errors import PtlabError
from ptlab.train.checkpoint import list_checkpoints, load_model
from ptlab.train.loop import pretrain
from ptlab.train.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]



def write_config(tmp_path, small_corpus, tokenizer_dir, **train) -> Path:
    config = {
        "run_dir": str(tmp_path / "run"), "seed": 1,
        "model": {"family": "t5", "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 1},
        "objective": {"name": "span_corruption", "inputs_length": 32},
        "data": {"train_files": [str(small_corpus["train"])], "validation_files": [str(small_corpus["validation"])],
                 "tokenizer": str(tokenizer_dir), "vocab_size": 2000, "shards_dir": str(tmp_path / "shards")},
        "train": {"max_steps": 16, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
                  "eval_every": 4, "eval_batches": 1, "checkpoint_every": 4, "precision": "fp32", "threads": 1,
                  "tensorboard": False, "peak_tflops": 1.0, **train},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_ptlab(config: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptlab", "pretrain", "--config", str(config), "--quiet", *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def curve(run_dir: Path) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss"), r.get("lr"), r.get("grad_norm"))
            for r in read_metrics(run_dir) if "event" not in r]


# The 2026 recipe: Muon's momentum, the spike guard's history and the batch-size ramp's data position all resume
NEW_RECIPE = {"optimizer": "muon_scale", "muon_lr": 0.02, "schedule": "wsd", "spike_sigmas": 3.0, "spike_window": 4,
              "batch_warmup_steps": 10}


@pytest.mark.parametrize("recipe", [{}, NEW_RECIPE], ids=["adamw", "muon"])
def test_a_run_killed_with_sigkill_resumes_to_identical_metrics(tmp_path, small_corpus, tokenizer_dir, recipe,
                                                                 kill_after):
    slow = {"max_steps": 60, "checkpoint_every": 8, "eval_every": 8, **recipe}
    reference = write_config(tmp_path / "a", small_corpus, tokenizer_dir, **slow)
    assert run_ptlab(reference).returncode == 0
    expected = curve(tmp_path / "a" / "run")

    config = write_config(tmp_path / "b", small_corpus, tokenizer_dir, **slow)
    run_dir = tmp_path / "b" / "run"
    assert kill_after(["-m", "ptlab", "pretrain", "--config", str(config), "--quiet"], run_dir, 30, timeout=120)
    steps = [c.name for c in list_checkpoints(run_dir)]
    assert steps and "step_0000060" not in steps  # killed mid-run, after at least one checkpoint
    resumed = run_ptlab(config)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert curve(run_dir) == expected


def in_process(tmp_path, small_corpus, tokenizer_dir, *overrides):
    config = write_config(tmp_path, small_corpus, tokenizer_dir)
    return load_config(config, list(overrides))


def test_four_micro_batches_of_one_equal_one_batch_of_four(tmp_path, small_corpus, tokenizer_dir):
    runs = {}
    for accum in (1, 4):
        cfg = in_process(tmp_path / str(accum), small_corpus, tokenizer_dir, "train.batch_size=4",
                         f"train.grad_accum={accum}", "train.max_steps=8", "train.checkpoint_every=0")
        pretrain(cfg, show_progress=False)
        runs[accum] = [loss for _, loss, *_ in curve(tmp_path / str(accum) / "run") if loss is not None]
    np.testing.assert_allclose(runs[4], runs[1], rtol=1e-6, atol=0)
    assert len(runs[1]) == 8


def torchrun(config: Path, processes: int, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "ptlab", "pretrain", "--config", str(config), "--quiet", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("mode,chunk,optimizer", [("ddp", 0, "adamw"), ("fsdp", 0, "adamw"), ("fsdp", 16, "adamw"),
                                                 ("ddp", 0, "muon_scale"), ("fsdp", 0, "muon_scale")])
def test_two_processes_follow_the_single_process_loss_curve(tmp_path, small_corpus, tokenizer_dir, mode, chunk,
                                                            optimizer):
    """Also with the fused head and loss under FSDP (chunk 16), where the head's weight is read outside the
    wrapped model's forward, and with Muon, whose Newton-Schulz sees each sharded matrix whole."""
    recipe = {"optimizer": optimizer, "loss_chunk_tokens": chunk, "spike_sigmas": 3.0 if "muon" in optimizer else 0}
    single = write_config(tmp_path / "one", small_corpus, tokenizer_dir, max_steps=8, checkpoint_every=4, **recipe)
    assert run_ptlab(single).returncode == 0
    double = write_config(tmp_path / "two", small_corpus, tokenizer_dir, max_steps=8, checkpoint_every=4,
                          distributed=mode, **recipe)
    result = torchrun(double, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = curve(tmp_path / "one" / "run"), curve(tmp_path / "two" / "run")
    assert [s for s, *_ in one] == [s for s, *_ in two]
    for a, b in zip(one, two):
        for x, y in zip(a[1:3], b[1:3]):
            assert (x is None) == (y is None)
            if x is not None:
                assert abs(x - y) <= 1e-5 * max(1.0, abs(x))
    start = json.loads((tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2
    if mode == "fsdp" and not chunk:  # the sharded run's checkpoint resumes on one process and carries on
        resumed = run_ptlab(double, "train.max_steps=12", "train.distributed=ddp")
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming" in resumed.stderr
        steps = [s for s, loss, *_ in curve(tmp_path / "two" / "run") if loss is not None]
        assert steps == list(range(1, 13))


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path, small_corpus, tokenizer_dir):
    cfg = in_process(tmp_path, small_corpus, tokenizer_dir)
    pretrain(cfg, show_progress=False)
    checkpoints = list_checkpoints(tmp_path / "run")
    assert [c.name for c in checkpoints] == ["step_0000008", "step_0000012", "step_0000016"]  # keep_checkpoints=3
    weights = checkpoints[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a truncated write
    result = run_ptlab(write_config(tmp_path, small_corpus, tokenizer_dir), "train.max_steps=20")
    assert result.returncode == 0, result.stderr
    assert "skipping checkpoint" in result.stderr and "step_0000016" in result.stderr
    assert "resuming" in result.stderr and "step_0000012" in result.stderr


def test_sigterm_saves_a_loadable_checkpoint_and_exits(tmp_path, small_corpus, tokenizer_dir):
    config = write_config(tmp_path, small_corpus, tokenizer_dir, max_steps=2000, checkpoint_every=0, eval_every=0)
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "ptlab", "pretrain", "--config", str(config), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.get("step", 0) >= 5 for r in read_metrics(run_dir)):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    [checkpoint] = list_checkpoints(run_dir)
    interrupted = [r for r in read_metrics(run_dir) if r.get("event") == "interrupted"]
    assert interrupted and checkpoint.name == f"step_{interrupted[0]['step']:07d}"
    assert load_model(checkpoint).config.family == "t5"


def test_non_finite_losses_skip_steps_then_stop_with_a_checkpoint(tmp_path, small_corpus, tokenizer_dir,
                                                                   monkeypatch):
    import ptlab.train.loop as loop

    real = loop.summed_loss
    calls = {"n": 0}

    def flaky(model, batch, *chunking):
        loss = real(model, batch, *chunking)
        calls["n"] += model.training
        if model.training and (calls["n"] == 3 or calls["n"] >= 7):
            loss = loss * float("nan")
        return loss

    monkeypatch.setattr(loop, "summed_loss", flaky)
    cfg = in_process(tmp_path, small_corpus, tokenizer_dir, "train.eval_every=0", "train.max_bad_steps=3")
    with pytest.raises(PtlabError, match="for 3 steps in a row"):
        pretrain(cfg, show_progress=False)
    skipped = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "skipped_step"]
    assert [r["step"] for r in skipped] == [3, 7, 8, 9]
    assert list_checkpoints(tmp_path / "run")[-1].name == "step_0000009"


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_an_infinite_gradient_at_a_finite_loss_skips_the_step_and_keeps_the_last_good_weights(
        tmp_path, small_corpus, tokenizer_dir, monkeypatch, grad_clip):
    """Steps 7-9 get infinite gradients from a finite loss (clipped or not): skipped like a NaN loss, and the stop
    checkpoint holds, bit for bit, the weights after step 6; the optimizer's moments are untouched."""
    import ptlab.train.loop as loop

    real_loss, real_optimizer = loop.summed_loss, loop.build_optimizer
    seen = {"calls": 0}

    def recorded_optimizer(model, cfg):
        seen["optimizer"] = real_optimizer(model, cfg)
        return seen["optimizer"]

    def poisoned(model, batch, *chunking):
        loss = real_loss(model, batch, *chunking)
        if model.training:
            seen["calls"] += 1
            if seen["calls"] == 7:  # about to train step 7: these are the last good weights and moments
                seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                seen["moments"] = copy.deepcopy(seen["optimizer"].state_dict()["state"])
            if seen["calls"] >= 7:
                loss.register_hook(lambda grad: grad * float("inf"))
        return loss

    monkeypatch.setattr(loop, "summed_loss", poisoned)
    monkeypatch.setattr(loop, "build_optimizer", recorded_optimizer)
    cfg = in_process(tmp_path, small_corpus, tokenizer_dir, "train.eval_every=0", "train.max_bad_steps=3",
                     f"train.grad_clip={grad_clip}")
    with pytest.raises(PtlabError, match="not finite for 3 steps in a row"):
        pretrain(cfg, show_progress=False)
    skipped = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "skipped_step"]
    assert [r["step"] for r in skipped] == [7, 8, 9]
    assert all(math.isfinite(r["loss"]) and not math.isfinite(r["grad_norm"]) for r in skipped)
    stop = list_checkpoints(tmp_path / "run")[-1]
    assert stop.name == "step_0000009"
    saved = load_file(str(stop / "model.safetensors"))
    assert saved and all(torch.equal(saved[k], seen["weights"][k]) for k in saved)
    moments = seen["optimizer"].state_dict()["state"]
    assert moments.keys() == seen["moments"].keys()
    for key, state in moments.items():
        assert all(torch.equal(value, seen["moments"][key][name]) for name, value in state.items())


def test_bad_steps_are_read_back_at_log_steps_and_the_stop_rule_checked_there(tmp_path, small_corpus, tokenizer_dir,
                                                                              monkeypatch):
    """With train.log_every=4 the step figures stay on the device until steps 4, 8, 12: every skipped step is still
    recorded with its own step number, and the third bad step in a row (step 9) stops the run at the next read
    (step 12), with a checkpoint of the last good weights (those after step 6; steps 7-12 were all skipped)."""
    import ptlab.train.loop as loop

    real = loop.summed_loss
    seen = {"calls": 0}

    def flaky(model, batch, *chunking):
        loss = real(model, batch, *chunking)
        if model.training:
            seen["calls"] += 1
            if seen["calls"] == 7:
                seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if seen["calls"] == 3 or seen["calls"] >= 7:
                loss = loss * float("nan")
        return loss

    monkeypatch.setattr(loop, "summed_loss", flaky)
    cfg = in_process(tmp_path, small_corpus, tokenizer_dir, "train.eval_every=0", "train.max_bad_steps=3",
                     "train.log_every=4", "train.checkpoint_every=0")
    with pytest.raises(PtlabError, match=r"for 3 steps in a row \(up to step 9"):
        pretrain(cfg, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if r.get("event") == "skipped_step"] == [3, 7, 8, 9, 10, 11, 12]
    assert [r["step"] for r in records if "loss" in r and "event" not in r] == [4]  # steps 8 and 12 were skipped
    stop = list_checkpoints(tmp_path / "run")[-1]
    assert stop.name == "step_0000012"
    saved = load_file(str(stop / "model.safetensors"))
    assert saved and all(torch.equal(saved[k], seen["weights"][k]) for k in saved)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_scale"])
def test_a_step_never_reads_a_tensor_back_to_the_host(monkeypatch, optimizer):
    """step_on_device decides the non-finite skip on the device: no tensor becomes a Python number or truth value
    during the step (each would be a device sync on a GPU). Checked on CPU by making every such read fail."""
    from ptlab.config import ModelConfig, TrainConfig
    from ptlab.models import build_model
    from ptlab.train.distributed import Runtime
    from ptlab.train.loop import training_loss
    from ptlab.train.optim import build_optimizer
    from ptlab.train.step import read_steps, step_on_device

    cfg = ModelConfig(family="gpt2", vocab_size=64, d_model=16, d_ff=32, num_heads=2, num_layers=1,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    cfg.validate()
    model = build_model(cfg).train()
    train_cfg = TrainConfig(optimizer=optimizer, precision="bf16", grad_accum=2, loss_chunk_tokens=8)
    optimizer_ = build_optimizer(model, train_cfg)
    ids = np.random.default_rng(0).integers(3, 64, (4, 13))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "position_ids": np.tile(np.arange(12), (4, 1)),
             "segment_ids": np.ones((4, 12), dtype=np.int64)}
    runtime = Runtime(0, 1, torch.device("cpu"))
    loss_fn = training_loss(model, False, chunk_tokens=8)

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host inside the step")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patched.setattr(torch.Tensor, name, host_read)
        pending = [step_on_device(model, optimizer_, loss_fn, batch, 1e-3, 48.0, train_cfg, runtime)
                   for _ in range(2)]
    [first, second] = read_steps(pending, runtime)
    assert first.applied and second.applied and 0 < second.loss < first.loss


def test_a_changed_dataset_refuses_to_resume_without_the_override(tmp_path, small_corpus, tokenizer_dir):
    config = write_config(tmp_path, small_corpus, tokenizer_dir, max_steps=4)
    assert run_ptlab(config).returncode == 0
    changed = run_ptlab(config, "train.max_steps=8", "seed=5")
    assert changed.returncode == 2 and "seed changed" in changed.stderr and "--allow-data-change" in changed.stderr
    assert run_ptlab(config, "train.max_steps=8", "seed=5", "--allow-data-change").returncode == 0


def test_tensorboard_events_and_the_loss_plot(tmp_path, small_corpus, tokenizer_dir):
    cfg = in_process(tmp_path, small_corpus, tokenizer_dir, "train.tensorboard=true", "train.max_steps=6")
    pretrain(cfg, show_progress=False)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    logged = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r and "event" not in r]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(logged, rel=1e-6)  # float32 in the events
    out = subprocess.run([sys.executable, "-m", "ptlab", "plot", str(tmp_path / "run"), str(tmp_path / "run"),
                          "--output", str(tmp_path / "curves.png"), "--x", "tokens"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    # the run logged val_bpb, so the plot has its bits-per-byte panel beside the loss: twice as wide
    assert any("val_bpb" in r for r in read_metrics(tmp_path / "run"))
    width, height = Image.open(tmp_path / "curves.png").size
    assert width > 1.5 * height


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, small_corpus, tokenizer_dir):
    losses = {}
    for flag in ("false", "true"):
        cfg = in_process(tmp_path / flag, small_corpus, tokenizer_dir, f"train.activation_checkpointing={flag}",
                         "train.max_steps=4", "train.checkpoint_every=0")
        pretrain(cfg, show_progress=False)
        losses[flag] = [loss for _, loss, *_ in curve(tmp_path / flag / "run") if loss is not None]
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-6)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path, small_corpus, tokenizer_dir):
    losses = {}
    for flag in ("false", "true"):
        cfg = in_process(tmp_path / flag, small_corpus, tokenizer_dir, f"train.compile={flag}", "train.max_steps=4",
                         "train.checkpoint_every=0", "train.eval_every=0")
        result = pretrain(cfg, show_progress=False)
        losses[flag] = [loss for _, loss, *_ in curve(tmp_path / flag / "run") if loss is not None]
        assert load_model(result.checkpoint) is not None  # no _orig_mod. prefixes in the saved keys
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-4)


def test_a_data_error_on_rank_0_stops_every_rank(tmp_path, small_corpus, tokenizer_dir):
    config = write_config(tmp_path, small_corpus, tokenizer_dir)
    started = time.time()
    result = torchrun(config, 2, f"data.train_files=[{tmp_path / 'missing.jsonl'}]")
    assert result.returncode != 0 and time.time() - started < 120
    assert "corpus file not found" in result.stderr


def test_training_leaves_the_callers_subnormal_floats_alone(tmp_path, small_corpus, tokenizer_dir):
    """The trainer flushes subnormals to zero (a process-wide flag) for speed, and restores the caller's setting."""
    def flushed() -> bool:
        return torch.tensor([1e-38]).div(1e4).item() == 0.0

    assert not flushed()
    pretrain(in_process(tmp_path, small_corpus, tokenizer_dir, "train.max_steps=2", "train.eval_every=0"),
             show_progress=False)
    assert not flushed()


def test_rerunning_a_finished_run_reports_its_final_scores(tmp_path, small_corpus, tokenizer_dir):
    cfg = in_process(tmp_path, small_corpus, tokenizer_dir, "train.max_steps=4", "train.checkpoint_every=0")
    first = pretrain(cfg, show_progress=False)
    again = pretrain(cfg, show_progress=False)  # nothing to train: the finished run's figures, not step 0's
    assert again.checkpoint == first.checkpoint and again.final_val_loss != again.initial_val_loss
    assert (again.final_val_loss, again.final_val_bpb) == (first.final_val_loss, first.final_val_bpb)
