"""Property-based tests of tokenizers: training on odd text with odd sizes succeeds or fails in one line (and never
hangs); every text round-trips exactly, the tokenizer's own marker characters included; corrupted tokenizer files
load or fail in one line; a failed tokenization leaves no half-built shard."""

from __future__ import annotations

import json

import pytest
from fuzz_strategies import (
    BYTES,
    ODD_INTS,
    ODD_TEXT,
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

from ptlab.data.shards import build_shard
from ptlab.data.tokenizer import BYTE_PIECES, load_tokenizer, train_tokenizer, without_surrogates
from ptlab.errors import PtlabError

# Text built to trip a tokenizer: its own markers ("▁", byte-piece spellings, special tokens), control characters,
# lone surrogates, combining marks, long words and whitespace runs.
MARKERS = ["▁", "▁▁", " ▁", "<0x41>", "<0xFF>", "<0x", "<0x4", "<0x41", "0x41>", "</s>", "<pad>", "<unk>", "<mask>",
           "<extra_id_0>", "[NLU]", "<s>", "\x00", "\r\n", "\t", "\u2028", "\ufffd", "\ud800", "\udfff", "e\u0301",
           "  ", "\u3000", "🙂", "中文"]
ODD_PIECES = st.one_of(st.sampled_from(MARKERS), st.sampled_from(BYTE_PIECES), ODD_TEXT,
                       st.text(st.characters(codec=None, exclude_categories=()), max_size=8))
ODD_DOCUMENTS = st.lists(ODD_PIECES, max_size=12).map("".join)
LONG_WORDS = st.integers(1_000, 30_000).map(lambda n: "ab" * (n // 2))


@pytest.fixture(scope="module")
def tokenizers():
    corpus = ["the cat sat on the mat. " * 5, "a ▁ marker <0x41> and </s> inside text!", "Ünïcödé 中文 🙂 " * 3,
              "numbers 12345 and more words here."] * 10
    return {kind: train_tokenizer(corpus, kind, 400, 4, show_progress=False) for kind in ("unigram", "bpe")}


@examples(200)
@given(kind=st.sampled_from(["unigram", "bpe"]), text=ODD_DOCUMENTS)
def test_every_text_round_trips_exactly(tokenizers, kind, text):
    tokenizer = tokenizers[kind]
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=False) == without_surrogates(text)
    assert tokenizer.encode_batch([text, text]) == [ids, ids]


@examples(40)
@given(kind=st.sampled_from(["unigram", "bpe", "wordpiece", ""]),
       texts=st.lists(st.one_of(ODD_DOCUMENTS, LONG_WORDS), max_size=5),
       vocab_size=st.one_of(st.integers(300, 1200), ODD_INTS.filter(lambda v: v < 5000)),
       num_sentinels=st.one_of(st.integers(0, 10), ODD_INTS.filter(lambda v: v < 5000)))
def test_training_on_odd_text_succeeds_or_fails_in_one_line(kind, texts, vocab_size, num_sentinels):
    with time_limit(30, f"training {kind} on {[len(t) for t in texts]} characters"):
        ok, tokenizer = accepted_or_refused(train_tokenizer, texts, kind, vocab_size, num_sentinels,
                                            show_progress=False)
    if ok:
        assert num_sentinels >= 0
        assert len(tokenizer.specials.sentinels) == num_sentinels
        for text in texts[:2]:
            assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == without_surrogates(text)


def test_bpe_training_on_one_megabyte_word_is_quick():
    with time_limit(30, "BPE training on a 1 MB word"):
        tokenizer = train_tokenizer(["abcdefghij" * 100_000, "hello world"], "bpe", 400, 4, show_progress=False)
    assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"


@pytest.fixture(scope="module")
def saved(tokenizers, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    tokenizers["unigram"].save(directory)
    return directory


@examples(80)
@given(target=st.sampled_from(["ptlab_tokenizer.json", "tokenizer.json"]),
       corruption=st.one_of(st.tuples(st.just("field"), st.sampled_from(
           ["kind", "num_sentinels", "pad_id", "eos_id", "unk_id", "model", "decoder", "added_tokens", "version"]),
           VALUES), st.tuples(st.just("bytes"), BYTES, st.none()), st.tuples(st.just("drop"), st.sampled_from(
               ["kind", "num_sentinels", "pad_id", "model", "normalizer"]), st.none())))
def test_corrupted_tokenizer_files_load_or_fail_in_one_line(saved, tmp_path_factory, target, corruption):
    directory = tmp_path_factory.mktemp("tok")
    for name in ("tokenizer.json", "ptlab_tokenizer.json"):
        (directory / name).write_bytes((saved / name).read_bytes())
    kind, key, value = corruption
    path = directory / target
    if kind == "bytes":
        path.write_bytes(key)
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        if kind == "field":
            data[key] = value
        else:
            data.pop(key, None)
        path.write_text(json.dumps(data), encoding="utf-8")
    ok, tokenizer = accepted_or_refused(load_tokenizer, directory)
    if ok:  # what loads is usable: ids, specials and a round trip
        accepted_or_refused(lambda: (tokenizer.specials, tokenizer.decode(tokenizer.encode("hello world"))))


@examples(40)
@given(name=st.sampled_from(["docs.jsonl", "docs.jsonl.gz", "docs.txt", "docs.parquet", "docs.jsonl.zst"]),
       content=st.one_of(BYTES, ODD_DOCUMENTS.map(lambda t: json.dumps({"text": t}).encode())))
def test_a_failed_tokenization_leaves_no_half_built_shard(tokenizers, tmp_path_factory, name, content):
    tmp = tmp_path_factory.mktemp("shard")
    (tmp / name).write_bytes(content)
    ok, _ = accepted_or_refused(build_shard, [str(tmp / name)], tokenizers["unigram"], tmp / "out",
                                show_progress=False)
    assert leftovers(tmp) == []
    assert ok == (tmp / "out").exists()


@examples(15)
@given(kind=st.sampled_from(["unigram", "bpe", "x"]), vocab=st.one_of(ODD_INTS, st.sampled_from(["x", "1e3", ""])),
       sentinels=st.one_of(ODD_INTS.filter(lambda v: v < 5000), st.sampled_from(["-5", "x"])), text=ODD_DOCUMENTS)
def test_tokenizer_train_cli_never_prints_a_traceback(tmp_path_factory, kind, vocab, sentinels, text):
    tmp = tmp_path_factory.mktemp("cli")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": text + " some words to learn"}) + "\n", encoding="utf-8")
    with time_limit(30, "ptlab tokenizer train"):
        code, _, stderr = run_cli(["tokenizer", "train", "--input", str(corpus), "--kind", kind, "--vocab-size",
                                   str(vocab), "--sentinels", str(sentinels), "--output", str(tmp / "tok"),
                                   "--quiet"])
    assert_cli_error_is_one_line(code, stderr)
    assert leftovers(tmp) == []


def test_a_negative_sentinel_count_is_refused():
    with pytest.raises(PtlabError, match="sentinels"):
        train_tokenizer(["some text"], "bpe", 500, -5, show_progress=False)
