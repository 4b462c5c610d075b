"""Continued pre-training (`init:` in a pre-training config): the model and tokenizer come from a ptlab checkpoint
or run directory, or from a Hugging Face model directory (imported into RUN_DIR/init/ first); the optimizer and
the schedule start afresh.

Model keys: those of the init win. A `model` key the config sets (one that differs from the family default) must
equal the init's, or the run stops with a one-line error naming it. The tokenizer is the init's, copied to
RUN_DIR/tokenizer (its shards are built under it); a `data.tokenizer` the config sets must hold the same tokenizer
(the same vocabulary and rules, compared by fingerprint), or the run stops with an error naming both.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ptlab.config import Config, DataConfig, ModelConfig, config_from_dict
from ptlab.data.tokenizer import PtlabTokenizer, load_tokenizer
from ptlab.errors import PtlabError
from ptlab.files import digest_file_ends
from ptlab.train.checkpoint import latest_valid_checkpoint, load_trainer_state, resolve_checkpoint
from ptlab.train.interop import import_hf


@dataclass
class InitSource:
    path: str  # as configured
    checkpoint: Path  # the ptlab checkpoint directory the weights are read from
    sha256: str  # of its model.safetensors

    def record(self) -> dict:
        """What the run's metadata says about where it started."""
        return {"path": self.path, "checkpoint": str(self.checkpoint), "sha256": self.sha256}


def is_hf_directory(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "config.yaml").is_file()


def _imported(hf_dir: Path, run_dir: Path, create: bool) -> Path:
    """RUN_DIR/init/hf-<fingerprint>: the HF model imported once per distinct source."""
    if not (hf_dir / "tokenizer.json").is_file():
        raise PtlabError(f"config key 'init': {hf_dir} has no tokenizer.json, and continued pre-training needs the "
                         "model's tokenizer")
    target = run_dir / "init" / f"hf-{_hf_fingerprint(hf_dir)}"
    if not (target / "model.safetensors").is_file():
        if not create:
            raise PtlabError(f"config key 'init': {target} is missing (rank 0 imports {hf_dir} there)")
        import_hf(hf_dir, target)
    return target


def _hf_fingerprint(hf_dir: Path) -> str:
    """Cheap identity of an HF model directory: its config, and the size and ends of each weights file."""
    digest = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for path in sorted(hf_dir.glob("*.safetensors*")):
        digest_file_ends(digest, path)
    return digest.hexdigest()[:16]


def _weights_sha256(checkpoint: Path) -> str:
    """sha256 of the weights file, as the checkpoint's meta.json records it (a sharded checkpoint has several
    files: then the sha256 of that record of all of them)."""
    try:
        recorded = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError):
        recorded = None
    if isinstance(recorded, dict) and "model.safetensors" in recorded:
        return recorded["model.safetensors"]
    if isinstance(recorded, dict):
        return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256()
    with open(checkpoint / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def set_model_keys(mine: ModelConfig) -> dict:
    """The model keys a config sets: those that differ from the defaults of its family."""
    default = ModelConfig(family=mine.family)
    default.validate()
    keys = {f.name: getattr(mine, f.name) for f in dataclasses.fields(ModelConfig)
            if getattr(mine, f.name) != getattr(default, f.name)}
    if mine.family != ModelConfig.family:
        keys["family"] = mine.family
    return keys


def adopt_model(cfg: Config, init_model: ModelConfig, source: str) -> None:
    """cfg.model becomes the init's, after checking that every key the config sets agrees with it."""
    for key, value in set_model_keys(cfg.model).items():
        if getattr(init_model, key) != value:
            raise PtlabError(f"config key 'model.{key}': {value!r} conflicts with the init model's "
                             f"{getattr(init_model, key)!r} ({source}); the model comes from init, so leave "
                             f"model.{key} unset")
    cfg.model = copy.deepcopy(init_model)


def check_configured_tokenizer(cfg: Config, init_tokenizer: PtlabTokenizer, source: str) -> None:
    """A `data.tokenizer` set beside `init` is fine when it is the init's own tokenizer (a config naming the
    tokenizer its checkpoint was trained with); any other would build shards the model cannot read."""
    configured = cfg.data.tokenizer
    if configured in (DataConfig.tokenizer, str(Path(cfg.run_dir) / "tokenizer")):  # unset, or the run's own copy
        return
    if not (Path(configured) / "tokenizer.json").is_file():
        raise PtlabError(f"config key 'data.tokenizer': {configured} holds no tokenizer.json, and the tokenizer "
                         f"comes from init ({source}); leave data.tokenizer unset")
    mine, theirs = load_tokenizer(configured).fingerprint(), init_tokenizer.fingerprint()
    if mine != theirs:
        raise PtlabError(f"config key 'data.tokenizer': {configured} (fingerprint {mine}) is not the tokenizer of "
                         f"init {source} (fingerprint {theirs}); leave data.tokenizer unset to use the init's")


def _resumed_without_source(cfg: Config, run_dir: Path) -> InitSource:
    """A run whose init has gone since it started resumes from its own checkpoint, which holds everything the
    init gave it (the model's config, and the tokenizer copied into the run)."""
    checkpoint = latest_valid_checkpoint(run_dir)
    started = load_trainer_state(checkpoint)["data"].get("init") if checkpoint is not None else None
    if started is None or started.get("path") != cfg.init or not (run_dir / "tokenizer" / "tokenizer.json").is_file():
        raise PtlabError(f"config key 'init': {cfg.init} does not exist")
    own = config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8")))
    adopt_model(cfg, own.model, str(checkpoint))
    check_configured_tokenizer(cfg, load_tokenizer(run_dir / "tokenizer"), cfg.init)
    cfg.data.tokenizer = str(run_dir / "tokenizer")
    print(f"ptlab: note: init {cfg.init} is gone; {run_dir} resumes from its own checkpoint", file=sys.stderr)
    return InitSource(started["path"], Path(started["checkpoint"]), started["sha256"])


def prepare_init(cfg: Config, create: bool = True, resuming: bool = False) -> InitSource:
    """Resolve `cfg.init`, take its model into `cfg.model` and its tokenizer into RUN_DIR/tokenizer (pointing
    `cfg.data.tokenizer` there). `create`: this process may write (rank 0); others only read what it wrote.
    `resuming`: the run has checkpoints to resume from, which serve when the init itself has gone."""
    path, run_dir = Path(cfg.init), Path(cfg.run_dir)
    if not path.exists():
        if resuming:
            return _resumed_without_source(cfg, run_dir)
        raise PtlabError(f"config key 'init': {path} does not exist")
    checkpoint = _imported(path, run_dir, create) if is_hf_directory(path) else resolve_checkpoint(path)
    init_cfg = config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8")))
    adopt_model(cfg, init_cfg.model, str(path))
    tokenizer_dir = run_dir / "tokenizer"
    if create:
        tokenizer = load_tokenizer(checkpoint)
        check_configured_tokenizer(cfg, tokenizer, str(path))
        current = tokenizer_dir / "tokenizer.json"
        if not current.is_file() or load_tokenizer(tokenizer_dir).fingerprint() != tokenizer.fingerprint():
            tokenizer.save(tokenizer_dir)
    cfg.data.tokenizer = str(tokenizer_dir)
    return InitSource(cfg.init, checkpoint, _weights_sha256(checkpoint))
