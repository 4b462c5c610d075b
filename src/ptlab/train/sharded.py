"""Sharded checkpoints of FSDP runs: a `torch.distributed.checkpoint` (DCP) folder inside the checkpoint directory.

    step_0001000/dcp/.metadata          which rank's file holds which slice of each tensor
    step_0001000/dcp/__R_0.distcp       what rank R held: {"model": ..., "optimizer": ...}

Each rank writes its own shards and reads back whatever slices its own layout needs, so a checkpoint written on
N ranks resumes on M ranks, or on one process without a process group (loading the full tensors: the
consolidation `load_model` and `export-hf` use).

DCP pickles its `.metadata` and the non-tensor values it stores (optimizer hyperparameters). Both are read here
without running arbitrary code: the metadata with an unpickler that knows only DCP's own metadata classes, the
values with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._nested_dict import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.utils import CheckpointException
from torch.utils._pytree import tree_map

from ptlab.errors import PtlabError

DCP_DIR = "dcp"
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                     ("torch.serialization", "_get_layout"), ("torch", "Size"),
                     ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
                     ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict")}


def is_sharded(directory: str | Path) -> bool:
    return (Path(directory) / DCP_DIR / ".metadata").is_file()


class _MetadataUnpickler(pickle.Unpickler):
    """Rebuilds DCP's metadata dataclasses, torch sizes and dtypes; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_GLOBALS or module in _METADATA_MODULES:
            found = getattr(__import__(module, fromlist=[name]), name, None)
            if (module, name) in _METADATA_GLOBALS or (isinstance(found, type) and found.__module__ == module):
                return found  # only the module's own classes, not what it imported
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            try:
                metadata = _MetadataUnpickler(stream).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
                raise PtlabError(f"{path} is not a readable checkpoint index: {err}") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's view (its shards under FSDP) of model and optimizer, keyed by parameter name."""
    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, process_group=None,
                 asynchronous: bool = False) -> Future | None:
    """Every rank calls this: each writes its shards to DIRECTORY/dcp, rank 0 the index once all have written.
    Asynchronous, the state is copied to host memory before this returns and written in a background thread;
    the returned future completes when the index is written."""
    writer = FileSystemWriter(Path(directory) / DCP_DIR)
    state = _training_state(model, optimizer)
    if asynchronous:
        # The writer's staging keeps tensors that already live in host memory as they are: without a copy the
        # background write reads weights that the next steps are changing (torn checkpoints on CPU runs).
        state = tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) and x.device.type == "cpu"
                         else x, state)
        return dcp.async_save(state, storage_writer=writer, process_group=process_group)
    dcp.save(state, storage_writer=writer, process_group=process_group)
    return None


def _load(directory: Path, state: dict, no_dist: bool) -> None:
    reader = _SafeReader(Path(directory) / DCP_DIR)
    try:
        reader.read_metadata()  # checked here: inside dcp.load a bad index is logged with tracebacks, then retried
    except OSError as err:
        raise PtlabError(f"{directory}/{DCP_DIR}: {err.strerror or err}") from None
    try:
        with warnings.catch_warnings():  # DCP warns that it assumes one process without a group: that is the point
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, storage_reader=reader, planner=_SafeLoadPlanner(), no_dist=no_dist)
    except CheckpointException as err:  # each rank's exception, with its traceback
        failures = [failure[0] if isinstance(failure, tuple) else failure for failure in err.failures.values()]
        reasons = "; ".join(dict.fromkeys(str(failure).splitlines()[0][:300] for failure in failures))
        raise PtlabError(f"{directory}/{DCP_DIR} does not match this model: {reasons}") from None
    except RuntimeError as err:  # a missing key is raised before any rank reads
        raise PtlabError(f"{directory}/{DCP_DIR} does not match this model: {str(err).splitlines()[0]}") from None


def host_snapshot(state):
    """STATE (nested dicts and lists) with every tensor copied to host memory, for a background write: without a
    copy it would read weights and moments that the next steps are changing."""
    return tree_map(lambda x: x.detach().to("cpu", copy=True) if isinstance(x, torch.Tensor) else x, state)


class BackgroundSaves:
    """Checkpoints written while training goes on, one at a time. The state is copied to host memory before
    `start` (sharded, every rank) or `start_writing` (the full state, one process) returns; `commit` (rank 0
    renaming the checkpoint into place) runs once every rank's shards are written, at the next save or at `wait`.
    Sharded background writes talk over a process group of their own, so their collectives never interleave with
    the training step's."""

    def __init__(self) -> None:
        self.future: Future | None = None
        self.commit: Callable[[], None] = lambda: None
        self.group = None
        self.thread: ThreadPoolExecutor | None = None

    def start_writing(self, write: Callable[[], object]) -> None:
        """Run WRITE (which must only read host copies) in a background thread."""
        self.wait()
        if self.thread is None:
            self.thread = ThreadPoolExecutor(1, thread_name_prefix="ptlab-checkpoint")
        self.future = self.thread.submit(write)

    def start(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
              commit: Callable[[], None]) -> None:
        self.wait()
        if self.group is None:
            self.group = dist.new_group(backend="gloo")  # async DCP saves need a CPU backend, even on GPUs
        self.future = save_sharded(directory, model, optimizer, self.group, asynchronous=True)
        self.commit = commit

    def wait(self) -> None:
        future, commit = self.future, self.commit
        self.future, self.commit = None, lambda: None
        if future is not None:
            future.result()
            commit()


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank calls this: model and optimizer resume from a DCP checkpoint in whatever layout they have now
    (FSDP on any number of ranks, DDP, or one process)."""
    state = _training_state(model, optimizer)  # also creates the optimizer's state so there is room to load into
    _load(directory, state, no_dist=not dist.is_initialized())
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_sharded_weights(directory: Path, model: nn.Module) -> None:
    """The full weights of a DCP checkpoint into an unsharded model, in this process alone."""
    state = {"model": get_model_state_dict(model)}
    _load(directory, state, no_dist=True)
    set_model_state_dict(model, state["model"])
