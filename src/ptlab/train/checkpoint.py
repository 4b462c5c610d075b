"""Checkpoints: a directory per save, written under a temporary name and renamed into place.

    RUN_DIR/checkpoints/step_0001000/
        model.safetensors       weights (no pickle)
        config.yaml             the full run config (model.vocab_size filled in)
        tokenizer.json, ptlab_tokenizer.json
        trainer_state.pt        step, optimizer (keyed by parameter name, so any number of ranks can resume it),
                                scheduler, RNG states, data position and fingerprints (loaded with weights_only)
        meta.json               step, metrics at save time, sha256 of every file

An FSDP run on several ranks saves `dcp/` (model and optimizer, each rank writing its own shards: see
`ptlab.train.sharded`) in place of model.safetensors and the optimizer; everything else is the same, and meta.json
covers the files under `dcp/` too.

A checkpoint whose files do not match their checksums (a crash mid-copy, a truncated disk) is skipped with a
warning in favour of the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ptlab.config import Config, config_from_dict, read_yaml, save_config
from ptlab.data.tokenizer import PtlabTokenizer, load_tokenizer
from ptlab.errors import PtlabError, one_line
from ptlab.train.sharded import is_sharded, load_sharded_weights

CHECKPOINTS = "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, no `torch.compile` prefixes, shared weights (a shared encoder-decoder's blocks)
    stored once under their first name."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        identity = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and identity in seen:
            continue
        seen.add(identity)
        state[key.replace("_orig_mod.", "")] = tensor.detach().to("cpu").contiguous()
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a saved state dict strictly, accepting the names of shared weights that were stored once."""
    live = model.state_dict()
    for key, tensor in state.items():
        if key in live and tuple(tensor.shape) != tuple(live[key].shape):
            raise PtlabError(f"{source} does not match its config: {key} has shape {tuple(tensor.shape)}, the config "
                             f"implies {tuple(live[key].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    stored = {live[k].data_ptr() for k in state if k in live}
    missing = [k for k in missing if live[k].data_ptr() not in stored]
    if missing or unexpected:
        raise PtlabError(f"{source} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")


def staging_dir(target: str | Path) -> Path:
    """Where a checkpoint is built before it is renamed to TARGET (never listed as a checkpoint)."""
    target = Path(target)
    return target.with_name(target.name + ".tmp")


def start_checkpoint(target: str | Path) -> Path:
    """An empty staging directory for TARGET (a leftover one from a crash is discarded)."""
    tmp = staging_dir(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(target: str | Path, config: Config, tokenizer: PtlabTokenizer | None, step: int = 0,
                      trainer_state: dict | None = None, metrics: dict | None = None) -> Path:
    """Add config, tokenizer and trainer state to TARGET's staging directory, checksum every file in it (sub-folders
    included), fsync, and rename it into place: readers see the whole checkpoint or none of it."""
    target = Path(target)
    tmp = staging_dir(target)
    save_config(config, tmp / "config.yaml")
    if tokenizer is not None:
        tokenizer.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    meta = {"step": step, "metrics": metrics or {}, "sha256": files}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        else:
            _fsync_dir(path)
    _fsync_dir(tmp)
    if target.exists():
        remove_checkpoint(target)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def remove_checkpoint(directory: Path) -> None:
    """Delete a checkpoint so that no reader ever lists it half-deleted: it is renamed out of the listing first
    (a kill mid-delete leaves a `.deleting` folder, removed by the next prune)."""
    doomed = directory.with_name(directory.name + ".deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(directory, doomed)
    _fsync_dir(directory.parent)
    shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def failed_writes_named(target: str | Path, run_dir: str | Path | None = None):
    """An OSError while writing TARGET (a full disk, a lost mount) becomes one line naming it and, for a run's
    checkpoint, the one still to resume from; the partial staging directory is removed, so nothing half-written
    is left."""
    try:
        yield
    except OSError as err:
        shutil.rmtree(staging_dir(target), ignore_errors=True)
        reason = err.strerror or str(err) or type(err).__name__
        message = f"could not write the checkpoint {target}: {reason}"
        if run_dir is not None:
            kept = [c for c in list_checkpoints(run_dir) if c != Path(target)]
            message += f"; the last good checkpoint, {kept[-1]}, is kept" if kept else "; no earlier checkpoint exists"
        raise PtlabError(message) from None


def write_checkpoint(target: str | Path, weights: nn.Module | dict[str, torch.Tensor], config: Config,
                     tokenizer: PtlabTokenizer | None, step: int = 0, trainer_state: dict | None = None,
                     metrics: dict | None = None, replace: bool = True, run_dir: str | Path | None = None) -> Path:
    """Write a checkpoint directory atomically: built under TARGET.tmp, fsynced, renamed into place. A write that
    fails (full disk) is a one-line error naming the last good checkpoint of RUN_DIR."""
    target = Path(target)
    if target.exists() and not replace:
        raise PtlabError(f"{target} already exists; choose a new directory")
    state = state_dict_for_saving(weights) if isinstance(weights, nn.Module) else weights
    with failed_writes_named(target, run_dir):
        tmp = start_checkpoint(target)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        return finish_checkpoint(target, config, tokenizer, step, trainer_state, metrics)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def prune_checkpoints(run_dir: str | Path, keep: int | None) -> None:
    """Delete all but the newest `keep` checkpoints (all kept when keep is None or 0)."""
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            remove_checkpoint(old)
        for leftover in (Path(run_dir) / CHECKPOINTS).glob("*.deleting"):  # a kill mid-delete
            shutil.rmtree(leftover, ignore_errors=True)


def save_checkpoint(run_dir: str | Path, step: int, weights: nn.Module | dict[str, torch.Tensor], config: Config,
                    tokenizer: PtlabTokenizer, trainer_state: dict | None = None, metrics: dict | None = None,
                    keep: int | None = None) -> Path:
    """RUN_DIR/checkpoints/step_NNNNNNN, written atomically; then only the newest `keep` checkpoints remain."""
    path = write_checkpoint(checkpoint_dir(run_dir, step), weights, config, tokenizer, step, trainer_state,
                            metrics, run_dir=run_dir)
    prune_checkpoints(run_dir, keep)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Completed checkpoint directories of a run, oldest first (unfinished `.tmp` ones excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    return sorted(root.glob("step_*[0-9]")) if root.is_dir() else []


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on the CPU); a truncated, foreign or unreadable file is a one-line error."""
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise PtlabError(f"{path}: not a readable safetensors file ({one_line(str(err))[:200]})") from None


def verify_checkpoint(directory: Path) -> str | None:
    """What is wrong with a checkpoint directory, or None when every file matches its recorded checksum."""
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        expected = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "meta.json is missing or unreadable"
    if not isinstance(expected, dict):
        return "meta.json is unreadable (sha256 is not a mapping)"
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


def latest_valid_checkpoint(run_dir: str | Path, warn=None) -> Path | None:
    """The newest checkpoint that verifies; each broken newer one is reported through `warn`."""
    for candidate in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(candidate)
        if problem is None:
            return candidate
        if warn is not None:
            warn(f"skipping checkpoint {candidate}: {problem}")
    return None


TRAINER_STATE_KEYS = ("step", "optimizer", "rng", "progress", "data")  # what the trainer saves and resumes from


def load_trainer_state(directory: str | Path) -> dict:
    path = Path(directory) / "trainer_state.pt"
    if not path.is_file():
        raise PtlabError(f"{path} not found: this checkpoint holds weights only and cannot resume training")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # a sharded checkpoint keeps the optimizer with the weights, in dcp/
    missing = [key for key in TRAINER_STATE_KEYS if key not in state and not (key == "optimizer"
                                                                              and is_sharded(directory))]
    if missing:
        raise PtlabError(f"{path} lacks {', '.join(missing)} (written by an earlier ptlab): it cannot be resumed; "
                         "start afresh with --restart or another run_dir")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest checkpoint that verifies)."""
    path = Path(path)
    if (path / "model.safetensors").is_file() or is_sharded(path):
        return path
    latest = latest_valid_checkpoint(path, warn=lambda message: print(f"ptlab: warning: {message}",
                                                                        file=sys.stderr))
    if latest is None:
        raise PtlabError(f"no checkpoint at {path} (expected model.safetensors, dcp/ or {CHECKPOINTS}/step_*)")
    return latest


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A ready model (eval mode) from a checkpoint directory or a run directory."""
    from ptlab.models import build_model
    from ptlab.models.size import check_fits_weights

    directory = resolve_checkpoint(path)
    if (directory / "meta.json").exists():  # a run directory's pick was verified; a checkpoint named directly too
        problem = verify_checkpoint(directory)
        if problem is not None:
            raise PtlabError(f"checkpoint {directory} is damaged: {problem}")
    config = load_checkpoint_config(directory)
    if config.model.vocab_size is None:
        raise PtlabError(f"{directory}/config.yaml: model.vocab_size is not set")
    if not is_sharded(directory):
        weights = directory / "model.safetensors"
        check_fits_weights(config.model, weights.stat().st_size, str(weights))
    model = build_model(config.model)
    if is_sharded(directory):  # consolidated here: every shard's slice of each tensor into the full model
        load_sharded_weights(directory, model)
    else:
        load_weights(model, read_safetensors(directory / "model.safetensors"), f"{directory}/model.safetensors")
    return model.to(device).eval()


def load_checkpoint_config(directory: str | Path) -> Config:
    directory = resolve_checkpoint(directory)
    return config_from_dict(read_yaml(directory / "config.yaml"))


def load_checkpoint_tokenizer(path: str | Path) -> PtlabTokenizer:
    return load_tokenizer(resolve_checkpoint(path))
