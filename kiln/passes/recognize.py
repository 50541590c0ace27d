"""Exporters' decomposed forms recognized as single layers.

    0.5 * x * (1 + erf(x / sqrt2))                         -> Gelu(x)
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  -> Gelu(x, approximate="tanh")
    x * sigmoid(x)                                          -> Swish(x)            (SiLU)
    x * clip(x + 3, 0, 6) / 6,  x * HardSigmoid(x, 1/6)     -> HardSwish(x)
    (x - mean(x)) / sqrt(mean((x - mean)^2) + eps) * g + b  -> LayerNormalization(x, g, b)
    x / sqrt(mean(x^2) + eps) * g                           -> RMSNormalization(x, g)
    softmax(Q @ Kt * s + mask) @ V                          -> kiln::Attention(Q, Kt, V, mask)
    (also: s on Q or Kt, per-head s, several masks, baddbmm's [B*H] and Swin's [B/nW, nW] views of the scores)
    Where(IsNaN(p), 0, p) @ V  (safe softmax, SDPA export)  -> kiln::Attention(..., nan_to_zero=1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .attention_layout import head_merge, head_split, shape_runs, trace_root
from .context import PassContext
from .rewrite import const, fuse_into, merge_covers, new_constant, only_use, scalar


def _prod(v: Value | None, *ops: str) -> Node | None:
    p = v.producer if v is not None else None
    return p if p is not None and p.domain == "" and p.op_type in ops and p.graph is not None else None


def _other(node: Node, v: Value) -> Value | None:
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    return b if a is v else a if b is v else None


def _close(x: float | None, want: float, tol: float = 1e-3) -> bool:
    return x is not None and abs(x - want) <= tol * max(1.0, abs(want))


def _single_consumer(v: Value, *ops: str) -> Node | None:
    n = only_use(v)
    return n if n is not None and n.domain == "" and n.op_type in ops else None


def _replace(graph: Graph, ctx: PassContext, rule: str, old: list[Node], op: str, inputs: list, attrs: dict,
             out: Value, domain: str = "") -> None:
    """Put one node computing ``out`` in place of ``old`` (the last of which produced ``out``)."""
    last = out.producer
    new = Node(op, inputs, [], attrs, name=f"{last.label}.{op.lower()}", domain=domain)
    merge_covers(new, old)
    fuse_into(graph, [n for n in old if n is not last] + [last], new, out)
    ctx.count(rule)


def _internal_only(nodes: list[Node], out: Value) -> bool:
    """True when no value made inside the pattern (other than ``out``) is read outside it."""
    inside = set(map(id, nodes))
    for n in nodes:
        for o in n.outputs:
            if o is None or o is out:
                continue
            if any(id(u) not in inside for u, _ in o.uses):
                return False
            g = n.graph
            if g is not None and any(x is o for x in g.outputs):
                return False
    return True


# --- GELU ---------------------------------------------------------------------------------------
def _gelu_tail(graph: Graph, inner: Node, x: Value):
    """From the node producing erf(..)/tanh(..): (1 + t) * x * 0.5 in any association; returns (nodes, out)."""
    add = _single_consumer(inner.outputs[0], "Add")
    if add is None or not _close(scalar(_other(add, inner.outputs[0])), 1.0):
        return None
    m1 = _single_consumer(add.outputs[0], "Mul")
    if m1 is None:
        return None
    o = _other(m1, add.outputs[0])
    if o is x:  # x * (1 + t) then * 0.5
        m2 = _single_consumer(m1.outputs[0], "Mul")
        if m2 is not None and _close(scalar(_other(m2, m1.outputs[0])), 0.5):
            return [add, m1, m2], m2.outputs[0]
        return None
    half = _prod(o, "Mul")  # (x * 0.5) * (1 + t)
    if half is not None and x in half.inputs and _close(scalar(_other(half, x)), 0.5) and only_use(o) is m1:
        return [half, add, m1], m1.outputs[0]
    if _close(scalar(o), 0.5):  # 0.5 * (1 + t) then * x
        m2 = _single_consumer(m1.outputs[0], "Mul")
        if m2 is not None and _other(m2, m1.outputs[0]) is x:
            return [add, m1, m2], m2.outputs[0]
    return None


def recognize_gelu(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph or node.domain != "" or node.op_type not in ("Erf", "Tanh"):
            continue
        pre = node.inputs[0].producer if node.inputs[0] is not None else None
        if pre is None or pre.domain != "" or pre.graph is not graph:
            continue
        approx = "none"
        head: list[Node]
        if node.op_type == "Erf":
            if pre.op_type == "Div" and _close(scalar(pre.inputs[1]), math.sqrt(2)):
                x = pre.inputs[0]
            elif pre.op_type == "Mul" and _close(scalar(pre.inputs[1]), 1 / math.sqrt(2)):
                x = pre.inputs[0]
            elif pre.op_type == "Mul" and _close(scalar(pre.inputs[0]), 1 / math.sqrt(2)):
                x = pre.inputs[1]
            else:
                continue
            head = [pre]
        else:
            found = _tanh_head(pre)
            if found is None:
                continue
            x, head = found
            approx = "tanh"
        tail = _gelu_tail(graph, node, x)
        if tail is None:
            ctx.reject("recognize_gelu", [node], f"{node.op_type} looks like GELU's core but the surrounding "
                       "(1 + t) * x * 0.5 pattern does not match")
            continue
        nodes, out = tail
        allnodes = head + [node] + nodes
        if not _internal_only(allnodes, out):
            ctx.reject("recognize_gelu", allnodes, "an intermediate value of the GELU pattern is used elsewhere")
            continue
        _replace(graph, ctx, "recognize_gelu", allnodes, "Gelu", [x], {"approximate": approx}, out)
        changed = True
    return changed


def _monomial(v: Value, x: Value) -> tuple[float, int, list[Node]] | None:
    """``v`` as c * x^k built from Mul nodes (any association: x*x*x*c, ((c*x)*x)*x, c*(x*x*x)) or Pow(x, 3),
    every intermediate read only inside: returns (c, k, nodes)."""
    if v is x:
        return 1.0, 1, []
    c = scalar(v)
    if c is not None:
        return c, 0, []
    node = _prod(v, "Mul", "Pow")
    if node is None or len(node.inputs) != 2:  # (that intermediates are read only inside: _internal_only)
        return None
    if node.op_type == "Pow":
        e = scalar(node.inputs[1])
        if node.inputs[0] is not x or e is None or e != int(e):
            return None
        return 1.0, int(e), [node]
    parts = [_monomial(i, x) for i in node.inputs]
    if any(p is None for p in parts):
        return None
    (c1, k1, n1), (c2, k2, n2) = parts
    return c1 * c2, k1 + k2, n1 + n2 + [node]


def _tanh_head(pre: Node):
    """sqrt(2/pi) * (x + 0.044715 * x^3), the cube in any Mul association or a Pow: returns (x, nodes)."""
    if pre.op_type != "Mul":
        return None
    k = math.sqrt(2 / math.pi)
    for i in (0, 1):
        if _close(scalar(pre.inputs[i]), k):
            inner = _prod(pre.inputs[1 - i], "Add")
            break
    else:
        return None
    if inner is None:
        return None
    for x, cube_side in ((inner.inputs[0], inner.inputs[1]), (inner.inputs[1], inner.inputs[0])):
        if x is None or cube_side is None or cube_side is x:
            continue
        term = _monomial(cube_side, x)
        if term is not None and term[1] == 3 and _close(term[0], 0.044715) and term[2]:
            return x, list({id(n): n for n in term[2]}.values()) + [inner, pre]
    return None


# --- HardSwish ----------------------------------------------------------------------------------
def _clip_bounds(node: Node, opset: int) -> tuple[float | None, float | None]:
    if opset < 11:
        return node.attrs.get("min"), node.attrs.get("max")
    lo = scalar(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    hi = scalar(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    return lo, hi


def _times_x_over_6(start: Node, x: Value) -> tuple[list[Node], Value] | None:
    """From a node computing g(x): x * g / 6 in any order (Mul by x, then Div by 6 or Mul by 1/6, or the
    scaling first): returns (nodes, out)."""
    def scale(n: Node | None, v: Value) -> bool:
        if n is None:
            return False
        k = scalar(_other(n, v)) if n.op_type == "Mul" else (scalar(n.inputs[1]) if n.inputs[0] is v else None)
        return _close(k, 1 / 6 if n.op_type == "Mul" else 6.0, 1e-4)

    first = _single_consumer(start.outputs[0], "Mul", "Div")
    if first is None:
        return None
    if first.op_type == "Mul" and _other(first, start.outputs[0]) is x:  # (x * g) then / 6
        second = _single_consumer(first.outputs[0], "Mul", "Div")
        return ([first, second], second.outputs[0]) if scale(second, first.outputs[0]) else None
    if scale(first, start.outputs[0]):  # (g / 6) then * x
        second = _single_consumer(first.outputs[0], "Mul")
        if second is not None and _other(second, first.outputs[0]) is x:
            return [first, second], second.outputs[0]
    return None


def recognize_hardswish(graph: Graph, ctx: PassContext) -> bool:
    """x * clip(x + 3, 0, 6) / 6 (MobileNetV3 and PP-LCNet exports; ReLU6 as Clip) and x * HardSigmoid(x)
    with alpha 1/6 -> HardSwish(x), which fuses into the producing layer's epilogue."""
    changed = False
    opset = graph.opsets.get("", 21)
    for node in list(graph.nodes):
        if node.graph is not graph or node.domain != "":
            continue
        if node.op_type == "Clip":
            lo, hi = _clip_bounds(node, opset)
            add = _prod(node.inputs[0], "Add")
            if lo != 0.0 or hi != 6.0 or add is None or add.graph is not graph or len(add.inputs) != 2:
                continue
            x = next((a for a, b in (add.inputs, add.inputs[::-1]) if _close(scalar(b), 3.0, 1e-6)), None)
            if x is None or only_use(add.outputs[0]) is not node:
                continue
            head = [add, node]
        elif node.op_type == "HardSigmoid":
            if not (_close(node.attrs.get("alpha", 0.2), 1 / 6, 1e-4) and _close(node.attrs.get("beta", 0.5), 0.5)):
                continue
            x = node.inputs[0]
            mul = _single_consumer(node.outputs[0], "Mul")
            if mul is None or _other(mul, node.outputs[0]) is not x:
                continue
            _replace(graph, ctx, "recognize_hardswish", [node, mul], "HardSwish", [x], {}, mul.outputs[0])
            changed = True
            continue
        else:
            continue
        tail = _times_x_over_6(node, x)
        if tail is None:
            ctx.reject("recognize_hardswish", head, "Clip(x + 3, 0, 6) looks like HardSwish's core but is not "
                       "followed by x * . / 6 with each intermediate read only once (a ReLU6 is kept as Clip)")
            continue
        nodes, out = tail
        if not _internal_only(head + nodes, out):
            ctx.reject("recognize_hardswish", head + nodes, "an intermediate value of the HardSwish pattern is "
                       "used elsewhere")
            continue
        _replace(graph, ctx, "recognize_hardswish", head + nodes, "HardSwish", [x], {}, out)
        changed = True
    return changed


