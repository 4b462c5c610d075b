"""Decontamination (`data.decontaminate`): documents sharing a 13-word sequence with a task's validation or test
texts are left out of pre-training, checked against a brute-force transcription of the rule and on the bundled
corpus, whose Debian descriptions hold `debian_summaries`' test documents next to their reference summaries."""

from __future__ import annotations

import gzip
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptlab.config import Config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.decontaminate import MAX_SHARED_DOCUMENTS, MIN_WORDS, NGRAM, decontaminate_files
from ptlab.errors import PtlabError

REPO = Path(__file__).resolve().parents[1]


def _write_task(tmp: Path, evaluation: list[str]) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    for split, texts in (("train", ["a training review that may be trained on freely"]),
                         ("validation", evaluation[: len(evaluation) // 2]), ("test", evaluation[len(evaluation) // 2:])):
        rows = [{"id": f"{split}-{i}", "text": t, "label": "yes"} for i, t in enumerate(texts or ["x"])]
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"train": str(tmp / "train.jsonl"), "validation": str(tmp / "validation.jsonl"),
            "test": str(tmp / "test.jsonl"), "input_template": "{text}", "target_field": "label",
            "labels": ["yes", "no"], "metrics": ["accuracy"]}
    (tmp / "task.yaml").write_text(json.dumps(spec))
    return str(tmp / "task.yaml")


def _brute_force(documents: list[str], evaluation: list[str]) -> set[int]:
    """The rule written plainly: word tuples, sets, no hashing."""
    def words(text):
        return re.findall(r"\w+", text.lower())

    grams = set()
    for text in evaluation:
        w = words(text)
        if len(w) >= MIN_WORDS:
            n = min(NGRAM, len(w))
            grams |= {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    lengths = {len(g) for g in grams}
    held = {}
    for number, doc in enumerate(documents, start=1):
        w = words(doc)
        found = {tuple(w[i:i + n]) for n in lengths for i in range(len(w) - n + 1)} & grams
        if found:
            held[number] = found
    spread = {}
    for found in held.values():
        for gram in found:
            spread[gram] = spread.get(gram, 0) + 1
    return {number for number, found in held.items() if any(spread[g] <= MAX_SHARED_DOCUMENTS for g in found)}


def _kept_numbers(documents: list[str], kept_path: str) -> set[int]:
    kept = [json.loads(line)["text"] for line in Path(kept_path).read_text().splitlines()]
    numbers, it = set(), iter(enumerate(documents, start=1))
    for text in kept:  # order is preserved, so match kept texts to document numbers in sequence
        for number, doc in it:
            if doc == text:
                numbers.add(number)
                break
    return numbers


def _corpus(tmp: Path, documents: list[str]) -> str:
    path = tmp / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d, "source": "web"}) + "\n" for d in documents))
    return str(path)


def test_drops_leaks_keeps_boilerplate_and_clean_documents(tmp_path):
    answer = "the quick brown fox jumps over the lazy dog while seven wizards quietly box jackals at dawn"
    short = "nine words exactly make this short review count now"
    boiler = "this package contains the development files and headers for the library used by many programs"
    evaluation = [answer, short, f"{boiler} and something else", "too short to use"]
    documents = ([f"Intro text. {answer.upper()}! More text after it.",  # case and punctuation ignored
                  f"A page quoting: {short}.",
                  "A clean page about gardening and the weather in spring, nothing else at all here."]
                 + [f"package {i}: {boiler}" for i in range(MAX_SHARED_DOCUMENTS + 1)]
                 + ["the quick brown fox jumps over the lazy dog while seven wizards"])  # 12 words of 13: kept
    task = _write_task(tmp_path / "task", evaluation)
    files, report = decontaminate_files([_corpus(tmp_path, documents)], [task], tmp_path / "out",
                                        show_progress=False)
    kept = _kept_numbers(documents, files[0])
    assert set(range(1, len(documents) + 1)) - kept == {1, 2}
    # too short: "too short to use" and the four records' one-word labels
    assert (report.documents, report.dropped, report.too_short) == (len(documents), 2, 5)
    assert report.boilerplate > 0
    assert all(json.loads(line)["source"] == "web" for line in Path(files[0]).read_text().splitlines())
    # cached: a second call reads the report instead of rescanning
    again, report_again = decontaminate_files([_corpus(tmp_path, documents)], [task], tmp_path / "out",
                                              show_progress=False)
    assert again == files and report_again == report


