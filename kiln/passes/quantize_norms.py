"""A LayerNorm feeding quantized layers writes their quantized input itself.

    Y = LayerNormalization(x, g, b);  QLinear(Y){x_scale s, fp8}, Add(Y, ...)
      ->  Y, Yq = kiln::LayerNormQuantize(x, g, b){q_scale s, q_dtype fp8};  QLinear(Yq){input_quantized}, Add(Y, ...)

Without it each such QLinear quantizes Y in a pass of its own (read Y, write 8-bit) before its GEMM; the
LayerNorm kernel already has each row of Y in registers, so writing the 8-bit copy there saves that pass
(in BERT two per encoder layer: the QKV and FFN1 inputs). The values are the same: Yq is QuantizeLinear of Y
as stored (in Y's own type), what the QLinear computed from Y.

Which readers switch: kiln::QLinear / QConv at input 0, fp8 (e4m3) or int8, static per-tensor scale (not dynamic,
not smoothed), not already reading quantized data. Readers with other parameters keep reading Y (the group
with the most readers wins). Runs after the precision passes, so Y's type is final.
"""
from __future__ import annotations

from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .context import PassContext

Q_DTYPES = {"fp8e4m3": DType.FLOAT8E4M3FN, "int8": DType.INT8}


def reader_key(node: Node, slot: int) -> tuple | None:
    """(scale, zero point, 8-bit type) of a reader that can take Y quantized, else None."""
    a = node.attrs
    if node.domain != "kiln" or node.op_type not in ("QLinear", "QConv") or slot != 0 or a.get("input_quantized") \
            or a.get("x_dynamic") or "smooth_input" in a or a.get("x_dtype") not in Q_DTYPES:
        return None
    return float(a["x_scale"]), int(a.get("x_zero_point", 0)), a["x_dtype"]


def switch_readers(readers: list[Node], yq: Value | None, y_dtype: DType) -> None:
    """The quantized readers of Y read ``yq`` (Y's quantized copy; None: Y itself became quantized) as is. Their
    float output type came from X's; it stays Y's type."""
    for reader in readers:
        if yq is not None:
            reader.set_input(0, yq)
        reader.attrs["input_quantized"] = 1
        reader.attrs.setdefault("float_dtype", str(y_dtype.torch).replace("torch.", ""))


def quantize_norm_outputs(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for n in graph.nodes:
        if n.domain or n.op_type != "LayerNormalization" or not n.outputs or n.outputs[0] is None:
            continue
        if any(o is not None and o.uses for o in n.outputs[1:]):
            continue  # Mean / InvStdDev are read
        y = n.outputs[0]
        y_dtype = ctx.dtype(y)
        if y_dtype not in (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT):
            continue
        groups: dict[tuple, list] = {}
        for reader, slot in y.uses:
            key = reader_key(reader, slot)
            if key is not None:
                groups.setdefault(key, []).append(reader)
        if not groups:
            continue
        (scale, zero_point, q_dtype), readers = max(groups.items(), key=lambda kv: len(kv[1]))
        for o in n.outputs[1:]:
            if o is not None:
                o.producer = None
        yq = Value(f"{y.name}.{q_dtype}", TensorType(Q_DTYPES[q_dtype], ctx.shape(y)))
        yq.producer, yq.index = n, 1
        n.outputs = [y, yq]
        n.op_type, n.domain = "LayerNormQuantize", "kiln"
        n.attrs.update(q_scale=scale, q_zero_point=zero_point, q_dtype=q_dtype)
        switch_readers(readers, yq, y_dtype)
        ctx.count(f"quantize_norm_outputs:{q_dtype}", len(readers))
        changed = True
    if changed:
        ctx.invalidate()
    return changed
