"""The docs keep their promises: every ```sh runnable block in README.md and docs/**/*.md runs as written on the
bundled data, every relative link and #anchor resolves, the files and Python names they mention exist, and the
README stays short.

A file's runnable blocks run in order in one scratch directory that holds links to the repository's `configs/` and
`data/` and an empty `runs/`, with `ptlab` (and `python`) resolved to this interpreter. In a transcript (`$ ` before
each command) the lines shown after a command must appear in its output, in that order. Blocks that need minutes
(the demo, full studies, benchmarks, torchrun, Slurm, GPUs) are plain ```sh and are not run here."""

import importlib
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 200
FENCE = re.compile(r"^(`{3,}(?=[^`]*$)|~{3,})\s*(.*)$")  # a backtick fence's info has no backtick
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[(?:[^\]]|\][^(])*?\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).*?\1")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def split_fences(text: str) -> tuple[list[tuple[str, int, str]], list[tuple[int, str]]]:
    """(fenced blocks as (info string, line number of the opening fence, body), prose lines as (number, line))."""
    blocks, prose = [], []
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, info, start, body = match.group(1), match.group(2).strip(), number, []
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append((info, start, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append((number, line))
    assert fence is None, f"an unclosed code fence (opened on line {start})"
    return blocks, prose


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    blocks, _ = split_fences(path.read_text(encoding="utf-8"))
    return [(start, body) for info, start, body in blocks if info.split()[:1] == ["sh"] and "runnable" in info.split()]


def commands(block: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines it must print) per logical line: continuation lines joined, blank and comment lines
    left out. In a transcript (commands after a `$ ` prompt), the lines up to the next prompt are the output."""
    if not any(line.startswith("$ ") for line in block.splitlines()):
        lines = re.sub(r"\\\n", " ", block).splitlines()
        return [(line.strip(), []) for line in lines if line.strip() and not line.strip().startswith("#")]
    steps: list[tuple[str, list[str]]] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:].rstrip()
            while command.endswith("\\"):  # continuation lines belong to commands; output keeps its backslashes
                command = command[:-1] + " " + next(lines, "").rstrip()
            steps.append((command.strip(), []))
        elif steps and line.strip():
            steps[-1][1].append(line.rstrip())
    return steps


def visible(line: str) -> str:
    """The line as a page shows it: control characters (a stray U+0092 in an email) dropped, trailing space cut."""
    return "".join(c for c in line if unicodedata.category(c) != "Cc").rstrip()


def printed_in_order(expected: list[str], output: str) -> bool:
    """Whether the expected lines appear in the output in that order (other lines, such as progress, may be between)."""
    remaining = iter(visible(line) for line in output.splitlines())
    return all(visible(line) in remaining for line in expected)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_text(path: Path) -> str:
    """The file with its fenced blocks blanked out, line numbers kept."""
    text = path.read_text(encoding="utf-8")
    _, prose = split_fences(text)
    lines = [""] * len(text.splitlines())
    for number, line in prose:
        lines[number - 1] = line
    return "\n".join(lines)


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in prose_text(path).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    code_blanked = lambda code: re.sub(r"[^\n]", " ", code.group(0))  # keeps offsets and line breaks
    text = INLINE_CODE.sub(code_blanked, prose_text(path))
    problems = []
    for link in LINK.finditer(text):  # a link's text may wrap over lines
        target, number = link.group(1), text.count("\n", 0, link.start()) + 1
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{rel(path)} line {number}: {target}"
        if not linked.exists():
            problems.append(f"{where}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading with anchor #{anchor} in {linked.name}")
    return problems


REPO_PATH = re.compile(r"`((?:src|configs|benchmarks|scripts|studies|tests|data|docs|ptlab)/[^`\s{}*]*)`")
WRITTEN_BY_COMMANDS = {"benchmarks/results/bench.json"}  # `make bench` writes it; not in the repository
PYTHON_NAME = re.compile(r"`(ptlab(?:\.\w+)+)`|^from (ptlab(?:\.\w+)*) import (\w+)", re.MULTILINE)


def missing_repo_paths(path: Path) -> list[str]:
    """Repository paths the text names in backticks (`src/ptlab/config.py`) that do not exist."""
    named = set(REPO_PATH.findall(path.read_text(encoding="utf-8"))) - WRITTEN_BY_COMMANDS
    return sorted(name for name in named if not (ROOT / name).exists() and not (ROOT / "src" / name).exists())


def unresolvable_python_names(path: Path) -> list[str]:
    """Dotted names (`ptlab.train.loop.pretrain`, `from ptlab.x import y`) that do not import."""
    problems = []
    for dotted, module, name in PYTHON_NAME.findall(path.read_text(encoding="utf-8")):
        parts = (dotted or f"{module}.{name}").split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                found = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                found = getattr(found, attribute, None)
            if found is None:
                problems.append(".".join(parts))
            break
    return problems


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_the_code_the_docs_name_exists(path):
    assert missing_repo_paths(path) == []
    assert unresolvable_python_names(path) == []


def test_moved_paths_and_python_names_are_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("`src/ptlab/config.py` `ptlab/models/kernels.py` `ptlab.train.loop.pretrain` `ptlab.models.flops`\n"
                    "`src/ptlab/gone.py` `ptlab/gone.py` `ptlab.train.loop.gone` `ptlab.gone`\n"
                    "```python\nfrom ptlab.models.generate import generate\nfrom ptlab.models import gone\n```\n",
                    encoding="utf-8")
    assert missing_repo_paths(page) == ["ptlab/gone.py", "src/ptlab/gone.py"]
    assert unresolvable_python_names(page) == ["ptlab.train.loop.gone", "ptlab.gone", "ptlab.models.gone"]


def test_the_readme_is_short_and_keeps_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    head = "\n".join(text.splitlines()[:10])
    assert "make demo" in head and "make test" in head
    assert "\n## Your own data\n" in text  # tests/test_readme_walkthrough.py runs that section's block


def test_the_readme_tour_runs_every_stage():
    tour = " ".join(command for _, body in runnable_blocks(README) for command, _ in commands(body))
    for stage in ["ptlab clean", "ptlab tokenizer train", "ptlab tokenize", "ptlab pretrain", "ptlab finetune",
                  "ptlab study", "ptlab export-hf"]:
        assert stage + " " in tour, f"the README's runnable tour has no `{stage}`"


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_relative_links_and_anchors_resolve(path):
    assert broken_links(path) == []


def test_the_link_checker_reports_missing_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## The objectives grid (`study-tiny.yaml`)\n## Twice\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#the-objectives-grid-study-tinyyaml) [ok](other.md#twice-1) [ok](#page)\n"
                    "[web](https://example.com/x.md) `[code](nowhere.md)`\n```sh\n[in a block](nowhere.md)\n```\n"
                    "[gone](missing.md) [bad\nanchor](other.md#nope)\n", encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 2
    assert "missing.md: no such file" in problems[0] and "#nope" in problems[1]


def test_runnable_blocks_are_found_by_their_info_string(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```sh\nnot run\n```\n\n"
                    "```sh runnable\nptlab a \\\n    --b c  # note\n# a comment\n\nptlab d\n```\n"
                    "````md\n```sh runnable\nnested, not a block of its own\n```\n````\n"
                    "```` ```sh runnable ```` in a sentence is code, not a fence\n", encoding="utf-8")
    blocks = runnable_blocks(page)
    assert [start for start, _ in blocks] == [5]
    assert commands(blocks[0][1]) == [("ptlab a      --b c  # note", []), ("ptlab d", [])]


def test_a_transcript_pairs_each_command_with_its_output():
    steps = commands("$ ptlab a \\\n      --b\nfirst line ends in \\\n  second line\n\n$ ptlab c\n")
    assert steps == [("ptlab a        --b", ["first line ends in \\", "  second line"]), ("ptlab c", [])]
    assert printed_in_order(["first line", "  second line"], "first line\nprogress\n  second line  \nwrote it\n")
    assert not printed_in_order(["first line", "  second line"], "  second line\nfirst line\n")
    assert not printed_in_order(["first line"], "first line, changed\n")
    assert printed_in_order(["you cant"], "you can\u0092t\n")  # an invisible control character is not shown


def scratch_directory(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory laid out like the repository root for the docs' commands, and the environment to run them in."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ["configs", "data"]:
        (work / name).symlink_to(ROOT / name)
    (work / "runs").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, argv in {"ptlab": [sys.executable, "-m", "ptlab"], "python": [sys.executable]}.items():
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
        shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("OMP_NUM_THREADS", "1")
    return work, env


@pytest.mark.parametrize("path", [p for p in DOCS if runnable_blocks(p)], ids=rel)
def test_runnable_commands_run_as_written(path, tmp_path):
    work, env = scratch_directory(tmp_path)
    for start, body in runnable_blocks(path):
        for command, expected in commands(body):
            run = subprocess.run(["bash", "-c", command], check=False, cwd=work, env=env, capture_output=True,
                                 text=True, timeout=600)
            where = f"{rel(path)} block at line {start}: `{command}`"
            assert run.returncode == 0, f"{where} failed:\n{run.stderr[-3000:]}"
            assert printed_in_order(expected, run.stdout), f"{where} printed something else:\n{run.stdout[-3000:]}"
