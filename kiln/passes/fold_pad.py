"""A zero Pad before a convolution or pooling becomes the layer's own padding (older exporters, TensorFlow
converters and "SAME" padding emit the Pad as a separate node):

    Conv(Pad(x, pads, 0), W)          ->  Conv(x, W) {pads: pads + conv pads}
    AveragePool(Pad(x, pads, 0))      ->  AveragePool(x) {pads, count_include_pad: 1}   (only when it had 1 or
                                          no pads of its own: the zeros are then counted as the Pad's were)

Conditions, checked per consumer: constant mode with a zero (or absent) value, constant non-negative pads,
no padding on the batch and channel axes, a consumer with explicit pads (``auto_pad`` NOTSET). The Pad stays
if anything else reads it (dead-code removal drops it when every reader took its padding). MaxPool is left
alone: its padding is -inf, not the Pad's zeros.
"""
from __future__ import annotations

from ..ir.graph import Graph, Node
from .context import PassContext
from .rewrite import const, merge_covers, scalar

# consumer op -> the input slot that takes the padded tensor
_TAKES_PADDING = {"Conv": 0, "AveragePool": 0}


def _spatial_pads(pad: Node, rank: int | None, opset: int) -> list[int] | str:
    """The Pad's padding of the spatial axes as ONNX lists them ([b1.., e1..]), or why it cannot fold."""
    if pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return f"Pad mode {pad.attrs.get('mode')!r} is not constant"
    if opset < 11:
        pads, value, axes = pad.attrs.get("pads"), pad.attrs.get("value", 0.0), None
    else:
        p = const(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if p is None:
            return "the pads are not constant"
        pads = [int(v) for v in p.tolist()]
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2] is not None:
            value = scalar(pad.inputs[2])
            if value is None:
                return "the pad value is not a constant scalar"
        axes = None
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            a = const(pad.inputs[3])
            if a is None:
                return "the axes are not constant"
            axes = [int(v) for v in a.tolist()]
    if pads is None:
        return "the pads are not given as a list (opset 1's paddings)"
    if rank is None:
        return "the input rank is unknown"
    if value != 0.0:
        return f"the pad value is {value}, not 0"
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    if len(pads) != 2 * len(axes) or any(v < 0 for v in pads):
        return "the pads are negative (a crop) or malformed"
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = pads[i], pads[len(axes) + i]
    if any(full[a] or full[rank + a] for a in (0, 1)):
        return "the Pad pads the batch or channel axis"
    return full[2:rank] + full[rank + 2:]


def _fold_into(consumer: Node, extra: list[int], spatial: int) -> str | None:
    """Add ``extra`` to ``consumer``'s pads; None when done, else why not."""
    if consumer.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        return f"{consumer.op_type} has auto_pad {consumer.attrs['auto_pad']!r}"
    own = list(consumer.attrs.get("pads", [0] * (2 * spatial)))
    if consumer.attrs.get("auto_pad") in ("VALID", b"VALID"):
        own = [0] * (2 * spatial)
    if len(own) != 2 * spatial:
        return f"{consumer.op_type} pads do not match the input rank"
    if consumer.op_type == "AveragePool":
        if consumer.attrs.get("ceil_mode", 0):
            return "AveragePool with ceil_mode drops windows that start in its own padding, not in data"
        # The Pad's zeros count in the average; merging is exact only if the pool counts its own padding too.
        if any(own) and not consumer.attrs.get("count_include_pad", 0):
            return "AveragePool excludes its own padding from the average, the Pad's zeros would be included"
        consumer.attrs["count_include_pad"] = 1
    consumer.attrs["pads"] = [a + b for a, b in zip(own, extra)]
    consumer.attrs.pop("auto_pad", None)
    return None


def fold_pad(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    opset = graph.opsets.get("", 21)
    for pad in list(graph.nodes):
        if pad.graph is not graph or pad.domain != "" or pad.op_type != "Pad":
            continue
        readers = [(n, slot) for n, slot in pad.outputs[0].uses
                   if n.domain == "" and _TAKES_PADDING.get(n.op_type) == slot and n.graph is graph]
        if not readers:
            continue
        shape = ctx.shape(pad.inputs[0])
        pads = _spatial_pads(pad, len(shape) if shape is not None else None, opset)
        if isinstance(pads, str):
            ctx.reject("fold_pad", [pad] + [n for n, _ in readers], pads)
            continue
        spatial = len(pads) // 2
        if spatial < 1:
            continue
        for n, slot in readers:
            why = _fold_into(n, pads, spatial)
            if why is not None:
                ctx.reject("fold_pad", [pad, n], why)
                continue
            n.set_input(slot, pad.inputs[0])
            merge_covers(n, [pad, n])
            ctx.count("fold_pad")
            changed = True
    return changed

