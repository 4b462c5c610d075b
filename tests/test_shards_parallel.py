"""Parallel tokenization (`ptlab tokenize --workers N`, `--engine ray`) and multi-piece / multi-directory shards."""

import gzip
import json
import shutil

import numpy as np
import pytest
from conftest import write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import TINY

from ptlab.cli import main
from ptlab.config import load_config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.shards import ChunkSampler, ConcatTokens, PieceFile, lists_shards, open_shard, open_shards
from ptlab.data.tokenize_parallel import iter_chunks, tokenize_to_shard
from ptlab.errors import PtlabError

CHUNK = 20_000  # characters: the small corpus becomes a dozen pieces, so workers interleave


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_docs):
    """Two input files, so chunks also cross a file boundary."""
    root = tmp_path_factory.mktemp("pcorpus")
    half = len(sample_docs) // 2
    return [str(write_jsonl(root / "a.jsonl.gz", sample_docs[:half])),
            str(write_jsonl(root / "b.jsonl.gz", sample_docs[half:]))]


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, corpus, unigram_tokenizer):
    return tokenize_to_shard(corpus, unigram_tokenizer, tmp_path_factory.mktemp("one") / "shard", workers=1,
                             show_progress=False)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, corpus, unigram_tokenizer):
    return tokenize_to_shard(corpus, unigram_tokenizer, tmp_path_factory.mktemp("two") / "shard", workers=2,
                             chunk_chars=CHUNK, show_progress=False)


def pieces_bytes(shard) -> bytes:
    return b"".join((shard.directory / p["tokens"]).read_bytes() for p in shard.index["pieces"])


def test_two_workers_write_the_one_worker_bytes(one_worker, two_workers):
    assert (one_worker.directory / "tokens.bin").is_file() and not (one_worker.directory / "pieces").exists()
    assert len(two_workers.index["pieces"]) > 4
    assert pieces_bytes(two_workers) == (one_worker.directory / "tokens.bin").read_bytes()
    np.testing.assert_array_equal(two_workers.doc_starts, one_worker.doc_starts)
    np.testing.assert_array_equal(np.asarray(two_workers.tokens), np.asarray(one_worker.tokens))
    assert two_workers.num_tokens == one_worker.num_tokens


