"""Every qconvert module imports on its own, and the modules' imports form a DAG.

The rule checked on the static graph: no module imports, directly or through others, a
module that imports it back — counting module-level imports, imports inside functions and
`if TYPE_CHECKING:` imports alike. Function-level imports are how heavy optional packages
(torch, transformers) stay lazy; they are not a way to hide a cycle, so they count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import qconvert

ROOT = Path(qconvert.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _target(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".")[: None if is_pkg else -1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str) -> set[str]:
    """The qconvert modules `mod` imports anywhere in its body."""
    path = MODULES[mod]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            tgt = _target(mod, path.name == "__init__.py", node)
            for a in node.names:  # `from . import x` names a module; `from .m import f` a name in one
                out.add(f"{tgt}.{a.name}" if f"{tgt}.{a.name}" in MODULES else tgt)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in MODULES and m != mod}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a path [a, b, ..., a], or [] when the graph is a DAG."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return []

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_module_imports_form_a_dag():
    graph = {m: imports_of(m) for m in MODULES}
    assert sum(map(len, graph.values())) > len(MODULES)  # the parser does see the imports
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


_IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "qconvert" or m.startswith("qconvert.")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_in_isolation():
    """Each module imported with no other qconvert module loaded before it (third-party
    packages stay loaded between modules, which keeps this to one interpreter)."""
    names = [m for m in MODULES if not m.endswith("__main__")]  # __main__ runs the CLI when imported
    assert len(names) > 50
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


HEAVY = ("torch", "transformers", "compressed_tensors")
_HEAVY_AFTER = """
import sys
from qconvert.cli.app import main
from qconvert.cli import app
import qconvert.pipeline, qconvert.routes
loaded = [[m for m in HEAVY if m in sys.modules]]
for args in COMMANDS:
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)
    loaded.append([m for m in HEAVY if m in sys.modules])
print(loaded)
"""


def test_cli_start_and_light_commands_import_no_torch(tmp_path):
    """torch (~1.5 s), transformers and compressed-tensors are imported by the routes that
    calibrate, run GPTQ or write safetensors, not when the CLI starts, nor by inspect,
    estimate-memory or a plain GGUF conversion. A fresh interpreter: this one has them."""
    example = ROOT.parent / "examples" / "tiny-llama"
    commands = [["estimate-memory", "--params", "7B"], ["inspect", str(example / "model.safetensors")],
                ["inspect", str(example), "--json"],
                ["quantize", str(example), "-o", str(tmp_path / "m.gguf"), "-t", "Q8_0"],
                ["inspect", str(tmp_path / "m.gguf")]]
    code = f"HEAVY = {HEAVY!r}\nCOMMANDS = {commands!r}\n" + _HEAVY_AFTER
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-1] == str([[]] * (1 + len(commands)))
