"""C4's rules on hand-written pages, their order, de-duplication, language, bad input, and the pipeline."""

import gzip
import hashlib
import json
import random
import re
import subprocess
import sys

import pytest

from ptlab.clean.dedup import normalize_url
from ptlab.clean.engine import clean_files
from ptlab.clean.rules import CleanConfig, Report, bad_words, clean_page, count_sentences
from ptlab.errors import PtlabError

GOOD = ["The quick brown fox jumps over the lazy dog near the river bank.",
        "She sells sea shells by the sea shore every single summer morning.",
        "Peter Piper picked a peck of pickled peppers for his dear grandmother.",
        "How much wood would a woodchuck chuck if a woodchuck could chuck wood?"]


def page(*extra, good=GOOD):
    return "\n".join([*good, *extra])


def cleaned(text, **cfg):
    report = Report()
    return clean_page(text, CleanConfig(**cfg), report), report


def test_a_clean_page_passes_unchanged():
    text, report = cleaned(page())
    assert text == page()
    assert all(c.lines == 0 and c.pages == 0 for c in report.rules.values())


@pytest.mark.parametrize("line,rule", [
    ("This line has no terminal punctuation at all here", "terminal_punct"),
    ("This line trails off into an ellipsis and more...", "terminal_punct"),
    ("Too short.", "min_words"),
    ("Please enable JavaScript in your browser to see this.", "javascript"),
    ("By using this site you agree to our Terms of Use today.", "policy"),
    ("This website uses cookies to improve your experience here.", "policy"),
    ("A word " + "x" * 1001 + " that is far too long for anyone.", "long_word"),
])
def test_line_rules_drop_only_the_line(line, rule):
    text, report = cleaned(page(line))
    assert text == page()
    assert report.rules[rule].lines == 1 and report.rules[rule].pages == 0


def test_a_1000_character_word_is_fine_and_1001_is_not():
    ok = "A word " + "y" * 1000 + " that is just long enough here."
    text, _ = cleaned(page(ok))
    assert ok in text


def test_quotes_count_as_terminal_punctuation():
    line = 'He said that he would come back again "tomorrow."'
    assert line in cleaned(page(line))[0]
    assert 'She asked "is this the right way to go"' in cleaned(page('She asked "is this the right way to go"'))[0]


def test_citation_markers_are_removed_before_the_punctuation_check():
    text, report = cleaned(page("The battle ended in a decisive victory for the rebels.[1]",
                                "Historians still debate the exact number of casualties.[citation needed]",
                                "The treaty was signed a few months later in the capital.[edit]"))
    assert "The battle ended in a decisive victory for the rebels." in text
    assert "[" not in text and report.rules["citations"].lines == 3


