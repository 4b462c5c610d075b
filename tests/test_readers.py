"""Readers: the same documents in every format give the same records and the same token shards; bad input is a
one-line error naming file and line/row, or skipped and counted."""

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptlab.data.readers import (
    BadRecord,
    ReadStats,
    expand_inputs,
    iter_located,
    iter_records,
    iter_texts,
    reader_options,
)
from ptlab.data.shards import build_shard, ensure_shard, files_fingerprint
from ptlab.data.tokenizer import load_tokenizer
from ptlab.errors import PtlabError

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# ---- writers: one per format ---------------------------------------------------------------------------------------

def jsonl_bytes(docs: list[dict]) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_bytes(jsonl_bytes(docs))
    return path


def write_gz(path: Path, docs: list[dict]) -> Path:
    path.write_bytes(gzip.compress(jsonl_bytes(docs)))
    return path


def write_zst(path: Path, docs: list[dict]) -> Path:
    # two frames, as `cat a.zst b.zst` or a multi-threaded zstd writes them
    data = jsonl_bytes(docs)
    half = len(docs) // 2
    first, second = jsonl_bytes(docs[:half]), jsonl_bytes(docs[half:])
    assert first + second == data
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    path.write_bytes(compressor.compress(first) + compressor.compress(second))
    return path


def write_parquet(path: Path, docs: list[dict], row_group_size: int = 7) -> Path:
    pq.write_table(pa.Table.from_pylist(docs), path, row_group_size=row_group_size)
    return path


def write_datasets(path: Path, docs: list[dict], num_shards: int = 2) -> Path:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    datasets.Dataset.from_list(docs).save_to_disk(str(path), num_shards=min(num_shards, max(1, len(docs))))
    return path


def write_text_files(directory: Path, docs: list[dict]) -> Path:
    directory.mkdir()
    for i, doc in enumerate(docs):
        (directory / f"{i:05d}.txt").write_bytes(doc["text"].encode("utf-8"))
    return directory


def write_blocks(path: Path, docs: list[dict]) -> Path:
    path.write_bytes(("\n\n".join(d["text"] for d in docs) + "\n").encode("utf-8"))
    return path


STRUCTURED = {"jsonl": ("docs.jsonl", write_jsonl), "jsonl.gz": ("docs.jsonl.gz", write_gz),
              "jsonl.zst": ("docs.jsonl.zst", write_zst), "parquet": ("docs.parquet", write_parquet),
              "datasets": ("docs_dataset", write_datasets)}


def no_blank_lines(text: str) -> str:
    """The text without blank lines (what a blank line is to the reader: only ASCII whitespace), so the same
    documents can also be written as blank-line-separated blocks."""
    return "\n".join(line for line in text.split("\n") if line.encode("utf-8").strip())


@pytest.fixture(scope="module")
def docs(sample_docs) -> list[dict]:
    picked = [dict(d, text=no_blank_lines(d["text"])) for d in sample_docs[::4]]
    return [d for d in picked if d["text"]]


@pytest.fixture(scope="module")
def every_format(tmp_path_factory, docs) -> dict[str, tuple[Path, str]]:
    """Format name -> (input, text mode), all holding `docs`."""
    root = tmp_path_factory.mktemp("formats")
    inputs = {name: (writer(root / filename, docs), "file") for name, (filename, writer) in STRUCTURED.items()}
    inputs["txt files"] = (write_text_files(root / "texts", docs), "file")
    inputs["txt blocks"] = (write_blocks(root / "blocks.txt", docs), "blocks")
    return inputs


# ---- same documents, same records, same shards ---------------------------------------------------------------------

def test_every_format_yields_the_same_records(every_format, docs):
    assert len(docs) > 30 and len({d["source"] for d in docs}) > 1
    texts = [d["text"] for d in docs]
    for name, (path, mode) in every_format.items():
        records = list(iter_records([path], text_mode=mode))
        assert [r["text"] for r in records] == texts, name
        assert list(iter_texts([path], text_mode=mode)) == texts, name
        if name in STRUCTURED:  # the other fields come along
            assert records == docs, name


