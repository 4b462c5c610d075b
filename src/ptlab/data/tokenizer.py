"""Train and load tokenizers (HF `tokenizers`) with T5's special-token layout.

Ids: <pad>=0, </s>=1, <unk>=2, then the learned vocabulary, then <mask> and UL2's mode tokens [NLU] [NLG] [S2S],
then K sentinels at the top with <extra_id_0> at the highest id (vocab_size - 1), as in T5's vocabulary. Two kinds:
- `unigram` (T5/SentencePiece style): Metaspace pre-tokenizer, plus 256 byte pieces <0x00>..<0xFF> as fallback so
  that any text round-trips;
- `bpe` (GPT-2 style): byte-level, so there are no unknown tokens at all.
Saved as a standard `tokenizer.json` plus `ptlab_tokenizer.json` (kind, special ids, training fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ptlab.errors import PtlabError
from ptlab.files import read_json_object, write_text_atomic
from ptlab.objectives import MODE_TOKENS, SpecialIds

PAD, EOS, UNK, MASK, BOS = "<pad>", "</s>", "<unk>", "<mask>", "<s>"
EXTRA_SPECIALS = [MASK, *MODE_TOKENS.values()]  # added after training, just below the sentinels
SENTENCE_END = (".", "!", "?")
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
# Text the Unigram layout would misread: its word marker "▁" (decoded as a space) and the spelling of a byte piece
# (decoded as that byte). Such text is encoded as byte pieces, so that every text round-trips exactly.
_UNIGRAM_MARKERS = re.compile("(\u2581|<(?=0x[0-9A-F]{2}>))")
_SURROGATE = re.compile("[\ud800-\udfff]")
# The trainers allocate tables by vocabulary size (BPE aborts the process on 2**31); real vocabularies stay far below.
MAX_VOCAB_SIZE = 2**21
# Training only: words longer than this are cut (BPE's trainer takes minutes on one megabyte-long word).
MAX_TRAINING_WORD = 1000
_LONG_WORD = re.compile(f"[^ ]{{{MAX_TRAINING_WORD}}}")


def without_surrogates(text: str) -> str:
    """`text` with lone UTF-16 surrogates (from JSON escapes such as "\\ud800") replaced by U+FFFD: they are not
    characters, cannot be encoded as UTF-8, and the tokenizers library refuses them."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _training_text(text: str) -> str:
    return _LONG_WORD.sub(lambda m: m.group(0) + " ", without_surrogates(text))


def sentinel_token(i: int) -> str:
    return f"<extra_id_{i}>"


