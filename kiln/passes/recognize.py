"""Exporters' decomposed forms recognized as single layers.

    0.5 * x * (1 + erf(x / sqrt2))                         -> Gelu(x)
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  -> Gelu(x, approximate="tanh")
    x * sigmoid(x)                                          -> Swish(x)            (SiLU)
    x * tanh(softplus(x)), softplus also as Where(x>20, x, ..) -> Mish(x)
    x * clip(x + 3, 0, 6) / 6,  x * HardSigmoid(x, 1/6)     -> HardSwish(x)
    (x - mean(x)) / sqrt(mean((x - mean)^2) + eps) * g + b  -> LayerNormalization(x, g, b)
    x / sqrt(mean(x^2) + eps) * g                           -> RMSNormalization(x, g)

Attention has its own file, recognize_attention.py.
"""
from __future__ import annotations

import math

import torch

from ..ir.graph import Graph, Node, Value
from .context import PassContext
from .rewrite import const, internal_only, new_constant, only_use, producer_of, replace_pattern, scalar, sole_reader


def _other(node: Node, v: Value) -> Value | None:
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    return b if a is v else a if b is v else None


def _close(x: float | None, want: float, tol: float = 1e-3) -> bool:
    return x is not None and abs(x - want) <= tol * max(1.0, abs(want))


# --- GELU ---------------------------------------------------------------------------------------
def _gelu_tail(graph: Graph, inner: Node, x: Value):
    """From the node producing erf(..)/tanh(..): (1 + t) * x * 0.5 in any association; returns (nodes, out)."""
    add = sole_reader(inner.outputs[0], "Add")
    if add is None or not _close(scalar(_other(add, inner.outputs[0])), 1.0):
        return None
    m1 = sole_reader(add.outputs[0], "Mul")
    if m1 is None:
        return None
    o = _other(m1, add.outputs[0])
    if o is x:  # x * (1 + t) then * 0.5
        m2 = sole_reader(m1.outputs[0], "Mul")
        if m2 is not None and _close(scalar(_other(m2, m1.outputs[0])), 0.5):
            return [add, m1, m2], m2.outputs[0]
        return None
    half = producer_of(o, "Mul")  # (x * 0.5) * (1 + t)
    if half is not None and x in half.inputs and _close(scalar(_other(half, x)), 0.5) and only_use(o) is m1:
        return [half, add, m1], m1.outputs[0]
    if _close(scalar(o), 0.5):  # 0.5 * (1 + t) then * x
        m2 = sole_reader(m1.outputs[0], "Mul")
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
        if not internal_only(allnodes, out):
            ctx.reject("recognize_gelu", allnodes, "an intermediate value of the GELU pattern is used elsewhere")
            continue
        replace_pattern(graph, ctx, "recognize_gelu", allnodes, "Gelu", [x], {"approximate": approx}, out)
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
    node = producer_of(v, "Mul", "Pow")
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
            inner = producer_of(pre.inputs[1 - i], "Add")
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

    first = sole_reader(start.outputs[0], "Mul", "Div")
    if first is None:
        return None
    if first.op_type == "Mul" and _other(first, start.outputs[0]) is x:  # (x * g) then / 6
        second = sole_reader(first.outputs[0], "Mul", "Div")
        return ([first, second], second.outputs[0]) if scale(second, first.outputs[0]) else None
    if scale(first, start.outputs[0]):  # (g / 6) then * x
        second = sole_reader(first.outputs[0], "Mul")
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
            add = producer_of(node.inputs[0], "Add")
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
            mul = sole_reader(node.outputs[0], "Mul")
            if mul is None or _other(mul, node.outputs[0]) is not x:
                continue
            replace_pattern(graph, ctx, "recognize_hardswish", [node, mul], "HardSwish", [x], {}, mul.outputs[0])
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
        if not internal_only(head + nodes, out):
            ctx.reject("recognize_hardswish", head + nodes, "an intermediate value of the HardSwish pattern is "
                       "used elsewhere")
            continue
        replace_pattern(graph, ctx, "recognize_hardswish", head + nodes, "HardSwish", [x], {}, out)
        changed = True
    return changed


