import numpy as np
import pytest

from ptlab.data.tokenizer import load_tokenizer, train_tokenizer
from ptlab.errors import PtlabError


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_special_token_ids_follow_t5(kind, request):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    vocab = tok.tokenizer
    assert [vocab.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert tok.vocab_size == 2000
    assert vocab.token_to_id("<extra_id_0>") == tok.vocab_size - 1
    assert vocab.token_to_id("<extra_id_99>") == tok.vocab_size - 100
    assert list(tok.specials.sentinels) == list(range(1999, 1899, -1))


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_round_trip_on_corpus_text(kind, request, sample_docs):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    texts = [d["text"] for d in sample_docs]
    texts += ["Emoji 🙂, Greek λόγος, CJK 漢字, tabs\tand  double  spaces.\n\nNew paragraph ", "  leading spaces"]
    for text in texts:
        ids = tok.encode(text)
        assert 2 not in ids  # no <unk>: byte fallback (unigram) / byte level (bpe)
        assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sentinels_are_atomic_and_not_split(kind, request):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    ids = tok.encode("Thank you <extra_id_0> me to your party <extra_id_1> week.")
    assert tok.specials.sentinels[0] in ids and tok.specials.sentinels[1] in ids


def test_save_and_load(tmp_path, unigram_tokenizer):
    unigram_tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.fingerprint() == unigram_tokenizer.fingerprint()
    assert loaded.specials == unigram_tokenizer.specials
    assert loaded.encode("Hello world.") == unigram_tokenizer.encode("Hello world.")


def test_uint16_fits_and_unigram_compresses(unigram_tokenizer, sample_docs):
    text = " ".join(d["text"] for d in sample_docs[:20])
    ids = np.array(unigram_tokenizer.encode(text))
    assert ids.max() < 2**16
    assert len(ids) < len(text) / 2.5  # learned pieces, not characters


def test_too_small_vocab_is_a_clear_error():
    with pytest.raises(PtlabError, match="too small"):
        train_tokenizer(["some text"], "unigram", 300, 100, show_progress=False)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(PtlabError, match="no tokenizer"):
        load_tokenizer(tmp_path)


def test_tokenizer_sample_spreads_over_the_corpus(small_corpus, sample_docs):
    from ptlab.data.corpus import iter_texts, sample_texts

    everything = list(iter_texts([small_corpus["train"]]))
    total = sum(len(t.encode()) for t in everything)
    sample = list(sample_texts([small_corpus["train"]], max_bytes=total // 4))
    assert len(everything) // 5 <= len(sample) <= len(everything) // 3
    assert sample[-1] in everything[-len(everything) // 10:]  # reaches the end of the corpus, not just a prefix
    assert list(sample_texts([small_corpus["train"]], max_bytes=0)) == everything


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_specials_know_masks_modes_words_and_sentences(kind, unigram_tokenizer, bpe_tokenizer):
    tok = unigram_tokenizer if kind == "unigram" else bpe_tokenizer
    specials = tok.specials
    assert tok.id_to_token(specials.mask) == "<mask>"
    assert {k: tok.id_to_token(v[0]) for k, v in specials.modes.items()} == {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
    assert max(specials.mask, *(v[0] for v in specials.modes.values())) < min(specials.sentinels)
    ids = tok.encode("The cat sat on the mat. Then it left!")
    starts = [tok.decode(ids[i:]) for i in range(len(ids)) if specials.word_start[ids[i]]]
    assert any(s.startswith(" sat") for s in starts) and any(s.startswith(" Then") for s in starts)
    ends = [tok.decode(ids[:i + 1]) for i in range(len(ids)) if specials.sentence_end[ids[i]]]
    assert ends[-1].endswith("left!") and any(e.endswith("mat.") for e in ends)
    ordinary = specials.ordinary_ids
    assert not np.isin([0, 1, 2, specials.mask, *specials.sentinels], ordinary).any()
