"""Vertical fusion into Conv and matrix-product layers (TensorRT's conv-bias-ReLU "CBR" layers).

    Conv(x, W) + b              -> kiln::Conv(x, W, b)
    act(Conv(x, W, b) + r)      -> kiln::Conv(x, W, b, r) {epilogue: [add:3, act]}
    Conv(x, W, b) * c + d       -> kiln::Conv(x, W*c, b*c + d)   (c, d constant per channel)
    MatMul(x, Wkn) + b          -> kiln::Linear(x, Wnk, b)
    Gemm(x, W, C)               -> kiln::Linear(x, alpha*W, beta*C)

Every Conv with constant weights becomes a kiln::Conv (pads resolved, so no padding work at run time);
every float MatMul/Gemm with a constant 2-D weight a kiln::Linear. Then the single consumers of its
output are absorbed while they are a bias add, a residual add or an activation.
"""
from __future__ import annotations

import torch

from ..ir.graph import Graph, Node
from ..ops.fused_steps import Activation, AddInput
from .context import PassContext
from .rewrite import const, fuse_into, merge_covers, new_constant, only_use, scalar, several_readers_reason


# ONNX op -> the epilogue step it is, where the op has no attributes that matter
_PLAIN = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish", "Softplus": "softplus",
          "Mish": "mish"}


def _activation(node: Node, ctx: PassContext) -> Activation | None:
    op, a = node.op_type, node.attrs
    if op in _PLAIN:
        return Activation(_PLAIN[op])
    if op == "Gelu":
        return Activation("gelu_tanh" if a.get("approximate", "none") == "tanh" else "gelu")
    if op == "LeakyRelu":
        return Activation("leaky_relu", (a.get("alpha", 0.01),))
    if op == "Elu":
        return Activation("elu", (a.get("alpha", 1.0),))
    if op == "HardSigmoid":
        return Activation("hardsigmoid", (a.get("alpha", 0.2), a.get("beta", 0.5)))
    if op == "Swish" and a.get("alpha", 1.0) == 1.0:
        return Activation("silu")
    if op == "Clip":
        if ctx.graph.opsets.get("", 21) < 11:
            lo, hi = a.get("min"), a.get("max")
        else:
            lo_v = node.inputs[1] if len(node.inputs) > 1 else None
            hi_v = node.inputs[2] if len(node.inputs) > 2 else None
            if (lo_v is not None and scalar(lo_v) is None) or (hi_v is not None and scalar(hi_v) is None):
                return None
            lo, hi = scalar(lo_v), scalar(hi_v)
        return Activation("clip", (None if lo is None else float(lo), None if hi is None else float(hi)))
    return None


