"""The quantizing rewrite itself, on any copy of the graph: chosen kiln::Linear / kiln::Conv layers
become kiln::QLinear / kiln::QConv with 8-bit weights, and layers feeding only quantized layers
requantize their output in their epilogue.

    Linear(x, W, b, r){epi}  ->  QLinear(x, Wq, sw, b, r){x_scale, epi'}      Wq = round(W / sw), per channel
    QL1(x) -> y -> QL2(y), QL3(y)  ->  QL1 writes 8-bit y (out_scale = y's scale); QL2, QL3 read it as is

Layers are identified by ``node.meta["qid"]`` (kept by graph copies); activation quantization
parameters by value name: ``(scale, zero_point, dtype)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Node, new_constant
from ..ir.types import TensorType
from ..ops.fused_steps import AddInput, AddQuantized, MulInput, parse_epilogue, parse_step

QUANTIZED = {"Linear": "QLinear", "Conv": "QConv"}
FP8_MAX = 448.0


@dataclass(frozen=True)
class ActParams:
    scale: float
    zero_point: int = 0
    dtype: str = "int8"  # int8 | uint8 | fp8e4m3
    smooth: tuple[float, ...] | None = None  # per input channel divisor s (SmoothQuant): x / s, W * s
    dynamic: bool = False  # per-row scales computed at run time (int8 GEMM inputs only)


def weight_q(w: torch.Tensor, fmt: str, hint: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantized weight, scale): int8 symmetric per output channel (axis 0), fp8 per tensor.

    ``hint`` = (integer weight, scale) from a Q/DQ model is used as is when it reproduces ``w``."""
    if fmt == "fp8e4m3":
        amax = float(w.abs().max())
        s = torch.tensor([amax / FP8_MAX if amax > 0 else 1.0], dtype=torch.float32)
        return (w.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), s
    if hint is not None:
        q, s = hint
        if q.dtype == torch.int8 and q.shape == w.shape and s.numel() in (1, w.shape[0]):
            s = s.reshape(-1).to(torch.float32).expand(w.shape[0]).contiguous()
            return q, s
    amax = w.detach().float().abs().reshape(w.shape[0], -1).amax(1)
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w.float() / s.reshape(-1, *([1] * (w.dim() - 1)))).clamp(-127, 127).to(torch.int8)
    return q, s


def layer_parts(n: Node, fmt: str, p: ActParams, hint: tuple | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict, list[torch.Tensor]]:
    """(quantized weight, weight scale, attributes, extra inputs to append) of the quantized form of
    kiln::Linear/Conv ``n``. With smoothing the weight is W * s and the layer multiplies x by 1/s."""
    w = n.inputs[1].const
    extra: list[torch.Tensor] = []
    attrs = dict(n.attrs)
    if p.smooth is not None and n.op_type == "Linear":
        s = torch.tensor(p.smooth, dtype=torch.float32)
        w = (w.float() * s).to(w.dtype)
        hint = None
        attrs["smooth_input"] = 3 + max(len(n.inputs) - 2, 1)  # after x, Wq, sw, bias (or None) and the rest
        extra.append((1.0 / s).contiguous())
    wq, sw = weight_q(w, fmt, hint)
    attrs["epilogue"] = [_shift(step) for step in attrs.get("epilogue", [])]
    attrs.update(x_scale=float(p.scale), x_zero_point=int(p.zero_point), x_dtype=fmt if fmt == "fp8e4m3"
                 else p.dtype, w_absmax=int(wq.to(torch.int32).abs().max()) if fmt != "fp8e4m3" else 448)
    if p.dynamic and n.op_type == "Linear" and fmt == "int8":
        attrs["x_dynamic"] = 1
    return wq, sw, attrs, extra


def others(rest: list, extra: list) -> list:
    """The layer's inputs after the weight, with the bias slot kept (None) when extra inputs follow."""
    return rest if rest or not extra else [None]


