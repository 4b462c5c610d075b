"""C4's page-cleaning rules, as tensorflow-datasets `text/c4_utils.py` (C4 3.1.0, config en) defines them.

Per page, in C4's order:
  page_length    drop pages longer than 190,000 characters                              (page)
  url_dedup      keep the newest page per normalised URL              (ptlab.clean.dedup, page)
  clean_page     each stripped line, in order:
    long_word      drop a line with a "word" longer than 1,000 characters               (line)
    citations      remove [1], [edit], [citation needed] markers                        (edits lines)
    terminal_punct drop a line not ending in . ? ! or " (or ending in ...)             (line)
    min_words      drop a line with fewer than 5 words                                  (line)
    lorem_ipsum    drop the PAGE if a line that got this far contains "lorem ipsum"     (page)
    javascript     drop a line containing "javascript"                                  (line)
    curly_brace    drop the PAGE if a line that got this far contains "{"               (page)
    policy         drop a line with "terms of use", "privacy policy", cookie notices    (line)
    min_sentences  drop the page if the kept lines hold fewer than 3 sentences          (page)
  dedup_lines    each line kept on one page only, then >= 3 sentences again (ptlab.clean.dedup)
  language       langdetect: keep pages in `language` with probability >= 0.99        (page)
  bad_words      drop pages matching the LDNOOBW list                                   (page)

Rules that kill a page look only at lines that survived the line checks before them ("lorem ipsum" on a line
without terminal punctuation does not drop the page). Sentence counting is offline (see `count_sentences`).
The rules' known flaws (they remove lists, tables, maths and code, and the word list removes text by and about
minorities disproportionately) are reproduced, not fixed: this is C4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

RULES = ("page_length", "url_dedup", "long_word", "citations", "terminal_punct", "min_words", "lorem_ipsum",
         "javascript", "curly_brace", "policy", "min_sentences", "dedup_lines", "language", "bad_words")
GOPHER_RULES = ("gopher_words", "gopher_word_length", "gopher_symbols", "gopher_bullets", "gopher_ellipsis",
                "gopher_alphabetic", "gopher_stop_words")  # see ptlab.clean.gopher
ALL_RULES = RULES + GOPHER_RULES
EXAMPLES_PER_RULE = 3
EXAMPLE_CHARS = 120

CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
END_MARKS = (".", "?", "!", '"')
ELLIPSIS = "..."
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")


@dataclass(frozen=True)
class CleanConfig:
    skip: frozenset[str] = frozenset()
    language: str = "en"
    min_language_probability: float = 0.99
    min_words_per_line: int = 5
    min_sentences: int = 3
    max_word_length: int = 1000
    max_page_length: int = 190_000
    rules: str = "c4"  # "c4": C4's line rules; "gopher": Gopher's page-level quality rules instead

    def on(self, rule: str) -> bool:
        return rule not in self.skip

    @property
    def active_rules(self) -> tuple[str, ...]:
        """The rules of this rule set, in order (skipped ones included)."""
        if self.rules == "gopher":
            return ("page_length", "url_dedup", *GOPHER_RULES, "dedup_lines", "language", "bad_words")
        return RULES


@dataclass
class RuleCount:
    lines: int = 0
    pages: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, lines: int, pages: int, example: str | None) -> None:
        self.lines += lines
        self.pages += pages
        if example is not None and len(self.examples) < EXAMPLES_PER_RULE:
            flat = " ".join(example.split())
            self.examples.append(flat if len(flat) <= EXAMPLE_CHARS else flat[:EXAMPLE_CHARS - 3] + "...")


@dataclass
class Report:
    """What each rule removed: lines and pages (citations: lines edited), with a few short examples."""

    docs_in: int = 0
    docs_out: int = 0
    lines_in: int = 0
    lines_out: int = 0
    bad_input: int = 0
    bad_input_examples: list[str] = field(default_factory=list)
    rules: dict[str, RuleCount] = field(default_factory=lambda: {name: RuleCount() for name in ALL_RULES})

    def line(self, rule: str, text: str) -> None:
        self.rules[rule].add(1, 0, text)

    def page(self, rule: str, text: str, lines: int = 0) -> None:
        """A page removed by `rule`, taking `lines` lines with it."""
        self.rules[rule].add(lines, 1, text)

    def bad(self, message: str) -> None:
        self.bad_input += 1
        if len(self.bad_input_examples) < 10:
            self.bad_input_examples.append(message)

    def merge(self, other: "Report") -> None:
        for name in ("docs_in", "docs_out", "lines_in", "lines_out", "bad_input"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.bad_input_examples.extend(other.bad_input_examples[:10 - len(self.bad_input_examples)])
        for name, count in other.rules.items():
            mine = self.rules[name]
            mine.lines += count.lines
            mine.pages += count.pages
            mine.examples.extend(count.examples[:EXAMPLES_PER_RULE - len(mine.examples)])

    def to_dict(self, cfg: CleanConfig | None = None) -> dict:
        names = (cfg or CleanConfig()).active_rules
        return {"documents_in": self.docs_in, "documents_out": self.docs_out, "lines_in": self.lines_in,
                "lines_out": self.lines_out, "bad_input": self.bad_input,
                "bad_input_examples": self.bad_input_examples,
                "skipped_rules": sorted((cfg or CleanConfig()).skip),
                "rules": {name: {"lines_removed": self.rules[name].lines, "pages_removed": self.rules[name].pages,
                                 "examples": self.rules[name].examples} for name in names}}

    def format_table(self, cfg: CleanConfig | None = None) -> str:
        cfg = cfg or CleanConfig()
        def share(part: int, whole: int) -> str:
            return f"{part / whole:6.1%}" if whole else "     -"

        rows = [f"documents {self.docs_in:,} in -> {self.docs_out:,} out ({share(self.docs_out, self.docs_in).strip()} "
                f"kept); lines {self.lines_in:,} in -> {self.lines_out:,} out "
                f"({share(self.lines_out, self.lines_in).strip()} kept)",
                "", f"{'rule':<18} {'lines':>10} {'pages':>9}  example",
                f"{'-' * 18} {'-' * 10} {'-' * 9}  {'-' * 40}"]
        for name in cfg.active_rules:
            count = self.rules[name]
            lines = f"{count.lines:,}" + ("*" if name == "citations" else "")
            example = "(skipped)" if name in cfg.skip else (count.examples[0] if count.examples else "")
            rows.append(f"{name:<18} {lines:>10} {count.pages:>9,}  {example[:60]}")
        if cfg.rules == "c4":
            rows.append("* citations edits lines (removes the markers) instead of dropping them")
        if self.bad_input:
            rows.append(f"bad input skipped: {self.bad_input:,} (e.g. {self.bad_input_examples[0]})")
        return "\n".join(rows)


# Sentence boundaries without NLTK's punkt model (a download): a run of . ! ? (plus closing quotes or brackets)
# followed by whitespace and a capital, digit, quote or bracket, or by the end of the text. Unlike punkt it knows
# only a short list of abbreviations, so "Mr. Smith" counts as one sentence but a rarer abbreviation before a
# capitalised word counts as a boundary; punkt also splits some sentences that lack a following capital.
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig",
                  "inc", "ltd", "co", "mt", "u.s", "a.m", "p.m", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
                  "sep", "sept", "oct", "nov", "dec"}
_BOUNDARY = re.compile(r"([.!?]+)[\"')\]\u201d\u2019]*(?=\s+[\"'(\[\u201c\u2018A-Z0-9]|\s*$)")


def count_sentences(text: str) -> int:
    count = 0
    for match in _BOUNDARY.finditer(text):
        if match.group(1) == ".":
            end = match.start(1)
            word = text[max(text.rfind(" ", 0, end), text.rfind("\n", 0, end)) + 1:end]
            if word.lower().lstrip("(\"'") in _ABBREVIATIONS:
                continue
        count += 1
    if text.strip() and count == 0:
        count = 1  # a non-empty text holds at least one (unterminated) sentence, as punkt counts
    return count


def clean_page(text: str, cfg: CleanConfig, report: Report) -> str | None:
    """C4's `clean_page`: the kept lines joined by newlines, or None when the page is dropped."""
    lines = text.splitlines()
    kept: list[str] = []
    sentences = 0

    def drop_page(rule: str, line: str) -> None:
        # the page's remaining lines (kept ones and those not yet seen) go with it
        report.page(rule, line, lines=len(kept) + 1 + (len(lines) - 1 - index))

    for index, raw in enumerate(lines):
        line = raw.strip()
        if cfg.on("long_word") and any(len(word) > cfg.max_word_length for word in line.split()):
            report.line("long_word", line)
            continue
        if cfg.on("citations"):
            uncited = CITATION.sub("", line)
            if uncited != line:
                report.line("citations", line)
            line = uncited
        if cfg.on("terminal_punct") and (not line.endswith(END_MARKS) or line.endswith(ELLIPSIS)):
            report.line("terminal_punct", line)
            continue
        if cfg.on("min_words") and len(line.split()) < cfg.min_words_per_line:
            report.line("min_words", line)
            continue
        lower = line.lower()
        if cfg.on("lorem_ipsum") and "lorem ipsum" in lower:
            drop_page("lorem_ipsum", line)
            return None
        if cfg.on("javascript") and "javascript" in lower:
            report.line("javascript", line)
            continue
        if cfg.on("curly_brace") and "{" in line:
            drop_page("curly_brace", line)
            return None
        if cfg.on("policy") and any(p in lower for p in POLICY_SUBSTRINGS):
            report.line("policy", line)
            continue
        sentences += count_sentences(line)
        kept.append(line)
    if cfg.on("min_sentences") and sentences < cfg.min_sentences:
        report.page("min_sentences", "\n".join(kept) or text, lines=len(kept))
        return None
    return "\n".join(kept).strip()


