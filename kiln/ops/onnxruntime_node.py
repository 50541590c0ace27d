"""kiln::OnnxRuntimeNode: one ONNX node no Kiln kernel or plugin implements, run by onnxruntime on the host.

Made by the ONNX frontend only when the build asks for it (``BuilderConfig(onnxruntime_fallback=True)``, CLI
``--onnxruntime-fallback``), so that a model with one exotic op is still usable; the build report names every
such layer and why. The node is kept as data: its NodeProto (base64) and the opset of its domain. At run time
it becomes a one-node model that onnxruntime's CPU provider runs (sessions cached per node and input types);
inputs and outputs cross to the host and back, which is the cost of the fallback on a GPU.

Shapes at build time: propagation runs kernels on meta tensors, which onnxruntime cannot take, so the node is
run once on zeros of the (concrete, probed) input shapes to learn its outputs' shapes and types.
"""
from __future__ import annotations

import base64
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..errors import KernelError
from .registry import KernelContext, OpSet

ops = OpSet("onnxruntime")

_SESSIONS: "OrderedDict[tuple, object]" = OrderedDict()  # a cache of built sessions, not state: bounded
_MAX_SESSIONS = 256
_LOCK = threading.Lock()


def encode_node(node_proto) -> str:
    return base64.b64encode(node_proto.SerializeToString()).decode("ascii")


def decode_node(text: str):
    """The stored NodeProto (ValueError for anything that is not one)."""
    import onnx
    node = onnx.NodeProto()
    node.ParseFromString(base64.b64decode(text.encode("ascii"), validate=True))
    return node


def _session(attrs: dict, dtypes: tuple, num_outputs: int):
    key = (attrs["node"], tuple(attrs.get("opsets", ())), dtypes, num_outputs)
    with _LOCK:
        s = _SESSIONS.get(key)
        if s is not None:
            _SESSIONS.move_to_end(key)
            return s
    try:
        import onnxruntime as ort
        from onnx import TypeProto, helper
    except ImportError:
        raise KernelError("this engine runs a node through onnxruntime (the build's onnxruntime_fallback), and "
                          "onnxruntime is not installed: pip install onnxruntime") from None
    node = decode_node(attrs["node"])
    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    outs = [f"out{i}" if i < num_outputs else "" for i in range(len(node.output))]
    node.ClearField("input")
    node.input.extend(names)
    node.ClearField("output")
    node.output.extend(outs)
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(d)), None)
              for n, d in zip([n for n in names if n], dtypes)]
    outputs = [helper.make_value_info(o, TypeProto()) for o in outs if o]
    opsets = [helper.make_opsetid(d, int(v)) for d, _, v in (s.partition("=") for s in attrs.get("opsets", ()))]
    model = helper.make_model(helper.make_graph([node], "kiln_fallback", inputs, outputs), opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1 if torch.get_num_threads() == 1 else 0
    try:
        s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's own refusal (unknown op, bad attributes)
        raise KernelError(f"onnxruntime cannot run node {node.name or node.op_type!r} ({node.domain}::"
                          f"{node.op_type}): {str(e).splitlines()[0][:300]}") from None
    with _LOCK:
        _SESSIONS[key] = s
        while len(_SESSIONS) > _MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
    return s


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    if x.dtype == torch.bfloat16:
        raise KernelError("onnxruntime's host fallback takes no bfloat16 tensors")
    return x.detach().cpu().contiguous().numpy()


@ops.op("OnnxRuntimeNode", domain="kiln", float_dtypes=(torch.float32,),
        label=lambda node: f"onnxruntime[{node.attrs.get('op', '?')}]")
def onnxruntime_node(ctx: KernelContext, inputs: list, attrs: dict):
    """An ONNX node run by onnxruntime (CPU) on the host: the build's opt-in fallback for ops nobody implements."""
    present = [x for x in inputs if x is not None]
    meta = any(x.device.type == "meta" for x in present)
    host = [torch.zeros(x.shape, dtype=x.dtype) if meta else x for x in present]
    arrays = [_to_numpy(x) for x in host]
    session = _session(attrs, tuple(a.dtype.str for a in arrays), ctx.num_outputs)
    feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
    try:
        results = session.run(None, feed)
    except Exception as e:  # noqa: BLE001 - onnxruntime's error for these inputs
        raise KernelError(f"node {ctx.node_name!r}: onnxruntime failed: {str(e).splitlines()[0][:300]}") from None
    device = torch.device("meta") if meta else (present[0].device if present else ctx.device)
    outs = [torch.from_numpy(np.ascontiguousarray(r)).to(device) for r in results]
    return outs[0] if len(outs) == 1 else tuple(outs)
