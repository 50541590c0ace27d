"""Configuration is explicit (docs DESIGN.md, principle 10): the library never writes the process environment, and
never reads TRITON_INTERPRET, which is Triton's own switch (whether Triton tactics are offered on a CPU is
``kiln.tactics.TacticLibrary(triton_on_cpu=True)``; whether Triton interprets is asked of Triton).

The walk flags, in every module of kiln/:
- a write to ``os.environ``: assigning or deleting an item, its mutating methods (``pop``, ``update``,
  ``setdefault``, ``clear``, ``popitem``, ``__setitem__``, ``__delitem__``), ``os.putenv`` / ``os.unsetenv``;
- the string "TRITON_INTERPRET" as a value in code (a key looked up, compared or passed; docstrings and messages
  that name the variable are longer strings and are not flagged).
"""
from __future__ import annotations

import ast
from pathlib import Path

KILN = Path(__file__).resolve().parent.parent / "kiln"
# (file, what the walk reports) -> why it is allowed
ALLOWED = {
    ("kiln/threads.py", "os.environ['OMP_WAIT_POLICY'] = ..."):
        "libgomp reads its wait policy from the environment only, once, when torch loads it: there is no API to "
        "ask for PASSIVE, and it is set only when the user chose no policy and torch is not loaded yet",
    ("kiln/backends/triton/aot.py", "'TRITON_INTERPRET'"):
        "compile_in_subprocess leaves the variable out of the environment it gives a child Python (which must "
        "compile for a GPU); this process's environment is neither read for it nor changed",
}
_MUTATORS = {"pop", "update", "setdefault", "clear", "popitem", "__setitem__", "__delitem__"}


def _is_environ(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) \
        and node.value.id == "os"


def _findings(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            if isinstance(t, ast.Subscript) and _is_environ(t.value):
                key = ast.unparse(t.slice)
                out.append((node.lineno, f"os.environ[{key}] = ..." if not isinstance(node, ast.Delete)
                            else f"del os.environ[{key}]"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr in _MUTATORS and _is_environ(f.value):
                out.append((node.lineno, f"os.environ.{f.attr}(...)"))
            if f.attr in ("putenv", "unsetenv") and isinstance(f.value, ast.Name) and f.value.id == "os":
                out.append((node.lineno, f"os.{f.attr}(...)"))
        if isinstance(node, ast.Constant) and node.value == "TRITON_INTERPRET" and id(node) not in docstrings:
            out.append((node.lineno, "'TRITON_INTERPRET'"))
    return out


def test_the_library_never_writes_the_environment_nor_reads_triton_interpret():
    found, used = [], set()
    for path in sorted(KILN.rglob("*.py")):
        rel = path.relative_to(KILN.parent).as_posix()
        source = path.read_text()
        for line, what in _findings(ast.parse(source)):
            if (rel, what) in ALLOWED:
                used.add((rel, what))
            else:
                found.append(f"{rel}:{line}: {what}")
    assert not found, "environment written or TRITON_INTERPRET read by the library:\n" + "\n".join(found)
    assert used == set(ALLOWED), f"allow-list entries that match nothing any more: {set(ALLOWED) - used}"


def test_the_walk_finds_what_it_looks_for():
    source = ('import os\nos.environ["A"] = "1"\nos.environ.pop("B", None)\nos.putenv("C", "2")\n'
              'x = os.environ.get("TRITON_INTERPRET")\ndel os.environ["D"]\nos.environ.update(E="3")\n')
    assert [w for _, w in _findings(ast.parse(source))] == [
        "os.environ['A'] = ...", "del os.environ['D']", "os.environ.pop(...)", "os.putenv(...)",
        "os.environ.update(...)", "'TRITON_INTERPRET'"]