def _same_pads_begin_end(in_size: int, k: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    out = -(-in_size // stride)
    total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - in_size)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _lower_conv(node: Node, graph: Graph, ctx: PassContext) -> str | None:
    """Turn an ONNX Conv into kiln::Conv in place; return the reason when it cannot."""
    w = const(node.inputs[1])
    if w is None:
        return "convolution weights are not constant"
    if not w.dtype.is_floating_point:
        return "integer convolution"
    if len(node.inputs) > 2 and node.inputs[2] is not None and const(node.inputs[2]) is None:
        return "convolution bias is not constant"
    spatial = w.dim() - 2
    if spatial not in (1, 2, 3):
        return f"{spatial}-D convolution"
    attrs = dict(node.attrs)
    kernel = attrs.get("kernel_shape", list(w.shape[2:]))
    if list(kernel) != list(w.shape[2:]):
        return "kernel_shape differs from the weight shape"
    strides = attrs.get("strides", [1] * spatial)
    dil = attrs.get("dilations", [1] * spatial)
    auto = attrs.pop("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = ctx.shape(node.inputs[0])
        if shape is None or not all(isinstance(d, int) for d in shape[2:]):
            return "auto_pad SAME with input spatial dims not known at build time"
        be = [_same_pads_begin_end(shape[2 + i], kernel[i], strides[i], dil[i], auto == "SAME_UPPER")
              for i in range(spatial)]
        attrs["pads"] = [b for b, _ in be] + [e for _, e in be]
    elif auto == "VALID":
        attrs["pads"] = [0] * (2 * spatial)
    attrs.setdefault("pads", [0] * (2 * spatial))
    attrs["strides"], attrs["dilations"] = list(strides), list(dil)
    attrs["group"] = attrs.get("group", 1)
    attrs.pop("kernel_shape", None)
    attrs["epilogue"] = []
    node.op_type, node.domain, node.attrs = "Conv", "kiln", attrs
    return None


def _lower_matmul(node: Node, graph: Graph, ctx: PassContext) -> str | None:
    """Turn MatMul/Gemm with a constant 2-D weight into kiln::Linear (weight stored [N, K])."""
    b = const(node.inputs[1])
    if b is None or b.dim() != 2:
        return "weight is not a constant 2-D matrix"
    if not b.dtype.is_floating_point:
        return "integer matrix product"
    a_shape = ctx.shape(node.inputs[0])
    if node.op_type == "MatMul":
        if a_shape is not None and len(a_shape) < 1:
            return "scalar operand"
        w = b.t().contiguous()
        bias = None
    else:  # Gemm
        if node.attrs.get("transA", 0):
            return "Gemm with transA=1"
        alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
        w = (b if node.attrs.get("transB", 0) else b.t()).contiguous()
        if alpha != 1.0:
            w = (w * alpha).to(b.dtype)
        bias = None
        c_v = node.inputs[2] if len(node.inputs) > 2 else None
        if c_v is not None:
            c = const(c_v)
            n = w.shape[0]
            if c is None or not (c.numel() == 1 or c.numel() == n and c.shape[-1] == n):
                return "Gemm's C is not a constant bias vector"
            bias = (c.reshape(-1).expand(n) * beta).to(b.dtype).contiguous()
    ins = [node.inputs[0], new_constant(graph, f"{node.label}.weight", w)]
    if bias is not None:
        ins.append(new_constant(graph, f"{node.label}.bias", bias))
    for slot in range(len(node.inputs) - 1, -1, -1):
        node.set_input(slot, None)
    node.inputs = []
    for v in ins:
        node.inputs.append(None)
        node.set_input(len(node.inputs) - 1, v)
    node.op_type, node.domain, node.attrs = "Linear", "kiln", {"epilogue": []}
    return None


def _channel_bias(node: Node, c: torch.Tensor, ctx: PassContext) -> torch.Tensor | None:
    """``c`` as a per-output-channel bias vector, if adding it is a bias add for this layer."""
    out_shape = ctx.shape(node.outputs[0])
    channels = const(node.inputs[1]).shape[0]
    if node.op_type == "Conv":
        rank = len(out_shape) if out_shape is not None else const(node.inputs[1]).dim()
        dims = list(c.shape)
        if c.numel() == 1:
            return c.reshape(1).expand(channels).contiguous()
        # broadcastable as [C, 1, 1..] or [1, C, 1, 1..]
        full = [1] * (rank - len(dims)) + dims
        if len(full) == rank and full[1] == channels and all(d == 1 for i, d in enumerate(full) if i != 1):
            return c.reshape(channels).contiguous()
        return None
    if c.numel() == 1:
        return c.reshape(1).expand(channels).contiguous()
    if c.shape[-1] == channels and c.numel() == channels:
        return c.reshape(channels).contiguous()
    return None


def _same_shape(a, b) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(
        x == y and x is not None for x, y in zip(a, b))


def _scale_weights(node: Node, mul: Node, out, graph: Graph, ctx: PassContext) -> bool:
    """layer(x) * c with c a per-channel (or scalar) constant -> the layer with W and b scaled by c (as BatchNorm
    folding does; PP-LCNetV3's learnable affine blocks put such a scale right after each convolution)."""
    c = const(mul.inputs[1] if mul.inputs[0] is out else mul.inputs[0])
    if c is None or not c.dtype.is_floating_point:
        return False
    scale = _channel_bias(node, c, ctx)
    if scale is None:
        return False
    w = const(node.inputs[1])
    s64 = scale.to(torch.float64)
    new_w = (w.to(torch.float64) * s64.reshape(-1, *[1] * (w.dim() - 1))).to(w.dtype)
    node.set_input(1, new_constant(graph, f"{node.label}.weight", new_w))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        b = const(node.inputs[2])
        node.set_input(2, new_constant(graph, f"{node.label}.bias", (b.to(torch.float64) * s64).to(b.dtype)))
    ctx.count("scale_weights")
    return True


def _fold_hardsigmoid(node: Node, act: Activation, graph: Graph, ctx: PassContext) -> bool:
    """HardSigmoid(alpha, beta) as the layer's first step -> W and b scaled by alpha, beta added to b, then
    clip(0, 1): the same function (clamp(alpha * (Wx + b) + beta, 0, 1)) as one in-place op per run instead of
    three (multiply, add, clamp). PaddlePaddle's squeeze-excitation gates use alpha 0.2, so torch's own
    hardsigmoid (alpha 1/6) does not apply."""
    w = const(node.inputs[1])
    if w is None or not w.dtype.is_floating_point:
        return False
    alpha, beta = (float(p) for p in act.params)
    old = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if len(node.inputs) > 2 and node.inputs[2] is not None and old is None:
        return False
    channels = w.shape[0]
    bias = (old.to(torch.float64) if old is not None else torch.zeros(channels, dtype=torch.float64)) * alpha + beta
    node.set_input(1, new_constant(graph, f"{node.label}.weight", (w.to(torch.float64) * alpha).to(w.dtype)))
    _set_bias(node, graph, bias.to(w.dtype))
    ctx.count("fold_hardsigmoid")
    return True


def _set_bias(node: Node, graph: Graph, bias: torch.Tensor) -> None:
    """Give the layer ``bias`` as a new constant in its bias slot (input 2), adding the slot if it has none."""
    if len(node.inputs) < 3:
        node.inputs.append(None)
    node.set_input(2, new_constant(graph, f"{node.label}.bias", bias))


def _absorb(node: Node, graph: Graph, ctx: PassContext) -> list[Node]:
    """Absorb single consumers into ``node``'s epilogue; return the absorbed nodes."""
    absorbed: list[Node] = []
    epilogue: list[str] = node.attrs["epilogue"]
    out = node.outputs[0]
    while True:
        nxt = only_use(out)
        if nxt is None and out.uses:
            why = several_readers_reason(out)
            fusable = [n for n, _ in out.uses if n.op_type in ("Add", "Sum") or _activation(n, ctx) is not None]
            if why is not None and fusable:
                ctx.reject("fuse_epilogues", [node, *fusable], why)
        if nxt is None or nxt.graph is not graph:
            break
        if nxt.op_type in ("Add", "Sum") and len(nxt.inputs) == 2:
            other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
            c = const(other)
            if c is not None and not epilogue:
                bias = _channel_bias(node, c, ctx)
                if bias is not None:
                    old = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
                    new_b = (bias.to(torch.float64) + (old.to(torch.float64) if old is not None else 0)).to(
                        const(node.inputs[1]).dtype)
                    _set_bias(node, graph, new_b)
                    absorbed.append(nxt)
                    out = nxt.outputs[0]
                    continue
            if c is None and _same_shape(ctx.shape(other), ctx.shape(nxt.outputs[0])) \
                    and _same_shape(ctx.shape(out), ctx.shape(nxt.outputs[0])) \
                    and ctx.dtype(other) == ctx.dtype(out):
                if len(node.inputs) < 3:
                    node.inputs.append(None)
                node.inputs.append(None)
                node.set_input(len(node.inputs) - 1, other)
                epilogue.append(AddInput(len(node.inputs) - 1).to_json())
                absorbed.append(nxt)
                out = nxt.outputs[0]
                continue
            ctx.reject("fuse_epilogues", [node, nxt], "Add is neither a per-channel constant bias nor a residual of "
                       "the same static shape and dtype")
            break
        if nxt.op_type == "Mul" and len(nxt.inputs) == 2 and not epilogue and _scale_weights(node, nxt, out, graph, ctx):
            absorbed.append(nxt)
            out = nxt.outputs[0]
            continue
        act = _activation(nxt, ctx)
        if act is not None and nxt.inputs[0] is out:
            if act.name == "hardsigmoid" and not epilogue and _fold_hardsigmoid(node, act, graph, ctx):
                act = Activation("clip", (0.0, 1.0))
            epilogue.append(act.to_json())
            absorbed.append(nxt)
            out = nxt.outputs[0]
            continue
        break
    return absorbed


def _unflatten_linear(node: Node, graph: Graph, ctx: PassContext) -> bool:
    """Reshape(Linear(Reshape(x, [-1, K])), x.shape[:-1] + [N]) -> Linear(x): a Linear maps the last dim only,
    so the exporters' flatten-to-2-D around addmm is not needed (and it hid the epilogue)."""
    r1 = node.inputs[0].producer
    if r1 is None or r1.graph is not graph or r1.domain != "" or r1.op_type != "Reshape" \
            or len(r1.outputs[0].uses) != 1:
        return False
    r2 = only_use(node.outputs[0])
    if r2 is None or r2.domain != "" or r2.op_type != "Reshape" or r2.inputs[0] is not node.outputs[0]:
        return False
    x = r1.inputs[0]
    n, k = const(node.inputs[1]).shape
    xs, flat, ys = ctx.shape(x), ctx.shape(r1.outputs[0]), ctx.shape(r2.outputs[0])
    if xs is None or flat is None or ys is None or len(xs) < 2 or len(flat) != 2 or flat[1] != k \
            or xs[-1] != k or tuple(ys) != tuple(xs[:-1]) + (n,):
        ctx.reject("fuse_epilogues", [r1, node, r2], "Reshape around the Linear does not flatten and restore the "
                   "same leading dims")
        return False
    final, old_out = r2.outputs[0], node.outputs[0]
    r2.detach()
    graph.nodes.remove(r2)
    r2.graph = None
    old_out.producer = None
    final.producer, final.index = node, 0
    node.outputs = [final]
    node.set_input(0, x)
    r1.detach()
    graph.nodes.remove(r1)
    r1.graph = None
    merge_covers(node, [r1, node, r2])
    return True


def fuse_epilogues(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph:
            continue
        if node.domain == "" and node.op_type == "Conv":
            why = _lower_conv(node, graph, ctx)
        elif node.domain == "" and node.op_type in ("MatMul", "Gemm") and ctx.dtype(node.outputs[0]) is not None \
                and ctx.dtype(node.outputs[0]).is_float:
            why = _lower_matmul(node, graph, ctx)
        else:
            continue
        if why is not None:
            ctx.reject("fuse_epilogues", [node], f"{node.op_type} kept as the ONNX op: {why}")
            continue
        ctx.count(f"lower_{node.op_type.lower()}")
        changed = True
        if node.op_type == "Linear" and _unflatten_linear(node, graph, ctx):
            ctx.count("unflatten_linear")
        absorbed = _absorb(node, graph, ctx)
        if not absorbed:
            continue
        merge_covers(node, [node] + absorbed)
        # The fused layer produces the last absorbed node's output, at that node's position.
        fuse_into(graph, [node] + absorbed, node, absorbed[-1].outputs[0])
        ctx.count("fuse_epilogues", len(absorbed))
    return changed

