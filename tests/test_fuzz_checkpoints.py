"""Property-based tests of loading checkpoints and importing Hugging Face directories: a valid tiny checkpoint (or
HF directory) with one file corrupted must load the very same weights or be refused in one line, never load
silently changed weights, never allocate what the files cannot hold, and an import that fails leaves nothing."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from fuzz_strategies import (
    BYTES,
    ODD_INTS,
    VALUES,
    accepted_or_refused,
    assert_cli_error_is_one_line,
    examples,
    leftovers,
    run_cli,
    time_limit,
)
from hypothesis import given
from hypothesis import strategies as st

from ptlab.config import Config, ModelConfig
from ptlab.data.tokenizer import train_tokenizer
from ptlab.errors import PtlabError
from ptlab.models import build_model
from ptlab.train.checkpoint import load_model, write_checkpoint
from ptlab.train.interop import export_hf, import_hf

FAMILIES = ("t5", "bart", "gpt2", "llama")
FILES = ("model.safetensors", "config.yaml", "tokenizer.json", "ptlab_tokenizer.json", "meta.json")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Per family: a tiny checkpoint, its weights, and the same model exported as an HF directory."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("originals")
    tokenizer = train_tokenizer(["the cat sat on the mat. a dog ran after it!"] * 20, "unigram", 400, 4,
                                show_progress=False)
    out = {}
    for family in FAMILIES:
        specials = tokenizer.specials
        model_cfg = ModelConfig(family=family, vocab_size=tokenizer.vocab_size, d_model=16, d_ff=32, num_heads=2,
                                num_layers=1, max_position_embeddings=64, pad_token_id=specials.pad,
                                eos_token_id=specials.eos, bos_token_id=specials.eos if family != "t5" else None)
        model_cfg.validate()
        model = build_model(model_cfg)
        checkpoint = write_checkpoint(root / family, model, Config(model=model_cfg), tokenizer)
        hf_dir, _ = export_hf(checkpoint, root / f"{family}-hf")
        out[family] = (checkpoint, hf_dir, {k: v.clone() for k, v in load_model(checkpoint).state_dict().items()})
    return out


def _copy(source: Path, tmp: Path) -> Path:
    target = tmp / source.name
    shutil.copytree(source, target)
    return target


def _same_weights(model, expected: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


def _rechecksum(directory: Path) -> None:
    """Make meta.json agree with the (corrupted) files, as if the damage had happened before it was written."""
    meta = json.loads((directory / "meta.json").read_text())
    meta["sha256"] = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
                      for name in meta["sha256"] if (directory / name).is_file()}
    (directory / "meta.json").write_text(json.dumps(meta))


CORRUPTIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**7), st.none()),
    st.tuples(st.just("replace"), st.one_of(BYTES, st.just(pickle.dumps({"weight": [1, 2, 3]}))), st.none()),
    st.tuples(st.just("delete"), st.none(), st.none()),
    st.tuples(st.just("directory"), st.none(), st.none()),
)
CONFIG_EDITS = st.tuples(st.sampled_from(["model.d_model", "model.d_kv", "model.vocab_size", "model.num_layers",
                                          "model.family", "model.num_heads", "model.d_ff", "model.tie_word_embeddings",
                                          "model.feed_forward", "model", "run_dir", "seed"]),
                         st.one_of(VALUES, ODD_INTS, st.just("!!python/object/apply:os.system ['true']")))


def _corrupt(path: Path, corruption) -> None:
    kind, a, b = corruption
    if kind == "flip":
        data = bytearray(path.read_bytes())
        if data:
            data[a % len(data)] ^= 1 << b
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[:a % (len(data) + 1)])
    elif kind == "replace":
        path.write_bytes(a)
    elif kind == "delete":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()


@examples(60)
@given(family=st.sampled_from(FAMILIES), name=st.one_of(st.just("model.safetensors"), st.sampled_from(FILES)),
       corruption=CORRUPTIONS, rechecksum=st.booleans())
def test_a_corrupted_checkpoint_loads_the_same_weights_or_is_refused(originals, tmp_path_factory, family, name,
                                                                    corruption, rechecksum):
    checkpoint, _, weights = originals[family]
    directory = _copy(checkpoint, tmp_path_factory.mktemp("ckpt"))
    before = (directory / name).read_bytes()
    _corrupt(directory / name, corruption)
    changed = not (directory / name).is_file() or (directory / name).read_bytes() != before
    if rechecksum and name != "meta.json" and (directory / "meta.json").is_file():
        _rechecksum(directory)
    with time_limit(20, f"loading {family} with {name} corrupted by {corruption[0]}"):
        ok, model = accepted_or_refused(load_model, directory)
    if ok and not rechecksum and name in ("model.safetensors", "config.yaml"):
        assert not changed, "a damaged checkpoint loaded although meta.json records its checksums"
    if ok and not (rechecksum and name == "model.safetensors"):
        assert _same_weights(model, weights)


@examples(40)
@given(family=st.sampled_from(FAMILIES), edit=CONFIG_EDITS)
def test_a_config_that_does_not_match_the_weights_is_refused(originals, tmp_path_factory, family, edit):
    checkpoint, _, weights = originals[family]
    directory = _copy(checkpoint, tmp_path_factory.mktemp("ckpt"))
    key, value = edit
    config = yaml.safe_load((directory / "config.yaml").read_text())
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    text = yaml.safe_dump(config)
    if isinstance(value, str) and value.startswith("!!python"):
        text = text.replace(f"'{value}'", value)
    (directory / "config.yaml").write_text(text)
    _rechecksum(directory)
    with time_limit(20, f"loading {family} with {key}={value!r}"):
        ok, model = accepted_or_refused(load_model, directory)
    if ok:
        assert _same_weights(model, weights)


@examples(30)
@given(family=st.sampled_from(FAMILIES), name=st.sampled_from(["model.safetensors", "config.yaml", "tokenizer.json"]),
       position=st.integers(0, 10**7), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(originals, tmp_path_factory, family, name, position, bit):
    checkpoint, _, _ = originals[family]
    directory = _copy(checkpoint, tmp_path_factory.mktemp("ckpt"))
    _corrupt(directory / name, ("flip", position, bit))
    with pytest.raises(PtlabError, match="checksum"):
        load_model(directory)


OPTIONS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["--max-new-tokens", "--num-beams", "--top-k", "--num-samples", "--seed"]),
              st.sampled_from(["0", "-1", "1", "2", "3", "100", "x", "1e3"])),
    st.tuples(st.sampled_from(["--temperature", "--top-p", "--length-penalty"]),
              st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e-30", "0.5", "1", "2", "1e30"])),
    st.tuples(st.sampled_from(["--sample", "--no-cache", "--show-special"]), st.none())), max_size=4)


@examples(12)
@given(family=st.sampled_from(FAMILIES), damage=st.one_of(st.none(), st.tuples(st.sampled_from(FILES), CORRUPTIONS)),
       prompt=st.text(max_size=10), options=OPTIONS)
def test_generate_never_prints_a_traceback(originals, tmp_path_factory, family, damage, prompt, options):
    checkpoint, _, _ = originals[family]
    directory = _copy(checkpoint, tmp_path_factory.mktemp("ckpt"))
    if damage is not None:
        _corrupt(directory / damage[0], damage[1])
    argv = ["generate", str(directory), "--prompt", prompt]
    for flag, value in options:
        argv += [flag] if value is None else [flag, value]
    with time_limit(60, " ".join(argv)):
        code, _, stderr = run_cli(argv)
    assert code in (0, 2), stderr
    assert_cli_error_is_one_line(code, stderr)


HF_CONFIG_KEYS = ["model_type", "vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers", "n_embd",
                  "n_head", "n_layer", "n_positions", "hidden_size", "num_attention_heads", "head_dim",
                  "intermediate_size", "num_hidden_layers", "num_key_value_heads", "rope_scaling", "rope_parameters",
                  "rope_theta", "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
                  "decoder_ffn_dim", "encoder_layers", "decoder_layers", "max_position_embeddings",
                  "feed_forward_proj", "tie_word_embeddings", "pad_token_id", "eos_token_id", "layer_norm_epsilon",
                  "rms_norm_eps", "activation_function", "hidden_act"]
HF_CORRUPTIONS = st.one_of(
    st.tuples(st.just("config key"), st.sampled_from(HF_CONFIG_KEYS),
              st.one_of(VALUES, ODD_INTS, st.just(10**9), st.just(5), st.just({"rope_type": "linear"}))),
    st.tuples(st.just("config drop"), st.sampled_from(HF_CONFIG_KEYS), st.none()),
    st.tuples(st.just("config file"), st.one_of(BYTES, st.sampled_from([b"[]", b"null", b"5", b'"x"', b"{}",
                                                                         b"\xff\xfe{}"])), st.none()),
    st.tuples(st.just("weights"), CORRUPTIONS, st.none()),
    st.tuples(st.just("index"), st.one_of(VALUES, st.sampled_from(
        [{}, {"weight_map": {}}, {"weight_map": {"a": "../../etc/passwd"}}, {"weight_map": {"a": "/etc/passwd"}},
         {"weight_map": {"a": "."}}, {"weight_map": {"a": "model-1.safetensors"}}, {"weight_map": []},
         {"weight_map": {"a": "missing.safetensors"}}])), st.none()),
    st.tuples(st.just("tokenizer"), BYTES, st.none()),
)


@examples(60)
@given(family=st.sampled_from(FAMILIES), corruption=HF_CORRUPTIONS)
def test_import_hf_gives_a_loadable_checkpoint_or_fails_leaving_nothing(originals, tmp_path_factory, family,
                                                                       corruption):
    _, hf_source, weights = originals[family]
    tmp = tmp_path_factory.mktemp("hf")
    hf_dir = _copy(hf_source, tmp)
    kind, a, _ = corruption
    if kind in ("config key", "config drop"):
        config = json.loads((hf_dir / "config.json").read_text())
        if kind == "config key":
            config[a] = corruption[2]
        else:
            config.pop(a, None)
        (hf_dir / "config.json").write_text(json.dumps(config))
    elif kind == "config file":
        (hf_dir / "config.json").write_bytes(a)
    elif kind == "weights":
        _corrupt(hf_dir / "model.safetensors", a)
    elif kind == "index":  # a sharded layout: the weights moved to a shard that the index may or may not name
        (hf_dir / "model.safetensors").rename(hf_dir / "model-1.safetensors")
        (hf_dir / "model.safetensors.index.json").write_text(json.dumps(a))
    else:
        (hf_dir / "tokenizer.json").write_bytes(a)
    out = tmp / "imported"
    with time_limit(20, f"importing {family} with {kind} {a!r}"[:200]):
        ok, _ = accepted_or_refused(import_hf, hf_dir, out)
    assert leftovers(tmp) == []
    if ok:
        model = load_model(out)
        if kind in ("tokenizer", "config drop", "config file") or (kind == "index"):
            assert _same_weights(model, weights)
    else:
        assert not out.exists()


@examples(40)
@given(family=st.sampled_from(FAMILIES), heads=st.integers(1, 4), head_size=st.integers(1, 8),
       buckets=st.integers(1, 40), d_ff=st.integers(1, 64), layers=st.integers(1, 3),
       decoder_layers=st.one_of(st.none(), st.integers(1, 3)),
       vocab=st.integers(1, 500), positions=st.integers(1, 64), kv_divisor=st.sampled_from([1, 2, 4]),
       shared=st.booleans(), relu=st.booleans())
def test_the_size_check_never_refuses_a_real_model(family, heads, head_size, buckets, d_ff, layers, decoder_layers,
                                                   vocab, positions, kv_divisor, shared, relu):
    """The bound the size check uses must stay below the real parameter count of every valid config (counted on
    the meta device, nothing allocated), or a genuine checkpoint would be refused."""
    from ptlab.models import count_parameters
    from ptlab.models.size import minimum_parameters

    cfg = ModelConfig(family=family, vocab_size=vocab, d_model=heads * head_size, d_ff=d_ff, num_heads=heads,
                      num_layers=layers, max_position_embeddings=positions, relative_attention_num_buckets=buckets,
                      num_kv_heads=heads // kv_divisor if family == "llama" and heads % kv_divisor == 0 else None,
                      num_decoder_layers=decoder_layers if family in ("t5", "bart") and not shared else None,
                      shared_encoder_decoder=shared and family == "t5",
                      feed_forward="relu" if relu and family == "t5" else "gated-gelu")
    cfg.validate()
    with torch.device("meta"):
        assert minimum_parameters(cfg) <= count_parameters(build_model(cfg))
