"""Per-op checks of a plan node, for the values where a kernel would crash, hang or allocate without bound
instead of failing: a zero stride reaches oneDNN's integer division (SIGFPE, the process dies), a huge
Expand target asks for petabytes. Values a kernel rejects with an ordinary error need no rule here: the
runtime wraps those as KernelError naming the layer.

A rule sees a :class:`NodeFacts`: the node's attributes as plain values, and per input its declared shape
and its constant (weights are known at load). Each failure is an EngineFormatError naming the node and the
attribute. ``RULES`` maps (domain, op type) to the node's rules; ``check_meta`` checks the tactic record the
runtime binds at load (kiln/tactics/bind.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import FusedStepError
from ..ir.dtype import DType
from .fields import arr, fail, integer, ints, obj, show, string

MAX_RANK = 64  # torch tensors have at most 64 dimensions
MAX_WINDOW = 2**31 - 1  # kernel sizes, strides, dilations, pads, groups: what native kernels hold in an int
MAX_DIM = 2**40  # one dimension of a shape-valued attribute or constant
MAX_ELEMENTS = 2**42  # elements a shape-valued attribute or constant may ask for (16 TiB of float32)


@dataclass(frozen=True)
class Input:
    shape: tuple | None  # declared dims (int, str or None per dim), None when the rank is unknown
    const: torch.Tensor | None


@dataclass(frozen=True)
class NodeFacts:
    label: str  # how messages name the node: "plan node 'conv1' (kiln::Conv)"
    attrs: dict  # name -> plain value (int, float, str, list, tensor; subgraphs and types as markers)
    inputs: tuple  # Input | None per input slot
    num_outputs: int

    def field(self, name: str) -> str:
        return f"{self.label} attribute {name!r}"

    def rank(self, i: int) -> int | None:
        x = self.inputs[i] if i < len(self.inputs) else None
        if x is None:
            return None
        return x.const.dim() if x.const is not None else (len(x.shape) if x.shape is not None else None)

    def const(self, i: int) -> torch.Tensor | None:
        x = self.inputs[i] if i < len(self.inputs) else None
        return None if x is None else x.const

    def dim(self, i: int, d: int) -> int | None:
        x = self.inputs[i] if i < len(self.inputs) else None
        if x is None or x.shape is None or d >= len(x.shape):
            return None
        v = x.shape[d]
        return v if isinstance(v, int) and v >= 0 else None


def _flag(n: NodeFacts, name: str) -> None:
    if name in n.attrs:
        integer(n.attrs[name], n.field(name), 0, 1)


def _choice(n: NodeFacts, name: str, choices: tuple) -> None:
    if name in n.attrs:
        string(n.attrs[name], n.field(name), choices)


def _positive(n: NodeFacts, name: str, hi: int = MAX_WINDOW) -> None:
    if name in n.attrs:
        integer(n.attrs[name], n.field(name), 1, hi)


def _axis(n: NodeFacts, name: str = "axis", rank_input: int = 0, extra: int = 0) -> None:
    """An axis in [-r, r - 1 + extra] for the rank r of input ``rank_input`` (when known), else |axis| < 64."""
    if name not in n.attrs:
        return
    r = n.rank(rank_input)
    r = MAX_RANK if r is None else r + extra
    integer(n.attrs[name], n.field(name), -max(r, 1), max(r - 1, 0))


def _axes(n: NodeFacts, name: str = "axes", extra: int = 0) -> None:
    if name not in n.attrs:
        return
    r = n.rank(0)
    r = MAX_RANK if r is None else r + extra
    ints(n.attrs[name], n.field(name), -max(r, 1), max(r - 1, 0), MAX_RANK)


# -- convolutions and pools --------------------------------------------------------------------------------
def _window(n: NodeFacts, weight: int | None, transposed: bool = False, image_input: bool = True) -> None:
    """strides, dilations, kernel sizes > 0; pads >= 0; lengths agree with the spatial rank; groups > 0 and
    dividing the weight's channels. ``weight``: the input slot of the weight (None for pools);
    ``image_input``: input 0 is [N, C, spatial...] (Col2Im's is [N, C*block, L])."""
    w = n.const(weight) if weight is not None else None
    nd = w.dim() - 2 if w is not None else None
    if nd is None and isinstance(n.attrs.get("kernel_shape"), list):
        nd = len(n.attrs["kernel_shape"])
    if nd is None and image_input and n.rank(0) is not None:
        nd = n.rank(0) - 2
    if nd is not None and not 1 <= nd <= MAX_RANK:
        raise fail(n.label, f"has {nd} spatial dimensions (its input or weight rank is wrong)")
    for name, lo, count in (("kernel_shape", 1, 1), ("strides", 1, 1), ("dilations", 1, 1), ("pads", 0, 2),
                            ("output_padding", 0, 1)):
        if name in n.attrs and n.attrs[name] is not None:
            v = ints(n.attrs[name], n.field(name), lo, MAX_WINDOW, 2 * MAX_RANK)
            if nd is not None and len(v) not in ((count * nd,) if name != "output_padding" else (0, nd)):
                raise fail(n.field(name), f"must have {count * nd} entries for {nd} spatial dimensions, got {show(v)}")
    if "output_shape" in n.attrs and n.attrs["output_shape"] is not None:
        ints(n.attrs["output_shape"], n.field("output_shape"), 0, MAX_DIM, MAX_RANK + 2)
    if w is not None and n.attrs.get("kernel_shape") is not None and list(n.attrs["kernel_shape"]) != list(w.shape[2:]):
        raise fail(n.field("kernel_shape"), f"is {show(n.attrs['kernel_shape'])}, the weight's is {list(w.shape[2:])}")
    _choice(n, "auto_pad", ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"))
    for name in ("ceil_mode", "count_include_pad", "storage_order", "channels_last"):
        _flag(n, name)
    _positive(n, "p")
    _positive(n, "offset_group")
    if weight is None:
        return
    group = integer(n.attrs.get("group", 1), n.field("group"), 1, MAX_WINDOW)
    if w is None:
        return
    if w.dim() < 3:
        raise fail(f"{n.label} weight", f"must have a batch, channel and spatial dims, got shape {list(w.shape)}")
    # Conv weights are [M, C/group, k...]; ConvTranspose weights are [C, M/group, k...].
    if w.shape[0] % group:
        raise fail(n.field("group"), f"{group} does not divide the weight's {w.shape[0]} channels")
    channels = w.shape[0] if transposed else w.shape[1] * group
    x_channels = n.dim(0, 1)
    if x_channels is not None and x_channels != channels:
        raise fail(n.field("group"), f"{group} with weight shape {list(w.shape)} needs {channels} input channels, "
                                     f"the input has {x_channels}")


def _conv(n):
    _window(n, 1)


def _fused_conv(n):  # kiln::Conv and kiln::QConv
    _window(n, 1)
    _weights_present(n)
    _epilogue(n)


def _weights_present(n: NodeFacts) -> None:
    """kiln::Conv/Linear/QConv/QLinear: the weight is input 1, read when the engine binds its tactics."""
    if len(n.inputs) < 2 or n.inputs[0] is None or n.inputs[1] is None:
        raise fail(n.label, "needs its input and weight (inputs 0 and 1)")


def _linear(n):
    _weights_present(n)
    _epilogue(n)


# -- fused-layer descriptions (their forms: kiln/ops/fused_steps.py) -----------------------------------------
def _epilogue(n: NodeFacts) -> None:
    from ..ops.fused_steps import STORED_STEP_NAMES, parse_stored_step
    if "epilogue" not in n.attrs:
        return
    steps = arr(n.attrs["epilogue"], n.field("epilogue"), 64)
    for step in steps:
        try:
            k = parse_stored_step(string(step, n.field("epilogue"))).input
        except FusedStepError:
            raise fail(n.field("epilogue"), f"has a step {show(step)} that is not one of "
                                            f"{', '.join(STORED_STEP_NAMES)} with its parameters") from None
        if k is not None and not 0 <= k < len(n.inputs):
            raise fail(n.field("epilogue"), f"step {step!r} reads input {k}; the layer has {len(n.inputs)} inputs")
        if k is not None and n.inputs[k] is None:
            raise fail(n.field("epilogue"), f"step {step!r} reads input {k}, which is missing")


def _elementwise(n: NodeFacts) -> None:
    """kiln::Elementwise: "Op(i0,t1)" lines over region inputs iN and earlier results tN; sub-attributes
    "name=kind:value"."""
    from ..ops import default_registry
    from ..ops.fused_steps import Instr, decode_attrs
    program = arr(n.attrs.get("program"), n.field("program"), 4096)
    if not program:
        raise fail(n.field("program"), "is empty")
    registry = default_registry()
    for k, line in enumerate(program):
        try:
            instr = Instr.from_json(string(line, n.field("program")))
        except FusedStepError:
            instr = None
        if instr is None or registry.get("", instr.op) is None:
            raise fail(n.field("program"), f"line {k} {show(line)} is not Op(operands) with a known ONNX op")
        for operand in instr.args:
            if operand.index >= (len(n.inputs) if operand.kind == "i" else k):
                raise fail(n.field("program"), f"line {k} {line!r} reads {operand}, which does not exist there")
    subs = arr(n.attrs.get("attrs", []), n.field("attrs"), len(program))
    for items in subs:
        for item in arr(items, n.field("attrs"), 256):
            try:
                decode_attrs([item])
            except FusedStepError:
                raise fail(n.field("attrs"), f"has an entry {show(item)} that is not name=i:INT, f:FLOAT or "
                                             f"s:TEXT") from None


def _attention(n: NodeFacts) -> None:
    if len(n.inputs) < 3 or any(x is None for x in n.inputs[:3]):
        raise fail(n.label, "needs Q, K and V (inputs 0 to 2)")
    if "scale" in n.attrs and not (isinstance(n.attrs["scale"], (int, float)) and math.isfinite(n.attrs["scale"])):
        raise fail(n.field("scale"), f"must be a finite number, got {show(n.attrs['scale'])}")
    _positive(n, "heads", 2**20)
    _flag(n, "nan_to_zero")


def _in_place(n: NodeFacts, is_concat: bool) -> None:
    """Concat inputs whose producers write into the output's slices (arena.py). The runtime reads the attribute
    on every node, and the arena skips the kernel of a node that has it: only Concat may."""
    if not is_concat:
        raise fail(n.field("in_place"), "is only for Concat (inputs written into its output in place)")
    picks = ints(n.attrs["in_place"], n.field("in_place"), 0, max(len(n.inputs) - 1, 0), len(n.inputs))
    if len(set(picks)) != len(picks) or any(n.inputs[k] is None for k in picks):
        raise fail(n.field("in_place"), f"must name distinct, present inputs, got {show(picks)}")


# -- shapes taken from attributes or constant inputs --------------------------------------------------------
def _shape_values(n: NodeFacts, slot: int, what: str, lo: int, allow_minus_one: bool = False) -> None:
    """A constant shape-valued input (a Reshape target, Expand shape, Tile repeats, ...): every entry in
    [lo, MAX_DIM], and the elements it asks for at most MAX_ELEMENTS."""
    t = n.const(slot)
    if t is None or t.dtype not in (torch.int64, torch.int32) or t.dim() > 1 or t.numel() > MAX_RANK:
        return  # not a constant, or a kernel will refuse its type/rank with an ordinary error
    vals = [int(v) for v in t.reshape(-1).tolist()]
    field = f"{n.label} {what} (input {slot})"
    if any(not (lo <= v <= MAX_DIM or (allow_minus_one and v == -1)) for v in vals):
        raise fail(field, f"must hold values in [{lo}, {MAX_DIM}], got {show(vals)}")
    if math.prod(v for v in vals if v > 0) > MAX_ELEMENTS:
        raise fail(field, f"asks for {math.prod(v for v in vals if v > 0)} elements, more than {MAX_ELEMENTS}")


def _reshape(n):
    _shape_values(n, 1, "shape", 0, allow_minus_one=True)
    _flag(n, "allowzero")


def _tile(n):
    _shape_values(n, 1, "repeats", 0)
    t, x = n.const(1), n.inputs[0] if n.inputs else None
    if t is not None and t.dtype == torch.int64 and t.dim() == 1 and x is not None and x.shape is not None \
            and all(isinstance(d, int) and d >= 0 for d in x.shape) and t.numel() == len(x.shape):
        total = math.prod(x.shape) * math.prod(max(int(r), 0) for r in t.tolist())
        if total > MAX_ELEMENTS:
            raise fail(f"{n.label} repeats (input 1)", f"ask for {total} elements, more than {MAX_ELEMENTS}")


def _transpose(n: NodeFacts) -> None:
    if "perm" not in n.attrs:
        return
    perm = ints(n.attrs["perm"], n.field("perm"), 0, MAX_RANK - 1, MAX_RANK)
    r = n.rank(0)
    if sorted(perm) != list(range(len(perm))) or (r is not None and len(perm) != r):
        raise fail(n.field("perm"), f"must be a permutation of the input's {r if r is not None else ''} axes, "
                                    f"got {show(perm)}")


def _block(n: NodeFacts) -> None:
    _positive(n, "blocksize", 2**20)


def _sizes(*names: str, lo: int = 1, hi: int = MAX_DIM) -> Callable:
    """Size-valued attributes (an int or a list of ints) in [lo, hi]."""
    def rule(n: NodeFacts) -> None:
        for name in names:
            if name in n.attrs and n.attrs[name] is not None:
                v = n.attrs[name]
                if isinstance(v, list):
                    ints(v, n.field(name), lo, hi, 2**16)
                else:
                    integer(v, n.field(name), lo, hi)
    return rule


def _all(*rules: Callable) -> Callable:
    def rule(n: NodeFacts) -> None:
        for r in rules:
            r(n)
    return rule


def _axis_rule(extra: int = 0) -> Callable:
    return lambda n: _axis(n, extra=extra)


def _onnxruntime_node(n: NodeFacts) -> None:
    """The stored NodeProto parses (it is handed to onnxruntime as data) and names no subgraph; opsets are
    "domain=version" strings."""
    from ..ops.onnxruntime_node import decode_node
    text = string(n.attrs.get("node"), n.field("node"))
    try:
        node = decode_node(text)
    except Exception as e:  # noqa: BLE001 - base64 or protobuf refusal: not a node
        raise fail(n.field("node"), f"is not a serialized ONNX node ({type(e).__name__})") from None
    if any(a.HasField("g") or a.graphs for a in node.attribute):
        raise fail(n.field("node"), "holds a subgraph, which the fallback never stores")
    for k, s in enumerate(arr(n.attrs.get("opsets", []), n.field("opsets"), 64)):
        domain, sep, version = string(s, f"{n.field('opsets')} {k}").partition("=")
        if not sep or not version.isdigit():
            raise fail(f"{n.field('opsets')} {k}", f"must be 'domain=version', got {show(s)}")


RULES: dict[tuple[str, str], Callable[[NodeFacts], None]] = {
    ("", "Conv"): _conv, ("", "ConvInteger"): _conv, ("", "DeformConv"): _conv,
    ("", "ConvTranspose"): lambda n: _window(n, 1, transposed=True),
    ("", "QLinearConv"): lambda n: _window(n, 3),
    ("kiln", "Conv"): _fused_conv, ("kiln", "QConv"): _fused_conv,
    ("kiln", "Linear"): _linear, ("kiln", "QLinear"): _linear,
    ("kiln", "Elementwise"): _elementwise, ("kiln", "Attention"): _attention,
    **{("", op): lambda n: _window(n, None) for op in ("MaxPool", "AveragePool", "LpPool", "MaxUnpool")},
    ("", "Col2Im"): lambda n: _window(n, None, image_input=False),
    ("kiln", "MaxPoolQuantize"): lambda n: _window(n, None),
    ("", "Concat"): _axis,
    **{("", op): _axis_rule() for op in ("Softmax", "LogSoftmax", "Hardmax", "Gather", "GatherElements",
                                         "ArgMax", "ArgMin", "LayerNormalization", "Compress", "ScatterElements",
                                         "Scatter", "TopK", "LpNormalization", "RMSNormalization", "CumSum",
                                         "SplitToSequence", "QuantizeLinear", "DequantizeLinear")},
    ("kiln", "LayerNormQuantize"): _axis_rule(),
    ("", "Flatten"): _axis_rule(extra=1),
    ("", "Split"): _all(_axis, _sizes("num_outputs", hi=2**16), _sizes("split", lo=0)),  # a list of num_outputs
    **{("", op): _axes for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                  "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze")},
    ("", "Unsqueeze"): lambda n: _axes(n, extra=len(n.attrs.get("axes") or [])),
    ("", "Transpose"): _transpose,
    ("", "DepthToSpace"): _block, ("", "SpaceToDepth"): _block,
    ("", "Reshape"): _reshape, ("", "Tile"): _tile,
    ("", "Expand"): lambda n: _shape_values(n, 1, "shape", 0),
    ("", "ConstantOfShape"): lambda n: _shape_values(n, 0, "shape", 0),
    ("", "Resize"): lambda n: _shape_values(n, 3, "sizes", 0),
    ("", "LRN"): _sizes("size"), ("", "GroupNormalization"): _sizes("num_groups"),
    ("", "MaxRoiPool"): _sizes("pooled_shape"), ("", "RoiAlign"): _sizes("output_height", "output_width"),
    **{("", op): _sizes("hidden_size") for op in ("LSTM", "GRU", "RNN")},
    ("", "Attention"): _sizes("q_num_heads", "kv_num_heads"),
    ("kiln", "OnnxRuntimeNode"): lambda n: _onnxruntime_node(n),
    ("", "RotaryEmbedding"): _sizes("num_heads", "rotary_embedding_dim", lo=0),
}

# Attributes that name an element type, for every op: a code outside DType makes kernels fail oddly.
_DTYPE_ATTRS = ("to", "dtype", "output_dtype", "output_datatype")
_DTYPE_CODES = {int(d) for d in DType}


def check_node(domain: str, op: str, n: NodeFacts) -> None:
    for name in _DTYPE_ATTRS:
        v = n.attrs.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v not in _DTYPE_CODES:
            raise fail(n.field(name), f"is not an element type code, got {show(v)}")
    if "in_place" in n.attrs:
        _in_place(n, (domain, op) == ("", "Concat"))
    rule = RULES.get((domain, op))
    if rule is not None:
        rule(n)


# -- the tactic record (node.meta["tactic"]), bound to a kernel at load by kiln/tactics/bind.py ----------------
_PARAMS = {  # parameter -> check of its value
    "config": lambda v, f: ints(v, f, 1, 4096, 8),  # Triton block sizes, warps, stages
    "layout": lambda v, f: string(v, f, ("nchw", "nhwc")),
    "backend": lambda v, f: string(v, f, ("flash", "efficient", "cudnn", "math")),
    "gemm": lambda v, f: integer(v, f, 0, 1),
    "quant_in": lambda v, f: string(v, f, ("torch", "kernel")),
}
_SCALAR = (str, int, float, bool, type(None))


def check_meta(meta, label: str) -> None:
    """The node's meta: plain data; its tactic record {"name", "params"} (or a bare name) well formed. An
    unknown tactic name is left to the binder, which runs the op's own kernel and says so in load_notes."""
    obj(meta, f"{label} meta")
    if meta.get("threads") is not None:  # a CPU layer measured faster on one thread (kiln/tune/layer_threads.py)
        integer(meta["threads"], f"{label} meta 'threads'", 1, 1)
    if "tactic" not in meta or meta["tactic"] is None:
        return
    t, field = meta["tactic"], f"{label} meta 'tactic'"
    if isinstance(t, str):
        string(t, field)
        return
    obj(t, field)
    if set(t) - {"name", "params"}:
        raise fail(field, f"has unknown keys {sorted(set(t) - {'name', 'params'})}")
    name = string(t.get("name"), f"{field} name")
    if not re.fullmatch(r"[a-z0-9_]{1,64}", name):
        raise fail(f"{field} name", f"is not a tactic name, got {show(name)}")
    params = t.get("params") or {}
    obj(params, f"{field} params")
    for k, v in params.items():
        check = _PARAMS.get(k)
        if check is not None:
            check(v, f"{field} params {k!r}")
        elif not isinstance(v, _SCALAR) and not (isinstance(v, list) and all(isinstance(x, _SCALAR) for x in v)):
            # a parameter no factory here reads (a test's injected tactic): plain data is all it may be
            raise fail(f"{field} params {k!r}", f"must be a scalar or a list of scalars, got {show(v)}")
