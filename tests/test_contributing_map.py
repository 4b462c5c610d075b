"""docs/contributing.md, the map of where to add an objective, a model family, a reader, a task, a metric, a logger
or a study kind, names only what exists: every file it lists (and every sibling file `(or lm.py, ...)`), every
table or function it names in parentheses after a file (found in that file's text), every other repository path
and glob in its text; and it has a section for each kind of part, each naming the source files to touch."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "docs" / "contributing.md"
SECTIONS = ("An objective", "A model family", "A reader", "A downstream task", "A metric", "A logger",
            "A study kind")
ROOT_FILES = {"pyproject.toml", "constraints.txt", "Makefile"}
REPO_PATH = re.compile(r"`((?:src|configs|data|docs|tests|scripts|studies|benchmarks)/[^`\s]*)`")
FILE_NAME = re.compile(r"^[\w.-]+\.(?:py|md|yaml|toml|txt|json)$")
# the head of a bullet: `path` (`NAME`, ...) and `path` ...: up to the first colon outside backticks and parentheses
HEAD_PART = re.compile(r"`([^`]+)`|\(([^)]*)\)")


def sections(text: str) -> dict[str, list[str]]:
    """Each `## ` heading with its bullets, a bullet's wrapped lines joined."""
    found: dict[str, list[str]] = {}
    bullets: list[str] = []
    in_bullet = False
    for line in text.splitlines():
        if line.startswith("## "):
            bullets, in_bullet = found.setdefault(line[3:].strip(), []), False
        elif line.startswith("- "):
            bullets.append(line[2:])
            in_bullet = True
        elif line.startswith("  ") and in_bullet:
            bullets[-1] += " " + line.strip()
        else:  # a blank line or a paragraph: not part of a bullet
            in_bullet = False
    return found


def head(bullet: str) -> str:
    depth, quoted = 0, False
    for i, char in enumerate(bullet):
        if char == "`":
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
        elif not quoted and not depth and char == ":":
            return bullet[:i]
    return bullet


def problems_of(bullet: str) -> list[str]:
    """What a bullet's head names that does not exist: its files, their siblings and the names in them."""
    problems, path = [], None
    for match in HEAD_PART.finditer(head(bullet)):
        ticked, group = match.groups()
        if ticked is not None:
            path = ROOT / ticked
            if not path.exists():
                problems.append(f"no file {ticked}")
            continue
        if path is None:
            problems.append(f"names before any file: ({group})")
            continue
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        for name in re.findall(r"`([^`]+)`", group):
            if FILE_NAME.match(name):  # `(or lm.py, bart.py beside it)`: files next to the one named
                if not (path.parent / name).is_file():
                    problems.append(f"no file {name} beside {path.relative_to(ROOT)}")
            elif not re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text):
                problems.append(f"{name} not in {path.relative_to(ROOT)}")
        for quote in re.findall(r'"([^"]+)"', group):  # `(the section "Experiment tracking")`
            if quote not in text:
                problems.append(f'"{quote}" not in {path.relative_to(ROOT)}')
    return problems


def test_every_file_and_name_the_map_gives_exists():
    problems = []
    for title, bullets in sections(MAP.read_text(encoding="utf-8")).items():
        for bullet in bullets:
            problems += [f"{title}: {problem}" for problem in problems_of(bullet)]
    assert not problems, "docs/contributing.md names what does not exist:\n" + "\n".join(problems)


def test_every_repository_path_and_glob_in_the_map_exists():
    text = MAP.read_text(encoding="utf-8")
    named = set(REPO_PATH.findall(text)) | {name for name in re.findall(r"`([^`/\s]+)`", text) if name in ROOT_FILES}
    assert len(named) > 30
    missing = [name for name in sorted(named) if not (any(ROOT.glob(name)) if "*" in name else (ROOT / name).exists())]
    assert not missing, f"docs/contributing.md names paths that do not exist: {missing}"


def test_the_map_has_a_section_for_each_kind_of_part_naming_source_files():
    found = sections(MAP.read_text(encoding="utf-8"))
    for kind in SECTIONS:
        title = next((t for t in found if t.startswith(kind)), None)
        assert title is not None, f"docs/contributing.md has no section '## {kind}...'"
        files = [m for bullet in found[title] for m in re.findall(r"`([^`]+)`", head(bullet))]
        assert any(f.startswith("src/ptlab/") for f in files), f"'{title}' names no source file"
    assert "(docs/contributing.md)" in (ROOT / "README.md").read_text(encoding="utf-8"), "the README links the map"


def test_the_checker_reports_a_missing_file_a_missing_name_and_a_missing_sibling():
    assert problems_of("`src/ptlab/objectives/registry.py` (`SPECS`, `NO_SUCH_TABLE`): text") == [
        "NO_SUCH_TABLE not in src/ptlab/objectives/registry.py"]
    assert problems_of("`src/ptlab/no_such.py`: text") == ["no file src/ptlab/no_such.py"]
    assert problems_of("`src/ptlab/objectives/t5.py` (or `lm.py`, `gone.py` beside it): text") == [
        "no file gone.py beside src/ptlab/objectives/t5.py"]
    assert problems_of('`docs/data.md` (the table under "No such heading").') == [
        '"No such heading" not in docs/data.md']
