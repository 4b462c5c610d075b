"""The docs cannot drift from the code and the results. The lists of names in docs/configs-and-files.md are the
code's own: every config key whose value is one of a fixed set (read from config.py's checks, `_check(value in
NAMES, "key", ...)`, and from the objective and metric registries) and every command-line option with choices that
the page spells out; a name added to the code fails this test until the page lists it (the failure prints the row
to write). And no page calls a config "not run yet" once docs/results/ reports it."""

import argparse
import ast
import inspect
import re
from pathlib import Path

import ptlab.config
from ptlab.cli import build_parser
from ptlab.data.tasks import METRIC_NAMES
from ptlab.objectives import REGISTRY

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configs-and-files.md"
VALUES_HEADER = "| key | one of |"
ROW = re.compile(r"^\| `([\w.]+)` \| (`[^`|]+`(?:, `[^`|]+`)*) \|$")
# `--kind unigram\|bpe` in a table cell: an option and the choices it lists
OPTION_CHOICES = re.compile(r"(--[\w-]+) ((?:[\w.-]+\\\|)+[\w.-]+)")


def yaml_name(value: object) -> str:
    """A value as a config file writes it (true, not True)."""
    return {True: "true", False: "false"}[value] if isinstance(value, bool) else str(value)


def config_choices() -> dict[str, list[str]]:
    """Each config key with a fixed set of values, from config.py's own checks, plus the registries (objective
    names, task metrics) that other modules check."""
    choices = {}
    for node in ast.walk(ast.parse(inspect.getsource(ptlab.config))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_check" and len(node.args) >= 2):
            continue
        test, key = node.args[:2]
        if not (isinstance(test, ast.Compare) and isinstance(test.ops[0], ast.In) and isinstance(key, ast.Constant)):
            continue
        names = test.comparators[0]
        if isinstance(names, ast.Name):  # a tuple of config.py's, e.g. OPTIMIZERS
            values = getattr(ptlab.config, names.id)
        elif isinstance(names, ast.Tuple) and all(isinstance(e, ast.Constant) for e in names.elts):
            values = [e.value for e in names.elts]
        else:  # a condition, not a set of names (e.g. num_decoder_layers in (None, num_layers))
            continue
        choices[key.value] = [yaml_name(v) for v in values]
    return choices | {"objective.name": list(REGISTRY), "task.metrics": list(METRIC_NAMES)}


def page_values_table(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = lines.index(VALUES_HEADER) + 2  # past the header and its |---| line
    table = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        match = ROW.match(line)
        assert match, f"not a `key` | `name`, `name` row: {line}"
        table[match.group(1)] = re.findall(r"`([^`]+)`", match.group(2))
    return table


def row(key: str, values: list[str]) -> str:
    return f"| `{key}` | {', '.join(f'`{v}`' for v in values)} |"


def test_the_config_values_table_lists_what_the_code_accepts():
    code, page = config_choices(), page_values_table(PAGE.read_text(encoding="utf-8"))
    assert {"train.optimizer", "train.schedule", "train.loggers", "model.family", "train.precision"} <= set(code)
    wrong = [row(key, values) for key, values in code.items() if page.get(key) != values]
    assert not wrong, f"write these rows in {PAGE.name}'s '{VALUES_HEADER}' table:\n" + "\n".join(wrong)
    stale = set(page) - set(code)
    assert not stale, f"{PAGE.name} lists values for keys the code does not check: {sorted(stale)}"


def subcommand(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser | None:
    """The parser of `ptlab WORDS...` (e.g. ["tokenizer", "train"]), following the words that name subcommands."""
    for word in words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
    return parser


def test_the_command_table_lists_each_options_choices():
    parser = build_parser()
    checked, wrong = 0, []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        command = re.match(r"^\| `(?:[^`]*\s)?ptlab ([^`]*)`", line)
        if not command:
            continue
        words = command.group(1).split()
        sub = subcommand(parser, [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)][:2])
        options = {o: a for a in sub._actions for o in a.option_strings}
        for option, listed in OPTION_CHOICES.findall(command.group(1)):
            action = options.get(option)
            if action is None or action.choices is None:
                continue  # `--tokenizer words|DIR`: a word or a path, not argparse choices
            checked += 1
            if listed.split("\\|") != list(action.choices):
                wrong.append(f"ptlab {' '.join(words[:2])} {option} {'|'.join(action.choices)}")
    assert checked >= 5, "the command table no longer spells out option choices this test can find"
    assert not wrong, f"{PAGE.name}'s command table lists other choices than the code: " + "; ".join(wrong)


CONFIG_NAME = re.compile(r"[\w-]+\.yaml")


def test_no_config_with_results_is_called_not_run_yet():
    """A page that says a config was "not run yet" while docs/results/ reports its results has gone stale: the
    claim is read as the text from the config's name to the next config's name."""
    docs = PAGE.parent
    reported = {name for page in (docs / "results").rglob("*.md")
                for name in CONFIG_NAME.findall(page.read_text(encoding="utf-8"))}
    stale = []
    for page in [docs.parent / "README.md", *docs.rglob("*.md")]:
        text = page.read_text(encoding="utf-8")
        names = list(CONFIG_NAME.finditer(text))
        for name, after in zip(names, names[1:] + [None]):
            claim = text[name.end():after.start() if after else len(text)]
            if "not run yet" in " ".join(claim.split()) and name.group() in reported:
                stale.append(f"{page.name}: {name.group()}")
    assert not stale, f"called 'not run yet', but docs/results/ reports them: {stale}"
