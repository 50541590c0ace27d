"""An 8-bit layer whose float output feeds quantized layers and others also writes the quantized copy itself.

    Y = QConv(...){fp8};  QConv(Y){x_scale s}, QConv(Y){x_scale s}, QConv(.., residual Y)
      ->  Y, Yq = QConv(...){q_scale s, q_dtype fp8};  QConv(Yq){input_quantized}, ..., QConv(.., residual Y)

A ResNet block's output is read by the next block's first convolution (and the downsample at a stage's
start), which quantize it, and by the next block's residual add, which needs it in float. Without this pass
each quantized reader runs a quantize pass of its own over Y (read 2 bytes, write 1 per element, twice at a
stage's start) before its kernel; the producer's epilogue has Y in registers, so the copy costs one extra
byte per element. Layers whose readers are all quantized already write 8-bit data (requantization,
kiln/quant/rewrite.py); this pass takes the mixed case. Yq is QuantizeLinear of Y as stored (in Y's type).

Which producers: kiln::QConv / QLinear with fp8 X and a float output (the fp8 kernels, ``fp8_conv`` /
``fp8_triton``, store the copy), and on Hopper GPUs those with symmetric int8 X whose channels the int8 TMA
kernels (``int8_conv`` / ``int8_triton``) take: elsewhere no int8 tactic writes a second output, and the layer
would be left to its op's own kernel. Which readers switch: as for the LayerNorm's copy (quantize_norms.py),
kiln::QLinear / QConv at input 0, of the producer's 8-bit type, zero point 0, static per-tensor scale; the
group with the most readers wins. Runs after the precision passes, so Y's type is final.

``quantize_pool_outputs``: a MaxPool whose readers all quantize its output the same way (fp8, or symmetric int8
on Hopper; ResNet's stem pool, read by the first block's 1x1 and shortcut convolutions) becomes
``kiln::MaxPoolQuantize`` and writes the codes once (quantization is monotonic: the max of the codes is the code
of the max), instead of a float output and one quantize pass per reader.
"""
from __future__ import annotations

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Value
from ..ir.types import TensorType
from .context import PassContext
from .quantize_norms import Q_DTYPES, reader_key, switch_readers


def int8_tma_target(config) -> bool:
    """Whether the build's device runs the int8 TMA kernels (``int8_conv`` / ``int8_triton``: a CUDA device of
    compute capability 9.0 or newer), the only int8 tactics that write a second output or add an int8 shortcut:
    elsewhere int8 layers so rewritten would be left to their op's own kernel."""
    device = str(config.device)
    return device.startswith("cuda") and torch.cuda.is_available() \
        and torch.cuda.get_device_capability(torch.device(device)) >= (9, 0)


def _copy_formats(ctx: PassContext) -> tuple[str, ...]:
    """The 8-bit types whose copies the target's kernels write: fp8 always (its kernels need Hopper anyway),
    int8 where the int8 TMA kernels run."""
    return ("fp8e4m3", "int8") if int8_tma_target(ctx.config) else ("fp8e4m3",)


def _tma_channels(n) -> bool:
    """An int8 layer whose weight the TMA kernels take: output and input channels (a QLinear's N and K) multiples
    of 16, group 1 (TMA's 16-byte rows of 8-bit data)."""
    w = getattr(n.inputs[1], "const", None) if len(n.inputs) > 1 and n.inputs[1] is not None else None
    if w is None or w.dim() < 2 or int(n.attrs.get("group", 1)) != 1:
        return False
    return w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0


def quantize_layer_outputs(graph: Graph, ctx: PassContext) -> bool:
    formats = _copy_formats(ctx)
    changed = False
    for n in graph.nodes:
        a = n.attrs
        fmt = a.get("x_dtype")
        if n.domain != "kiln" or n.op_type not in ("QConv", "QLinear") or fmt not in formats \
                or "out_scale" in a or "q_scale" in a or len(n.outputs) != 1:
            continue
        if fmt == "int8" and (int(a.get("x_zero_point", 0)) or not _tma_channels(n)):
            continue
        y = n.outputs[0]
        y_dtype = ctx.dtype(y)
        if y_dtype not in (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT):
            continue
        groups: dict[tuple, list] = {}
        for reader, slot in y.uses:
            key = reader_key(reader, slot)
            if key is not None and key[2] == fmt and not key[1]:
                groups.setdefault(key, []).append(reader)
        if not groups:
            continue
        (scale, zero_point, q_dtype), readers = max(groups.items(), key=lambda kv: len(kv[1]))
        yq = Value(f"{y.name}.{q_dtype}", TensorType(Q_DTYPES[q_dtype], ctx.shape(y)))
        yq.producer, yq.index = n, 1
        n.outputs = [y, yq]
        a.update(q_scale=scale, q_zero_point=zero_point, q_dtype=q_dtype)
        switch_readers(readers, yq, y_dtype)
        ctx.count(f"quantize_layer_outputs:{n.op_type}", len(readers))
        changed = True
    if changed:
        ctx.invalidate()
    return changed


def quantize_pool_outputs(graph: Graph, ctx: PassContext) -> bool:
    formats = _copy_formats(ctx)
    outputs = {id(v) for v in graph.outputs}
    changed = False
    for n in graph.nodes:
        if n.domain or n.op_type != "MaxPool" or len([o for o in n.outputs if o is not None]) != 1:
            continue
        y = n.outputs[0]
        y_dtype = ctx.dtype(y)
        if id(y) in outputs or not y.uses or y_dtype not in (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT):
            continue
        keys = {reader_key(reader, slot) for reader, slot in y.uses}
        if len(keys) != 1 or None in keys:
            continue
        scale, zero_point, q_dtype = keys.pop()
        if q_dtype not in formats or zero_point:
            continue
        readers = [reader for reader, _ in y.uses]
        n.op_type, n.domain = "MaxPoolQuantize", "kiln"
        n.attrs.update(q_scale=scale, q_zero_point=0, q_dtype=q_dtype)
        y.type = TensorType(Q_DTYPES[q_dtype], ctx.shape(y))
        switch_readers(readers, None, y_dtype)
        ctx.count("quantize_pool_outputs", len(readers))
        changed = True
    if changed:
        ctx.invalidate()
    return changed