# --- SiLU ---------------------------------------------------------------------------------------
def recognize_silu(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for sig in list(graph.nodes):
        if sig.graph is not graph or sig.domain != "" or sig.op_type != "Sigmoid":
            continue
        x = sig.inputs[0]
        mul = _single_consumer(sig.outputs[0], "Mul")
        if mul is None or _other(mul, sig.outputs[0]) is not x:
            continue
        _replace(graph, ctx, "recognize_silu", [sig, mul], "Swish", [x], {"alpha": 1.0}, mul.outputs[0])
        changed = True
    return changed


# --- LayerNorm / RMSNorm ----------------------------------------------------------------------------
def _reduce_axes(node: Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = const(node.inputs[1])
        return None if c is None else [int(a) for a in c.reshape(-1).tolist()]
    return node.attrs.get("axes")


def _trailing_axes(axes: list[int] | None, rank: int | None) -> int | None:
    """-k when ``axes`` are exactly the last k axes, else None."""
    if axes is None or rank is None:
        return None
    norm = sorted(a % rank for a in axes)
    k = len(norm)
    return -k if norm == list(range(rank - k, rank)) else None


def _affine(graph: Graph, v: Value):
    """Optional `* gamma` then `+ beta` (constants) after ``v``: returns (nodes, gamma, beta, out)."""
    nodes, gamma, beta, out = [], None, None, v
    m = _single_consumer(out, "Mul")
    if m is not None and const(_other(m, out)) is not None:
        gamma = _other(m, out)
        nodes.append(m)
        out = m.outputs[0]
    a = _single_consumer(out, "Add")
    if a is not None and const(_other(a, out)) is not None:
        beta = _other(a, out)
        nodes.append(a)
        out = a.outputs[0]
    return nodes, gamma, beta, out


def _norm_denominator(v: Value):
    """sqrt(mean(d^2) + eps) where v is that value: returns (nodes, square_input, eps, reduce node)."""
    sqrt = _prod(v, "Sqrt")
    if sqrt is None:
        return None
    add = _prod(sqrt.inputs[0], "Add")
    if add is None:
        return None
    for i in (0, 1):
        eps = scalar(add.inputs[i])
        red = _prod(add.inputs[1 - i], "ReduceMean")
        if eps is not None and red is not None:
            break
    else:
        return None
    sq = _prod(red.inputs[0], "Pow", "Mul")
    if sq is None:
        return None
    if sq.op_type == "Pow" and _close(scalar(sq.inputs[1]), 2.0):
        base = sq.inputs[0]
    elif sq.op_type == "Mul" and sq.inputs[0] is sq.inputs[1]:
        base = sq.inputs[0]
    else:
        return None
    return [sq, red, add, sqrt], base, eps, red


def _gamma_beta(graph: Graph, ctx: PassContext, x: Value, k: int, gamma, beta, label: str):
    shape = ctx.shape(x)
    norm_shape = shape[k:] if shape is not None else None
    dtype = ctx.dtype(x)
    if gamma is None or beta is None:
        if norm_shape is None or not all(isinstance(d, int) for d in norm_shape) or dtype is None:
            return None
    g = const(gamma) if gamma is not None else torch.ones(norm_shape, dtype=dtype.torch)
    b = const(beta) if beta is not None else torch.zeros(norm_shape, dtype=dtype.torch)
    if norm_shape is not None and all(isinstance(d, int) for d in norm_shape):
        try:
            g = torch.broadcast_to(g, norm_shape).contiguous()
            b = torch.broadcast_to(b, norm_shape).contiguous()
        except RuntimeError:
            return None
    return new_constant(graph, f"{label}.gamma", g), new_constant(graph, f"{label}.beta", b)


def recognize_layer_norm(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for mean in list(graph.nodes):
        if mean.graph is not graph or mean.domain != "" or mean.op_type != "ReduceMean":
            continue
        x = mean.inputs[0]
        if not mean.attrs.get("keepdims", 1):
            continue
        k = _trailing_axes(_reduce_axes(mean), len(ctx.shape(x)) if ctx.shape(x) is not None else None)
        if k is None:
            continue
        sub = next((u for u, _ in mean.outputs[0].uses if u.op_type == "Sub" and u.inputs[0] is x
                    and u.inputs[1] is mean.outputs[0]), None)
        if sub is None:
            continue
        d = sub.outputs[0]
        div = next((u for u, _ in d.uses if u.op_type == "Div" and u.inputs[0] is d), None)
        if div is None:
            continue
        den = _norm_denominator(div.inputs[1])
        if den is None or den[1] is not d:
            ctx.reject("recognize_layer_norm", [mean, sub, div], "mean/subtract/divide found, but the divisor is not "
                       "sqrt(mean(d^2) + eps) of the same difference")
            continue
        den_nodes, _, eps, red2 = den
        if _trailing_axes(_reduce_axes(red2), len(ctx.shape(x))) != k or not red2.attrs.get("keepdims", 1):
            continue
        aff_nodes, gamma, beta, out = _affine(graph, div.outputs[0])
        nodes = [mean, sub] + den_nodes + [div] + aff_nodes
        if not _internal_only(nodes, out):
            ctx.reject("recognize_layer_norm", nodes, "an intermediate value of the LayerNorm pattern is used elsewhere")
            continue
        gb = _gamma_beta(graph, ctx, x, k, gamma, beta, mean.label)
        if gb is None:
            ctx.reject("recognize_layer_norm", nodes, "normalized dims are not static and gamma/beta are missing")
            continue
        _replace(graph, ctx, "recognize_layer_norm", nodes, "LayerNormalization", [x, *gb],
                 {"axis": k, "epsilon": float(eps)}, out)
        changed = True
    return changed


def recognize_rms_norm(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for sqrt in list(graph.nodes):
        if sqrt.graph is not graph or sqrt.domain != "" or sqrt.op_type != "Sqrt":
            continue
        den = _norm_denominator(sqrt.outputs[0])
        if den is None:
            continue
        den_nodes, x, eps, red = den
        if x.producer is not None and x.producer.op_type == "Sub":
            continue  # that is a LayerNorm
        rank = len(ctx.shape(x)) if ctx.shape(x) is not None else None
        k = _trailing_axes(_reduce_axes(red), rank)
        if k is None or not red.attrs.get("keepdims", 1):
            continue
        # x / sqrt(..)  or  x * (1 / sqrt(..))
        use = only_use(sqrt.outputs[0])
        if use is None:
            continue
        if use.op_type == "Div" and use.inputs[0] is x and use.inputs[1] is sqrt.outputs[0]:
            scale_nodes, normed = [use], use.outputs[0]
        elif use.op_type == "Reciprocal":
            mul = _single_consumer(use.outputs[0], "Mul")
            if mul is None or _other(mul, use.outputs[0]) is not x:
                continue
            scale_nodes, normed = [use, mul], mul.outputs[0]
        else:
            continue
        aff_nodes, gamma, beta, out = _affine(graph, normed)
        if beta is not None:  # RMSNorm has no shift: leave the Add outside
            aff_nodes, out = aff_nodes[:-1], aff_nodes[-2].outputs[0] if len(aff_nodes) > 1 else normed
        nodes = den_nodes + scale_nodes + aff_nodes
        if not _internal_only(nodes, out):
            ctx.reject("recognize_rms_norm", nodes, "an intermediate value of the RMSNorm pattern is used elsewhere")
            continue
        gb = _gamma_beta(graph, ctx, x, k, gamma, None, sqrt.label)
        if gb is None:
            continue
        _replace(graph, ctx, "recognize_rms_norm", nodes, "RMSNormalization", [x, gb[0]],
                 {"axis": k, "epsilon": float(eps)}, out)
        changed = True
    return changed


# --- Attention ------------------------------------------------------------------------------------
def _scalar_factor(p: Node) -> tuple[float, Value] | None:
    """A Mul or Div by a constant scalar as (factor, the other operand)."""
    if p.op_type == "Div" and scalar(p.inputs[1]) is not None:
        return 1.0 / scalar(p.inputs[1]), p.inputs[0]
    if p.op_type == "Mul":
        for i in (1, 0):
            if scalar(p.inputs[i]) is not None:
                return scalar(p.inputs[i]), p.inputs[1 - i]
    return None


def _strip_scale(v: Value, nodes: list[Node]) -> tuple[Value, float, list[int] | None]:
    """Peel Mul/Div by constant scalars off ``v`` (each single-use), also from under one Transpose (K scaled
    before it is transposed: (k * s).transpose(-2, -1)): returns the base value, the scale, and that Transpose's
    perm (for the caller to apply to the base) or None."""
    scale, perm = 1.0, None
    while True:
        p = _prod(v, "Mul", "Div", "Transpose")
        if p is None or len(p.outputs[0].uses) != 1:
            return v, scale, perm
        if p.op_type == "Transpose":
            under = _prod(p.inputs[0], "Mul", "Div")
            if perm is not None or "perm" not in p.attrs or under is None or len(under.outputs[0].uses) != 1 \
                    or _scalar_factor(under) is None:
                return v, scale, perm
            perm = list(p.attrs["perm"])
            nodes.append(p)
            v = p.inputs[0]
            continue
        factor = _scalar_factor(p)
        if factor is None:
            return v, scale, perm
        scale *= factor[0]
        v = factor[1]
        nodes.append(p)


def _permuted(shape, perm: list[int] | None):
    return shape if shape is None or perm is None else tuple(shape[i] for i in perm)


_SCORE_OPS = ("MatMul", "Mul", "Div", "Add", "Reshape")


def _reaches_matmul(v: Value, depth: int = 0) -> bool:
    """Whether ``v`` is computed from a MatMul through score ops only (which side of an Add holds the scores)."""
    p = _prod(v, *_SCORE_OPS)
    if p is None or depth > 8:
        return False
    if p.op_type == "MatMul":
        return True
    if p.op_type in ("Div", "Reshape"):
        return _reaches_matmul(p.inputs[0], depth + 1)
    return any(_reaches_matmul(i, depth + 1) for i in p.inputs)


def _lead(shape) -> tuple | None:
    return None if shape is None or len(shape) < 2 else tuple(shape[:-2])


@dataclass
class _Scores:
    """The Softmax's input as MatMul(q, kt), scaled, with additive terms, through Reshapes of the leading (batch)
    dims (Swin's [B/nW, nW, H, N, N] view for its window mask, a baddbmm on [B*H, S, S] viewed [B, H, S, S])."""

    matmul: Node
    nodes: list[Node]  # the Add/Mul/Div/Reshape nodes between the MatMul and the Softmax
    scale: float
    row_scales: list[Value]  # factors constant over each score matrix (last two dims 1): moved onto Q
    terms: list[tuple[Value, Value]]  # (additive term, the scores it is added to), innermost first
    frames: list[Value]  # the scores out of the MatMul, then out of each Reshape (their leading dims differ)


def _row_constant(v: Value, ctx: PassContext) -> bool:
    s = ctx.shape(v)
    return s is not None and len(s) >= 2 and s[-1] == 1 and s[-2] == 1 and ctx.dtype(v) is not None \
        and ctx.dtype(v).is_float


def _scores(v: Value, ctx: PassContext) -> _Scores | str | None:
    """Walk from the Softmax's input back to the MatMul; None when it is not attention's scores, a string (the
    reason) when it is but the form cannot become one attention layer."""
    nodes: list[Node] = []
    terms: list[tuple[Value, Value]] = []
    row_scales: list[Value] = []
    frames = [v]
    scale, scaled = 1.0, False
    while True:
        p = _prod(v, *_SCORE_OPS)
        if p is None or len(p.outputs[0].uses) != 1:
            return None
        if p.op_type == "MatMul":
            break
        if p.op_type == "Reshape":
            a, b = ctx.shape(p.inputs[0]), ctx.shape(v)
            if a is None or b is None or len(a) < 3 or len(b) < 3 or tuple(a[-2:]) != tuple(b[-2:]):
                return None
            if row_scales:
                return "a per-head scale is applied after the scores are reshaped"
            frames.append(p.inputs[0])
            nodes.append(p)
            v = p.inputs[0]
            continue
        if p.op_type == "Div":
            if scalar(p.inputs[1]) is None or not _reaches_matmul(p.inputs[0]):
                return None
            scale, scaled, v = scale / scalar(p.inputs[1]), True, p.inputs[0]
            nodes.append(p)
            continue
        side = next((i for i in (0, 1) if _reaches_matmul(p.inputs[i])), None)
        if side is None:
            return None
        other = p.inputs[1 - side]
        if p.op_type == "Mul":
            if scalar(other) is not None:
                scale *= scalar(other)
            elif _row_constant(other, ctx):  # Swin v2's per-head logit scale: (Q @ Kt) * c == (Q * c) @ Kt
                row_scales.append(other)
            else:
                return None
            scaled = True
        else:
            if scaled:
                return "a term is added to the scores before they are scaled (softmax((Q @ Kt + m) * s)), so the " \
                       "mask would have to be scaled too"
            if ctx.shape(p.outputs[0]) is None or ctx.shape(p.outputs[0]) != ctx.shape(p.inputs[side]):
                return "an added term broadcasts the scores to a larger shape (or the shapes are unknown)"
            if ctx.dtype(other) is None or not ctx.dtype(other).is_float:
                return "the mask is not additive (float)"
            terms.append((other, frames[-1]))
        nodes.append(p)
        v = p.inputs[side]
    return _Scores(p, nodes, scale, row_scales, terms[::-1], frames[::-1])


def _groups(fine: tuple, coarse: tuple) -> list[list[int]] | None:
    """For each dim of ``coarse``, the consecutive dims of ``fine`` whose product it is (None if it is not a
    regrouping of ``fine``)."""
    groups, i = [], 0
    for c in coarse:
        g, p = [], 1
        while i < len(fine) and p * fine[i] <= c and (p < c or fine[i] == 1):
            p *= fine[i]
            g.append(i)
            i += 1
        if p != c:
            return None
        groups.append(g)
    if any(fine[j] != 1 for j in range(i, len(fine))):
        return None
    if groups and i < len(fine):
        groups[-1] += list(range(i, len(fine)))
    return groups


def _lifted_shape(shape, frame: tuple, fine: tuple) -> list[int] | None:
    """The shape of a tensor broadcast against scores with leading dims ``frame``, viewed with leading dims
    ``fine`` (a dim broadcast in ``frame`` stays broadcast, as 1s)."""
    if shape is None or not all(isinstance(d, int) for d in shape) or len(shape) > len(frame) + 2:
        return None
    groups = _groups(fine, frame)
    if groups is None:
        return None
    aligned = [1] * (len(frame) + 2 - len(shape)) + list(shape)
    out: list[int] = []
    for j, g in enumerate(groups):
        if aligned[j] == 1:
            out += [1] * len(g)
        elif aligned[j] == frame[j]:
            out += [fine[i] for i in g]
        else:
            return None
    return out + aligned[-2:]


class _Emit:
    """New nodes placed before ``anchor``, each with a fresh output."""

    def __init__(self, graph: Graph, anchor: Node):
        self.graph, self.anchor, self.count = graph, anchor, 0

    def __call__(self, op: str, inputs: list, attrs: dict | None = None, domain: str = "") -> Value:
        self.count += 1
        out = Value(f"{self.anchor.label}/{op.lower()}{self.count}")
        node = Node(op, inputs, [out], attrs or {}, name=f"{self.anchor.label}/{op}{self.count}", domain=domain)
        node.meta["covers"] = [self.anchor.label]
        self.graph.insert_before(self.anchor, node)
        return out

    def reshape(self, v: Value, shape: list[int], current) -> Value:
        if current is not None and list(current) == list(shape):
            return v
        target = new_constant(self.graph, f"{self.anchor.label}.shape", torch.tensor(shape, dtype=torch.int64))
        return self("Reshape", [v, target])


def _probabilities_read_elsewhere(probs: Value, av: Node) -> bool:
    from .rewrite import is_output
    return is_output(probs) or any(u is not av for u, _ in probs.uses)


def recognize_attention(graph: Graph, ctx: PassContext) -> bool:
    """softmax(Q @ Kt * scale + masks) @ V -> kiln::Attention(Q, Kt, V, mask) {scale}.

    The scale may sit on the scores, on Q or on Kt (constant scalars), or be a per-head factor constant over each
    score matrix (moved onto Q); additive float terms (masks, relative position biases) are summed into one mask;
    Reshapes of the scores' leading dims (a baddbmm on [B*H, S, S], Swin's [B/nW, nW, H, N, N] window-mask view)
    are undone by running the layer on the finest of those leading dims."""
    changed = False
    opset = graph.opsets.get("", 21)
    for sm in list(graph.nodes):
        if sm.graph is not graph or sm.domain != "" or sm.op_type != "Softmax":
            continue
        rank = len(ctx.shape(sm.inputs[0])) if ctx.shape(sm.inputs[0]) is not None else None
        axis = sm.attrs.get("axis", -1 if opset >= 13 else 1)
        if rank is None or axis % rank != rank - 1:
            continue
        probs, safe = sm.outputs[0], []
        # Safe softmax (SDPA's export): Where(IsNaN(p), 0, p) -> p, rows with every key masked give 0.
        uses = [u for u, _ in probs.uses]
        isnan = next((u for u in uses if u.domain == "" and u.op_type == "IsNaN"), None)
        where = next((u for u in uses if u.domain == "" and u.op_type == "Where"), None)
        if len(uses) == 2 and isnan is not None and where is not None and where.inputs[0] is isnan.outputs[0] \
                and where.inputs[2] is probs and scalar(where.inputs[1]) == 0.0 and only_use(isnan.outputs[0]):
            safe, probs = [isnan, where], where.outputs[0]
        av = next((u for u, slot in probs.uses if slot == 0 and u.domain == "" and u.op_type == "MatMul"), None)
        if av is None:
            continue
        sc = _scores(sm.inputs[0], ctx)
        if sc is None:
            continue
        if isinstance(sc, str):
            ctx.reject("recognize_attention", [sm, av], sc)
            continue
        if _probabilities_read_elsewhere(probs, av):
            ctx.reject("recognize_attention", [sc.matmul, sm, av], "the attention probabilities are also read "
                       "outside the attention (returned, as nn.MultiheadAttention does with need_weights=True, its "
                       "default), so they must be computed; an attention layer does not output them")
            continue
        qk = sc.matmul
        nodes = list(sc.nodes) + [qk]
        q, s_q, q_perm = _strip_scale(qk.inputs[0], nodes)
        kt, s_k, k_perm = _strip_scale(qk.inputs[1], nodes)
        v = av.inputs[1]
        q_shape, kt_shape, v_shape = _permuted(ctx.shape(q), q_perm), _permuted(ctx.shape(kt), k_perm), ctx.shape(v)
        # Reshapes of the scores: the layer runs on the finest of their leading dims (Q, K, V and masks follow).
        regrouped = any(n.op_type == "Reshape" for n in sc.nodes)
        if q_shape is None or kt_shape is None or v_shape is None or len(q_shape) < 3 or len(q_shape) != \
                len(kt_shape) or (not regrouped and len(v_shape) != len(q_shape)):
            ctx.reject("recognize_attention", [qk, sm, av], "Q, K and V must have the same rank >= 3")
            continue
        dt = ctx.dtype(q)
        if dt is None or not dt.is_float or ctx.dtype(kt) != dt or ctx.dtype(v) != dt:
            ctx.reject("recognize_attention", [qk, sm, av], "Q, K and V must share one float dtype")
            continue
        all_nodes = nodes + [sm] + safe + [av]
        out = av.outputs[0]
        if not _internal_only(all_nodes, out):
            ctx.reject("recognize_attention", all_nodes, "an intermediate of the attention pattern (e.g. the "
                       "probabilities) is used elsewhere")
            continue
        if regrouped:
            lifted = _lift_operands([(q, q_perm), (kt, k_perm), (v, None)], sc, out, ctx)
            if isinstance(lifted, str):
                ctx.reject("recognize_attention", all_nodes, lifted)
                continue
        emit = _Emit(graph, av)
        q = emit("Transpose", [q], {"perm": q_perm}) if q_perm else q
        kt = emit("Transpose", [kt], {"perm": k_perm}) if k_perm else kt
        row_scales = list(sc.row_scales)
        if regrouped:
            q, kt, v = (emit.reshape(x, s, _permuted(ctx.static_shape(x), perm))
                        for x, s, perm in zip((q, kt, v), lifted, (q_perm, k_perm, None)))
            terms = [emit.reshape(t, s, ctx.static_shape(t)) for (t, _), s in zip(sc.terms, lifted[3:])]
            row_scales = [emit.reshape(c, s, ctx.static_shape(c))
                          for c, s in zip(row_scales, lifted[3 + len(terms):])]
        else:
            terms = [t for t, _ in sc.terms]
        for c in row_scales:
            q = emit("Mul", [q, c])
        mask = terms[0] if terms else None
        for t in terms[1:]:
            mask = emit("Add", [mask, t])
        attrs = {"scale": float(sc.scale * s_q * s_k), **({"nan_to_zero": 1} if safe else {})}
        ins = [q, kt, v] + ([mask] if mask is not None else [])
        if regrouped:  # the layer runs on the finest leading dims; its result is viewed back
            att = emit("Attention", ins, attrs, domain="kiln")
            merge_covers(att.producer, all_nodes)
            _replace(graph, ctx, "recognize_attention", all_nodes, "Reshape",
                     [att, new_constant(graph, f"{av.label}.shape", torch.tensor(lifted[-1], dtype=torch.int64))],
                     {}, out)
        else:
            _replace(graph, ctx, "recognize_attention", all_nodes, "Attention", ins, attrs, out, domain="kiln")
        changed = True
    return changed


def _lift_operands(operands: list[tuple[Value, list[int] | None]], sc: _Scores, out: Value, ctx: PassContext):
    """Reshape targets that take Q, Kt, V (each with the perm still to apply) and the terms onto the finest
    leading dims of the scores' views, and the result back (-1 for the dim a profile lets vary), or why not."""
    # The per-head scales sit on the MatMul's scores (a Reshape outside one is refused), as Q does.
    values = [x for x, _ in operands] + [t for t, _ in sc.terms] + list(sc.row_scales) + [out]
    perms = [p for _, p in operands] + [None] * (len(values) - len(operands))
    runs = [shape_runs(ctx, x) for x in values + sc.frames]
    if any(r is None for r in runs) or len({len(r) for r in runs}) != 1:
        return "the scores are reshaped between the MatMul and the Softmax, and their shapes are unknown (or a " \
               "profile-ranged dim could not be checked)"
    frame_of = [0, 0, len(sc.frames) - 1] + [next(j for j, f in enumerate(sc.frames) if f is home)
                                              for _, home in sc.terms] + [0] * len(sc.row_scales)
    per_run = []
    for i in range(len(runs[0])):
        frames = [_lead(r[i]) for r in runs[len(values):]]
        fine = max(frames, key=len)
        lifted = [_lifted_shape(_permuted(r[i], perm), frames[j], fine)
                  for r, perm, j in zip(runs, perms, frame_of)] + [list(runs[len(values) - 1][i])]
        if any(s is None for s in lifted):
            return "the scores' Reshapes between the MatMul and the Softmax are not regroupings of one set of " \
                   "leading dims that Q, K, V and the masks can follow"
        per_run.append(lifted)
    targets = []
    for shapes in zip(*per_run):
        if len({len(s) for s in shapes}) != 1:
            return "the scores' views differ in rank from one profile-ranged size to another"
        target = [d if all(s[k] == d for s in shapes) else -1 for k, d in enumerate(shapes[0])]
        if target.count(-1) > 1:
            return "more than one dim of the scores' views varies with the profile"
        targets.append(target)
    return targets


# --- Attention heads ----------------------------------------------------------------------------------
def _split_heads(v: Value, perm: list[int], ctx: PassContext):
    """v = Transpose(Reshape(x, [b, s, H, D]), perm) with x [b, s, H*D]: returns (x, H, D, nodes)."""
    t = _prod(v, "Transpose")
    if t is None or list(t.attrs.get("perm", [])) != perm or len(t.outputs[0].uses) != 1:
        return None
    r = _prod(t.inputs[0], "Reshape")
    if r is None or len(r.outputs[0].uses) != 1:
        return None
    x = r.inputs[0]
    xs, rs = ctx.shape(x), ctx.shape(r.outputs[0])
    if xs is None or rs is None or len(xs) != 3 or len(rs) != 4 or tuple(xs[:2]) != tuple(rs[:2]) \
            or not all(isinstance(d, int) for d in (xs[2], rs[2], rs[3])) or rs[2] * rs[3] != xs[2]:
        return None
    return x, rs[2], rs[3], [r, t]


def fold_attention_heads(graph: Graph, ctx: PassContext) -> bool:
    """The exporters' head split/merge around attention goes inside the layer:

    Reshape(Transpose(Attention(Tr(R(q)), Tr(R(k), 0231), Tr(R(v))), 0213), [b, s, H*Dv])
        -> kiln::Attention(q, k, v, mask) {heads: H}      (q, k, v and the result as [b, s, H*D])

    Other splits (packed qkv unbound by Gather/Split/Slice, nn.MultiheadAttention's [s, b*H, D] route) are
    recognized by tracing element positions (attention_layout.py) when shapes are static.
    """
    changed = False
    for att in list(graph.nodes):
        if att.graph is not graph or att.domain != "kiln" or att.op_type != "Attention" or "heads" in att.attrs:
            continue
        q = _split_heads(att.inputs[0], [0, 2, 1, 3], ctx)
        k = _split_heads(att.inputs[1], [0, 2, 3, 1], ctx)
        v = _split_heads(att.inputs[2], [0, 2, 1, 3], ctx)
        if q is None or k is None or v is None:
            why = _fold_traced_heads(graph, ctx, att)
            if why:
                ctx.reject("fold_attention_heads", [att], why)
            changed |= not why
            continue
        if not (q[1] == k[1] == v[1] and q[2] == k[2]):
            ctx.reject("fold_attention_heads", [att], "Q, K and V disagree on heads or head size")
            continue
        t = _single_consumer(att.outputs[0], "Transpose")
        r = _single_consumer(t.outputs[0], "Reshape") if t is not None and list(t.attrs.get("perm", [])) == \
            [0, 2, 1, 3] else None
        qs = ctx.shape(q[0])
        out_shape = ctx.shape(r.outputs[0]) if r is not None else None
        target = const(r.inputs[1]) if r is not None else None
        if out_shape is not None and tuple(out_shape) == (qs[0], qs[1], v[1] * v[2]):
            old, out = q[3] + k[3] + v[3] + [att, t, r], r.outputs[0]
        elif target is not None and (r.attrs.get("allowzero", 0) or not bool((target == 0).any())):
            # Reshape(Transpose(a, 0213), shape) == Reshape([b, s, H*Dv] merge of a, shape): row-major order is
            # the same, and a constant shape without 0 entries does not read the input's dims.
            old, out = q[3] + k[3] + v[3] + [att, t], t.outputs[0]
        else:
            ctx.reject("fold_attention_heads", [att], "the result is not merged back to [b, s, H*Dv] by "
                       "Transpose(0, 2, 1, 3) + Reshape")
            continue
        if not _internal_only(old, out):
            ctx.reject("fold_attention_heads", old, "a head-split intermediate is used elsewhere")
            continue
        ins = [q[0], k[0], v[0]] + list(att.inputs[3:])
        attrs = dict(att.attrs, heads=int(q[1]))
        _replace(graph, ctx, "fold_attention_heads", old, "Attention", ins, attrs, out, domain="kiln")
        if out is t.outputs[0]:
            out.type = TensorType(getattr(out.type, "dtype", None))  # now [b, s, H*Dv], no longer 4-D
        changed = True
    return changed


def _fold_traced_heads(graph: Graph, ctx: PassContext, att: Node) -> str | None:
    """Q, K and V cut from [b, s, C] (or [s, b, C]) tensors by any data-movement ops, the result merged back by
    any: the layer reads the columns it needs (Slice; a Transpose for the sequence-first layout) and writes
    [b, s, H*Dv] (viewed as what the merge produced). Returns why not, or None once rewritten."""
    splits = [head_split(att.inputs[0], ctx), head_split(att.inputs[1], ctx, transposed=True),
              head_split(att.inputs[2], ctx)]
    bad = [name for name, s in zip(("Q", "K^T", "V"), splits) if s is None]
    if bad:
        rank = len(ctx.shape(att.inputs[0]) or ())
        if rank > 4:
            return f"the layer runs on {rank - 2} leading dims (the scores were viewed with more, for a mask " \
                   "broadcast over some of them, as Swin's shifted-window mask), which [b, s, H*D] operands with " \
                   "heads cannot express"
        root = trace_root(att.inputs[("Q", "K^T", "V").index(bad[0])])[0]
        made = f"{root.producer.op_type} {root.producer.label}" if root.producer is not None else "a graph input"
        return f"{' and '.join(bad)} not head splits of a [b, s, H*D] or [s, b, H*D] tensor: traced back through " \
               f"data-movement ops, {bad[0]} is computed by {made} (or a profile-ranged dim could not be checked)"
    q, k, v = splits
    if not (q.seq_first == k.seq_first == v.seq_first and q.heads == k.heads == v.heads
            and q.head_size == k.head_size):
        return "Q, K and V disagree on heads, head size or layout"
    merge = head_merge(att.outputs[0], ctx, q.seq_first)
    if merge is None:
        return "the result is not merged back to [b, s, H*Dv] (or [s, b, H*Dv]) by data-movement ops"
    old, out, target = merge
    emit = _Emit(graph, old[-1])
    ins = []
    for s in splits:
        x, width = s.root, s.heads * s.head_size
        if (s.offset, width) != (0, s.channels):
            x = emit("Slice", [x] + [new_constant(graph, f"{att.label}.{n}", torch.tensor([i], dtype=torch.int64))
                                     for n, i in (("start", s.offset), ("end", s.offset + width), ("axis", 2))])
        ins.append(emit("Transpose", [x], {"perm": [1, 0, 2]}) if s.seq_first else x)
    new = emit("Attention", ins + list(att.inputs[3:]), dict(att.attrs, heads=int(q.heads)), domain="kiln")
    merge_covers(new.producer, [att] + old)
    if q.seq_first:
        new = emit("Transpose", [new], {"perm": [1, 0, 2]})
    # The merge's result may be any row-major view of [b, s, H*Dv] (nn.MultiheadAttention's is [s*b, E]).
    target = new_constant(graph, f"{att.label}.merged", torch.tensor(target, dtype=torch.int64))
    _replace(graph, ctx, "fold_attention_heads", [att] + old, "Reshape", [new, target], {}, out)
    return None