@lru_cache(maxsize=1)
def bad_words() -> tuple[str, ...]:
    text = resources.files("ptlab").joinpath("resources/badwords_en.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


@lru_cache(maxsize=1)
def _bad_words_pattern() -> re.Pattern:
    # C4: `(?:\W|^)(word1|word2|...)(?:\W|$)` on the lower-cased page (escaped here: some entries hold symbols)
    return re.compile(r"(?:\W|^)(" + "|".join(re.escape(w) for w in bad_words()) + r")(?:\W|$)")


def bad_word_in(text: str) -> str | None:
    match = _bad_words_pattern().search(text.lower())
    return match.group(1) if match else None


def language_of(text: str) -> tuple[str, float] | None:
    """langdetect's top language and its probability (seeded, so repeatable), or None when it cannot tell."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        top = detect_langs(text)[0]
    except LangDetectException:
        return None
    return top.lang, top.prob


def final_filters(text: str, cfg: CleanConfig, report: Report) -> bool:
    """The page-level rules after de-duplication: language, then bad words. True when the page is kept."""
    lines = len(text.splitlines())
    if cfg.on("language"):
        detected = language_of(text)
        if detected is None or detected[0] != cfg.language or detected[1] < cfg.min_language_probability:
            report.page("language", f"[{detected[0]} {detected[1]:.2f}] {text}" if detected else f"[?] {text}",
                        lines)
            return False
    if cfg.on("bad_words"):
        word = bad_word_in(text)
        if word is not None:
            report.page("bad_words", f"[{word}] {text}", lines)
            return False
    return True
