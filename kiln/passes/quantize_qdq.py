"""Explicit quantization: a model's QuantizeLinear/DequantizeLinear pairs become quantization parameters.

    DQ(Wq const, s, z)           -> W = (Wq - z) * s          (a float constant; Wq and s kept as a hint)
    Q(a, s, z) -> DQ(., s, z)    -> kiln::FakeQuant(a){scale: s, zero_point: z, dtype}

This runs first, before constant folding would turn DQ(const) into a plain float weight. The
quantize_int8 pass then builds real INT8 layers for exactly the layers whose input is a FakeQuant,
with the model's scales, reading the FakeQuant's input directly (the layer quantizes it the same way)
and requantizing in the producer's epilogue where consecutive layers are quantized. A FakeQuant that
feeds no quantized layer stays and runs in float (quantize + dequantize), so the engine computes what
the Q/DQ model means, clipping included.
"""
from __future__ import annotations

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Node
from ..quant.rewrite import ActParams
from .context import PassContext
from .rewrite import const, new_constant


def _dequantized(n: Node) -> torch.Tensor | None:
    x, s = const(n.inputs[0]), const(n.inputs[1])
    zp = const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
    if x is None or s is None or n.attrs.get("block_size", 0) or x.dtype.is_floating_point:
        return None
    axis = n.attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    shape = [1] * x.dim()
    if s.numel() > 1:
        shape[axis] = s.numel()
    y = x.to(torch.float64)
    if zp is not None:
        y = y - zp.to(torch.float64).reshape(shape if zp.numel() > 1 else [1] * x.dim())
    return (y * s.to(torch.float64).reshape(shape)).to(s.dtype)


def _pair_params(dq: Node) -> ActParams | None:
    """The per-tensor parameters of a Q -> DQ pair with equal scale and zero point, else None."""
    q = dq.inputs[0].producer
    if q is None or q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx"):
        return None
    qs, ds = const(q.inputs[1]), const(dq.inputs[1])
    qz = const(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else None
    dz = const(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    if qs is None or ds is None or qs.numel() != 1 or not torch.equal(qs.reshape(()), ds.reshape(())):
        return None
    zq = 0 if qz is None else int(qz.reshape(-1)[0])
    zd = 0 if dz is None else int(dz.reshape(-1)[0])
    if qz is not None:
        dtype = {torch.int8: DType.INT8, torch.uint8: DType.UINT8}.get(qz.dtype)
    else:  # no zero point: output_dtype (opset 21) or uint8
        dtype = DType(q.attrs["output_dtype"]) if q.attrs.get("output_dtype") else DType.UINT8
    if zq != zd or dtype not in (DType.INT8, DType.UINT8):
        return None
    return ActParams(float(qs.reshape(())), zq, "uint8" if dtype is DType.UINT8 else "int8")


def import_qdq(graph: Graph, ctx: PassContext) -> bool:
    if not any(n.op_type == "DequantizeLinear" for n in graph.nodes):
        return False
    acts: dict[str, ActParams] = {}
    weights: dict[str, tuple] = graph.meta.setdefault("qdq_weights", {})
    changed = False
    for n in list(graph.nodes):
        if n.op_type != "DequantizeLinear" or n.domain not in ("", "ai.onnx") or n.graph is None:
            continue
        y = n.outputs[0]
        w = _dequantized(n)
        if w is not None:
            wq, s = const(n.inputs[0]), const(n.inputs[1])
            zp = const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
            new = new_constant(graph, y.name, w)
            axis = n.attrs.get("axis", 1)
            if wq.dtype == torch.int8 and (zp is None or not zp.any()) and (s.numel() == 1 or axis in (0, -wq.dim())):
                weights[new.name] = (wq, s)
            graph.replace_all_uses(y, new)
            graph.remove(n)
            changed = True
            continue
        p = _pair_params(n)
        if p is None:
            continue
        q = n.inputs[0].producer
        a = q.inputs[0]
        if a.dtype is not None and a.dtype is not DType.FLOAT:
            continue
        y = n.outputs[0]
        n.detach()
        fq = Node("FakeQuant", [a], [y], {"scale": p.scale, "zero_point": p.zero_point, "dtype": p.dtype},
                  name=n.name or f"{a.name}.fake_quant", domain="kiln")
        fq.meta["covers"] = [x.label for x in (q, n)]
        graph.insert_before(n, fq)
        graph.nodes.remove(n)
        n.graph = None
        if not q.outputs[0].uses and not any(o is q.outputs[0] for o in graph.outputs):
            graph.remove(q)
        acts[y.name] = p
        changed = True
    if changed:
        graph.meta["qdq_explicit"] = True
        ctx.count("import_qdq")
        ctx.notes.append(f"explicit quantization: {len(acts)} quantized activations, {len(weights)} int8 weights "
                         f"read from the model's Q/DQ nodes")
    return changed
