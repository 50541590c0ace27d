"""onnxruntime's com.microsoft fused ops rewritten into the standard layers Kiln's own fusions build, so a model
that onnxruntime's optimizer has already fused runs through the same fused layers as the plain export:

    SkipLayerNormalization(x, skip, g, b, bias)       -> LayerNormalization(Add(Add(x, bias), skip), g, b)
    SkipSimplifiedLayerNormalization(x, skip, g, bias)-> RMSNormalization(Add(Add(x, bias), skip), g)
    SimplifiedLayerNormalization(x, g)                -> RMSNormalization(x, g)
    BiasGelu(x, b) / FastGelu(x, b) / Gelu(x)         -> Gelu(Add(x, b)) (approximate="tanh" for FastGelu)
    QuickGelu(x)                                      -> Mul(x, Sigmoid(Mul(x, alpha)))
    BiasAdd(x, b, skip)                               -> Add(Add(x, b), skip)
    FusedMatMul(a, b) (no batch transposes)           -> Mul(MatMul(Transpose(a), Transpose(b)), alpha)
    FusedConv(x, w, b, z)                             -> activation(Add(Conv(x, w, b), z))
    Attention(x, W, bias, mask)                       -> Split(MatMul(x, W) + bias) into q, k, v, then
    MultiHeadAttention(q, k, v, bias, mask, ...)         kiln::Attention(q, k, v, mask bias) {heads}, or the ONNX
                                                         Attention layer where the op is causal or has a KV cache

The Add/MatMul/Gelu/LayerNormalization the rewrite leaves become kiln::Linear with epilogues, fused
elementwise regions and the attention layer through the passes after this one, exactly as for an export
that never went through onnxruntime's optimizer. Ops with no Kiln layer to go to (GroupQueryAttention,
RotaryEmbedding, EmbedLayerNormalization, the quantized ops) keep their reference kernels; a node that
is not rewritten is listed in the build report with the reason.

The mask is the one onnxruntime's kernels use: masked keys get ``mask_filter_value`` added (not -inf), so
it is turned into an additive bias by ``kiln::KeyMaskBias`` (the mask_index forms of the contrib ops).
"""
from __future__ import annotations

import torch

from ..ir.graph import Graph, Node, Value
from .context import PassContext
from .rewrite import const, new_constant

MS = "com.microsoft"
RULE = "lower_contrib_ms"


class _Rewrite:
    """Builds the nodes that replace ``old`` (inserted where it stood); ``finish`` hands over its outputs."""

    def __init__(self, graph: Graph, old: Node):
        self.graph, self.old = graph, old
        self.nodes: list[Node] = []

    def op(self, op_type: str, inputs: list, attrs: dict | None = None, domain: str = "", outputs: int = 1):
        outs = [Value(f"{self.old.label}/{op_type.lower()}{len(self.nodes)}_{i}") for i in range(outputs)]
        node = Node(op_type, inputs, outs, attrs, name=f"{self.old.label}/{op_type}", domain=domain)
        node.meta["covers"] = [self.old.label]
        self.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def const(self, name: str, value) -> Value:
        return new_constant(self.graph, f"{self.old.label}/{name}", torch.as_tensor(value))

    def finish(self, results: list[Value | None]) -> None:
        """Make ``results[i]`` stand for the old node's output i (None: that output must be unused)."""
        for n in self.nodes:
            self.graph.insert_before(self.old, n)
        old_outs = list(self.old.outputs)
        self.old.detach()
        self.graph.nodes.remove(self.old)
        self.old.graph = None
        for out, new in zip(old_outs, results):
            if out is None or new is None:
                continue
            # The new value's producer takes over the old Value object, so names and graph outputs stay.
            node = new.producer
            out.producer, out.index = node, new.index
            node.outputs[new.index] = out
            for user, slot in list(new.uses):
                user.set_input(slot, out)


