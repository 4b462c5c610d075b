"""Gopher's quality rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1), a page-level alternative to
C4's line rules (`ptlab clean --rules gopher`). A page is kept when:
  gopher_words        it holds 50 to 100,000 words;
  gopher_word_length  the mean word length is 3 to 10 characters;
  gopher_symbols      "#" and "..." (each counted once) are fewer than 0.1 per word;
  gopher_bullets      fewer than 90% of lines start with a bullet point;
  gopher_ellipsis     fewer than 30% of lines end with an ellipsis;
  gopher_alphabetic   at least 80% of words contain a letter;
  gopher_stop_words   it uses at least 2 of: the, be, to, of, and, that, have, with.
Words are whitespace-separated tokens. Gopher's repetition rules are not included.
"""

from __future__ import annotations

from ptlab.clean.rules import GOPHER_RULES, CleanConfig, Report

__all__ = ["GOPHER_RULES", "gopher_failure", "gopher_page"]
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("\u2022", "\u2023", "\u25e6", "\u2043", "\u2219", "*", "-", "\u2013", "\u2014")
ELLIPSES = ("...", "\u2026")


def gopher_failure(text: str) -> str | None:
    """The first Gopher rule the page fails, or None when it passes them all."""
    words = text.split()
    if not 50 <= len(words) <= 100_000:
        return "gopher_words"
    if not 3 <= sum(len(w) for w in words) / len(words) <= 10:
        return "gopher_word_length"
    symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
    if symbols / len(words) >= 0.1:
        return "gopher_symbols"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and sum(line.startswith(BULLETS) for line in lines) / len(lines) >= 0.9:
        return "gopher_bullets"
    if lines and sum(line.endswith(ELLIPSES) for line in lines) / len(lines) >= 0.3:
        return "gopher_ellipsis"
    if sum(any(c.isalpha() for c in w) for w in words) / len(words) < 0.8:
        return "gopher_alphabetic"
    if len(STOP_WORDS.intersection(w.lower() for w in words)) < 2:
        return "gopher_stop_words"
    return None


def gopher_page(text: str, cfg: CleanConfig, report: Report) -> str | None:
    """The page unchanged when it passes Gopher's rules (those not in `cfg.skip`), else None."""
    failed = gopher_failure(text)
    if failed is not None and cfg.on(failed):
        report.page(failed, text, len(text.splitlines()))
        return None
    return text