def apply_quantization(graph: Graph, chosen: dict[int, str], params: dict[str, ActParams],
                       weight_hints: dict[str, tuple] | None = None, int8_shortcuts: bool = False) -> list[Node]:
    """Quantize the layers whose qid is in ``chosen`` (qid -> "int8" | "fp8e4m3"); return them.
    ``int8_shortcuts``: symmetric int8 residual adds take their shortcut as int8 codes too, as fp8 ones do (only
    where the int8 TMA kernels run: kiln/passes/quantize_outputs.py ``int8_tma_target``)."""
    weight_hints = weight_hints or {}
    done: list[Node] = []
    for n in list(graph.nodes):
        qid = n.meta.get("qid")
        if qid not in chosen or n.domain != "kiln" or n.op_type not in QUANTIZED:
            continue
        fmt = chosen[qid]
        x, w_v = n.inputs[0], n.inputs[1]
        wq, sw, attrs, extra = layer_parts(n, fmt, params[x.name], weight_hints.get(w_v.name))
        ins = [x, new_constant(graph, f"{w_v.name}.{'fp8' if fmt == 'fp8e4m3' else 'int8'}", wq),
               new_constant(graph, f"{w_v.name}.scale", sw)] + others(list(n.inputs[2:]), extra)
        ins += [new_constant(graph, f"{x.name}.smooth_inv", t) for t in extra]
        for slot in range(len(n.inputs) - 1, -1, -1):
            n.set_input(slot, None)
        n.inputs = []
        for v in ins:
            n.inputs.append(None)
            n.set_input(len(n.inputs) - 1, v)
        n.op_type, n.attrs = QUANTIZED[n.op_type], attrs
        n.meta["precision"] = "fp8" if fmt == "fp8e4m3" else "int8"
        done.append(n)
    _chain_requantization(graph, done, params, int8_shortcuts)
    return done


def _shift(text: str) -> str:
    """Epilogue steps name node inputs by index; the weight scale input moved those from slot 2 on by one."""
    step = parse_step(text)
    if isinstance(step, (AddInput, MulInput)) and step.input >= 2:
        return replace(step, input=step.input + 1).to_json()
    return text


def _chain_requantization(graph: Graph, layers: list[Node], params: dict[str, ActParams],
                          int8_shortcuts: bool = False) -> None:
    """A quantized layer whose output feeds only quantized layers of its own kind (int8/uint8, or fp8) writes
    that output already quantized with the consumers' input scale (on Hopper the 8-bit GEMM and convolution
    kernels, ``fp8_triton`` / ``fp8_conv`` / ``int8_triton`` / ``int8_conv``, write it from their epilogue). In
    fp8 (and symmetric int8 with ``int8_shortcuts``) a reader may also take the output as its epilogue's
    residual (``add:I``, a ResNet block's shortcut): the step becomes ``addq:I:S``, which adds the 8-bit codes
    times the scale S, so the residual stream between blocks is 8-bit too."""
    quantized = {id(n) for n in layers}
    outputs = {id(v) for v in graph.outputs}
    for n in layers:
        y = n.outputs[0]
        fp8 = n.attrs["x_dtype"] == "fp8e4m3"
        p = params.get(y.name)
        shortcuts = fp8 or (int8_shortcuts and p is not None and p.dtype == "int8" and not p.zero_point)
        if id(y) in outputs or params.get(y.name, ActParams(0)).dynamic or not y.uses or y.name not in params:
            continue
        residual_reads = []
        for u, slot in y.uses:
            if id(u) not in quantized or (u.attrs["x_dtype"] == "fp8e4m3") != fp8 or "smooth_input" in u.attrs \
                    or u.attrs.get("x_dynamic"):
                break
            if slot != 0:  # read only by one residual add, the step addq can replace
                steps = parse_epilogue(u.attrs.get("epilogue", []))
                if not shortcuts or steps.count(AddInput(slot)) != 1 or \
                        any(st.input == slot for st in steps if st != AddInput(slot)):
                    break
                residual_reads.append((u, slot))
        else:
            p = params[y.name]
            if fp8:
                n.attrs.update(out_scale=float(p.scale), out_zero_point=0, out_dtype="fp8e4m3")
                dtype = DType.FLOAT8E4M3FN
            else:
                n.attrs.update(out_scale=float(p.scale), out_zero_point=int(p.zero_point), out_dtype=p.dtype)
                dtype = DType.UINT8 if p.dtype == "uint8" else DType.INT8
            for u, slot in y.uses:
                if slot == 0:
                    u.attrs["input_quantized"] = 1
            for u, slot in residual_reads:
                u.attrs["epilogue"] = [AddQuantized(slot, float(p.scale)).to_json()
                                       if parse_step(st) == AddInput(slot) else st for st in u.attrs["epilogue"]]
            y.type = TensorType(dtype, getattr(y.type, "shape", None))