_word = st.sampled_from("alpha beta gamma delta eps zeta eta theta iota kappa".split())


@settings(max_examples=25, deadline=None)
@given(evaluation=st.lists(st.lists(_word, min_size=1, max_size=20).map(" ".join), min_size=1, max_size=4),
       documents=st.lists(st.lists(_word, min_size=0, max_size=40).map(" ".join), min_size=1, max_size=14))
def test_matches_the_rule_written_plainly(tmp_path_factory, evaluation, documents):
    tmp = tmp_path_factory.mktemp("generated")
    documents = [d or "empty" for d in documents]
    task = _write_task(tmp / "task", evaluation + ["x"])
    expected = _brute_force(documents, evaluation + ["x"])
    if len(expected) == len(documents):
        with pytest.raises(PtlabError, match="nothing is left"):
            decontaminate_files([_corpus(tmp, documents)], [task], tmp / "out", show_progress=False)
        return
    files, report = decontaminate_files([_corpus(tmp, documents)], [task], tmp / "out", show_progress=False)
    assert report.dropped == len(expected)
    assert len(Path(files[0]).read_text().splitlines()) == len(documents) - len(expected)


def test_bundled_corpus_loses_debian_test_documents_with_their_summaries(tmp_path):
    """The first 3,000 Debian descriptions of the corpus ("<package>: <synopsis>", a blank line, the long
    description): those whose description is a test document are dropped, and enough of the rest is kept."""
    corpus = REPO / "data/corpus/train.jsonl.gz"
    with gzip.open(corpus, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in itertools.islice(
            (line for line in lines if '"debian_descriptions"' in line), 3000)]
    path = tmp_path / "debian.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with gzip.open(REPO / "data/tasks/debian_summaries/test.jsonl.gz", "rt", encoding="utf-8") as lines:
        test = [json.loads(line) for line in lines]
    test_documents = {t["document"] for t in test}
    leaked = [r for r in records if r["text"].partition("\n\n")[2] in test_documents]
    assert len(leaked) > 50  # the contamination this guards against is real
    files, report = decontaminate_files([str(path)], ["debian_summaries"], tmp_path / "out", show_progress=False)
    kept = [json.loads(line)["text"] for line in Path(files[0]).read_text().splitlines()]
    assert not [k for k in kept if k.partition("\n\n")[2] in test_documents]
    assert report.dropped < 2 * len(leaked) + 300  # boilerplate shared with test documents does not empty it


def test_pretraining_config_decontaminates_and_names_bad_tasks(tmp_path):
    task = _write_task(tmp_path / "task", ["one two three four five six seven eight nine ten eleven twelve thirteen"])
    documents = ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
                 "a clean document " * 20]
    cfg = Config()
    cfg.data.train_files = [_corpus(tmp_path, documents)]
    cfg.data.validation_files = []
    cfg.data.tokenizer = str(tmp_path / "tok")
    cfg.data.vocab_size = 300
    cfg.data.num_sentinels = 4
    tokenizer = ensure_tokenizer(cfg.data, show_progress=False)
    plain, _ = ensure_shards(cfg.data, tokenizer, show_progress=False)
    cfg.data.decontaminate = [task]
    cleaned, _ = ensure_shards(cfg.data, tokenizer, show_progress=False)
    assert cleaned.index["num_documents"] == 1 and plain.index["num_documents"] == 2
    assert cleaned.directory != plain.directory
    cfg.data.decontaminate = ["no_such_task"]
    with pytest.raises(PtlabError, match="data.decontaminate.*no_such_task.*not a bundled task"):
        ensure_shards(cfg.data, tokenizer, show_progress=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 2**63), max_size=300), st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_rolling_window_hashes_equal_the_direct_polynomial_hashes(ids, lengths):
    """matches() hashes every window length of a document from one prefix sum; the values must be the direct ones
    (the evaluation texts' n-grams are hashed directly), including documents shorter than a window."""
    from ptlab.data.decontaminate import _RollingHashes, window_hashes

    ids = np.array(ids, dtype=np.uint64)
    rolling = _RollingHashes()
    for n, hashes in rolling(ids, lengths).items():
        np.testing.assert_array_equal(hashes, window_hashes(ids, n))
