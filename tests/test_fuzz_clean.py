"""Property-based tests of `ptlab clean`'s output side: with odd text (lone surrogates included) and odd output or
report paths, a run either succeeds with a complete output and report, or fails in one line leaving neither a
temporary file nor a complete-looking output. (Reading inputs is tested with the readers.)"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from fuzz_strategies import assert_cli_error_is_one_line, examples, leftovers, run_cli
from hypothesis import given
from hypothesis import strategies as st

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank today."
# Text that survives C4's rules (three sentences of five words) with an odd piece inside, or odd text alone.
ODD_PIECES = st.sampled_from(["\ud800", "\udfff", "\x00", "é", "🙂", "\u2028", "\r", "{", "lorem ipsum", "\ufffd"])
TEXTS = st.one_of(
    st.lists(ODD_PIECES, max_size=3).map(lambda pieces: "\n".join([SENTENCE + "".join(pieces)] * 3)),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
)
OUTPUTS = st.sampled_from(["out.jsonl", "out.jsonl.gz", "new/deeper/out.jsonl", "EXISTING_DIR", "A_FILE/out.jsonl",
                           "INPUT"])
REPORTS = st.sampled_from([None, "report.json", "new/report.json", "EXISTING_DIR", "A_FILE/report.json", "OUTPUT"])


def _resolve(name: str | None, tmp: Path, source: Path, output: Path | None = None) -> Path | None:
    special = {"EXISTING_DIR": tmp / "existing", "INPUT": source, "OUTPUT": output}
    return special.get(name, tmp / name) if name is not None else None


@examples(60)
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), output_name=OUTPUTS, report_name=REPORTS)
def test_clean_writes_a_complete_output_or_nothing(tmp_path_factory, texts, output_name, report_name):
    tmp = tmp_path_factory.mktemp("clean")
    (tmp / "existing").mkdir()
    (tmp / "A_FILE").write_text("not a directory")
    source = tmp / "input.jsonl"
    # ensure_ascii: a lone surrogate travels as the JSON escape "\ud800", as it would from another tool
    source.write_text("".join(json.dumps({"text": t, "url": f"http://x/{i}"}) + "\n" for i, t in enumerate(texts)))
    output = _resolve(output_name, tmp, source)
    report = _resolve(report_name, tmp, source, output)
    before = {p: p.stat().st_mtime_ns for p in tmp.rglob("*")}
    argv = ["clean", str(source), "--output", str(output), "--quiet"] + (["--report", str(report)] if report else [])
    code, _, stderr = run_cli(argv)
    assert_cli_error_is_one_line(code, stderr)
    assert leftovers(tmp) == []
    if output_name in ("EXISTING_DIR", "A_FILE/out.jsonl", "INPUT") or report_name in ("EXISTING_DIR", "OUTPUT",
                                                                                        "A_FILE/report.json"):
        assert code == 2, stderr
        assert {p: p.stat().st_mtime_ns for p in tmp.rglob("*") if p in before} == before  # nothing was touched
        return
    assert code == 0, stderr
    opener = gzip.open if output.name.endswith(".gz") else open
    with opener(output, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    if report is not None:
        written = json.loads(report.read_text(encoding="utf-8"))
        assert written["documents_out"] == len(lines)