def _used(node: Node, i: int) -> bool:
    if i >= len(node.outputs) or node.outputs[i] is None:
        return False
    v = node.outputs[i]
    return bool(v.uses) or any(o is v for o in node.graph.outputs)


def _input(node: Node, i: int) -> Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


# --- norms and activations -----------------------------------------------------------------------------------
def _skip_norm(r: _Rewrite, n: Node, rms: bool) -> str | None:
    if _used(n, 1) or _used(n, 2):
        return "its mean / inv_std_var outputs are used"
    x, skip, gamma = n.inputs[:3]
    beta = None if rms else _input(n, 3)
    bias = _input(n, 3 if rms else 4)
    total = r.op("Add", [x, bias]) if bias is not None else x
    total = r.op("Add", [total, skip])  # the order of the plain export: (x @ W + bias) + residual
    eps = float(n.attrs.get("epsilon", 1e-12))
    if rms:
        y = r.op("RMSNormalization", [total, gamma], {"axis": -1, "epsilon": eps})
    else:
        y = r.op("LayerNormalization", [total, gamma] + ([beta] if beta is not None else []),
                 {"axis": -1, "epsilon": eps})
    r.finish([y, None, None, total])
    return None


def _simplified_norm(r: _Rewrite, n: Node) -> str | None:
    if _used(n, 1):
        return "its inv_std_var output is used"
    y = r.op("RMSNormalization", list(n.inputs[:2]), {"axis": -1, "epsilon": float(n.attrs.get("epsilon", 1e-5))})
    r.finish([y])
    return None


def _gelu(r: _Rewrite, n: Node) -> str | None:
    x, bias = n.inputs[0], _input(n, 1)
    if bias is not None:
        x = r.op("Add", [x, bias])
    r.finish([r.op("Gelu", [x], {"approximate": "tanh" if n.op_type == "FastGelu" else "none"})])
    return None


def _quick_gelu(r: _Rewrite, n: Node) -> str | None:
    x = n.inputs[0]
    alpha = r.const("alpha", torch.tensor(float(n.attrs.get("alpha", 1.702)), dtype=torch.float32))
    r.finish([r.op("Mul", [x, r.op("Sigmoid", [r.op("Mul", [x, alpha])])])])
    return None


def _bias_add(r: _Rewrite, n: Node) -> str | None:
    x, bias, skip = n.inputs[:3]
    r.finish([r.op("Add", [r.op("Add", [x, bias]), skip])])
    return None


def _transposed_last(r: _Rewrite, ctx: PassContext, v: Value) -> Value | None:
    shape = ctx.shape(v)
    if shape is None or len(shape) < 2:
        return None
    rank = len(shape)
    return r.op("Transpose", [v], {"perm": list(range(rank - 2)) + [rank - 1, rank - 2]})


def _fused_matmul(r: _Rewrite, n: Node, ctx: PassContext) -> str | None:
    if n.attrs.get("transBatchA", 0) or n.attrs.get("transBatchB", 0):
        return "transBatchA / transBatchB have no standard equivalent Kiln fuses"
    a, b = n.inputs[:2]
    if n.attrs.get("transA", 0):
        a = _transposed_last(r, ctx, a)
    if n.attrs.get("transB", 0):
        b = _transposed_last(r, ctx, b)
    if a is None or b is None:
        return "the rank of a transposed operand is unknown"
    y = r.op("MatMul", [a, b])
    alpha = float(n.attrs.get("alpha", 1.0))
    if alpha != 1.0:
        dt = ctx.dtype(n.inputs[0])
        y = r.op("Mul", [y, r.const("alpha", torch.tensor(alpha, dtype=dt.torch if dt else torch.float32))])
    r.finish([y])
    return None


