"""Checkpoints in and out of Hugging Face transformers' `save_pretrained` layout.

    import_hf("hf_dir", "runs/imported")      # config.json + *.safetensors (+ tokenizer.json) -> ptlab checkpoint
    export_hf("runs/t5/checkpoints/step_0002000", "hf_out")   # loadable by transformers' Auto classes

Weights are read and written as safetensors only (never pickle). Both directions write into OUT.tmp and rename.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ptlab.config import Config
from ptlab.data.tokenizer import EXTRA_SPECIALS, PtlabTokenizer, count_sentinels, external_special_ids
from ptlab.errors import PtlabError
from ptlab.models import build_model
from ptlab.models.hf import from_hf_state_dict, hf_config_from_model, model_config_from_hf, to_hf_state_dict
from ptlab.train.checkpoint import load_checkpoint_config, load_model, load_weights, resolve_checkpoint, \
    write_checkpoint


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise PtlabError(f"{path} not found (expected a transformers save_pretrained directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PtlabError(f"{path} line {err.lineno}: invalid JSON ({err.msg})") from None


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    single = directory / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(directory / shard)))
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
    model = build_model(model_cfg)
    load_weights(model, from_hf_state_dict(read_hf_weights(hf_dir), model_cfg), f"{hf_dir} weights")
    tokenizer = None
    if (hf_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        hf_tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        ids = external_special_ids(hf_tokenizer, model_cfg.pad_token_id, model_cfg.eos_token_id)
        tokenizer = PtlabTokenizer(hf_tokenizer, "external", count_sentinels(hf_tokenizer), pad_id=ids["pad"],
                                   eos_id=ids["eos"], unk_id=ids["unk"])
    config = Config(run_dir=str(out_dir), model=model_cfg)
    config.data.tokenizer = str(out_dir)
    return write_checkpoint(out_dir, model, config, tokenizer, replace=False)


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> tuple[Path, list[str]]:
    """An HF model directory (config.json, model.safetensors, tokenizer files) from a ptlab checkpoint; returns
    the directory and notes the user must read."""
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
