"""Checkpoints in and out of Hugging Face transformers' `save_pretrained` layout.

    import_hf("hf_dir", "runs/imported")      # config.json + *.safetensors (+ tokenizer.json) -> ptlab checkpoint
    export_hf("runs/t5/checkpoints/step_0002000", "hf_out")   # loadable by transformers' Auto classes, with a
                                                              # model card (README.md, see ptlab.train.model_card)

Weights are read and written as safetensors only (never pickle). Both directions write into OUT.tmp and rename.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ptlab.config import Config
from ptlab.data.tokenizer import EXTRA_SPECIALS, PtlabTokenizer, count_sentinels, external_special_ids
from ptlab.errors import PtlabError
from ptlab.files import read_json_object
from ptlab.models import build_model, count_parameters
from ptlab.models.hf import from_hf_state_dict, hf_config_from_model, model_config_from_hf, to_hf_state_dict
from ptlab.models.size import check_fits_weights
from ptlab.train.checkpoint import (
    load_checkpoint_config,
    load_model,
    load_weights,
    read_safetensors,
    resolve_checkpoint,
    write_checkpoint,
)
from ptlab.train.model_card import model_card


def _read_json(path: Path) -> dict:
    """A JSON object from a file; anything else (missing, not UTF-8, malformed, a list) is a one-line error."""
    if not path.is_file():
        raise PtlabError(f"{path} not found (expected a transformers save_pretrained directory)")
    return read_json_object(path)


def _shard_files(directory: Path, index: Path) -> list[Path]:
    """The files a sharded checkpoint's index names; each must be a file inside `directory`."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise PtlabError(f"{index}: 'weight_map' must be a non-empty object of tensor name -> file")
    root = directory.resolve()
    shards = []
    for name in sorted({str(v) for v in weight_map.values()}):
        path = (directory / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise PtlabError(f"{index}: shard {name!r} is outside {directory}")
        if not path.is_file():
            raise PtlabError(f"{index}: shard {name!r} not found")
        shards.append(path)
    return shards


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    single = directory / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in _shard_files(directory, index):
            state.update(read_safetensors(shard))
        return state
    if any(directory.glob("*.bin")):
        raise PtlabError(f"{directory} holds only pickle-based *.bin weights, which ptlab does not load (unsafe); "
                         "re-save them with save_pretrained(..., safe_serialization=True)")
    raise PtlabError(f"{directory} has no model.safetensors (or model.safetensors.index.json)")


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """A ptlab checkpoint directory from an HF model directory; returns its path."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    hf_config = _read_json(hf_dir / "config.json")
    model_cfg = model_config_from_hf(hf_config)
    hf_state = read_hf_weights(hf_dir)
    # Checked before the model is allocated: a config.json asking for a billion-wide head is refused, not built.
    check_fits_weights(model_cfg, sum(t.numel() * t.element_size() for t in hf_state.values()),
                       f"{hf_dir}/config.json")
    model = build_model(model_cfg)
    try:
        state = from_hf_state_dict(hf_state, model_cfg)
    except (RuntimeError, IndexError) as err:  # a tensor of the wrong rank for its name
        raise PtlabError(f"{hf_dir} weights do not match config.json ({err})") from None
    load_weights(model, state, f"{hf_dir} weights")
    tokenizer = None
    if (hf_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            hf_tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        except Exception as err:  # the tokenizers library raises plain Exceptions for malformed files
            raise PtlabError(f"{hf_dir}/tokenizer.json: not a valid tokenizer ({err})") from None
        ids = external_special_ids(hf_tokenizer, model_cfg.pad_token_id, model_cfg.eos_token_id)
        if ids["eos"] is None or any(hf_tokenizer.id_to_token(i) is None for i in ids.values()):
            raise PtlabError(f"{hf_dir}/tokenizer.json: no end-of-sequence token, or a special id outside it")
        tokenizer = PtlabTokenizer(hf_tokenizer, "external", count_sentinels(hf_tokenizer), pad_id=ids["pad"],
                                   eos_id=ids["eos"], unk_id=ids["unk"])
    config = Config(run_dir=str(out_dir), model=model_cfg)
    config.data.tokenizer = str(out_dir)
    return write_checkpoint(out_dir, model, config, tokenizer, replace=False)


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> tuple[Path, list[str]]:
    """An HF model directory (config.json, model.safetensors, tokenizer files, README.md) from a ptlab checkpoint;
    returns the directory and notes the user must read (the model card repeats them)."""
    directory = resolve_checkpoint(checkpoint)
    cfg = load_checkpoint_config(directory).model
    hf_config, notes = hf_config_from_model(cfg)
    model = load_model(directory)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise PtlabError(f"{out_dir} already exists; choose a new directory")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(to_hf_state_dict(model.state_dict(), cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    generation = {k: hf_config[k] for k in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")
                  if hf_config.get(k) is not None}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    if (directory / "tokenizer.json").is_file():
        _export_tokenizer(directory, tmp, cfg)
    card = model_card(directory, cfg, count_parameters(model, trainable_only=False), notes)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    os.replace(tmp, out_dir)
    return out_dir, notes


def _export_tokenizer(directory: Path, out: Path, cfg) -> None:
    """tokenizer.json plus the small files `AutoTokenizer` reads for special tokens."""
    from tokenizers import Tokenizer

    shutil.copyfile(directory / "tokenizer.json", out / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    names = {"pad_token": cfg.pad_token_id, "eos_token": cfg.eos_token_id, "bos_token": cfg.bos_token_id}
    special = {k: tokenizer.id_to_token(v) for k, v in names.items() if v is not None}
    if tokenizer.token_to_id("<unk>") is not None:
        special["unk_token"] = "<unk>"
    if tokenizer.token_to_id("<mask>") is not None:
        special["mask_token"] = "<mask>"
    extra = [t for t in tokenizer.get_vocab(with_added_tokens=True)
             if t.startswith("<extra_id_") or (t in EXTRA_SPECIALS and t != "<mask>")]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
              "additional_special_tokens": sorted(extra, key=tokenizer.token_to_id)}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