# --- SiLU ---------------------------------------------------------------------------------------
def recognize_silu(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for sig in list(graph.nodes):
        if sig.graph is not graph or sig.domain != "" or sig.op_type != "Sigmoid":
            continue
        x = sig.inputs[0]
        mul = sole_reader(sig.outputs[0], "Mul")
        if mul is None or _other(mul, sig.outputs[0]) is not x:
            continue
        replace_pattern(graph, ctx, "recognize_silu", [sig, mul], "Swish", [x], {"alpha": 1.0}, mul.outputs[0])
        changed = True
    return changed


# --- Mish ---------------------------------------------------------------------------------------
def _softplus_input(v: Value) -> tuple[Value, list[Node]] | None:
    """(x, nodes) when v = Softplus(x), or torch's thresholded Softplus as the dynamo exporter writes it:
    Where(x > 20, x, Softplus(x)) (past 20 the two agree in float32 arithmetic: log1p(exp(-x)) < 2.1e-9)."""
    sp = producer_of(v, "Softplus")
    if sp is not None:
        return sp.inputs[0], [sp]
    where = producer_of(v, "Where")
    if where is None or len(where.inputs) != 3:
        return None
    gt, sp = producer_of(where.inputs[0], "Greater"), producer_of(where.inputs[2], "Softplus")
    if gt is None or sp is None:
        return None
    x = sp.inputs[0]
    if where.inputs[1] is not x or gt.inputs[0] is not x or not _close(scalar(gt.inputs[1]), 20.0, 1e-6):
        return None
    return x, [gt, sp, where]


def recognize_mish(graph: Graph, ctx: PassContext) -> bool:
    """x * tanh(softplus(x)) -> Mish(x)."""
    changed = False
    for tanh in list(graph.nodes):
        if tanh.graph is not graph or tanh.domain != "" or tanh.op_type != "Tanh":
            continue
        found = _softplus_input(tanh.inputs[0])
        if found is None:
            continue
        x, nodes = found
        mul = sole_reader(tanh.outputs[0], "Mul")
        if mul is None or _other(mul, tanh.outputs[0]) is not x:
            continue
        old = nodes + [tanh, mul]
        if not internal_only(old, mul.outputs[0]):
            ctx.reject("recognize_mish", old, "an intermediate of x * tanh(softplus(x)) is used elsewhere")
            continue
        replace_pattern(graph, ctx, "recognize_mish", old, "Mish", [x], {}, mul.outputs[0])
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
    m = sole_reader(out, "Mul")
    if m is not None and const(_other(m, out)) is not None:
        gamma = _other(m, out)
        nodes.append(m)
        out = m.outputs[0]
    a = sole_reader(out, "Add")
    if a is not None and const(_other(a, out)) is not None:
        beta = _other(a, out)
        nodes.append(a)
        out = a.outputs[0]
    return nodes, gamma, beta, out


def _norm_denominator(v: Value):
    """sqrt(mean(d^2) + eps) where v is that value: returns (nodes, square_input, eps, reduce node)."""
    sqrt = producer_of(v, "Sqrt")
    if sqrt is None:
        return None
    add = producer_of(sqrt.inputs[0], "Add")
    if add is None:
        return None
    for i in (0, 1):
        eps = scalar(add.inputs[i])
        red = producer_of(add.inputs[1 - i], "ReduceMean")
        if eps is not None and red is not None:
            break
    else:
        return None
    sq = producer_of(red.inputs[0], "Pow", "Mul")
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
        if not internal_only(nodes, out):
            ctx.reject("recognize_layer_norm", nodes, "an intermediate value of the LayerNorm pattern is used elsewhere")
            continue
        gb = _gamma_beta(graph, ctx, x, k, gamma, beta, mean.label)
        if gb is None:
            ctx.reject("recognize_layer_norm", nodes, "normalized dims are not static and gamma/beta are missing")
            continue
        replace_pattern(graph, ctx, "recognize_layer_norm", nodes, "LayerNormalization", [x, *gb],
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
            mul = sole_reader(use.outputs[0], "Mul")
            if mul is None or _other(mul, use.outputs[0]) is not x:
                continue
            scale_nodes, normed = [use, mul], mul.outputs[0]
        else:
            continue
        aff_nodes, gamma, beta, out = _affine(graph, normed)
        if beta is not None:  # RMSNorm has no shift: leave the Add outside
            aff_nodes, out = aff_nodes[:-1], aff_nodes[-2].outputs[0] if len(aff_nodes) > 1 else normed
        nodes = den_nodes + scale_nodes + aff_nodes
        if not internal_only(nodes, out):
            ctx.reject("recognize_rms_norm", nodes, "an intermediate value of the RMSNorm pattern is used elsewhere")
            continue
        gb = _gamma_beta(graph, ctx, x, k, gamma, None, sqrt.label)
        if gb is None:
            continue
        replace_pattern(graph, ctx, "recognize_rms_norm", nodes, "RMSNormalization", [x, gb[0]],
                 {"axis": k, "epsilon": float(eps)}, out)
        changed = True
    return changed