def _fused_conv(r: _Rewrite, n: Node, ctx: PassContext) -> str | None:
    attrs = {k: v for k, v in n.attrs.items() if k not in ("activation", "activation_params")}
    y = r.op("Conv", [v for v in n.inputs[:3]], attrs)
    z = _input(n, 3)
    if z is not None:
        y = r.op("Add", [y, z])
    act, params = n.attrs.get("activation", ""), list(n.attrs.get("activation_params", []))
    if act in ("Relu", "Tanh", "Sigmoid"):
        y = r.op(act, [y])
    elif act == "LeakyRelu":
        y = r.op("LeakyRelu", [y], {"alpha": float(params[0]) if params else 0.01})
    elif act == "HardSigmoid":
        y = r.op("HardSigmoid", [y], {"alpha": float(params[0]) if params else 0.2,
                                      "beta": float(params[1]) if len(params) > 1 else 0.5})
    elif act == "Clip":
        dt = ctx.dtype(n.inputs[0])
        lo, hi = (r.const(nm, torch.tensor(float(p), dtype=dt.torch if dt else torch.float32))
                  for nm, p in zip(("min", "max"), params))
        y = r.op("Clip", [y, lo, hi])
    r.finish([y])
    return None


# --- attention ------------------------------------------------------------------------------------------------
def _mask_bias(r: _Rewrite, n: Node, mask: Value | None, attn_bias: Value | None, key: Value) -> Value | None:
    """The additive bias of the contrib op's mask_index (via kiln::KeyMaskBias) plus its attention_bias; ``key``
    (B, T, D) gives the key length a (B) mask of lengths needs."""
    bias = None
    if mask is not None:
        bias = r.op("KeyMaskBias", [mask, key],
                    {"filter_value": float(n.attrs.get("mask_filter_value", -10000.0))}, domain="kiln")
    if attn_bias is not None:
        bias = attn_bias if bias is None else r.op("Add", [bias, attn_bias])
    return bias


def _attend(r: _Rewrite, n: Node, q, k, v, bias, heads: int, scale: float, past_k=None, past_v=None,
            want_present: bool = False) -> list:
    """kiln::Attention for plain attention; the ONNX Attention layer for causal attention or a KV cache."""
    causal = bool(n.attrs.get("unidirectional", 0))
    if not causal and past_k is None and not want_present:
        return [r.op("Attention", [q, k, v] + ([bias] if bias is not None else []), {"heads": heads, "scale": scale},
                     domain="kiln")]
    attrs = {"q_num_heads": heads, "kv_num_heads": heads, "is_causal": int(causal), "scale": scale}
    return r.op("Attention", [q, k, v, bias, past_k, past_v], attrs, outputs=3)


