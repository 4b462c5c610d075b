"""The package's shape: every module imports on its own, no import cycles (not even inside functions), and
dependencies point one way, from the command line down to the config: cli -> lab -> downstream -> train -> data,
models, clean -> config -> objectives -> errors, files, schema, families (the family table, which config reads)."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [  # a module may import from its own layer and the ones below it
    {"ptlab.errors", "ptlab.files", "ptlab.schema", "ptlab.families", "ptlab.precision"},
    {"ptlab.objectives"},
    {"ptlab.config"},
    {"ptlab.data", "ptlab.models", "ptlab.clean"},
    {"ptlab.train"},
    {"ptlab.downstream"},
    {"ptlab.lab"},
    {"ptlab.cli", "ptlab.__main__"},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "ptlab").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ptlab modules `name` imports anywhere in its source, functions included."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ptlab"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("ptlab"):
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def third_party(path: Path) -> set[str]:
    return {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import) for alias in node.names} | {
        (node.module or "").split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and not node.level}


def layer(name: str) -> int | None:
    for number, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return number
    return None


def test_every_module_has_a_layer():
    assert [name for name in modules() if name != "ptlab" and layer(name) is None] == []


def test_dependencies_point_down_and_never_cycle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items() if name != "ptlab"}
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if b != "ptlab" and layer(b) > layer(a)]
    assert upward == []
    # strongly connected components with more than one module are cycles (Tarjan)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_objectives_never_import_torch_and_models_never_import_data():
    known = modules()
    assert [n for n, p in known.items() if n.startswith("ptlab.objectives") and "torch" in third_party(p)] == []
    assert [n for n, p in known.items() if n.startswith("ptlab.models")
            and any(m.startswith("ptlab.data") for m in imports(n, p, known))] == []


def test_every_module_imports_on_its_own():
    """Each module in a fresh process of its own (forked from one that has loaded only third-party libraries), so a
    module that works only when another ptlab module was imported first fails here."""
    names = [name for name in modules() if name != "ptlab.__main__"]
    script = textwrap.dedent(f"""
        import os, sys, traceback
        # third-party libraries shared by the children (torch's compiler, which @torch.compiler.disable loads, takes
        # 2 s a child); no ptlab module is loaded here
        import numpy, scipy.optimize, tokenizers, torch, torch._dynamo, yaml
        failed = []
        for name in {names!r}:
            pid = os.fork()
            if pid == 0:
                try:
                    __import__(name)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if status:
                failed.append(name)
        print("FAILED", failed)
        sys.exit(1 if failed else 0)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         cwd=SRC.parent)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
