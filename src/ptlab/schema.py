"""Dataclasses from YAML: reading a YAML mapping, dotted command-line overrides, and building a dataclass from a
mapping with every key and value type checked. Every mistake is a `PtlabError` naming the key (with the nearest
valid key suggested), so the CLI can print it as one line. `ptlab.config` builds its run configs with it, and the
objective registry its parameter sets.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ptlab.errors import PtlabError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file, bad YAML or a non-mapping is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise PtlabError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PtlabError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise PtlabError(f"{path}: cannot read ({err.strerror})") from None
    data = _parse_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise PtlabError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


# libyaml's safe loader when PyYAML was built with it: 30x faster than the pure-Python one, and it bounds nesting
# depth with a YAMLError of its own
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python values; malformed YAML (or nesting too deep to parse) is a one-line error."""
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PtlabError(f"{source}{where}: invalid YAML ({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise PtlabError(f"{source}: YAML nested too deeply") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, example: str = "section.key=value") -> None:
    """Set each `dotted.key=value` override in the mapping `data` (values read as YAML, see `parse_value`)."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PtlabError(f"override {item!r} must look like {example}")
        set_dotted(data, key.strip(), parse_value(raw))


def parse_value(raw: str) -> Any:
    """A command-line value as YAML (numbers, booleans, [lists]), except that text which merely contains a colon,
    such as the template "review: {text}", stays a string."""
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    except RecursionError:
        raise PtlabError(f"override value {raw[:40]!r}...: nested too deeply") from None
    return raw if isinstance(value, dict) and not raw.lstrip().startswith("{") else value


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PtlabError(f"config key '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value type."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise PtlabError(f"config key '{where}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    extra = getattr(cls, "EXTRA_KEYS", None)
    if extra is not None:  # e.g. an objective's own parameters sit beside `name`; the objective checks them
        internal = cls.INTERNAL_FIELDS  # filled here, never read from a file: as keys they are unknown extras
        kwargs[extra] = {k: v for k, v in data.items() if k not in fields or k in internal}
        data = {k: v for k, v in data.items() if k in fields and k not in internal}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise PtlabError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _is_unicode(text: str) -> bool:
    """False for a string holding lone surrogates, which no UTF-8 file (a saved config) can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[1:]:  # the first alternative that takes the value; the first one's error otherwise
            if isinstance(value, alternative) and not (alternative is int and isinstance(value, bool)):
                return value
        return _coerce(inner[0], value, key)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise PtlabError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise PtlabError(f"config key '{key}': expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise PtlabError(f"config key '{key}': expected an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf  # a huge int would overflow float()
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        if number is None:
            raise PtlabError(f"config key '{key}': expected a number, got {value!r}")
        # One check for every float of every section and objective: NaN and inf pass every `>`/`<` range check
        # below (NaN compares false both ways), then crash or train on nonsense.
        if not math.isfinite(number):
            raise PtlabError(f"config key '{key}': must be a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str) and not _is_unicode(value):
            raise PtlabError(f"config key '{key}': {value!r} is not valid Unicode text (it holds a lone surrogate, "
                             "e.g. from a non-UTF-8 command-line argument)")
        if isinstance(value, str) and "\x00" in value:  # no path can hold one; open() and mkdir() raise ValueError
            raise PtlabError(f"config key '{key}': {value!r} holds a NUL character")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise PtlabError(f"config key '{key}': expected a string, got {value!r}")
    return value
