"""Reading corpora: JSON Lines (.gz, .zst), plain text, Parquet, `datasets` directories, directories and globs.

One reader for every command that reads documents. `expand_inputs` turns what the user named into a sorted list of
inputs; a thin adapter per format yields `Located` rows from one input; `iter_located` picks the text field, turns
corrupt files and rows into one-line `BadRecord` errors (or skips and counts them) and chains the inputs. Everything
streams: memory is bounded by one line, one Parquet row group or one Arrow record batch, never by the input.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import zstandard

from ptlab.errors import PtlabError

TEXT_MODES = ("file", "blocks")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = (".txt",)
COMPRESSIONS = (".gz", ".zst")
DATASETS_MARKERS = ("state.json", "dataset_info.json")  # what `Dataset.save_to_disk` writes next to its Arrow files
FORMATS_HELP = ("JSON Lines (.jsonl/.ndjson/.json), text (.txt), each optionally .gz or .zst; .parquet; "
                "a `datasets` save_to_disk directory")
PARQUET_BATCH_ROWS = 1024
PARQUET_BUFFER_BYTES = 1 << 20
MAX_EXAMPLES = 10

# A lone UTF-16 surrogate can only enter through a \uD800-\uDFFF escape; such a string cannot be encoded as UTF-8.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class BadRecord(PtlabError):
    """A corrupt file or row: which file, which line or row (when known), and what is wrong."""

    def __init__(self, path: str | Path, reason: str, unit: str | None = None, number: int | None = None):
        self.path, self.reason, self.unit, self.number = Path(path), reason, unit, number
        where = f"{self.path} {unit} {number}" if unit else str(self.path)
        super().__init__(f"{where}: {reason}")


@dataclass
class ReadStats:
    """What a read yielded and skipped; `on_skip` sees every skipped `BadRecord` as it happens."""

    records: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)  # the first MAX_EXAMPLES skip messages
    on_skip: Callable[[BadRecord], None] | None = None

    def skip(self, err: BadRecord) -> None:
        self.bad += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(str(err))
        if self.on_skip is not None:
            self.on_skip(err)


class Located(NamedTuple):
    """A record and where it came from: `unit` is "line" or "row" (None for a whole file), `number` counts from 1."""

    path: Path
    unit: str | None
    number: int | None
    record: dict


def check_text_mode(text_mode: str) -> None:
    if text_mode not in TEXT_MODES:
        raise PtlabError(f"unknown text mode {text_mode!r} (use {' or '.join(TEXT_MODES)})")


def reader_options(data_cfg) -> dict:
    """The keyword arguments of `iter_records`/`iter_texts` a `DataConfig` sets (`data.text_field` and friends)."""
    return {"text_field": data_cfg.text_field, "text_mode": data_cfg.text_mode, "skip_bad": data_cfg.skip_bad}


# ---- which files ---------------------------------------------------------------------------------------------------

def format_of(path: Path) -> str | None:
    """"jsonl", "text", "parquet" or "datasets" by name (and, for a directory, by its marker files); None if unknown."""
    if path.is_dir():
        return "datasets" if any((path / marker).is_file() for marker in DATASETS_MARKERS) else None
    name = path.name.lower()
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if path.name.lower().endswith(".parquet"):
        return "parquet"
    return None


def _hidden(path: Path) -> bool:
    # Spark/Hadoop and pyarrow mark bookkeeping files (_SUCCESS, _metadata, .crc) this way
    return path.name.startswith((".", "_"))


def _expand_directory(directory: Path) -> list[Path]:
    if format_of(directory) == "datasets":
        return [directory]
    found: list[Path] = []
    for entry in sorted(directory.iterdir()):
        if _hidden(entry):
            continue
        if entry.is_dir():
            found += _expand_directory(entry)
        elif entry.is_file() and format_of(entry) is not None:
            found.append(entry)
    return found


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, directories (recursively, sorted; a `datasets` directory is one input) and glob patterns, in order.

    An explicit file of unknown format, or an input that matches no corpus file, is a `PtlabError` naming it.
    """
    expanded: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = _expand_directory(path)
            if not found:
                raise PtlabError(f"{path}: no corpus files in this directory (readable: {FORMATS_HELP})")
            expanded += found
        elif path.is_file():
            if format_of(path) is None:
                raise PtlabError(f"{path}: unknown corpus format (readable: {FORMATS_HELP})")
            expanded.append(path)
        elif glob.has_magic(str(raw)):
            found = []
            for match in sorted(glob.glob(str(raw), recursive=True)):
                match = Path(match)
                if match.is_dir():
                    found += _expand_directory(match)
                elif format_of(match) is not None:
                    found.append(match)
            if not found:
                raise PtlabError(f"no corpus file matches {raw}")
            expanded += found
        else:
            raise PtlabError(f"corpus file not found: {path}")
    return expanded