def test_manifest_lists_pieces_in_document_order(one_worker, two_workers, unigram_tokenizer, sample_docs):
    manifest = json.loads((two_workers.directory / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["engine"] == "local" and manifest["version"] == 2
    for key in ("dtype", "num_tokens", "num_documents", "separator", "vocab_size", "tokenizer_fingerprint",
                "data_fingerprint", "files", "sources"):
        assert manifest[key] == one_worker.index[key], key
    assert manifest["tokenizer_fingerprint"] == unigram_tokenizer.fingerprint()
    pieces = manifest["pieces"]
    assert [p["tokens"] for p in pieces] == [f"pieces/{i:05d}.bin" for i in range(len(pieces))]
    assert sum(p["num_documents"] for p in pieces) == len(sample_docs) == manifest["num_documents"]
    for piece in pieces:  # each piece is whole documents: starts at 0, its last token is EOS
        starts = np.load(two_workers.directory / piece["doc_starts"])
        tokens = np.fromfile(two_workers.directory / piece["tokens"], dtype=manifest["dtype"])
        assert len(starts) == piece["num_documents"] and starts[0] == 0
        assert len(tokens) == piece["num_tokens"] and tokens[-1] == unigram_tokenizer.eos_id
    first = unigram_tokenizer.encode(sample_docs[0]["text"]) + [unigram_tokenizer.eos_id]
    assert two_workers.tokens[:len(first)].tolist() == first


def test_chunks_are_consecutive_documents():
    texts = ["a" * n for n in (3, 5, 1, 9, 2, 2)]
    chunks = list(iter_chunks(texts, 6))
    assert [len(t) for c in chunks for t in c] == [3, 5, 1, 9, 2, 2]
    assert [len(c) for c in chunks] == [2, 2, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=6), st.integers(-12, 40), st.integers(-12, 40))
def test_concatenated_tokens_slice_like_one_array(lengths, start, stop):
    rng = np.random.default_rng(sum(lengths))
    parts = [rng.integers(0, 60000, n).astype(np.uint16) for n in lengths]
    whole = np.concatenate(parts)
    tokens = ConcatTokens(parts)
    assert len(tokens) == len(whole) and tokens.shape == whole.shape
    np.testing.assert_array_equal(tokens[start:stop], whole[start:stop])
    np.testing.assert_array_equal(np.asarray(tokens, dtype=np.int64), whole.astype(np.int64))
    if -len(whole) <= start < len(whole):
        assert tokens[start] == whole[start]


def test_piece_files_are_mapped_a_few_at_a_time(tmp_path):
    parts = [np.arange(i * 10, i * 10 + 7, dtype=np.uint16) for i in range(6)]
    files = []
    for i, part in enumerate(parts):
        part.tofile(tmp_path / f"{i}.bin")
        files.append(PieceFile(tmp_path / f"{i}.bin", np.dtype(np.uint16), len(part)))
    tokens = ConcatTokens(files)
    tokens.MAX_OPEN = 2
    whole = np.concatenate(parts)
    for start in range(0, len(whole), 5):
        np.testing.assert_array_equal(tokens[start:start + 9], whole[start:start + 9])
        assert len(tokens._open) <= 2
    np.testing.assert_array_equal(np.asarray(tokens), whole)


def test_two_shard_directories_read_as_one_stream(one_worker, two_workers, unigram_tokenizer):
    both = open_shards([two_workers.directory, one_worker.directory], unigram_tokenizer.fingerprint(), "eos")
    n = one_worker.num_tokens
    assert both.num_tokens == 2 * n and both.index["num_documents"] == 2 * one_worker.index["num_documents"]
    np.testing.assert_array_equal(both.doc_starts, np.concatenate([one_worker.doc_starts, one_worker.doc_starts + n]))
    whole = np.concatenate([np.asarray(one_worker.tokens)] * 2)
    sampler = ChunkSampler(both, 64, seed=3)
    for example in (0, 5, sampler.num_chunks - 1, sampler.num_chunks + 7):  # includes a chunk across the seam
        start = int(sampler._permutation(example // sampler.num_chunks)[example % sampler.num_chunks]) * 64
        np.testing.assert_array_equal(sampler.chunk(example), whole[start:start + 64])
    seam = ChunkSampler(both, n + 10, seed=0, shuffle=False).chunk(0)  # spans both directories
    np.testing.assert_array_equal(seam, whole[:n + 10])
    assert both.index["data_fingerprint"] != one_worker.index["data_fingerprint"]  # a resumed run would notice


def test_shard_lists_are_validated_in_one_line(tmp_path, one_worker, corpus, bpe_tokenizer):
    with pytest.raises(PtlabError, match=r"data.train_files.*mixes token-shard directories"):
        lists_shards([one_worker.directory, corpus[0]], "data.train_files")
    assert not lists_shards(corpus, "data.train_files") and lists_shards([one_worker.directory], "x")
    with pytest.raises(PtlabError, match="another tokenizer"):
        open_shards([one_worker.directory], bpe_tokenizer.fingerprint())
    broken = tmp_path / "broken"
    shutil.copytree(one_worker.directory, broken)
    (broken / "tokens.bin").write_bytes((broken / "tokens.bin").read_bytes()[:-2])
    with pytest.raises(PtlabError, match=r"tokens.bin holds \d+ tokens, the index says"):
        open_shard(broken)


def test_config_listing_two_shard_directories_trains(tmp_path, one_worker, two_workers, tokenizer_dir):
    from ptlab.train.loop import pretrain

    cfg = load_config(None, TINY + [f"run_dir={tmp_path / 'run'}", f"data.tokenizer={tokenizer_dir}",
                                    f"data.train_files=[{one_worker.directory},{two_workers.directory}]",
                                    f"data.validation_files=[{two_workers.directory}]", "data.vocab_size=2000",
                                    "train.max_steps=3", "train.eval_batches=1", "train.compile=false"])
    train, validation = ensure_shards(cfg.data, ensure_tokenizer(cfg.data, False), False)
    assert train.num_tokens == 2 * one_worker.num_tokens and validation.num_tokens == two_workers.num_tokens
    assert not (tokenizer_dir / "shards").exists()  # nothing was re-tokenized
    result = pretrain(cfg, show_progress=False)
    assert result.steps == 3 and np.isfinite(result.final_val_loss)


def test_tokenizer_cannot_be_trained_on_shards(tmp_path, one_worker):
    cfg = load_config(None, [f"data.tokenizer={tmp_path / 'none'}", f"data.train_files=[{one_worker.directory}]"])
    with pytest.raises(PtlabError, match="data.tokenizer.*token shards"):
        ensure_tokenizer(cfg.data, False)


def test_a_corrupt_input_stops_workers_and_leaves_nothing(tmp_path, corpus, tokenizer_dir, sample_docs, capsys):
    bad = tmp_path / "bad.jsonl.gz"
    lines = [json.dumps(d) for d in sample_docs[:150]]
    lines[120] = '{"text": "cut short'
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = main(["tokenize", "--tokenizer", str(tokenizer_dir), "--input", *corpus, str(bad), "--output", str(out),
                 "--workers", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "bad.jsonl.gz" in err and "121" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl.gz"]  # no out/, no out.tmp/


def test_cli_writes_pieces_and_a_failure_keeps_the_old_output(tmp_path, corpus, tokenizer_dir, capsys):
    out = tmp_path / "out"
    assert main(["tokenize", "--tokenizer", str(tokenizer_dir), "--input", *corpus, "--output", str(out),
                 "--workers", "2", "--quiet"]) == 0
    assert "piece" in capsys.readouterr().out
    before = (out / "manifest.json").read_text()
    assert main(["tokenize", "--tokenizer", str(tokenizer_dir), "--input", str(tmp_path / "missing.jsonl"),
                 "--output", str(out), "--workers", "2", "--quiet"]) != 0
    assert (out / "manifest.json").read_text() == before and not (tmp_path / "out.tmp").exists()


@pytest.mark.slow  # starting Ray takes 15-30 s on 2 cores
def test_ray_engine_writes_the_local_pieces(tmp_path, corpus, unigram_tokenizer, two_workers):
    pytest.importorskip("ray.data")
    import ray

    started = not ray.is_initialized()  # another test's engine may have started it already
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        shard = tokenize_to_shard(corpus, unigram_tokenizer, tmp_path / "ray", workers=2, engine="ray",
                                  chunk_chars=CHUNK, show_progress=False)
    finally:
        if started:
            ray.shutdown()
    assert pieces_bytes(shard) == pieces_bytes(two_workers)
    assert [p["num_documents"] for p in shard.index["pieces"]] == [p["num_documents"] for p in two_workers.index["pieces"]]
    np.testing.assert_array_equal(shard.doc_starts, two_workers.doc_starts)
    assert shard.index["engine"] == "ray"
