"""Writing files so that a crash never leaves a half-written one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ptlab.errors import PtlabError


def json_text(value: Any, **dumps_options) -> str:
    """`json.dumps` with non-ASCII text kept readable, except when the value holds lone surrogates (from JSON
    escapes such as "\\ud800" in the input): those cannot be written as UTF-8, so that value is escaped as JSON
    `\\uXXXX`, which reads back to the same string."""
    text = json.dumps(value, ensure_ascii=False, **dumps_options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, **dumps_options)
    return text


def prepare_output(path: str | Path, what: str = "output") -> Path:
    """Check that `path` can be written as a file (it is not a directory, no folder above it is a file) and create
    its folder; a one-line error otherwise, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise PtlabError(f"{what} {path} is a directory; name a file")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise PtlabError(f"{what} {path}: {parent} is a file, not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PtlabError(f"{what} {path}: cannot create its directory ({err.strerror})") from None
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path` (creating the directory if needed). On any
    failure neither the temporary file nor a partial `path` is left; an OS error is a one-line error."""
    path = prepare_output(path, "file")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise PtlabError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_json_object(path: Path) -> dict:
    """A JSON object from a file; not UTF-8, malformed, nested too deeply or not an object is a one-line error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PtlabError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    return parse_json_object(text, path)


def parse_json_object(text: str, path: str | Path, line: int | None = None) -> dict:
    """TEXT (the whole of PATH, or its line LINE) as a JSON object; malformed, nested too deeply or not an object
    is a one-line error naming the file and the line."""
    where = f"{path} line {line}" if line is not None else str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PtlabError(f"{path} line {line if line is not None else err.lineno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise PtlabError(f"{where}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise PtlabError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return data


def digest_file_ends(digest, path: Path) -> None:
    """Feed `digest` a cheap identity of a file: its name, its size, and its first and last MiB."""
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read())