def test_every_format_gives_identical_token_shards(every_format, tokenizer_dir, tmp_path):
    tokenizer = load_tokenizer(tokenizer_dir)
    reference = None
    for name, (path, mode) in every_format.items():
        shard = build_shard([str(path)], tokenizer, tmp_path / name.replace(" ", "_"), show_progress=False,
                            text_mode=mode)
        built = (np.asarray(shard.tokens).tobytes(), np.asarray(shard.doc_starts).tolist())
        reference = reference or built
        assert built == reference, name
    assert len(reference[1]) == len(every_format["jsonl"][0].read_text().splitlines())


def test_sources_filter_and_text_field(tmp_path):
    docs = [{"body": "first", "source": "a"}, {"body": "second", "source": "b"}, {"body": "third", "source": "a"}]
    for name, (filename, writer) in STRUCTURED.items():
        path = writer(tmp_path / filename, docs)
        assert list(iter_texts([path], text_field="body", sources=["a"])) == ["first", "third"], name
        records = list(iter_records([path], text_field="body"))
        assert records[1] == {"body": "second", "source": "b", "text": "second"}, name
        with pytest.raises(BadRecord, match="no column 'text'|no 'text' field"):
            list(iter_records([path]))


def test_blocks_split_on_blank_lines_and_name_their_first_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\n \none\r\ntwo\r\n\r\n\t\nthree\n\n\n")
    located = list(iter_located([path], text_mode="blocks"))
    assert [x.record["text"] for x in located] == ["one\r\ntwo", "three"]
    assert [x.number for x in located] == [3, 7]
    assert [x.record["text"] for x in iter_located([path], text_mode="file")] == [path.read_bytes().decode()]


# ---- which inputs --------------------------------------------------------------------------------------------------

