"""Show what an objective does to a text: `ptlab objectives show` and `ptlab objectives list`.

Texts are tokenized either by a trained tokenizer directory or, with `words`, by splitting on whitespace into a
vocabulary built from the texts themselves (specials first, sentinels at the top as in T5), which makes the
objectives' effect easy to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptlab.config import check_seed, parse_value
from ptlab.errors import PtlabError
from ptlab.objectives import MODE_TOKENS, REGISTRY, BoundObjective, SpecialIds, build_objective, parameter_defaults

SPECIAL_WORDS = ["<pad>", "</s>", "<unk>", "<mask>", *MODE_TOKENS.values()]
SENTENCE_CLOSERS = "\"')]\u201d\u2019"


@dataclass
class WordVocabulary:
    """Whitespace-separated words as tokens, for showing objectives on plain text."""

    words: list[str]
    num_sentinels: int = 100

    @classmethod
    def from_texts(cls, texts: list[str], num_sentinels: int = 100) -> "WordVocabulary":
        seen = dict.fromkeys(w for text in texts for w in text.split())
        return cls(SPECIAL_WORDS + [w for w in seen if w not in SPECIAL_WORDS], num_sentinels)

    @property
    def vocab_size(self) -> int:
        return len(self.words) + self.num_sentinels

    def encode(self, text: str) -> list[int]:
        index = {w: i for i, w in enumerate(self.words)}
        return [index.get(w, 2) for w in text.split()]

    def id_to_token(self, i: int) -> str:
        i = int(i)
        if i >= len(self.words):
            return f"<extra_id_{self.vocab_size - 1 - i}>"
        return self.words[i]

    @property
    def specials(self) -> SpecialIds:
        sentence_end = np.zeros(self.vocab_size, dtype=bool)
        sentence_end[len(SPECIAL_WORDS):len(self.words)] = [
            w.rstrip(SENTENCE_CLOSERS).endswith((".", "!", "?")) for w in self.words[len(SPECIAL_WORDS):]]
        sentinels = tuple(range(self.vocab_size - 1, len(self.words) - 1, -1))
        return SpecialIds(pad=0, eos=1, unk=2, sentinels=sentinels, mask=3,
                          modes={k: (SPECIAL_WORDS.index(t),) for k, t in MODE_TOKENS.items()},
                          vocab_size=self.vocab_size, word_start=np.ones(self.vocab_size, dtype=bool),
                          sentence_end=sentence_end)


def parse_settings(settings: list[str]) -> dict:
    params = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PtlabError(f"--set {item!r} must look like key=value, e.g. noise_density=0.3")
        params[key.strip()] = parse_value(raw)
    return params


def show_objective(name: str, texts: list[str], tokenizer: str = "words", seed: int = 0,
                   settings: list[str] | None = None) -> tuple[BoundObjective, list[dict]]:
    """Apply objective `name` to each text; returns the objective and, per text, its tokens, inputs and targets
    as token strings."""
    check_seed(seed)
    objective, _ = build_objective(name, parse_settings(settings or []))
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise PtlabError("no text to show: give --text or a --text-file with non-empty lines")
    if tokenizer == "words":
        vocab = WordVocabulary.from_texts(texts)
    else:
        from ptlab.data.tokenizer import load_tokenizer

        vocab = load_tokenizer(tokenizer)
    specials = vocab.specials
    shown = []
    for number, text in enumerate(texts):
        tokens = np.asarray(vocab.encode(text), dtype=np.int64)
        if len(tokens) < 2:
            raise PtlabError(f"text {number + 1} has {len(tokens)} token(s); objectives need at least 2")
        example = objective(tokens, np.random.default_rng([seed, number]), specials, inputs_length=len(tokens))
        shown.append({"tokens": [vocab.id_to_token(i) for i in tokens],
                      "inputs": [vocab.id_to_token(i) for i in example.inputs],
                      "targets": [vocab.id_to_token(i) for i in example.targets]})
    return objective, shown


def format_shown(objective: BoundObjective, shown: list[dict]) -> str:
    join = " ".join
    settings = ", ".join(f"{k}={v}" for k, v in objective.as_dict().items()) or "no parameters"
    lines = [f"{objective.name} ({settings})"]
    if objective.decoder_only:
        lines.append("decoder-only: the model reads inputs + targets; the loss covers the targets")
    for n, item in enumerate(shown):
        if len(shown) > 1:
            lines.append(f"[{n + 1}]")
        lines.append(f"  original  {join(item['tokens'])}")
        lines.append(f"  inputs    {join(item['inputs'])}")
        lines.append(f"  targets   {join(item['targets'])}")
    return "\n".join(lines)


def format_list() -> str:
    lines = []
    for name, spec in REGISTRY.items():
        lines.append(f"{name:<26} {spec.summary}")
        defaults = parameter_defaults(spec)
        if defaults:
            lines.append(" " * 27 + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    return "\n".join(lines)