@dataclass
class PtlabTokenizer:
    """A `tokenizers.Tokenizer` plus the ids ptlab's objectives need."""

    tokenizer: Tokenizer
    kind: str
    num_sentinels: int
    pad_id: int = 0
    eos_id: int = 1
    unk_id: int = 2

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @cached_property
    def specials(self) -> SpecialIds:
        token_id = self.tokenizer.token_to_id
        sentinels = tuple(token_id(sentinel_token(i)) for i in range(self.num_sentinels))
        modes = {kind: (token_id(t),) if token_id(t) is not None else tuple(self.encode(t))
                 for kind, t in MODE_TOKENS.items()}
        texts = [self.tokenizer.decode([i], skip_special_tokens=False) for i in range(self.vocab_size)]
        word_start = np.array([t[:1].isspace() for t in texts], dtype=bool)
        closers = "\"')]\u201d\u2019"
        sentence_end = np.array([t.rstrip().rstrip(closers).endswith(SENTENCE_END) for t in texts], dtype=bool)
        special = [i for i in map(token_id, [MASK, BOS, *MODE_TOKENS.values()]) if i is not None]
        special += [self.pad_id, self.eos_id, self.unk_id, *sentinels]
        word_start[special] = True  # a special token is a word of its own
        sentence_end[special] = False
        return SpecialIds(pad=self.pad_id, eos=self.eos_id, unk=self.unk_id, sentinels=sentinels, mask=token_id(MASK), bos=token_id(BOS),
                          modes=modes, vocab_size=self.vocab_size, word_start=word_start, sentence_end=sentence_end)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        texts = [without_surrogates(t) for t in texts]
        out = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        if self.kind == "unigram":
            for i, text in enumerate(texts):
                if _UNIGRAM_MARKERS.search(text):
                    out[i] = self._encode_with_markers(text)
        return out

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """[vocab_size] int64: the UTF-8 bytes each id contributes to the text it decodes to, for bits per byte
        (`ptlab.train.batches.target_bytes`). Special tokens (pad, EOS, unk, <mask>, mode tokens, sentinels, any
        added special) count 0. Byte-level BPE: one byte per character of the piece (GPT-2's byte-to-unicode
        table maps each byte to one character, "Ġ" the space); otherwise a byte piece <0xNN> is one byte and a
        "▁" one space. So the ids of `encode(text)` sum to `len(text.encode("utf-8"))` exactly for ptlab's own
        tokenizers (its Unigram prepends no "▁"). An external SentencePiece tokenizer that prepends "▁" to the
        text counts that space too (one byte per encoded text, part of its first word)."""
        spec = json.loads(self.tokenizer.to_str())
        byte_level = "ByteLevel" in _decoder_types(spec.get("decoder"))
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if byte_level:
                counts[i] = sum(1 if c in alphabet else len(c.encode("utf-8")) for c in token)
            elif byte_fallback and _BYTE_PIECE.fullmatch(token):
                counts[i] = 1
            else:
                counts[i] = len(token.replace("\u2581", " ").encode("utf-8", "replace"))
        for added_id, added in self.tokenizer.get_added_tokens_decoder().items():  # sentinels, <mask>, ...
            counts[added_id] = 0 if added.special else len(added.content.encode("utf-8", "replace"))
        counts[[self.pad_id, self.eos_id, self.unk_id]] = 0
        return counts

    @cached_property
    def _byte_ids(self) -> list[int]:
        return [self.tokenizer.token_to_id(piece) for piece in BYTE_PIECES]

    def _encode_with_markers(self, text: str) -> list[int]:
        """Ordinary stretches as usual, each marker character as its UTF-8 byte pieces."""
        ids: list[int] = []
        for number, part in enumerate(_UNIGRAM_MARKERS.split(text)):
            if number % 2:  # split() puts the captured markers at odd positions
                ids.extend(self._byte_ids[b] for b in part.encode("utf-8"))
            elif part:
                ids.extend(self.tokenizer.encode(part, add_special_tokens=False).ids)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self.tokenizer.id_to_token(int(i))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()[:16]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / "tokenizer.json", self.tokenizer.to_str(pretty=False))
        meta = {"kind": self.kind, "num_sentinels": self.num_sentinels, "vocab_size": self.vocab_size,
                "pad_id": self.pad_id, "eos_id": self.eos_id, "unk_id": self.unk_id,
                "fingerprint": self.fingerprint()}
        write_text_atomic(directory / "ptlab_tokenizer.json", json.dumps(meta, indent=2) + "\n")


_BYTE_PIECE = re.compile("<0x[0-9A-F]{2}>")


def _decoder_types(decoder: dict | None) -> list[str]:
    """The types of a tokenizer.json decoder, a Sequence's parts included."""
    if not decoder:
        return []
    return [decoder.get("type"), *(t for part in decoder.get("decoders") or [] for t in _decoder_types(part))]


