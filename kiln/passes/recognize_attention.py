"""Attention written out by exporters recognized as one kiln::Attention layer, then its heads folded in.

    softmax(Q @ Kt * s + mask) @ V                          -> kiln::Attention(Q, Kt, V, mask) {scale: s}
    Where(IsNaN(p), 0, p) @ V  (safe softmax, SDPA export)  -> kiln::Attention(..., nan_to_zero=1)
    split heads -> Attention -> merged heads                -> kiln::Attention(q, k, v, mask) {heads: H}

The scale may be on the scores, on Q, on K (before or after its transpose) or per head; several additive terms
are summed into one mask; Reshapes of the scores' leading dims (baddbmm's [B*H, S, S], Swin's [B/nW, nW, H, N, N]
window-mask view) are followed. docs/recognition.md lists the forms and the reasons others are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .attention_layout import head_merge, head_split, trace_root
from .context import PassContext
from .rewrite import (const, internal_only, is_output, merge_covers, new_constant, only_use, producer_of,
                      replace_pattern, scalar, sole_reader)


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
        p = producer_of(v, "Mul", "Div", "Transpose")
        if p is None or len(p.outputs[0].uses) != 1:
            return v, scale, perm
        if p.op_type == "Transpose":
            under = producer_of(p.inputs[0], "Mul", "Div")
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
    p = producer_of(v, *_SCORE_OPS)
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
        p = producer_of(v, *_SCORE_OPS)
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

    def reshape(self, v: Value, shape: list[int] | None) -> Value:
        if shape is None:  # already so shaped
            return v
        target = new_constant(self.graph, f"{self.anchor.label}.shape", torch.tensor(shape, dtype=torch.int64))
        return self("Reshape", [v, target])


def _probabilities_read_elsewhere(probs: Value, av: Node) -> bool:
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
        if not internal_only(all_nodes, out):
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
            q, kt, v = (emit.reshape(x, s) for x, s in zip((q, kt, v), lifted))
            terms = [emit.reshape(t, s) for (t, _), s in zip(sc.terms, lifted[3:])]
            row_scales = [emit.reshape(c, s) for c, s in zip(row_scales, lifted[3 + len(terms):])]
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
            shape = new_constant(graph, f"{av.label}.shape", torch.tensor(lifted[-1], dtype=torch.int64))
            replace_pattern(graph, ctx, "recognize_attention", all_nodes, "Reshape", [att, shape], {}, out)
        else:
            replace_pattern(graph, ctx, "recognize_attention", all_nodes, "Attention", ins, attrs, out, domain="kiln")
        changed = True
    return changed


def _lift_operands(operands: list[tuple[Value, list[int] | None]], sc: _Scores, out: Value, ctx: PassContext):
    """Reshape targets that take Q, Kt, V (each with the perm still to apply) and the terms onto the finest
    leading dims of the scores' views (None for one already so shaped), and the result back (-1 for the dim a
    profile lets vary), or why not."""
    # The per-head scales sit on the MatMul's scores (a Reshape outside one is refused), as Q does.
    values = [x for x, _ in operands] + [t for t, _ in sc.terms] + list(sc.row_scales) + [out]
    perms = [p for _, p in operands] + [None] * (len(values) - len(operands))
    runs = [ctx.shape_runs(x) for x in values + sc.frames]
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
    for k, shapes in enumerate(zip(*per_run)):
        if len({len(s) for s in shapes}) != 1:
            return "the scores' views differ in rank from one profile-ranged size to another"
        target = [d if all(s[j] == d for s in shapes) else -1 for j, d in enumerate(shapes[0])]
        if target.count(-1) > 1:
            return "more than one dim of the scores' views varies with the profile"
        unchanged = k < len(frame_of) and all(list(s) == list(_permuted(r, perms[k]))
                                              for s, r in zip(shapes, runs[k]))
        targets.append(None if unchanged else target)
    return targets


# --- Attention heads ----------------------------------------------------------------------------------
def _split_heads(v: Value, perm: list[int], ctx: PassContext):
    """v = Transpose(Reshape(x, [b, s, H, D]), perm) with x [b, s, H*D]: returns (x, H, D, nodes)."""
    t = producer_of(v, "Transpose")
    if t is None or list(t.attrs.get("perm", [])) != perm or len(t.outputs[0].uses) != 1:
        return None
    r = producer_of(t.inputs[0], "Reshape")
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
        t = sole_reader(att.outputs[0], "Transpose")
        r = sole_reader(t.outputs[0], "Reshape") if t is not None and list(t.attrs.get("perm", [])) == \
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
        if not internal_only(old, out):
            ctx.reject("fold_attention_heads", old, "a head-split intermediate is used elsewhere")
            continue
        ins = [q[0], k[0], v[0]] + list(att.inputs[3:])
        attrs = dict(att.attrs, heads=int(q[1]))
        replace_pattern(graph, ctx, "fold_attention_heads", old, "Attention", ins, attrs, out, domain="kiln")
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
    replace_pattern(graph, ctx, "fold_attention_heads", [att] + old, "Reshape", [new, target], {}, out)
    return None