def datasets_arrow_files(directory: Path) -> list[Path]:
    """The Arrow files of a `save_to_disk` directory, in the order its state.json lists them."""
    state_path = directory / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        names = [item["filename"] for item in state["_data_files"]]
    except FileNotFoundError:
        raise BadRecord(directory, "a datasets directory without state.json (was it written by save_to_disk?)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadRecord(state_path, f"not a datasets state file ({type(err).__name__}: {err})") from None
    return [directory / name for name in names]


def input_files(path: Path) -> list[Path]:
    """The files an expanded input reads: itself, or a `datasets` directory's state file and Arrow files."""
    if path.is_dir():
        return [path / "state.json", *datasets_arrow_files(path)]
    return [path]


# ---- one adapter per format ----------------------------------------------------------------------------------------

_STREAM_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


class _ZstdFrames(io.RawIOBase):
    """The concatenated frames of a .zst file, decompressed a chunk at a time.

    zstandard's own stream_reader ends quietly when the input stops inside a frame, so a truncated file would read
    as a shorter corpus; here that is an error.
    """

    CHUNK = 1 << 16  # compressed bytes per step: bounds the output of one step by the compression ratio

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self._context = zstandard.ZstdDecompressor()
        self._frame = None
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._file.read(self.CHUNK)
            if not chunk:
                if self._frame is not None and not self._frame.eof:
                    raise zstandard.ZstdError("the input ends inside a frame (truncated file)")
                return 0
            self._pending = memoryview(self._decompress(chunk))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame is None or self._frame.eof:
                self._frame = self._context.decompressobj()
            out.append(self._frame.decompress(data))
            data = self._frame.unused_data if self._frame.eof else b""
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(path), buffer_size=1 << 16)
    return open(path, "rb")


def _stream_error(path: Path, err: BaseException, line: int) -> BadRecord:
    kind = {".gz": "gzip", ".zst": "zstd"}.get(path.suffix.lower(), "file")
    return BadRecord(path, f"corrupt or truncated {kind} data ({err})", "line", line)


def _select_text(row: object, text_field: str, path: Path, unit: str, number: int) -> Located | BadRecord:
    if not isinstance(row, dict):
        return BadRecord(path, f"the record is a JSON {type(row).__name__}, not an object", unit, number)
    if text_field not in row:
        return BadRecord(path, f"the record has no {text_field!r} field", unit, number)
    text = row[text_field]
    if not isinstance(text, str):
        return BadRecord(path, f"field {text_field!r} is {type(text).__name__}, not a string", unit, number)
    return Located(path, unit, number, row if text_field == "text" else {**row, "text": text})


def _parse_json_line(raw: bytes, text_field: str, path: Path, number: int) -> Located | BadRecord:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(path, f"not UTF-8 ({err.reason} at byte {err.start})", "line", number)
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return BadRecord(path, f"invalid JSON ({err.msg} at column {err.colno})", "line", number)
    except ValueError as err:  # an integer beyond Python's digit limit
        return BadRecord(path, f"invalid JSON ({str(err).split(';')[0]})", "line", number)
    except RecursionError:
        return BadRecord(path, "invalid JSON (nested too deeply)", "line", number)
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return BadRecord(path, "invalid JSON (an unpaired \\ud800-\\udfff escape is not a character)",
                             "line", number)
    return _select_text(row, text_field, path, "line", number)


def _jsonl(path: Path, text_field: str, text_mode: str) -> Iterator[Located | BadRecord]:
    number = 0
    with _open_binary(path) as lines:
        try:
            for number, raw in enumerate(lines, 1):
                if raw.strip():
                    yield _parse_json_line(raw, text_field, path, number)
        except _STREAM_ERRORS as err:
            raise _stream_error(path, err, number + 1) from None


def _decode_text(data: bytes, path: Path, first_line: int) -> str | BadRecord:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        return BadRecord(path, f"not UTF-8 ({err.reason})", "line", line)


def _text(path: Path, text_field: str, text_mode: str) -> Iterator[Located | BadRecord]:
    """A whole file as one document ("file"), or each blank-line-separated block as one ("blocks")."""
    with _open_binary(path) as f:
        if text_mode == "file":
            try:
                data = f.read()
            except _STREAM_ERRORS as err:
                raise _stream_error(path, err, 1) from None
            text = _decode_text(data, path, 1)
            yield text if isinstance(text, BadRecord) else Located(path, None, None, {"text": text,
                                                                                       "id": str(path)})
            return
        number, start, block = 0, 0, []
        try:
            for number, raw in enumerate(f, 1):
                if raw.strip():
                    start = start or number
                    block.append(raw)
                elif block:
                    yield _block(block, path, start)
                    start, block = 0, []
        except _STREAM_ERRORS as err:
            raise _stream_error(path, err, number + 1) from None
        if block:
            yield _block(block, path, start)