def test_directories_globs_and_datasets_directories_expand_in_sorted_order(tmp_path):
    docs = [{"text": "x"}]
    root = tmp_path / "corpus"
    (root / "b" / "deep").mkdir(parents=True)
    write_jsonl(root / "b" / "deep" / "z.jsonl", docs)
    write_jsonl(root / "b" / "a.jsonl", docs)
    write_gz(root / "a.json.gz", docs)
    write_parquet(root / "c.parquet", docs)
    write_datasets(root / "d_set", docs)
    (root / "notes.txt").write_text("a note")
    (root / "README.md").write_text("not a corpus file")  # unknown formats inside directories are left out
    (root / "_SUCCESS").write_text("")  # bookkeeping files too
    (root / ".hidden.jsonl").write_text("{oops}\n")
    expected = [root / "a.json.gz", root / "b" / "a.jsonl", root / "b" / "deep" / "z.jsonl", root / "c.parquet",
                root / "d_set", root / "notes.txt"]
    assert expand_inputs([root]) == expected
    assert expand_inputs([f"{root}/**/*.jsonl"]) == [root / "b" / "a.jsonl", root / "b" / "deep" / "z.jsonl"]
    assert expand_inputs([str(root / "*"), root / "c.parquet"]) == expected + [root / "c.parquet"]
    assert len(list(iter_texts([root]))) == 6
    with pytest.raises(PtlabError, match=r"no corpus file matches .*\*\.csv$"):
        expand_inputs([f"{root}/*.csv"])
    with pytest.raises(PtlabError, match=r"corpus file not found: .*missing\.jsonl$"):
        expand_inputs([root / "missing.jsonl"])
    with pytest.raises(PtlabError, match=r"README\.md: unknown corpus format"):
        expand_inputs([root / "README.md"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PtlabError, match=r"empty: no corpus files in this directory"):
        expand_inputs([tmp_path / "empty"])


def test_fingerprint_covers_expanded_inputs_and_the_text_options(tmp_path):
    ds = write_datasets(tmp_path / "ds", [{"text": "one", "title": "t"}, {"text": "two", "title": "u"}])
    before = files_fingerprint([ds])
    assert files_fingerprint([f"{tmp_path}/d*"]) == before
    assert files_fingerprint([ds], text_field="title") != before
    assert files_fingerprint([ds], skip_bad=True) == before  # skipping does not change a readable corpus
    write_datasets(tmp_path / "ds2", [{"text": "one", "title": "t"}, {"text": "twO", "title": "u"}])
    assert files_fingerprint([tmp_path / "ds2"]) != before


def test_ensure_shard_rebuilds_when_the_text_field_changes(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    path = write_parquet(tmp_path / "d.parquet", [{"text": "the first text", "title": "Title"}])
    text = ensure_shard([str(path)], tokenizer, tmp_path / "shard", show_progress=False)
    title = ensure_shard([str(path)], tokenizer, tmp_path / "shard", show_progress=False, text_field="title")
    eos = tokenizer.specials.eos
    assert tokenizer.decode(np.asarray(text.tokens).tolist()[:-1]) == "the first text"
    assert np.asarray(title.tokens).tolist() == tokenizer.encode("Title") + [eos]


def test_data_config_keys_reach_the_shards(tmp_path, tokenizer_dir):
    from ptlab.config import load_config
    from ptlab.data import ensure_shards

    cfg = load_config(None, ["data.text_field=content", "data.text_mode=blocks", "data.skip_bad=true"])
    assert reader_options(cfg.data) == {"text_field": "content", "text_mode": "blocks", "skip_bad": True}
    with pytest.raises(PtlabError, match="config key 'data.text_mode': must be 'file' or 'blocks'"):
        load_config(None, ["data.text_mode=paragraphs"])
    train = write_jsonl(tmp_path / "train.jsonl", [{"content": "kept text"}, {"text": "no content field"}])
    validation = write_parquet(tmp_path / "validation.parquet", [{"content": "held out"}])
    cfg = load_config(None, [f"data.train_files=[{tmp_path}/*.jsonl]", f"data.validation_files=[{validation}]",
                             f"data.tokenizer={tokenizer_dir}", f"data.shards_dir={tmp_path / 'shards'}",
                             "data.text_field=content", "data.skip_bad=true"])
    train_shard, validation_shard = ensure_shards(cfg.data, load_tokenizer(tokenizer_dir), show_progress=False)
    assert train_shard.index["num_documents"] == 1 and validation_shard.index["num_documents"] == 1
    cfg.data.skip_bad = False
    with pytest.raises(BadRecord, match=r"train\.jsonl line 2: the record has no 'content' field"):
        write_jsonl(train, [{"content": "kept text"}, {"text": "changed, so the shard is rebuilt"}])
        ensure_shards(cfg.data, load_tokenizer(tokenizer_dir), show_progress=False)


# ---- bad input -----------------------------------------------------------------------------------------------------

GOOD = [{"text": "alpha"}, {"text": "beta"}]


def flip_middle_byte(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def big_corpus() -> bytes:
    return jsonl_bytes([{"text": f"document {i} " + "word " * (i % 50)} for i in range(3000)])


def parquet_bytes(docs: list[dict], tmp: Path, **options) -> bytes:
    path = tmp / "x.parquet"
    pq.write_table(pa.Table.from_pylist(docs), path, **options)
    return path.read_bytes()


# name -> (file name, bytes maker, error pattern, records left when skipped, count skipped)
CORRUPTIONS = {
    "invalid JSON": ("a.jsonl", lambda t: b'{"text": "alpha"}\n{"text": oops}\n{"text": "beta"}\n',
                     r"a\.jsonl line 2: invalid JSON", 2, 1),
    "5,000-digit integer": ("a.jsonl", lambda t: b'{"text": "alpha", "n": ' + b"9" * 5000 + b'}\n{"text": "beta"}\n',
                            r"a\.jsonl line 1: invalid JSON \(Exceeds the limit", 1, 1),
    "100k nested brackets": ("a.jsonl", lambda t: jsonl_bytes(GOOD) + b"[" * 100_000 + b"\n",
                             r"a\.jsonl line 3: invalid JSON \(nested too deeply\)", 2, 1),
    "non-UTF-8": ("a.jsonl", lambda t: b'{"text": "caf\xe9"}\n' + jsonl_bytes(GOOD),
                  r"a\.jsonl line 1: not UTF-8", 2, 1),
    "lone surrogate": ("a.jsonl", lambda t: jsonl_bytes(GOOD) + b'{"text": "\\ud800 half"}\n',
                       r"a\.jsonl line 3: invalid JSON \(an unpaired", 2, 1),
    "missing text": ("a.jsonl", lambda t: jsonl_bytes([{"title": "x"}] + GOOD),
                     r"a\.jsonl line 1: the record has no 'text' field", 2, 1),
    "non-string text": ("a.jsonl", lambda t: jsonl_bytes([GOOD[0], {"text": ["a"]}, GOOD[1]]),
                        r"a\.jsonl line 2: field 'text' is list, not a string", 2, 1),
    "not an object": ("a.jsonl", lambda t: jsonl_bytes(GOOD) + b"[1, 2]\n",
                      r"a\.jsonl line 3: the record is a JSON list, not an object", 2, 1),
    "empty .gz": ("a.jsonl.gz", lambda t: b"", r"a\.jsonl\.gz: empty file", 0, 1),
    "flipped byte in gzip": ("a.jsonl.gz", lambda t: flip_middle_byte(gzip.compress(big_corpus())),
                             r"a\.jsonl\.gz line \d+: corrupt or truncated gzip data", None, 1),
    "truncated gzip": ("a.jsonl.gz", lambda t: gzip.compress(big_corpus())[:-100],
                       r"a\.jsonl\.gz line \d+: corrupt or truncated gzip data", None, 1),
    "not gzip at all": ("a.jsonl.gz", lambda t: b"plain text, not gzip\n",
                        r"a\.jsonl\.gz line 1: corrupt or truncated gzip data", 0, 1),
    "flipped byte in zstd": ("a.jsonl.zst", lambda t: flip_middle_byte(
        zstandard.ZstdCompressor(write_checksum=True).compress(big_corpus())),
        r"a\.jsonl\.zst line \d+: corrupt or truncated zstd data", None, 1),
    "truncated zstd": ("a.jsonl.zst", lambda t: zstandard.ZstdCompressor().compress(big_corpus())[:-3],
                       r"a\.jsonl\.zst line \d+: corrupt or truncated zstd data \(the input ends inside a frame",
                       None, 1),
    "truncated parquet": ("a.parquet", lambda t: parquet_bytes(GOOD, t)[:-20],
                          r"a\.parquet: not a readable Parquet file", 0, 1),
    # Parquet pages carry a CRC only when the writer adds one; without it a flipped byte reads as other text
    "flipped byte in checksummed parquet": ("a.parquet", lambda t: flip_middle_byte(parquet_bytes(
        [{"text": f"document {i} " * 30} for i in range(3000)], t, row_group_size=500, write_page_checksum=True)),
        r"a\.parquet row \d+: corrupt data \(could not verify page integrity", None, 1),
    "null text in parquet": ("a.parquet", lambda t: parquet_bytes([GOOD[0], {"text": None}, GOOD[1]], t),
                             r"a\.parquet row 2: field 'text' is NoneType, not a string", 2, 1),
    "integer text column": ("a.parquet", lambda t: parquet_bytes([{"text": 1}], t),
                            r"a\.parquet: column 'text' holds int64, not strings", 0, 1),
    "non-UTF-8 text file": ("a.txt", lambda t: b"fine\nline two \xff\n", r"a\.txt line 2: not UTF-8", 0, 1),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_is_one_line_naming_file_and_place_or_skipped_and_counted(kind, tmp_path):
    name, make, pattern, left, skipped = CORRUPTIONS[kind]
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    with pytest.raises(BadRecord, match=pattern) as error:
        list(iter_records([path]))
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    stats = ReadStats()
    records = list(iter_records([path, write_jsonl(tmp_path / "after.jsonl", GOOD)], skip_bad=True, stats=stats))
    assert stats.bad == skipped and stats.examples == [str(error.value)]
    assert records[-2:] == GOOD  # reading goes on with the next file
    if left is not None:
        assert len(records) == left + 2


def test_blocks_mode_skips_a_broken_block_only(tmp_path):
    path = tmp_path / "b.txt"
    path.write_bytes(b"one\n\ntwo \xff\nstill two\n\nthree\n")
    with pytest.raises(BadRecord, match=r"b\.txt line 3: not UTF-8"):
        list(iter_texts([path], text_mode="blocks"))
    stats = ReadStats()
    assert list(iter_texts([path], text_mode="blocks", skip_bad=True, stats=stats)) == ["one", "three"]
    assert stats.bad == 1


def test_a_datasets_directory_with_a_missing_arrow_file(tmp_path):
    ds = write_datasets(tmp_path / "ds", [{"text": "one"}, {"text": "two"}])
    next(ds.glob("*.arrow")).unlink()
    with pytest.raises(BadRecord, match=r"ds/data-00000-of-00002\.arrow: not a readable Arrow stream"):
        list(iter_texts([ds]))


# ---- any document survives every format ----------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
LINE = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), min_size=1, max_size=20).filter(
    lambda line: line.encode("utf-8").strip() and not line.endswith("\r"))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(TEXT, min_size=1, max_size=6), blocks=st.lists(st.lists(LINE, min_size=1, max_size=3),
                                                                      min_size=1, max_size=4))
def test_generated_documents_round_trip_through_every_format(texts, blocks):
    docs = [{"text": t, "n": i} for i, t in enumerate(texts)]
    block_docs = [{"text": "\n".join(lines)} for lines in blocks]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (filename, writer) in STRUCTURED.items():
            assert list(iter_records([writer(tmp / filename, docs)])) == docs, name
        non_empty = [d for d in docs if d["text"]]  # a zero-byte file is bad input, not an empty document
        if non_empty:
            folder = write_text_files(tmp / "texts", non_empty)
            assert [r["text"] for r in iter_records([folder])] == [d["text"] for d in non_empty]
        blocks_file = write_blocks(tmp / "blocks.txt", block_docs)
        assert [r["text"] for r in iter_records([blocks_file], text_mode="blocks")] == [d["text"] for d in block_docs]


# ---- the command line ----------------------------------------------------------------------------------------------

def run_ptlab(*args):
    return subprocess.run([sys.executable, "-m", "ptlab", *args], capture_output=True, text=True, timeout=120)


def test_cli_tokenizes_parquet_and_refuses_corrupt_input_in_one_line(tmp_path, tokenizer_dir, docs):
    path = write_parquet(tmp_path / "some.parquet", [{"content": d["text"]} for d in docs[:20]])
    run = run_ptlab("tokenize", "--tokenizer", str(tokenizer_dir), "--input", str(path), "--output",
                    str(tmp_path / "shard"), "--text-field", "content", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "from 20 documents" in run.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", GOOD)
    with open(bad, "ab") as f:
        f.write(b"{broken\n")
    run = run_ptlab("tokenize", "--tokenizer", str(tokenizer_dir), "--input", str(bad), "--output",
                    str(tmp_path / "bad_shard"), "--quiet")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith(f"ptlab: error: {bad} line 3: invalid JSON")
    assert not (tmp_path / "bad_shard").exists() and not (tmp_path / "bad_shard.tmp").exists()
    run = run_ptlab("tokenize", "--tokenizer", str(tokenizer_dir), "--input", str(bad), "--output",
                    str(tmp_path / "bad_shard"), "--quiet", "--skip-bad")
    assert run.returncode == 0, run.stderr
    assert "from 2 documents" in run.stdout and "skipped 1 bad input record(s)" in run.stderr


def test_clean_reads_parquet_and_datasets_like_jsonl(tmp_path):
    from ptlab.clean.engine import clean_files
    from ptlab.clean.rules import CleanConfig

    sentences = ["The committee met on Tuesday to review the budget for the coming year.",
                 "Several members asked for more detail about the planned repairs to the bridge.",
                 "A final vote on the proposal is expected before the end of the month."]
    docs = [{"id": str(i), "url": f"http://example.org/{i % 3}", "timestamp": f"2020-01-0{i + 1}T00:00:00Z",
             "text": "\n".join(sentences[i % 3:] + sentences[:i % 3]) + f"\nPage {i} ends here with a full stop."}
            for i in range(5)]
    cfg = CleanConfig(skip=frozenset({"language"}))
    outputs = {}
    for name, (filename, writer) in STRUCTURED.items():
        clean_files([writer(tmp_path / filename, docs)], tmp_path / f"{name}.out.jsonl", cfg=cfg, show_progress=False)
        outputs[name] = [json.loads(line) for line in (tmp_path / f"{name}.out.jsonl").read_text().splitlines()]
    assert outputs["jsonl"] and all(out == outputs["jsonl"] for out in outputs.values())
    assert {"id", "url", "timestamp", "text"} <= set(outputs["jsonl"][0])
