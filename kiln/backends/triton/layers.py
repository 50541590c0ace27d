"""Engine layers implemented by generated kernels, chosen at engine load (``compile_layer``).

Each layer has the ordinary kernel signature ``(ctx, inputs, attrs)`` (plus an optional ``out=`` tensor,
possibly a strided slice of a larger one, for concat elimination). A layer is built from the node's stored
description only; kernels are generated and compiled at their first call for each dtype/layout signature
(an engine's warm-up run, before any CUDA graph capture). A call the generator cannot take (an operand
dtype it does not handle, operands left on the host, ...) runs the op's own kernel instead, and the reason
is kept in ``layer.fallbacks``: the layer never fails where the plain kernel would have run.
"""
from __future__ import annotations

import math

import torch

from ...ops.fused_steps import Cast, parse_epilogue, parse_program
from .epilogue import EPILOGUE_OPSET, epilogue_program
from .launch import ElementwiseLaunch
from .ops import TL_DTYPE, Unsupported, can_emit
from .rows import RowLaunch


class TritonLayer:
    """A layer's generated implementation: ``name`` for the report, ``kernel`` (itself) for the program."""

    name = "triton"
    accepts_out = ("cuda",)  # generated kernels store straight into ``out`` (any strides)

    def __init__(self, node, fallback):
        self.label = getattr(node, "label", "")
        self._fallback = fallback
        self.fallbacks: dict[str, int] = {}  # reason -> calls that ran the plain kernel

    @property
    def kernel(self):
        return self

    def __call__(self, ctx, inputs: list, attrs: dict, out: torch.Tensor | None = None):
        try:
            dev = getattr(ctx, "device", None)
            if dev is not None and dev.type == "cuda" and dev.index is not None \
                    and dev.index != torch.cuda.current_device():
                with torch.cuda.device(dev):  # Triton launches on the current device
                    y = self.run(ctx, inputs, attrs, out)
            else:
                y = self.run(ctx, inputs, attrs, out)
        except Unsupported as e:
            self.fallbacks[str(e)] = self.fallbacks.get(str(e), 0) + 1
            y = self._fallback(ctx, inputs, attrs)
            if out is not None:
                out.copy_(y)
                return out
        return y

    def run(self, ctx, inputs, attrs, out):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.label!r})"


def _scalar_const(v) -> float | int | bool | None:
    """A node input's value when it is a one-element constant worth writing into the source."""
    c = getattr(v, "const", None) if v is not None else None
    if not isinstance(c, torch.Tensor) or c.numel() != 1 or c.dtype == torch.float64 or c.dtype not in TL_DTYPE:
        return None
    x = c.reshape(()).item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class ElementwiseLayer(TritonLayer):
    """kiln::Elementwise: the whole program in one generated kernel."""

    def __init__(self, node, fallback, opset: int):
        super().__init__(node, fallback)
        lines = parse_program(node.attrs["program"], node.attrs.get("attrs", []))
        program, attrs = [line for line, _ in lines], [a for _, a in lines]
        for line in program:
            if not can_emit(line.op):
                raise Unsupported(f"{line.op} has no Triton generator")
        consts = {k: c for k, v in enumerate(node.inputs) if (c := _scalar_const(v)) is not None}
        self.launch = ElementwiseLaunch(program, attrs, opset, consts)
        self.name = f"triton_elementwise[{'+'.join(line.op for line in program)}]"

    def run(self, ctx, inputs, attrs, out):
        if any(not isinstance(x, torch.Tensor) for x in inputs):
            raise Unsupported("an operand is not a tensor")
        return self.launch(inputs, out)


class RowLayer(TritonLayer):
    """Softmax (last axis; opset < 13: 2-D coercion at axis), LayerNormalization, RMSNormalization, and
    kiln::LayerNormQuantize (LayerNormalization that also writes Y quantized)."""

    def __init__(self, node, fallback, opset: int):
        super().__init__(node, fallback)
        op = node.op_type
        quantize = None
        if op == "LayerNormQuantize":
            a = node.attrs
            quantize = (float(a["q_scale"]), int(a.get("q_zero_point", 0)), a["q_dtype"])
            op = "LayerNormalization"
        elif op in ("LayerNormalization", "RMSNormalization"):
            extra = [o for o in node.outputs[1:] if o is not None and o.uses]
            if extra:
                raise Unsupported(f"{op}'s Mean/InvStdDev outputs are used")
        if op in ("LayerNormalization", "RMSNormalization"):
            if node.attrs.get("stash_type", 1) not in (1,):
                raise Unsupported(f"stash_type {node.attrs.get('stash_type')}")
        self.op, self.opset = op, opset
        kind = {"Softmax": "softmax", "LayerNormalization": "layernorm", "RMSNormalization": "rmsnorm"}[op]
        self.launch = RowLaunch(kind, node.attrs.get("epsilon", 1e-5), quantize)
        self.name = f"triton_{kind}" + ("+quantize" if quantize else "")

    def run(self, ctx, inputs, attrs, out):
        x = inputs[0]
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise Unsupported("a 0-d input")
        if self.op == "Softmax":
            if self.opset >= 13:
                axis = attrs.get("axis", -1) % x.dim()
                if axis != x.dim() - 1:
                    raise Unsupported("Softmax over a dim that is not the last")
            else:
                axis = attrs.get("axis", 1) % x.dim()
            return self.launch(x, axis, out=out)
        axis = attrs.get("axis", -1)
        w = inputs[1]
        b = inputs[2] if self.op == "LayerNormalization" and len(inputs) > 2 else None
        return self.launch(x, axis, w, b, out=out)