def load_tokenizer(directory: str | Path) -> PtlabTokenizer:
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise PtlabError(f"no tokenizer at {path} (train one with `ptlab tokenizer train`)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the tokenizers library raises plain Exceptions for malformed files
        raise PtlabError(f"{path}: not a valid tokenizer.json ({err})") from None
    meta_path = directory / "ptlab_tokenizer.json"
    if meta_path.is_file():
        kind, num_sentinels, ids = _read_meta(meta_path)
        if num_sentinels > count_sentinels(tokenizer):
            raise PtlabError(f"{meta_path}: num_sentinels {num_sentinels} but tokenizer.json has "
                             f"{count_sentinels(tokenizer)} sentinels")
    else:  # a tokenizer.json from elsewhere: find its special tokens by name
        kind, num_sentinels, ids = "external", count_sentinels(tokenizer), external_special_ids(tokenizer)
    for name, token_id in ids.items():
        if token_id is None or not 0 <= token_id < 2**32 or tokenizer.id_to_token(token_id) is None:
            raise PtlabError(f"{path}: no {name} token (id {token_id})")
    return PtlabTokenizer(tokenizer, kind, num_sentinels, pad_id=ids["pad"], eos_id=ids["eos"], unk_id=ids["unk"])


def _read_meta(path: Path) -> tuple[str, int, dict[str, int]]:
    """(kind, num_sentinels, special ids) from ptlab_tokenizer.json, every field checked."""
    meta = read_json_object(path)
    kind, num_sentinels = meta.get("kind"), meta.get("num_sentinels")
    if kind not in ("unigram", "bpe", "external"):
        raise PtlabError(f"{path}: 'kind' must be unigram, bpe or external, got {kind!r}")
    ids = {k: meta.get(f"{k}_id", default) for k, default in (("pad", 0), ("eos", 1), ("unk", 2))}
    for key, value in (("num_sentinels", num_sentinels), *((f"{k}_id", v) for k, v in ids.items())):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise PtlabError(f"{path}: '{key}' must be a non-negative integer, got {value!r}")
    return kind, num_sentinels, ids


def count_sentinels(tokenizer: Tokenizer) -> int:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return sum(1 for t in vocab if t.startswith("<extra_id_"))


def external_special_ids(tokenizer: Tokenizer, pad: int | None = None, eos: int | None = None,
                         unk: int | None = None) -> dict[str, int | None]:
    """Special ids of a tokenizer not trained by ptlab: given ones first, else found by their usual names
    (T5/BART/Llama `</s>`, GPT-2 `<|endoftext|>`); a vocabulary without pad or unk uses EOS for them."""
    def find(*names: str) -> int | None:
        return next((tokenizer.token_to_id(n) for n in names if tokenizer.token_to_id(n) is not None), None)

    eos = eos if eos is not None else find(EOS, "<|endoftext|>", "<|end_of_text|>")
    pad = pad if pad is not None else find(PAD, "<|pad|>")
    unk = unk if unk is not None else find(UNK)
    return {"pad": pad if pad is not None else eos, "eos": eos, "unk": unk if unk is not None else eos}


def _train(tokenizer: Tokenizer, texts: Iterable[str], trainer) -> None:
    try:
        tokenizer.train_from_iterator(texts, trainer=trainer)
    except Exception as err:
        if type(err) is not Exception:  # ours (a PtlabError from reading the texts) or a bug: as it is
            raise
        # the tokenizers library raises plain Exceptions, e.g. "The vocabulary is not large enough to contain all
        # chars" when the text holds more distinct characters than the vocabulary has room for
        raise PtlabError(f"tokenizer training failed: {err}") from None


def train_tokenizer(texts: Iterable[str], kind: str = "unigram", vocab_size: int = 8192, num_sentinels: int = 100,
                    show_progress: bool = True) -> PtlabTokenizer:
    """Train on an iterator of texts. `vocab_size` counts everything: specials, byte pieces and sentinels."""
    if num_sentinels < 0:
        raise PtlabError(f"the number of sentinels must be >= 0, got {num_sentinels}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise PtlabError(f"vocab size {vocab_size:,} is too large (at most {MAX_VOCAB_SIZE:,})")
    texts = map(_training_text, texts)
    reserved = 3 + len(EXTRA_SPECIALS) + num_sentinels + (len(BYTE_PIECES) if kind == "unigram" else 0)
    if vocab_size <= reserved + 16:
        raise PtlabError(f"vocab size {vocab_size} is too small: {reserved} ids are reserved for special tokens")
    learned = vocab_size - num_sentinels - len(EXTRA_SPECIALS)
    if kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        # No "▁" prepended to the text: SentencePiece's prepend-then-strip loses a leading space, and ptlab's
        # tokenizers must round-trip any text exactly (a document's first word gets its own piece instead).
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        trainer = trainers.UnigramTrainer(vocab_size=learned - len(BYTE_PIECES), special_tokens=[PAD, EOS, UNK],
                                          unk_token=UNK, show_progress=show_progress, max_piece_length=16)
        _train(tokenizer, texts, trainer)
        tokenizer = _with_byte_fallback(tokenizer)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=learned, special_tokens=[PAD, EOS, UNK], show_progress=show_progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        _train(tokenizer, texts, trainer)
    else:
        raise PtlabError(f"unknown tokenizer kind {kind!r} (use unigram or bpe)")
    # Sentinels added in reverse so that <extra_id_0> gets the highest id, as in T5.
    tokenizer.add_special_tokens(EXTRA_SPECIALS + [sentinel_token(i) for i in reversed(range(num_sentinels))])
    return PtlabTokenizer(tokenizer, kind, num_sentinels)


def _with_byte_fallback(tokenizer: Tokenizer) -> Tokenizer:
    """Rebuild a trained Unigram model with byte pieces after the specials (SentencePiece's layout) and fallback on."""
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]  # [[piece, score], ...], specials first
    learned = [(p, s) for p, s in vocab[3:] if p not in BYTE_PIECES]
    lowest = min((s for _, s in learned), default=0.0) - 1.0
    pieces = vocab[:3] + [[b, lowest] for b in BYTE_PIECES] + [list(v) for v in learned]
    spec["model"] = {"type": "Unigram", "unk_id": 2, "vocab": pieces, "byte_fallback": True}
    rebuilt = Tokenizer.from_str(json.dumps(spec))
    rebuilt.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return rebuilt


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)
