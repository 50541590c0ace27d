"""Reduced precision: with fp16 or bf16 enabled, the float32 parts of the graph run in that type.

    x:f32 -> Cast(T) -> ...layers in T... -> Cast(f32) -> y:f32

Float32 constants become T, except those that only feed parameter slots ONNX keeps in float32 (Resize
scales, quantization scales); Cast(to=float32) inside the graph becomes Cast(to=T). The engine's inputs
and outputs keep their float32 type. Kernels accumulate in float32 where torch does (matrix products,
convolutions, softmax and normalization reductions on the GPU).
"""
from __future__ import annotations

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .context import PassContext
from .rewrite import new_constant

# (op, input slot) that ONNX types as float32 regardless of the data type.
FLOAT32_SLOTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1), ("QuantizeLinear", 1), ("DequantizeLinear", 1),
                 ("DynamicQuantizeLinear", 1)}


def target_dtype(ctx: PassContext) -> DType | None:
    if ctx.config.strict_types:
        return None
    if ctx.config.fp16:
        return DType.FLOAT16
    if ctx.config.bf16:
        return DType.BFLOAT16
    return None


def _cast(graph: Graph, value: Value, to: DType, name: str) -> tuple[Node, Value]:
    out = Value(name, TensorType(to, getattr(value.type, "shape", None)))
    node = Node("Cast", [value], [out], {"to": int(to)}, name=name)
    node.meta["covers"] = []
    return node, out


def lower_precision(graph: Graph, ctx: PassContext) -> bool:
    t = target_dtype(ctx)
    if t is None:
        return False
    f32 = DType.FLOAT
    # Constants.
    for name, c in list(graph.constants.items()):
        if c.const.dtype != torch.float32:
            continue
        compute_uses = [(n, s) for n, s in c.uses if (n.op_type, s) not in FLOAT32_SLOTS]
        if not compute_uses:
            continue
        low = new_constant(graph, f"{name}.{t.short}", c.const.to(t.torch))
        for n, s in compute_uses:
            n.set_input(s, low)
    # Inputs: cast once at the edge.
    for v in graph.inputs:
        if getattr(v.type, "dtype", None) is f32 and v.uses:
            readers = list(v.uses)
            node, low = _cast(graph, v, t, f"{v.name}.to_{t.short}")
            for n, s in readers:
                n.set_input(s, low)
            graph.nodes.insert(0, node)
            node.graph = graph
    # Casts to float32 inside the graph now cast to T; so do float attributes that set an output type.
    for n in graph.nodes:
        if n.op_type == "Cast" and n.attrs.get("to") == int(f32):
            n.attrs["to"] = int(t)
        if n.op_type == "ConstantOfShape" and isinstance(n.attrs.get("value"), torch.Tensor) \
                and n.attrs["value"].dtype == torch.float32:
            n.attrs["value"] = n.attrs["value"].to(t.torch)
    # Outputs: cast back at the edge, keeping each output's float32 type.
    for i, v in enumerate(list(graph.outputs)):
        if getattr(v.type, "dtype", None) is not f32 or v.producer is None:
            continue
        low = Value(f"{v.name}.{t.short}", TensorType(t, getattr(v.type, "shape", None)))
        prod = v.producer
        idx = v.index
        prod.outputs[idx] = low
        low.producer, low.index = prod, idx
        v.producer = None
        for n, s in list(v.uses):
            n.set_input(s, low)
        node = Node("Cast", [low], [v], {"to": int(f32)}, name=f"{v.name}.to_f32")
        node.meta["covers"] = []
        graph.append(node)
    # Intermediate float32 values are now T.
    for n in graph.nodes:
        if n.op_type == "Cast" and n.outputs[0] in graph.outputs:
            continue
        for o in n.outputs:
            if o is not None and isinstance(o.type, TensorType) and o.type.dtype is f32:
                o.type = TensorType(t, o.type.shape)
    ctx.count(f"lower_precision:{t.short}")
    return True
