"""Sharded (DCP) checkpoints of FSDP runs: each rank writes its shards, the checkpoint is checksummed and renamed
into place as a whole, it resumes on another number of ranks (one process included) to the same losses, and
load_model / export-hf consolidate it. Multi-node: two torchrun agents meeting over a local c10d rendezvous."""

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ptlab.config import load_config
from ptlab.errors import PtlabError
from ptlab.models import build_model
from ptlab.train.checkpoint import (
    list_checkpoints,
    load_checkpoint_config,
    load_model,
    load_trainer_state,
    verify_checkpoint,
)
from ptlab.train.interop import export_hf
from ptlab.train.loop import pretrain
from ptlab.train.runlog import read_metrics
from ptlab.train.sharded import load_sharded_weights

TOLERANCE = 1e-5


def write_config(directory: Path, small_corpus, tokenizer_dir, **train) -> Path:
    config = {
        "run_dir": str(directory / "run"), "seed": 1,
        "model": {"family": "t5", "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 1},
        "objective": {"name": "span_corruption", "inputs_length": 32},
        "data": {"train_files": [str(small_corpus["train"])], "validation_files": [str(small_corpus["validation"])],
                 "tokenizer": str(tokenizer_dir), "vocab_size": 2000,
                 "shards_dir": str(tokenizer_dir / "shards")},  # built once, read by every run here
        "train": {"max_steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
                  "eval_every": 4, "eval_batches": 1, "checkpoint_every": 4, "precision": "fp32", "threads": 1,
                  "tensorboard": False, "peak_tflops": 1.0, "compile": False, "distributed": "fsdp", **train},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def pretrain_command(config: Path, *overrides: str) -> list[str]:
    return ["-m", "ptlab", "pretrain", "--config", str(config), "--quiet", *overrides]


def run_one_process(config: Path):
    """A one-process run in this process (no torchrun, no process group)."""
    return pretrain(load_config(config, []), show_progress=False)


def run_torchrun(config: Path, processes: int, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *pretrain_command(config, *overrides)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r and "event" not in r}


def assert_same_curve(actual: dict[int, float], expected: dict[int, float], steps) -> None:
    assert sorted(actual) == list(steps)
    for step in steps:
        assert abs(actual[step] - expected[step]) <= TOLERANCE * max(1.0, abs(expected[step])), step


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_corpus, tokenizer_dir) -> Path:
    """An uninterrupted one-process run of 12 steps (safetensors checkpoints at 4, 8 and 12)."""
    directory = tmp_path_factory.mktemp("reference")
    run_one_process(write_config(directory, small_corpus, tokenizer_dir))
    return directory / "run"


def test_two_fsdp_ranks_write_shards_that_one_process_resumes_and_exports(tmp_path, small_corpus, tokenizer_dir,
                                                                           reference):
    config = write_config(tmp_path, small_corpus, tokenizer_dir)
    run_dir = tmp_path / "run"
    # steps 4 and 8 are saved in the background, the final step 12 in the foreground
    result = run_torchrun(config, 2, "train.async_checkpoint=true")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = losses(reference)
    assert_same_curve(losses(run_dir), expected, range(1, 13))

    checkpoints = list_checkpoints(run_dir)
    assert [c.name for c in checkpoints] == ["step_0000004", "step_0000008", "step_0000012"]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert all(verify_checkpoint(c) is None for c in checkpoints)
    shutil.rmtree(checkpoints[-1])  # as if the run had been stopped after step 8 (same schedule as the reference)
    newest = checkpoints[1]
    assert not (newest / "model.safetensors").exists()
    shards = sorted(p.name for p in (newest / "dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own
    recorded = json.loads((newest / "meta.json").read_text())["sha256"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "trainer_state.pt", "config.yaml"} <= set(recorded)
    assert load_trainer_state(newest)["step"] == 8

    # consolidation: the sharded weights at step 8 are the one-process run's weights at step 8
    consolidated = load_model(newest).state_dict()
    single = load_model(reference / "checkpoints" / "step_0000008").state_dict()
    assert consolidated.keys() == single.keys()
    for key in single:
        # Two ranks sum gradients in another order; where a gradient is near zero (an embedding row whose token is
        # rare), Adam's m / sqrt(v) turns that rounding into updates of up to lr (3e-3) a step, so one element
        # in 64,000 has been seen 1.2e-5 away. A misplaced shard would move whole rows by the weights' own scale.
        difference = (consolidated[key] - single[key]).abs()
        assert difference.max() <= 1e-4, key
        assert (difference > 1e-6).float().mean() <= 1e-3, key

    # a new run starts from the sharded checkpoint (init) as it would from the one-process one
    first_losses = []
    for name, source in (("init_sharded", newest), ("init_single", reference / "checkpoints" / "step_0000008")):
        settings = yaml.safe_load(config.read_text())
        del settings["data"]["tokenizer"]
        settings.update(init=str(source), run_dir=str(tmp_path / name))
        settings["train"].update(max_steps=1, eval_every=0, checkpoint_every=0)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(settings))
        pretrain(load_config(tmp_path / f"{name}.yaml", []), show_progress=False)
        first_losses.append(losses(tmp_path / name)[1])
    assert abs(first_losses[0] - first_losses[1]) <= TOLERANCE * first_losses[1]

    # a model of another shape is refused in one line, naming the tensor
    other = load_checkpoint_config(newest).model
    other.d_model = 48
    with pytest.raises(PtlabError, match=r"does not match this model: Size mismatch .*embed"):
        load_sharded_weights(newest, build_model(other))

    # one process resumes the sharded checkpoint (resharded to no sharding at all) and follows the reference
    assert run_one_process(config).resumed_from == 8
    assert_same_curve(losses(run_dir), expected, range(1, 13))
    assert (list_checkpoints(run_dir)[-1] / "model.safetensors").is_file()  # one process writes safetensors

    # export-hf reads the sharded checkpoint too
    exported, _ = export_hf(newest, tmp_path / "hf")
    assert (exported / "model.safetensors").is_file()

    # one damaged shard fails the whole checkpoint's verification
    assert verify_checkpoint(newest) is None
    shard = newest / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "dcp/__1_0.distcp" in verify_checkpoint(newest)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_index_that_would_run_code_is_refused(tmp_path, reference, monkeypatch):
    directory = tmp_path / "evil"
    (directory / "dcp").mkdir(parents=True)
    (directory / "dcp" / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    monkeypatch.chdir(tmp_path)
    model = build_model(load_checkpoint_config(reference).model)
    with pytest.raises(PtlabError, match="os.system|posix.system|unexpected object"):
        load_sharded_weights(directory, model)
    assert not (tmp_path / "pwned").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_follow_the_single_process_curve_and_resume_on_one_or_four(tmp_path, small_corpus, tokenizer_dir,
                                                                             reference):
    """Two torchrun agents, one process each, meet over a c10d rendezvous on localhost as two nodes would. Their
    sharded checkpoint resumes on one process, and on four FSDP ranks (collective load, resharded 2 -> 4)."""
    config = write_config(tmp_path, small_corpus, tokenizer_dir)
    port = free_port()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", f"--node-rank={node}",
                                "--rdzv-id=ptlab-test", *pretrain_command(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
              for node in (0, 1)]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err[-3000:]
    run_dir = tmp_path / "run"
    start = next(r for r in read_metrics(run_dir) if r.get("event") == "start")
    assert start["world_size"] == 2
    expected = losses(reference)
    assert_same_curve(losses(run_dir), expected, range(1, 13))
    checkpoints = list_checkpoints(run_dir)
    assert (checkpoints[1] / "dcp" / "__1_0.distcp").is_file()

    shutil.rmtree(checkpoints[-1])
    four = write_config(tmp_path / "four", small_corpus, tokenizer_dir)
    shutil.copytree(run_dir, tmp_path / "four" / "run")
    result = run_torchrun(four, 4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stderr
    assert_same_curve(losses(tmp_path / "four" / "run"), expected, range(1, 13))

    assert run_one_process(config).resumed_from == 8
    assert_same_curve(losses(run_dir), expected, range(1, 13))
