"""Layout: convolution networks run channels-last (NHWC) on the GPU, where cuDNN's tensor-core kernels
want it. Only kiln::Conv layers are marked: the first converts its input, later layers receive NHWC
tensors from their producers (torch's elementwise and pooling ops keep the memory format), and the
reshape/flatten at the network's end converts back. The model's inputs and outputs keep their layout."""
from __future__ import annotations

from ..ir.graph import Graph
from .context import PassContext


def choose_layout(graph: Graph, ctx: PassContext) -> bool:
    wanted = ctx.config.channels_last
    if wanted is None:
        wanted = ctx.config.is_cuda
    if not wanted:
        return False
    convs = [n for n in graph.nodes if n.domain == "kiln" and n.op_type == "Conv" and n.inputs[1].const is not None
             and n.inputs[1].const.dim() == 4]
    for n in convs:
        n.attrs["channels_last"] = 1
    if convs:
        ctx.count("channels_last_convs", len(convs))
    return False  # attributes only: types and structure are unchanged
