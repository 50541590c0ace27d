"""Reduced precision: with fp16 or bf16 enabled, the float32 parts of the graph run in that type.

    x:f32 -> Cast(T) -> ...layers in T... -> Cast(f32) -> y:f32

Mixed precision: each layer gets a precision (float32, float16 or bfloat16) and a Cast is placed on
every edge between layers of different precision (one per value and type, shared by its readers).
A layer's precision is, first match wins: what ``BuilderConfig.layer_precisions`` asks for it (by name,
glob or op type: kiln/quant/layer_precision.py); float32 for a layer the accuracy target pinned
(kiln/passes/quantize_target.py), for a layer with subgraphs and for the
numerically sensitive ops in ``KEEP_FLOAT32`` (sums and powers that overflow or lose digits in 16 bits;
the Softmax / LayerNormalization kernels already accumulate in float32); else T. Quantized layers
(kiln::QLinear / kiln::QConv) take T for their float side. ``strict_types`` keeps the model's own types.

Float32 constants become T for readers in T, except in parameter slots ONNX keeps in float32 (Resize
scales, quantization scales); Cast(to=float32) inside a layer in T becomes Cast(to=T). The engine's
inputs and outputs keep their float32 type.
"""
from __future__ import annotations

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from ..quant.layer_precision import layer_precision, normalize
from .context import PassContext
from .rewrite import new_constant

# (op, input slot) that ONNX types as float32 regardless of the data type.
FLOAT32_SLOTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1), ("QuantizeLinear", 1), ("DequantizeLinear", 1),
                 ("DynamicQuantizeLinear", 1), ("QLinear", 2), ("QConv", 2)}

