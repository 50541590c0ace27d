"""Issue 16's bar: fused layers' epilogue steps ("add:3", "clip:LO:HI") and program lines ("Add(t1,i2)") are
read and written only by kiln/ops/fused_steps.py; every other module asks its records.

The walk flags, outside that module:
- ``.split`` / ``.rsplit`` / ``.partition`` / ``.rpartition`` on "(" or ")" (taking a program line apart), or on
  ":" where the receiver is named for a step, an epilogue, a program or a line;
- ``.startswith`` / ``.endswith`` / ``.removeprefix`` / ``.count`` / ``==`` with a literal step prefix ("add:");
- ``.rstrip(")")`` (a program line's tail);
- a string literal or f-string that begins with a step's name and ":" (writing a step by hand), or one that
  writes a program operand after "(" or "," ("(i{k}", ",t{k}").
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from kiln.ops.fused_steps import STEP_NAMES

KILN = Path(__file__).resolve().parent.parent / "kiln"
HOME = KILN / "ops" / "fused_steps.py"
# (file, what the walk reports) -> why it is not step or program text
ALLOWED = {("kiln/engine/device_info.py", "line.split(':')"): "a /proc/cpuinfo line ('flags : avx2 ...')"}

_STEP_TEXT = re.compile(rf"(?:{'|'.join(map(re.escape, sorted(STEP_NAMES, key=len, reverse=True)))}):")
_NAMED = re.compile(r"step|epilogue|epi\b|program|line|steps|rest\b", re.IGNORECASE)
_OPERAND_AFTER = re.compile(r"[(,][it]\Z")


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _findings(tree: ast.AST, source: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            method, arg = node.func.attr, _literal(node.args[0])
            receiver = ast.get_source_segment(source, node.func.value) or ""
            if method in ("split", "rsplit", "partition", "rpartition") and arg is not None:
                if arg in ("(", ")") or (arg == ":" and _NAMED.search(receiver)):
                    out.append((node.lineno, f"{receiver}.{method}({arg!r})"))
            if method == "rstrip" and arg == ")":
                out.append((node.lineno, f"{receiver}.rstrip(')')"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _STEP_TEXT.match(node.value):
            out.append((node.lineno, f"step text {node.value!r}"))
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            first = _literal(parts[0]) if parts else None
            if first is not None and _STEP_TEXT.match(first):
                out.append((node.lineno, f"an f-string writing a step ({first!r}...)"))
            for a, b in zip(parts, parts[1:]):
                text = _literal(a)
                if text is not None and _OPERAND_AFTER.search(text) and isinstance(b, ast.FormattedValue):
                    out.append((node.lineno, f"an f-string writing a program operand ({text!r}{{...}})"))
    return out


def test_no_module_but_fused_steps_reads_or_writes_step_text():
    found = []
    for path in sorted(KILN.rglob("*.py")):
        if path == HOME:
            continue
        source = path.read_text()
        rel = path.relative_to(KILN.parent).as_posix()
        for line, what in _findings(ast.parse(source), source):
            if (rel, what) not in ALLOWED:
                found.append(f"{rel}:{line}: {what}")
    assert not found, "step or program text handled outside kiln/ops/fused_steps.py (ask its records):\n" + \
        "\n".join(found)


def test_the_walk_sees_what_it_is_for():
    """The patterns this test exists to catch are caught (and the record module itself would be)."""
    bad = '''
name, *p = step.split(":")
if s.startswith("add:"): pass
op, _, rest = line.partition("(")
args = rest.rstrip(")").split(",")
epilogue.append(f"add:{k}")
program.append(f"Add({cur},i{k})")
x = "clip::6.0"
'''
    lines = {line for line, _ in _findings(ast.parse(bad), bad)}
    assert lines == {2, 3, 4, 5, 6, 7, 8}
    home = HOME.read_text()
    assert _findings(ast.parse(home), home)  # it is the one place that may


def test_unrelated_text_is_not_flagged():
    ok = '''
base = self.method.split(":")[0]
zmask = lay.partition(":")[2]
if device.startswith("cuda:"): pass
key = f"t{k} = {expr}"
msg = f"scale {s}"
'''
    assert _findings(ast.parse(ok), ok) == []