@pytest.mark.parametrize("marker,rule", [("Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "lorem_ipsum"),
                                         ("The function returns { a: 1 } when called with no args.", "curly_brace")])
def test_page_killers_on_a_surviving_line_drop_the_page(marker, rule):
    text, report = cleaned(page(marker))
    assert text is None
    assert report.rules[rule].pages == 1 and report.rules[rule].lines == len(GOOD) + 1


@pytest.mark.parametrize("marker", ["lorem ipsum dolor sit amet without punctuation",  # dropped first by punct
                                    "lorem ipsum.",  # dropped first by min_words
                                    "var x = { a: 1 }",  # no terminal punctuation
                                    "Enable javascript { now } to continue using this site."])  # javascript first
def test_page_killers_on_lines_already_dropped_do_not_drop_the_page(marker):
    text, report = cleaned(page(marker))
    assert text == page()
    assert report.rules["lorem_ipsum"].pages == 0 and report.rules["curly_brace"].pages == 0


def test_pages_need_three_sentences():
    text, report = cleaned("\n".join(GOOD[:2]))
    assert text is None and report.rules["min_sentences"].pages == 1
    assert cleaned("\n".join(GOOD[:3]))[0] is not None
    assert cleaned("One sentence here that is long. Another one follows it now. And a third one ends it.")[0]


def test_sentence_counting():
    assert count_sentences("Mr. Smith went to Washington. He liked it.") == 2
    assert count_sentences("It costs 3.5 dollars. Really! Is that so? Yes.") == 4
    assert count_sentences('He said "stop." Then he left.') == 2
    assert count_sentences("no punctuation at all") == 1


def test_skipping_a_rule():
    line = "This line has no terminal punctuation at all here"
    assert line in cleaned(page(line), skip=frozenset({"terminal_punct"}))[0]


def test_url_normalisation_matches_c4():
    assert normalize_url("https://www.example.com/a/b/") == "example.com/a/b"
    assert normalize_url("http://example.com/page?utm_source=x&y=1") == "example.com/page"
    assert normalize_url("http://example.com/page?id=7") == "example.com/page?id=7"


def test_bad_words_list_is_the_403_entry_superset():
    words = bad_words()
    assert len(words) == 403 and "2g1c" in words


# ---- the whole pipeline -------------------------------------------------------------------------------------------

def write_jsonl(path, records, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    with open(path, "ab") as f:
        for line in raw_lines:
            f.write(line)
    return path


def read_jsonl(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


SHARED = "This exact sentence appears on several different pages of the site."
GERMAN = ("Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.\n"
          "Sie verkauft Muscheln am Meeresufer jeden einzelnen Sommermorgen.\n"
          "Peter Piper pflückte einen Scheffel eingelegter Paprika für seine Oma.\n"
          "Wie viel Holz würde ein Murmeltier hacken, wenn es Holz hacken könnte?")


def own(name, count=3):
    """Sentences that appear on page `name` only."""
    return [f"The page called {name} tells its own story in sentence number {i} of the set." for i in range(count)]


def corpus(tmp_path):
    records = [
        {"id": "a", "url": "https://www.site.org/a", "timestamp": "2019-01-01T00:00:00Z",
         "text": "\n".join(own("a") + [SHARED])},
        {"id": "b", "url": "http://site.org/b?utm_source=feed", "text": "\n".join(own("b") + [SHARED])},
        {"id": "a-newer", "url": "http://site.org/a/", "timestamp": "2020-06-01T00:00:00Z",
         "text": "\n".join(own("a-newer") + [SHARED, "Menu", "Home | About | Contact"])},
        {"id": "de", "text": GERMAN},
        {"id": "short", "text": "Just a title"},
        {"id": "long", "text": "\n".join(own("long")) + "\n" + ("word " * 40_000)},
        {"id": "bad", "text": "\n".join(own("bad") + ["The old sailor called the captain a bastard in front of the crew."])},
        {"id": "keep", "text": "\n".join(own("keep"))},
    ]
    garbage = [b"{not json}\n", b'{"no_text": 1}\n', b'{"text": "caf\xe9 au lait"}\n', b"[1, 2]\n"]
    return write_jsonl(tmp_path / "in.jsonl", records, garbage)


def test_pipeline_end_to_end(tmp_path):
    report = clean_files([corpus(tmp_path)], tmp_path / "out.jsonl", tmp_path / "report.json", show_progress=False)
    out = {r["id"]: r["text"] for r in read_jsonl(tmp_path / "out.jsonl")}
    # "a" lost to its newer copy; German, the title, the 200,000-character page and the bad word go
    assert list(out) == ["b", "a-newer", "keep"]
    assert sum(SHARED in text for text in out.values()) == 1  # the shared line stays on exactly one page
    assert out["keep"] == "\n".join(own("keep"))
    assert out["a-newer"].startswith("\n".join(own("a-newer"))) and "Menu" not in out["a-newer"]
    rules = json.loads((tmp_path / "report.json").read_text())["rules"]
    assert rules["url_dedup"]["pages_removed"] == 1 and rules["language"]["pages_removed"] == 1
    assert rules["page_length"]["pages_removed"] == 1 and rules["bad_words"]["pages_removed"] == 1
    assert rules["dedup_lines"]["lines_removed"] == 1 and rules["terminal_punct"]["lines_removed"] >= 2
    assert report.bad_input == 4 and report.docs_in == 8 and report.docs_out == 3
    assert any("in.jsonl:9: invalid JSON" in e for e in report.bad_input_examples)
    assert any("in.jsonl:11: not UTF-8" in e for e in report.bad_input_examples)


def test_cross_document_duplicates_keep_one_copy_deterministically(tmp_path):
    records = [{"id": str(i), "url": f"http://x.org/{i}", "text": page(SHARED, good=GOOD[:3] + [g])}
               for i, g in enumerate(["One more unique sentence is here for page zero of the set.",
                                      "Another unique sentence appears only here on page number one.",
                                      "A third unique sentence lives on page two and nowhere else."])]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    clean_files([path], tmp_path / "out.jsonl", cfg=CleanConfig(skip=frozenset({"language"})), show_progress=False)
    first = read_jsonl(tmp_path / "out.jsonl")
    holders = [r["id"] for r in first if SHARED in r["text"]]
    assert len(holders) == 1
    write_jsonl(tmp_path / "reversed.jsonl", records[::-1])
    clean_files([tmp_path / "reversed.jsonl"], tmp_path / "out2.jsonl", cfg=CleanConfig(skip=frozenset({"language"})),
                show_progress=False)
    assert [r["id"] for r in read_jsonl(tmp_path / "out2.jsonl") if SHARED in r["text"]] == holders


def test_cleaning_is_idempotent_and_workers_change_nothing(tmp_path):
    source = corpus(tmp_path)
    clean_files([source], tmp_path / "one.jsonl", show_progress=False)
    clean_files([source], tmp_path / "two.jsonl", workers=2, show_progress=False)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    clean_files([tmp_path / "one.jsonl"], tmp_path / "again.jsonl", show_progress=False)
    assert read_jsonl(tmp_path / "again.jsonl") == read_jsonl(tmp_path / "one.jsonl")


def test_strict_mode_stops_at_the_first_bad_record(tmp_path):
    with pytest.raises(PtlabError, match=r"in.jsonl:9: invalid JSON"):
        clean_files([corpus(tmp_path)], tmp_path / "out.jsonl", strict=True, show_progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_plain_text_files_and_empty_files(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "one.txt").write_text(page())
    (tmp_path / "docs" / "empty.txt").write_text("")
    (tmp_path / "docs" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    report = clean_files([tmp_path / "docs"], tmp_path / "out.jsonl", show_progress=False)
    [record] = read_jsonl(tmp_path / "out.jsonl")
    assert record["text"] == page() and record["id"].endswith("one.txt")
    assert report.bad_input == 2


def test_cli_prints_the_table_and_rejects_unknown_rules(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ptlab", "clean", str(corpus(tmp_path)), "--output",
                          str(tmp_path / "out.jsonl.gz"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "terminal_punct" in run.stdout and "documents 8 in" in run.stdout
    assert read_jsonl(tmp_path / "out.jsonl.gz")
    bad = subprocess.run([sys.executable, "-m", "ptlab", "clean", str(tmp_path / "in.jsonl"), "--output",
                          str(tmp_path / "x.jsonl"), "--skip", "terminal_punctuation"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_bad_words_match_whole_entries_only():
    from ptlab.clean.rules import bad_word_in

    assert bad_word_in("He called the captain a bastard in public.") == "bastard"
    assert bad_word_in("A classic assessment of the assets.") is None  # "ass" inside words does not count
    assert bad_word_in("Plural forms such as dildos are not entries.") is None  # C4's list is matched exactly


def test_ray_engine_equals_the_local_engine(tmp_path):
    pytest.importorskip("ray.data")
    source = corpus(tmp_path)
    local = clean_files([source], tmp_path / "local.jsonl", show_progress=False)
    on_ray = clean_files([source], tmp_path / "ray.jsonl", engine="ray", show_progress=False)
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert on_ray.to_dict() == local.to_dict()


@pytest.mark.parametrize("documents", [1500, pytest.param(None, marks=pytest.mark.slow)], ids=["slice", "whole"])
def test_ray_engine_equals_the_local_engine_on_the_messy_corpus(tmp_path, documents):
    """Real SpamAssassin mail: its first 1,500 emails by default (a quarter of the time), all 6,046 in test-slow."""
    pytest.importorskip("ray.data")
    from pathlib import Path

    messy = Path(__file__).resolve().parents[1] / "data" / "messy" / "spam_assassin.jsonl.gz"
    if documents is not None:
        with gzip.open(messy, "rt", encoding="utf-8") as f:
            lines = [line for _, line in zip(range(documents), f)]
        messy = tmp_path / "messy.jsonl"
        messy.write_text("".join(lines), encoding="utf-8")
    local = clean_files([messy], tmp_path / "local.jsonl", workers=2, show_progress=False)
    on_ray = clean_files([messy], tmp_path / "ray.jsonl", engine="ray", show_progress=False)
    assert local.docs_in == (documents or 6046) and 0 < local.docs_out < local.docs_in
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert on_ray.to_dict() == local.to_dict()


def test_gopher_rules():
    from ptlab.clean.gopher import gopher_failure

    prose = ("The history of the town is long and full of stories that have been told to the children of each "
             "generation, and with every telling the tale of the old mill and the river grows a little richer. ")
    assert gopher_failure(prose * 2) is None
    assert gopher_failure(prose[:100]) == "gopher_words"
    assert gopher_failure(("#tag " * 5 + prose) * 3) == "gopher_symbols"
    assert gopher_failure("\n".join("- " + line for line in (prose * 3).split(", "))) == "gopher_bullets"
    assert gopher_failure(" ".join(["12345 67890 ++--"] * 30) + " the and of") == "gopher_alphabetic"
    assert gopher_failure(" ".join(["blue green yellow purple orange"] * 15)) == "gopher_stop_words"


def test_gopher_rule_set_in_the_pipeline(tmp_path):
    text = " ".join(["The river and the mill have stood with the town for a hundred years of quiet work."] * 6)
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "prose", "text": text},
                                               {"id": "list", "text": "Menu\nHome\nAbout us"}])
    report = clean_files([path], tmp_path / "out.jsonl", cfg=CleanConfig(rules="gopher"), show_progress=False)
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["prose"]
    assert report.rules["gopher_words"].pages == 1 and report.rules["terminal_punct"].lines == 0


# ---- line de-duplication against tensorflow-datasets' selection rule --------------------------------------------

def _c4_hash_text(text):  # c4_utils._hash_text
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _c4_normalize_url(url):  # c4_utils.normalize_url
    url = re.sub(r"https?:\/\/(www\.)?", "", url)
    url = re.sub(r"\?(utm_|ref|feed).*", "", url)
    return url.rstrip("/")


def _c4_remove_duplicate_text(pages, min_num_sentences=3):
    """A direct transcription of c4_utils.remove_duplicate_text over (key, text) pages: every line goes to the page
    whose key's `_hash_text` is smallest (`Top.PerKey(1, key=_hash_text, reverse=True)`), then
    `_remove_lines_from_text` (ptlab's sentence counter standing in for punkt)."""
    selected = {}  # _emit_url_to_lines, then the top-1 combiner
    for key, text in pages:
        for line in text.split("\n"):
            hashed = _c4_hash_text(line.strip().lower())
            if hashed not in selected or _c4_hash_text(key) < _c4_hash_text(selected[hashed]):
                selected[hashed] = key
    out = {}
    for key, text in pages:
        lines_to_keep = {line for line, owner in selected.items() if owner == key}
        new_lines, hashed_lines = [], set()
        for line in text.split("\n"):
            hashed = _c4_hash_text(line.strip().lower())
            if hashed in lines_to_keep and hashed not in hashed_lines:
                new_lines.append(line)
                hashed_lines.add(hashed)
        new_text = "\n".join(new_lines)
        if new_text and count_sentences(new_text) >= min_num_sentences:
            out[key] = new_text
    return out


def _generated_pages(count=1200, shared=250, seed=0):
    """Pages of clean lines (each passes C4's line rules): one to three of their own and two to six from a pool
    shared by the whole set, sometimes in another letter case or twice on a page. Most pages have a URL (with
    scheme, "www." and tracking tails to normalise), the rest only an id."""
    rng = random.Random(seed)
    words = ["river", "garden", "window", "market", "silver", "morning", "harbour", "letter", "orchard", "lantern"]

    def sentence(tag):
        return f"{tag} mentions the {' '.join(rng.choice(words) for _ in range(4))} today."

    pool = [sentence(f"Shared sentence {i}") for i in range(shared)]
    records = []
    for i in range(count):
        lines = [sentence(f"Page {i} line {j}") for j in range(rng.randint(1, 3))]
        for line in rng.sample(pool, rng.randint(2, 6)):
            lines.insert(rng.randint(0, len(lines)), line.upper() if rng.random() < 0.1 else line)
        if rng.random() < 0.1:
            lines.append(lines[0])  # a repeat within the page
        record = {"id": f"doc-{i}", "text": "\n".join(lines)}
        if i % 5:
            record["url"] = rng.choice(["http://", "https://www.", "https://"]) + f"site{i % 37}.org/p/{i}" + \
                rng.choice(["", "/", "?utm_source=feed", "?ref=home"])
        records.append(record)
    return records


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_line_dedup_keeps_the_page_tensorflow_datasets_keeps(tmp_path, engine):
    if engine == "ray":
        pytest.importorskip("ray.data")
    records = _generated_pages()
    keys = [_c4_normalize_url(r["url"]) if "url" in r else r["id"] for r in records]
    texts = dict(zip(keys, (r["text"] for r in records)))
    expected = _c4_remove_duplicate_text(list(texts.items()))
    assert len(texts) == len(records)
    assert 0 < len(expected) < len(records)  # some pages lose so many lines that they go
    assert any(text != texts[key] for key, text in expected.items())  # others lose some
    # on this set, ordering the keys by a signed 64-bit prefix of their md5 (the old rule) picks other pages
    digests = sorted(_c4_hash_text(k) for k in keys)
    assert digests != sorted(digests, key=lambda d: int.from_bytes(bytes.fromhex(d[:16]), "big", signed=True))

    path = write_jsonl(tmp_path / "in.jsonl", records)
    cfg = CleanConfig(skip=frozenset({"language", "bad_words"}))
    report = clean_files([path], tmp_path / "out.jsonl", cfg=cfg, engine=engine, show_progress=False)
    assert report.docs_in == len(records)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert {(_c4_normalize_url(r["url"]) if "url" in r else r["id"]): r["text"] for r in out} == expected


def test_an_over_long_page_is_dropped_before_it_can_win_its_url(tmp_path):
    """C4 filters page length before de-duplicating URLs: the older copy of a URL survives its too-long newer copy."""
    records = [{"id": "old", "url": "https://www.x.org/a", "timestamp": "2019-01-01T00:00:00Z", "text": page()},
               {"id": "long", "url": "http://x.org/a/", "timestamp": "2019-06-01T00:00:00Z",
                "text": page("Filler words make this page far too long to keep. " * 4000)}]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    report = clean_files([path], tmp_path / "out.jsonl", cfg=CleanConfig(skip=frozenset({"language"})),
                         show_progress=False)
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["old"]
    assert report.rules["page_length"].pages == 1 and report.rules["url_dedup"].pages == 0