def _scale(n: Node, qk_width, heads: int) -> float | None:
    """The op's scale, or 1/sqrt(head size) when it has none; None when the head size is unknown."""
    if n.attrs.get("scale", 0.0):
        return float(n.attrs["scale"])
    return float(qk_width // heads) ** -0.5 if isinstance(qk_width, int) else None


def _attention(r: _Rewrite, n: Node, ctx: PassContext) -> str | None:
    x, w, bias, mask, past, attn_bias = (list(n.inputs) + [None] * 6)[:6]
    if past is not None or _used(n, 1):
        return "past / present KV in onnxruntime's stacked (2, B, N, T, H) layout: left to the reference kernel"
    heads = int(n.attrs["num_heads"])
    wc = const(w)
    if wc is None or wc.dim() != 2:
        return "the weights are not a 2-D constant"
    sizes = list(n.attrs.get("qkv_hidden_sizes", [])) or [wc.shape[1] // 3] * 3
    qkv = r.op("MatMul", [x, w])
    if bias is not None:
        qkv = r.op("Add", [qkv, bias])
    q, k, v = r.op("Split", [qkv, r.const("sizes", torch.tensor(sizes, dtype=torch.int64))], {"axis": -1}, outputs=3)
    out = _attend(r, n, q, k, v, _mask_bias(r, n, mask, attn_bias, x), heads, _scale(n, sizes[0], heads))
    r.finish([out[0]])
    return None


def _mha(r: _Rewrite, n: Node, ctx: PassContext) -> str | None:
    q, k, v, bias, mask, attn_bias, past_k, past_v = (list(n.inputs) + [None] * 8)[:8]
    if any(_input(n, i) is not None for i in (8, 9)):
        return "past_sequence_length / cache_indirection: left to the reference kernel"
    shapes = [ctx.shape(t) if t is not None else None for t in (q, k, v)]
    if k is None or v is None or any(s is None or len(s) != 3 for s in shapes):
        return "packed or BNSH query/key/value layouts: left to the reference kernel"
    if (past_k is None) != (past_v is None):
        return "past_key without past_value"
    mask_shape = ctx.shape(mask) if mask is not None else None
    if past_k is not None and mask is not None and (mask_shape is None or len(mask_shape) == 1):
        return "a (B) key-length mask with past KV (the key length includes the past): left to the reference kernel"
    heads = int(n.attrs["num_heads"])
    scale = _scale(n, shapes[0][2], heads)
    if scale is None:
        return "the query's hidden size is not known at build time"
    if bias is not None:
        bc = const(bias)
        dq, dk = shapes[0][2], shapes[1][2]
        if bc is None or not isinstance(dq, int) or not isinstance(dk, int):
            return "the bias is not a constant or the hidden sizes are unknown"
        q = r.op("Add", [q, r.const("bias_q", bc[:dq])])
        k = r.op("Add", [k, r.const("bias_k", bc[dq:dq + dk])])
        v = r.op("Add", [v, r.const("bias_v", bc[dq + dk:])])
    want_present = _used(n, 1) or _used(n, 2)
    out = _attend(r, n, q, k, v, _mask_bias(r, n, mask, attn_bias, k), heads, scale, past_k, past_v, want_present)
    r.finish(list(out) if len(out) == 3 else [out[0]])
    return None


_LOWER = {
    "SkipLayerNormalization": lambda r, n, ctx: _skip_norm(r, n, rms=False),
    "SkipSimplifiedLayerNormalization": lambda r, n, ctx: _skip_norm(r, n, rms=True),
    "SimplifiedLayerNormalization": lambda r, n, ctx: _simplified_norm(r, n),
    "BiasGelu": lambda r, n, ctx: _gelu(r, n),
    "FastGelu": lambda r, n, ctx: _gelu(r, n),
    "Gelu": lambda r, n, ctx: _gelu(r, n),
    "QuickGelu": lambda r, n, ctx: _quick_gelu(r, n),
    "BiasAdd": lambda r, n, ctx: _bias_add(r, n),
    "FusedMatMul": _fused_matmul,
    "FusedConv": _fused_conv,
    "Attention": _attention,
    "MultiHeadAttention": _mha,
}

# Ops kept on their reference kernels, and why (shown in the build report).
_KEPT = {
    "GroupQueryAttention": "no Kiln attention layer keeps a per-row KV cache",
    "RotaryEmbedding": "its kernel is already the one Kiln's ONNX RotaryEmbedding runs",
    "EmbedLayerNormalization": "runs once per model: its kernel is already one gather-sum-normalize pass",
}


def lower_contrib_ms(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for n in list(graph.nodes):
        simplified_onnx = n.domain == "" and n.op_type == "SimplifiedLayerNormalization"
        if n.graph is not graph or (n.domain != MS and not simplified_onnx):
            continue
        lower = _LOWER.get(n.op_type)
        if lower is None:
            if n.op_type in _KEPT:
                ctx.reject(RULE, [n], _KEPT[n.op_type])
            continue
        r = _Rewrite(graph, n)
        why = lower(r, n, ctx)
        if why is not None:
            for made in r.nodes:  # nothing was inserted: unlink what was built
                made.detach()
            ctx.reject(RULE, [n], why)
            continue
        ctx.count(f"{RULE}:{n.op_type}")
        changed = True
    return changed
