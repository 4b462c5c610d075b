"""Readers keep memory flat: peak RSS while streaming multi-GB JSONL.zst, Parquet and Arrow inputs through
`iter_texts`.

    .venv/bin/python benchmarks/readers.py [--gb 0.25 3] [--formats jsonl.zst parquet datasets] [--dir D] [--keep]

For each size, writes a JSONL.zst file, a Parquet file and a `datasets` directory of that much random-word text
(stream-written: the writer holds one document or one row group at a time), then reads each one through
`ptlab.data.readers.iter_texts` in a fresh process and reports the process's peak RSS (VmHWM; `resource.getrusage`
where there is no /proc) above its RSS just before reading, with the read speed. Flat memory means the peak does not
grow with the input: compare the sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOC_WORDS = 700  # about 4.5 KB of text per document
ROW_GROUP_DOCS = 8192  # about 37 MB of text per Parquet row group
VOCABULARY = 50_000
POOL = 6_000


def documents(total_bytes: int, seed: int = 0):
    """Random-word documents until `total_bytes` of text. A pool of POOL documents is cycled: 28 MB apart, repeats
    lie far outside zstd's and snappy's match windows, so the files do not shrink to nothing."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    words = [letters[rng.integers(0, 26, n)].tobytes().decode() for n in rng.integers(2, 11, VOCABULARY)]
    picks = rng.integers(0, VOCABULARY, (POOL, DOC_WORDS)).tolist()
    pool = [" ".join(words[i] for i in row) for row in picks]
    written, number = 0, 0
    while written < total_bytes:
        text = f"document {number}: {pool[number % POOL]}"
        written += len(text)
        number += 1
        yield {"id": number, "text": text}


def write_jsonl_zst(path: Path, total_bytes: int) -> None:
    import zstandard

    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(raw) as out:
        for doc in documents(total_bytes):
            out.write((json.dumps(doc) + "\n").encode())


def write_parquet(path: Path, total_bytes: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict] = []
        for doc in documents(total_bytes):
            batch.append(doc)
            if len(batch) == ROW_GROUP_DOCS:
                writer.write_table(pa.Table.from_pylist(batch, schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema))


def write_datasets_dir(path: Path, total_bytes: int) -> None:
    """What `Dataset.save_to_disk` writes (an Arrow IPC stream and state.json), without needing `datasets`."""
    import pyarrow as pa

    path.mkdir()
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    arrow = "data-00000-of-00001.arrow"
    with pa.OSFile(str(path / arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as stream:
        batch: list[dict] = []
        for doc in documents(total_bytes):
            batch.append(doc)
            if len(batch) == 1000:  # save_to_disk's default writer batch size
                stream.write_batch(pa.RecordBatch.from_pylist(batch, schema))
                batch = []
        if batch:
            stream.write_batch(pa.RecordBatch.from_pylist(batch, schema))
    (path / "state.json").write_text(json.dumps({"_data_files": [{"filename": arrow}]}))


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB.

    Linux carries `getrusage`'s ru_maxrss across fork and exec, so a child started by a big parent would report the
    parent's size; /proc's VmRSS/VmHWM belong to this process image alone. Elsewhere ru_maxrss is all there is.
    """
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return peak, peak


def read_and_measure(path: str) -> None:
    """Child process: read `path` through iter_texts and print one JSON line of figures."""
    import pyarrow.parquet  # noqa: F401  (imported before the baseline, as any Parquet read would)

    from ptlab.data.readers import iter_texts

    baseline, _ = rss_mib()
    started = time.perf_counter()
    docs = chars = 0
    for text in iter_texts([path]):
        docs += 1
        chars += len(text)
    seconds = time.perf_counter() - started
    print(json.dumps({"docs": docs, "text_bytes": chars, "seconds": seconds, "baseline_mib": baseline,
                      "peak_mib": rss_mib()[1]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, nargs="+", default=[0.25, 3.0],
                        help="text sizes to generate, in GB (default: %(default)s)")
    parser.add_argument("--dir", help="scratch directory for the generated files (default: a temporary one)")
    parser.add_argument("--formats", nargs="+", choices=list(WRITERS), default=list(WRITERS),
                        help="formats to measure (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--read", help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.read:
        read_and_measure(args.read)
        return
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="ptlab-readers-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print("| text | format | file size | documents | read MB/s | RSS before read | peak RSS | peak - before |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for gb in args.gb:
            for name in args.formats:
                path = scratch / f"docs-{gb:g}GB.{name}"
                writer = WRITERS[name]
                started = time.perf_counter()
                writer(path, int(gb * 1e9))
                print(f"wrote {path} ({size_of(path) / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
                run = subprocess.run([sys.executable, __file__, "--read", str(path)], capture_output=True, text=True,
                                     check=True)
                r = json.loads(run.stdout.strip().splitlines()[-1])
                print(f"| {r['text_bytes'] / 1e9:.2f} GB | {name} | {size_of(path) / 1e9:.2f} GB | "
                      f"{r['docs']:,} | {r['text_bytes'] / 1e6 / r['seconds']:.0f} | {r['baseline_mib']:.0f} MiB | "
                      f"{r['peak_mib']:.0f} MiB | {r['peak_mib'] - r['baseline_mib']:.0f} MiB |", flush=True)
                if not args.keep:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)


WRITERS = {"jsonl.zst": write_jsonl_zst, "parquet": write_parquet, "datasets": write_datasets_dir}

if __name__ == "__main__":
    main()