def _block(lines: list[bytes], path: Path, start: int) -> Located | BadRecord:
    text = _decode_text(b"".join(lines), path, start)
    if isinstance(text, BadRecord):
        return text
    text = text.removesuffix("\n").removesuffix("\r")
    return Located(path, "line", start, {"text": text, "id": f"{path}:{start}"})


def _check_text_column(schema, text_field: str, path: Path) -> None:
    import pyarrow as pa

    if text_field not in schema.names:
        raise BadRecord(path, f"no column {text_field!r} (columns: {', '.join(schema.names)})")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise BadRecord(path, f"column {text_field!r} holds {kind}, not strings")


def _rows_of_batches(batches: Iterator, path: Path, text_field: str) -> Iterator[Located | BadRecord]:
    import pyarrow as pa

    number = 0
    try:
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield _select_text(row, text_field, path, "row", number)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise BadRecord(path, f"corrupt data ({' '.join(str(err).split())})", "row", number + 1) from None


def _parquet(path: Path, text_field: str, text_mode: str) -> Iterator[Located | BadRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # pre_buffer would keep every row group's bytes until the file is closed (memory growing with the file);
        # buffer_size streams a column chunk's pages instead of loading the chunk whole
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES,
                                  page_checksum_verification=True)
    except (pa.ArrowException, OSError) as err:
        raise BadRecord(path, f"not a readable Parquet file ({' '.join(str(err).split())})") from None
    with parquet:
        _check_text_column(parquet.schema_arrow, text_field, path)
        yield from _rows_of_batches(parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS), path, text_field)


def _datasets(directory: Path, text_field: str, text_mode: str) -> Iterator[Located | BadRecord]:
    import pyarrow as pa

    for arrow in datasets_arrow_files(directory):
        try:
            # read, not memory-mapped: mapped pages stay resident once touched, so RSS would grow to the file's size
            source = pa.OSFile(str(arrow))
            stream = pa.ipc.open_stream(source)
        except (pa.ArrowException, OSError) as err:
            raise BadRecord(arrow, f"not a readable Arrow stream ({' '.join(str(err).split())})") from None
        with source:
            _check_text_column(stream.schema, text_field, arrow)
            yield from _rows_of_batches(iter(stream), arrow, text_field)


_ADAPTERS = {"jsonl": _jsonl, "text": _text, "parquet": _parquet, "datasets": _datasets}


# ---- the reader ----------------------------------------------------------------------------------------------------

def _read_one(path: Path, text_field: str, text_mode: str) -> Iterator[Located | BadRecord]:
    if not path.is_dir():
        try:
            if path.stat().st_size == 0:
                raise BadRecord(path, "empty file")
        except FileNotFoundError:
            raise PtlabError(f"corpus file not found: {path}") from None
    try:
        yield from _ADAPTERS[format_of(path)](path, text_field, text_mode)
    except PermissionError as err:
        raise BadRecord(path, f"cannot read ({err.strerror})") from None


def iter_located(inputs: Iterable[str | Path], text_field: str = "text", text_mode: str = "file",
                 skip_bad: bool = False, stats: ReadStats | None = None) -> Iterator[Located]:
    """Every record of `inputs` in order, with where it came from.

    A corrupt file or row raises `BadRecord` (a one-line `PtlabError` naming the file and line/row); with `skip_bad`
    it is counted in `stats` and skipped (a corrupt compressed stream or Parquet file skips the rest of that file).
    """
    check_text_mode(text_mode)
    stats = stats if stats is not None else ReadStats()
    for path in expand_inputs(inputs):
        try:
            for item in _read_one(path, text_field, text_mode):
                if isinstance(item, BadRecord):
                    if not skip_bad:
                        raise item
                    stats.skip(item)
                    continue
                stats.records += 1
                yield item
        except BadRecord as err:
            if not skip_bad:
                raise
            stats.skip(err)


def iter_records(inputs: Iterable[str | Path], text_field: str = "text", text_mode: str = "file",
                 sources: Iterable[str] = (), skip_bad: bool = False,
                 stats: ReadStats | None = None) -> Iterator[dict]:
    """Records with the chosen field's string under "text" and their other fields; `sources`, when given, keeps only
    records whose `source` field is one of them."""
    keep = set(sources)
    for located in iter_located(inputs, text_field, text_mode, skip_bad, stats):
        if not keep or located.record.get("source") in keep:
            yield located.record


def iter_texts(inputs: Iterable[str | Path], text_field: str = "text", text_mode: str = "file",
               sources: Iterable[str] = (), skip_bad: bool = False, stats: ReadStats | None = None) -> Iterator[str]:
    """The non-blank texts of `iter_records`."""
    for record in iter_records(inputs, text_field, text_mode, sources, skip_bad, stats):
        if record["text"].strip():
            yield record["text"]