# Ops kept in float32 unless layer_precisions says otherwise: large sums and powers.
KEEP_FLOAT32 = frozenset({"Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2",
                          "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "CumSum"})

_LOW = {"fp16": DType.FLOAT16, "bf16": DType.BFLOAT16, "fp32": DType.FLOAT}


def target_dtype(ctx: PassContext) -> DType | None:
    if ctx.config.strict_types:
        return None
    if ctx.config.fp16:
        return DType.FLOAT16
    if ctx.config.bf16:
        return DType.BFLOAT16
    return None


def node_precision(node: Node, ctx: PassContext, default: DType) -> DType:
    want = layer_precision(node, ctx.config.layer_precisions)
    if want in _LOW:
        return _LOW[want]
    if node.meta.get("keep_float32"):  # pinned by the accuracy target (quantize_target.py)
        return DType.FLOAT
    if any(True for _ in node.subgraphs()):
        return DType.FLOAT
    supported = ctx.registry.traits(node.domain, node.op_type).float_dtypes
    if supported and default.torch not in supported:  # e.g. a plugin declared for float32 only
        return DType.FLOAT
    if want is None and node.domain == "" and node.op_type in KEEP_FLOAT32:
        return DType.FLOAT
    if want is None and _scales_a_float32_sum(node):
        return DType.FLOAT
    return default


def _scales_a_float32_sum(node: Node) -> bool:
    """Div/Mul of a KEEP_FLOAT32 reduction by a constant: a mean or variance written out (Sum(x*x) / n). The
    sum may exceed float16's 65504 where the mean does not, so the division joins the sum in float32 and
    the cast to T comes after it (a pre-trained file-type classifier's LayerNorm gave inf otherwise)."""
    if node.domain != "" or node.op_type not in ("Div", "Mul") or len(node.inputs) != 2:
        return False
    a, b = node.inputs
    if a is None or b is None or b.const is None:
        return False
    p = a.producer
    return p is not None and p.domain == "" and p.op_type in KEEP_FLOAT32


def _cast(value: Value, to: DType, name: str) -> tuple[Node, Value]:
    out = Value(name, TensorType(to, getattr(value.type, "shape", None)))
    node = Node("Cast", [value], [out], {"to": int(to)}, name=name)
    node.meta["covers"] = []
    return node, out


def lower_copy(graph: Graph, ctx: PassContext) -> None:
    """Apply the build's fp16/bf16 lowering to a copy of the graph being measured (kiln/quant/sensitivity.py),
    so the measurement is of what will run."""
    if target_dtype(ctx) is None and not ctx.config.layer_precisions:
        return
    lower_precision(graph, PassContext(graph, ctx.config, ctx.registry, ctx.input_shapes))


def lower_precision(graph: Graph, ctx: PassContext) -> bool:
    if ctx.config.strict_types:
        return False
    t = target_dtype(ctx)
    asked = {normalize(v) for v in ctx.config.layer_precisions.values()} & {"fp16", "bf16"}
    if t is None and not asked:
        return False
    f32 = DType.FLOAT
    default = t or f32
    facts = ctx.facts
    was_f32 = {v.id for v in graph.values() if getattr(facts.type_of(v), "dtype", None) is f32}
    prec = {id(n): node_precision(n, ctx, default) for n in graph.nodes}
    # A layer whose output type the facts do not know stays float32: its output could not be followed (cast
    # back where a float32 layer or a graph output reads it), so a lowered one leaked bf16 into float32
    # outputs (a pre-trained OCR detector's ConvTranspose tail, whose dims are data-dependent).
    unknown = [n for n in graph.nodes if prec[id(n)] is not f32 and any(
        o is not None and getattr(facts.type_of(o), "dtype", None) is None for o in n.outputs)]
    for n in unknown:
        prec[id(n)] = f32
    if unknown:
        ctx.notes.append(f"kept in float32 because their output types are not known at build time: "
                         f"{', '.join(n.label for n in unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    if all(p is f32 for p in prec.values()):
        return False
    now: dict[int, DType] = {}  # value id -> its float type after this pass
    low_consts: dict[tuple[int, DType], Value] = {}
    casts: dict[tuple[int, DType], Value] = {}

    def value_type(v: Value) -> DType:
        return now.get(v.id, f32)

    def read_as(v: Value, want: DType, before: Node) -> Value:
        if v.const is not None:
            if v.const.dtype != torch.float32 or want is f32:
                return v
            key = (v.id, want)
            if key not in low_consts:
                low_consts[key] = new_constant(graph, f"{v.name}.{want.short}", v.const.to(want.torch))
            return low_consts[key]
        if v.id not in was_f32 or value_type(v) is want:
            return v
        key = (v.id, want)
        if key not in casts:
            node, out = _cast(v, want, f"{v.name}.to_{want.short}")
            graph.insert_before(before, node)
            casts[key] = out
        return casts[key]

    for n in list(graph.nodes):
        p = prec.get(id(n))
        if p is None:  # a Cast this pass inserted
            continue
        for s, v in enumerate(n.inputs):
            if v is None:
                continue
            want = f32 if (n.op_type, s) in FLOAT32_SLOTS else p
            new = read_as(v, want, n)
            if new is not v:
                n.set_input(s, new)
        if p is f32:
            continue
        if n.op_type == "Cast" and n.attrs.get("to") == int(f32):
            n.attrs["to"] = int(p)
        if n.op_type == "ConstantOfShape" and isinstance(n.attrs.get("value"), torch.Tensor) \
                and n.attrs["value"].dtype == torch.float32:
            n.attrs["value"] = n.attrs["value"].to(p.torch)
        if n.domain == "kiln" and n.op_type in ("QLinear", "QConv"):
            n.attrs["float_dtype"] = str(p.torch).replace("torch.", "")
        for o in n.outputs:
            if o is not None and o.id in was_f32:
                now[o.id] = p
                o.type = TensorType(p, getattr(o.type, "shape", None))
    # Outputs: cast back at the edge, keeping each output's float32 type.
    for v in list(graph.outputs):
        if v.id not in was_f32 or value_type(v) is f32 or v.producer is None:
            continue
        low_t = value_type(v)
        low = Value(f"{v.name}.{low_t.short}", TensorType(low_t, getattr(v.type, "shape", None)))
        prod, idx = v.producer, v.index
        prod.outputs[idx] = low
        low.producer, low.index = prod, idx
        v.producer = None
        for n, s in list(v.uses):
            n.set_input(s, low)
        node = Node("Cast", [low], [v], {"to": int(f32)}, name=f"{v.name}.to_f32")
        node.meta["covers"] = []
        graph.append(node)
        v.type = TensorType(f32, getattr(v.type, "shape", None))
    kept = sum(1 for n in graph.nodes if prec.get(id(n)) is f32 and any(o is not None and o.id in was_f32
                                                                          for o in n.outputs))
    ctx.count(f"lower_precision:{default.short}")
    if kept:
        ctx.count("lower_precision:kept_float32", kept)
    return True
