"""Layout: convolution networks run channels-last (NHWC): on the GPU cuDNN's tensor-core kernels want it,
and on the CPU oneDNN's convolutions and torch's pooling are faster in it (ResNet-50 batch 1 on 2 cores:
43.6 ms mixed layouts vs 42.3 ms all NHWC, 2026-11-21). Only kiln::Conv / QConv layers are marked (Kiln's fp8
convolution reads and writes channels-last): the first converts its input, later layers receive NHWC tensors
from their producers (torch's elementwise and pooling ops keep the memory format), and the
reshape/flatten at the network's end converts back. The model's inputs and outputs keep their layout."""
from __future__ import annotations

from ..ir.graph import Graph
from .context import PassContext


def choose_layout(graph: Graph, ctx: PassContext) -> bool:
    wanted = ctx.config.channels_last
    if wanted is None:
        wanted = True
    if not wanted:
        return False
    convs = [n for n in graph.nodes if n.domain == "kiln" and n.op_type in ("Conv", "QConv")
             and n.inputs[1].const is not None and n.inputs[1].const.dim() == 4]
    for n in convs:
        n.attrs["channels_last"] = 1
    if convs:
        ctx.count("channels_last_convs", len(convs))
    return False  # attributes only: types and structure are unchanged
