"""What an op is lives on its record in the op registry (kiln/ops): no module outside kiln/ops tests an op type
against a literal list of more than two ops. The few rules that must name ops say why below."""
import ast
from pathlib import Path

KILN = Path(__file__).resolve().parents[1] / "kiln"

ALLOWED = {
    # which producers carry weights a BatchNorm can be folded into: the fusion rule itself, not a trait of the ops
    ("passes/fuse_batchnorm.py", "Conv"),
    # which ONNX ops a Q/DQ export quantizes (their weight input): the export format's rule
    ("quant/qdq_export.py", "Conv"),
    # KEEP_FLOAT32: the precision pass's numerical policy (sums and powers that overflow in 16 bits), one table
    # that the pass owns and documents; layer_precisions overrides it per model
    ("passes/precision.py", "Pow"),
}


def _literal_strings(node) -> list[str] | None:
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("frozenset", "set", "tuple") and node.args:
        node = node.args[0]
    if isinstance(node, (ast.Tuple, ast.Set, ast.List)):
        strs = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return strs if len(strs) == len(node.elts) else None
    return None


def op_literal_tests() -> list[tuple[str, int, list[str]]]:
    out = []
    for path in sorted(KILN.rglob("*.py")):
        rel = path.relative_to(KILN).as_posix()
        if rel.startswith("ops/"):
            continue
        tree = ast.parse(path.read_text())
        tables = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                strs = _literal_strings(node.value)
                if strs and len(strs) > 2:
                    tables[node.targets[0].id] = strs
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn))):
                continue
            left = node.left
            if (left.attr if isinstance(left, ast.Attribute) else getattr(left, "id", None)) not in ("op_type", "op"):
                continue
            comp = node.comparators[0]
            strs = tables.get(comp.id) if isinstance(comp, ast.Name) else _literal_strings(comp)
            if strs and len(strs) > 2:
                out.append((rel, node.lineno, strs))
    return out


def test_no_op_type_lists_outside_the_registry():
    found = [(rel, line, strs) for rel, line, strs in op_literal_tests() if (rel, strs[0]) not in ALLOWED]
    assert not found, "op lists outside kiln/ops (ask the registry's traits instead, or allow-list with a reason):\n" \
        + "\n".join(f"  kiln/{rel}:{line} {strs}" for rel, line, strs in found)


def test_the_allow_list_is_still_needed():
    seen = {(rel, strs[0]) for rel, _, strs in op_literal_tests()}
    assert ALLOWED <= seen, f"allow-list entries that no longer match anything: {sorted(ALLOWED - seen)}"
