"""Op facts live in the op records (kiln/ops/*), not in hand-kept lists elsewhere (issue 16).

(a) ``op_type in (...)`` / ``in {...}`` / ``not in [...]`` against a literal of more than two op names outside the
    op record modules is a table that will drift from the registry: ask the registry for a trait instead, or
    allow it below with the reason it is not an op fact.
(b) Every op name compared with an ``op_type`` in kiln/ (literal collections and ``==``) is known to the
    registry, as an op or as a not-supported one with its reason: a typo or a renamed op fails here.
The files are read with ``ast`` rather than grep, so literals spread over several lines are seen too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kiln.backends.triton.ops import RULES, can_emit
from kiln.ops import Traits, default_registry
from kiln.passes.fuse_elementwise import NOT_FUSED, fusable_ops

KILN = Path(__file__).resolve().parent.parent / "kiln"

# (file under kiln/, the names compared) -> why this list is not an op trait.
ALLOWED = {
    ("passes/fuse_batchnorm.py", frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})):
        "the producers this rewrite's algebra folds a BatchNormalization into: the rule's pattern, not an op fact",
    ("quant/qdq_export.py", frozenset({"Conv", "MatMul", "Gemm"})):
        "ONNX NodeProtos of the exported model whose weight input the QDQ exporter quantizes, not Kiln's IR",
}

# Op names kiln/ may compare with that no kernel implements, each with why.
NOT_IN_REGISTRY = {
    "Constant": "the frontend turns Constant nodes into graph constants (kiln/frontend/onnx.py): no layer, no kernel",
}


def _literal_names(node: ast.expr) -> list[str] | None:
    """The strings of a tuple/list/set literal made only of string constants, else None."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts \
            and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _is_op_type(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "op_type"


def _comparisons():
    """(file, line, names, is_membership) for each comparison of an ``.op_type`` with string literals in kiln/."""
    for path in sorted(KILN.rglob("*.py")):
        rel = path.relative_to(KILN).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if not isinstance(node, ast.Compare):
                continue
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                if _is_op_type(left) and isinstance(op, (ast.In, ast.NotIn)) and (names := _literal_names(right)):
                    yield rel, node.lineno, names, True
                elif isinstance(op, (ast.Eq, ast.NotEq)):
                    for a, b in ((left, right), (right, left)):
                        if _is_op_type(a) and isinstance(b, ast.Constant) and isinstance(b.value, str):
                            yield rel, node.lineno, [b.value], False
                left = right


def test_no_op_lists_outside_the_op_records():
    found = [(rel, line, names) for rel, line, names, member in _comparisons()
             if member and len(names) > 2 and not rel.startswith("ops/")]
    unexplained = [f"kiln/{rel}:{line}: op_type in {sorted(names)}" for rel, line, names in found
                   if (rel, frozenset(names)) not in ALLOWED]
    assert not unexplained, ("lists of op names outside kiln/ops drift from the registry; declare a trait on the "
                             "ops and query it (registry.ops_with / registry.traits), or add an ALLOWED entry "
                             "with the reason:\n" + "\n".join(unexplained))
    stale = set(ALLOWED) - {(rel, frozenset(names)) for rel, _, names in found}
    assert not stale, f"ALLOWED entries that match nothing any more: {sorted(stale)}"


def test_op_names_compared_in_kiln_are_known_to_the_registry():
    reg = default_registry()
    known = {d.op_type for d in reg} | set(reg.not_supported) | set(NOT_IN_REGISTRY)
    unknown = [f"kiln/{rel}:{line}: {n!r}" for rel, line, names, _ in _comparisons() for n in names if n not in known]
    assert not unknown, ("op names the registry does not know (typo, or an op renamed or removed):\n"
                         + "\n".join(unknown))


# -- the trait queries themselves -----------------------------------------------------------------------------
def test_unknown_trait_is_refused():
    with pytest.raises(TypeError):
        Traits(elementwize=True)
    with pytest.raises(ValueError, match="no op trait"):
        default_registry().ops_with("elementwize")


def test_every_op_the_triton_generator_emits_is_elementwise_and_fused():
    """A Triton rule for an op the registry does not call elementwise, or an elementwise op with a rule that
    fusion leaves alone, is the drift issue 16 found (Sign, Softsign, Mish, ... were never fused)."""
    reg = default_registry()
    assert not set(RULES) - reg.ops_with("elementwise")
    assert fusable_ops(reg) == frozenset(RULES) - set(NOT_FUSED)
    assert can_emit("Add") and not can_emit("Mod")  # integer Mod is left to the op's kernel


def test_traits_are_declared_on_the_ops():
    reg = default_registry()
    assert reg.traits("", "Reshape").view and reg.traits("", "Reshape").reshape
    assert reg.traits("", "Transpose").view and not reg.traits("", "Transpose").reshape
    assert ("Slice", 4) in reg.host_input_slots() and reg.traits("", "Shape").host
    assert reg.traits("kiln", "Conv").label is not None and reg.traits("", "Conv").label is None
    assert reg.traits("", "NoSuchOp") == Traits()
