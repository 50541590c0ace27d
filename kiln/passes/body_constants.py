"""Small integer constants of If/Loop/Scan bodies that some readers take as data and others as Python values
(a shape, axes, a Slice bound) get one copy per kind of reader.

Why: on a GPU a body's constants live on the device, except those only read as Python values, which stay on the
host (kiln/engine/placement.py, body_host_constants). Bodies get no host-to-device copies as the main graph does,
so a constant read both ways stayed on the device, and each Python-value read was a device-to-host copy: a
synchronization per run, and under CUDA graph capture a failure (silero-vad's STFT reads one axes constant in
Unsqueeze, Slice, Gather and Equal; every shape of the model ran eagerly on the H100). A second constant holding
the same few numbers, read by the Python-value slots only, stays on the host; the first keeps the data readers.
"""
from __future__ import annotations

from ..engine.placement import is_host_constant
from ..ir.graph import Graph, new_constant
from .context import PassContext


def split_body_shape_constants(graph: Graph, ctx: PassContext) -> bool:
    host_slots = ctx.registry.host_input_slots()
    split = 0
    for body in graph.walk_graphs():
        if body is graph:
            continue
        for v in list(body.constants.values()):
            if v.const is None or not is_host_constant(v.const):  # only these can stay on the host
                continue
            as_value = [(n, i) for n, i in v.uses if n.domain == "" and (n.op_type, i) in host_slots]
            if not as_value or len(as_value) == len(v.uses) or v in body.outputs:
                continue
            twin = new_constant(body, f"{v.name}_host", v.const.clone())
            for n, i in as_value:
                n.set_input(i, twin)
            split += 1
    if split:
        ctx.count("split_body_shape_constants", split)
    return bool(split)
