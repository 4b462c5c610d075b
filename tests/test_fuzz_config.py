"""Property-based tests of config loading: a valid config with one field corrupted, dotted overrides, and raw file
bytes must load or fail with one `PtlabError` line; what loads must hold only finite numbers and round-trip."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml
from fuzz_strategies import (
    BYTES,
    NON_FINITE,
    ODD_TEXT,
    VALUES,
    accepted_or_refused,
    assert_cli_error_is_one_line,
    examples,
    run_cli,
)
from hypothesis import given
from hypothesis import strategies as st

from ptlab.config import Config, FinetuneConfig, load_config, save_config
from ptlab.errors import PtlabError
from ptlab.objectives.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
BASES = {name: yaml.safe_load((ROOT / "configs" / f"{name}-tiny.yaml").read_text()) for name in
         ("t5", "bart", "gpt2", "llama")}


def _field_types(cls: type, prefix: str) -> dict[str, typing.Any]:
    """Every dotted config key of `cls` with its type hint (nested sections flattened)."""
    out = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(_field_types(hint, f"{prefix}{f.name}."))
        elif f.name not in ("params", "inherited"):
            out[f"{prefix}{f.name}"] = hint
    return out


KEYS = _field_types(Config, "")
FINETUNE_BASE = yaml.safe_load((ROOT / "configs" / "finetune-rt.yaml").read_text())
FINETUNE_KEYS = _field_types(FinetuneConfig, "")
FLOAT_KEYS = sorted(k for k, hint in KEYS.items() if float in (hint, *typing.get_args(hint)))
# Objective parameters that are floats, as (objective, parameter)
OBJECTIVE_FLOATS = sorted((name, f.name) for name, spec in REGISTRY.items() for f in dataclasses.fields(spec.params)
                          if typing.get_type_hints(spec.params)[f.name] in (float, list[float]))


def _set(data: dict, dotted: str, value) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=False), encoding="utf-8")
    return path


def _finite_numbers(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return True


def _check_loaded(config: Config, tmp_path: Path) -> None:
    """What loads is finite and survives save -> load unchanged."""
    as_dict = config.to_dict()
    assert _finite_numbers(as_dict), as_dict
    again = tmp_path / "again.yaml"
    save_config(config, again)
    assert load_config(again).to_dict() == as_dict


@examples(80)
@given(base=st.sampled_from(sorted(BASES)), key=st.sampled_from(sorted(KEYS)), value=VALUES)
def test_one_corrupted_key_loads_or_fails_in_one_line(tmp_path_factory, base, key, value):
    tmp_path = tmp_path_factory.mktemp("cfg")
    data = yaml.safe_load(yaml.safe_dump(BASES[base]))
    _set(data, key, value)
    ok, config = accepted_or_refused(load_config, _write(tmp_path, data))
    if ok:
        _check_loaded(config, tmp_path)


@examples(60)
@given(key=st.sampled_from(sorted(FINETUNE_KEYS)), value=VALUES, init_none=st.booleans())
def test_one_corrupted_finetune_key_loads_or_fails_in_one_line(tmp_path_factory, key, value, init_none):
    tmp_path = tmp_path_factory.mktemp("cfg")
    data = yaml.safe_load(yaml.safe_dump(FINETUNE_BASE))
    if init_none:  # the model section is validated only for a model trained from scratch
        data["init"] = "none"
    _set(data, key, value)
    ok, config = accepted_or_refused(load_config, _write(tmp_path, data), None, FinetuneConfig)
    if ok:
        assert _finite_numbers(config.to_dict())
        again = tmp_path / "again.yaml"
        save_config(config, again)
        assert load_config(again, None, FinetuneConfig).to_dict() == config.to_dict()


@examples(60)
@given(base=st.sampled_from(sorted(BASES)), objective=st.sampled_from(sorted(REGISTRY)),
       key=st.one_of(st.sampled_from(sorted({f.name for s in REGISTRY.values() for f in dataclasses.fields(s.params)}
                                            | {"params", "inherited", "name"})), st.none(), ODD_TEXT),
       value=VALUES)
def test_objective_parameters_load_or_fail_in_one_line(tmp_path_factory, base, objective, key, value):
    tmp_path = tmp_path_factory.mktemp("cfg")
    data = yaml.safe_load(yaml.safe_dump(BASES[base]))
    data["objective"] = {"name": objective, key: value}
    ok, config = accepted_or_refused(load_config, _write(tmp_path, data))
    if ok:
        _check_loaded(config, tmp_path)
        assert key in ("name", "inputs_length", "pack") or key in config.objective.params


@examples(40)
@given(key=st.sampled_from(FLOAT_KEYS), value=NON_FINITE)
def test_a_non_finite_float_is_refused_at_every_key(tmp_path_factory, key, value):
    data = yaml.safe_load(yaml.safe_dump(BASES["t5"]))
    _set(data, key, value)
    with pytest.raises(PtlabError, match="finite"):
        load_config(_write(tmp_path_factory.mktemp("cfg"), data))


@examples(40)
@given(pair=st.sampled_from(OBJECTIVE_FLOATS), value=NON_FINITE)
def test_a_non_finite_objective_parameter_is_refused(pair, value):
    objective, key = pair
    text = f"[1, 1, 1, 1, 1, 1, {value}]" if key == "rates" else str(value)
    with pytest.raises(PtlabError, match="finite"):
        load_config(None, [f"objective.name={objective}", f"objective.{key}={text}"])


STRING_KEYS = sorted(k for k, hint in KEYS.items() if str in (hint, *typing.get_args(hint)) and k != "model.family")


@examples(30)
@given(key=st.sampled_from(STRING_KEYS), before=st.text(max_size=5), after=st.text(max_size=5),
       bad=st.sampled_from(["\x00", "\ud800", "\udcff"]))
def test_text_no_file_can_hold_is_refused_at_every_key(tmp_path_factory, key, before, after, bad):
    """A NUL (no path holds one) or a lone surrogate (no UTF-8 file holds one: the saved config could not be read
    back) in any text value."""
    with pytest.raises(PtlabError, match=key.split(".")[-1]):
        load_config(None, [f"{key}={before}{bad}{after}x"])


@examples(30)
@given(key=st.sampled_from(["model.d_model", "model.d_ff", "model.num_heads", "model.num_layers", "model.d_kv",
                            "model.vocab_size", "model.num_kv_heads", "train.batch_size", "train.eval_batches",
                            "train.max_steps", "model.relative_attention_num_buckets"]),
       value=st.integers(max_value=0))
def test_sizes_must_be_positive(key, value):
    with pytest.raises(PtlabError, match=key.split(".")[-1]):
        load_config(None, [f"{key}={value}"])


@examples(20)
@given(key=st.sampled_from(["train.beta1", "train.beta2"]),
       value=st.one_of(st.floats(min_value=1.0, max_value=1e6), st.floats(max_value=-1e-9, min_value=-1e6)))
def test_adam_betas_must_be_in_the_unit_interval(key, value):
    with pytest.raises(PtlabError, match=key.split(".")[-1]):
        load_config(None, [f"{key}={value}"])


@examples(150)
@given(key=st.one_of(st.sampled_from(sorted(KEYS)), ODD_TEXT), raw=ODD_TEXT)
def test_overrides_load_or_fail_in_one_line(tmp_path_factory, key, raw):
    ok, config = accepted_or_refused(load_config, None, [f"{key}={raw}"])
    if ok:
        _check_loaded(config, tmp_path_factory.mktemp("cfg"))


@examples(80)
@given(content=st.one_of(BYTES, ODD_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                         st.integers(1, 6000).map(lambda n: b"[" * n + b"]" * n),
                         st.integers(1, 6000).map(lambda n: b"a:\n" + b"".join(b" " * i + b"b:\n"
                                                                                 for i in range(1, n)))))
def test_any_file_content_loads_or_fails_in_one_line(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(content)
    accepted_or_refused(load_config, path)


@examples(15)
@given(key=st.one_of(st.sampled_from(sorted(KEYS)), ODD_TEXT), value=VALUES)
def test_the_cli_prints_a_config_error_on_one_line(tmp_path_factory, key, value):
    data = yaml.safe_load(yaml.safe_dump(BASES["gpt2"]))
    _set(data, key, value)
    code, _, stderr = run_cli(["cost", str(_write(tmp_path_factory.mktemp("cfg"), data))])
    assert code in (0, 2), stderr
    assert_cli_error_is_one_line(code, stderr)