REDUCE_KINDS = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceSumSquare": "sumsquare", "ReduceMax": "max",
                "ReduceMin": "min"}


class ReduceLayer(TritonLayer):
    """ReduceSum/Mean/SumSquare/Max/Min over trailing dims (static axes), float inputs, fp32 accumulation."""

    def __init__(self, node, fallback, opset: int):
        super().__init__(node, fallback)
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            c = node.inputs[1].const
            if c is None:
                raise Unsupported("axes computed at run time")
            axes = [int(a) for a in c.reshape(-1).tolist()]
        if not axes:
            raise Unsupported("no axes (all dims, or a no-op)")
        self.axes = sorted(int(a) for a in axes)
        self.keepdims = bool(node.attrs.get("keepdims", 1))
        self.kind = REDUCE_KINDS[node.op_type]
        self.launch = RowLaunch(self.kind)
        self.name = f"triton_reduce_{self.kind}"

    accepts_out = ()  # it computes into its own buffer and would only copy into ``out``

    def run(self, ctx, inputs, attrs, out):
        x = inputs[0]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
            raise Unsupported("a reduction of a non-float or 0-d tensor")
        r = x.dim()
        dims = sorted({a % r for a in self.axes})
        if dims != list(range(r - len(dims), r)):
            raise Unsupported(f"axes {self.axes} are not the trailing dims of a rank-{r} tensor")
        y = self.launch(x, dims[0])
        if self.keepdims:
            y = y.reshape(tuple(x.shape[:dims[0]]) + (1,) * len(dims))
        if out is not None:
            out.copy_(y)
            return out
        return y


class EpilogueLayer(TritonLayer):
    """kiln::Linear / kiln::Conv: the library GEMM or convolution, then the epilogue in one generated pass,
    in place (or into ``out``). Linear leaves its bias to cuBLAS (fused there); Conv's bias joins the pass."""

    def __init__(self, node, fallback):
        super().__init__(node, fallback)
        self.op = node.op_type
        steps = list(node.attrs.get("epilogue", []))
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        self.bias_in_pass = has_bias and self.op == "Conv"
        if not steps and not self.bias_in_pass:
            raise Unsupported("no epilogue to fuse (the library call does all the work)")
        program, attrs, self.operands = epilogue_program(steps, self.bias_in_pass)
        consts = {k: ref[1] for k, ref in enumerate(self.operands) if isinstance(ref, tuple)}
        self.launch = ElementwiseLaunch(program, attrs, EPILOGUE_OPSET, consts)
        self.in_place = not any(isinstance(s, Cast) for s in parse_epilogue(steps))  # a cast changes the type
        self.name = f"{'cublas' if self.op == 'Linear' else 'cudnn'}+triton_epilogue[{'+'.join(steps) or 'bias'}]"

    def run(self, ctx, inputs, attrs, out):
        import torch.nn.functional as F

        from ...ops.fused import fused_conv
        if self.op == "Linear":
            y = F.linear(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None)
        else:
            y = fused_conv(ctx, inputs[:2], {**attrs, "epilogue": []})
        ops = []
        for ref in self.operands:
            if isinstance(ref, tuple):  # a constant written into the source: only its (0-d) shape is read
                ops.append(_SCALAR)
            elif ref == "y":
                ops.append(y)
            elif ref == "bias":
                b = inputs[2]
                ops.append(b.reshape([-1] + [1] * (y.dim() - 2)))
            else:
                ops.append(inputs[ref])
        return self.launch(ops, out if out is not None else y if self.in_place else None)


_SCALAR = torch.empty(())


class GemmLayer(TritonLayer):
    """kiln::Linear as one generated kernel: the GEMM (tl.dot, fp32 accumulation) with bias and epilogue fused
    into the accumulator tile. ``config`` = (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)."""

    def __init__(self, node, fallback, config: tuple | None = None):
        super().__init__(node, fallback)
        from .gemm import GemmLaunch
        if node.op_type != "Linear":
            raise Unsupported("the GEMM template takes kiln::Linear")
        steps = list(node.attrs.get("epilogue", []))
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        program, attrs, self.operands = epilogue_program(steps, has_bias)
        self.launch = GemmLaunch(program, attrs, has_bias, config)
        cfg = "" if config is None else "/" + "x".join(map(str, config))
        self.name = f"triton_gemm[{'+'.join((['bias'] if has_bias else []) + steps) or 'none'}]{cfg}"

    def run(self, ctx, inputs, attrs, out):
        extras = [ref if isinstance(ref, tuple) else inputs[ref] for ref in self.operands if ref not in ("y", "bias")]
        bias = inputs[2] if "bias" in self.operands else None
        if bias is not None and bias.dim() != 1:
            raise Unsupported("a bias that is not 1-d")
        return self.launch(inputs[0], inputs[1], bias, extras, out)
