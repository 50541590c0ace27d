"""Writing a Q/DQ ONNX model from a calibration, for use in other runtimes (``kiln quantize``).

    x -> Conv(W)   becomes   x -> QuantizeLinear(s_x) -> DequantizeLinear(s_x) -> Conv(DQ(Wq, s_w, axis=0))

Activations feeding Conv / MatMul / Gemm with constant weights get a per-tensor symmetric int8 Q/DQ pair
(zero point 0) with the calibrated scale; weights become int8 initializers, symmetric per output channel,
read through a DequantizeLinear. Biases stay float. The result is the QDQ format onnxruntime and
TensorRT's explicit quantization read; Kiln builds it back into INT8 layers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .cache import Calibration


def _load(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model))


def quantizable(m: onnx.ModelProto) -> list[tuple[int, str, str, int]]:
    """(node index, activation input, weight initializer, weight's output-channel axis) per quantizable node."""
    inits = {i.name: i for i in m.graph.initializer}
    out = []
    for idx, n in enumerate(m.graph.node):
        if n.op_type not in ("Conv", "MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = inits[n.input[1]]
        if w.data_type != TensorProto.FLOAT:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            axis = 0
        elif n.op_type == "MatMul":
            if len(w.dims) != 2:
                continue
            axis = 1
        else:
            if attrs.get("transA", 0):
                continue
            axis = 0 if attrs.get("transB", 0) else 1
        out.append((idx, n.input[0], n.input[1], axis))
    return out


def calibrate_model(model: Any, data: Any, method: str = "entropy2", device: str = "cpu") -> Calibration:
    """Calibrate the activations that write_qdq_model quantizes, on the model as written (no fusion)."""
    from ..frontend.onnx import parse
    from .calibrate import calibrate
    from .data import iter_batches
    m = _load(model)
    graph = parse(m.SerializeToString())
    names = sorted({a for _, a, _, _ in quantizable(m)})
    batches = list(iter_batches(data, [v.name for v in graph.inputs], device=device))
    return calibrate(graph, batches, names, method, device)


def _as_calibration(calibration: Any, model: onnx.ModelProto, method: str) -> Calibration:
    if isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, dict) and all(isinstance(v, (int, float)) for v in calibration.values()):
        return Calibration({k: float(v) for k, v in calibration.items()}, method)
    if isinstance(calibration, (str, Path)) and Path(calibration).is_file():
        return Calibration.load(calibration)
    return calibrate_model(model, calibration, method)


def write_qdq_model(model: Any, calibration: Any, path: str | Path | None = None,
                    method: str = "entropy2") -> tuple[onnx.ModelProto, list[str]]:
    """Write ``model`` with Q/DQ nodes to ``path`` (if given); return (the model, names left in float).

    ``calibration``: a Calibration, a dict tensor name -> int8 scale, a calibration cache file, or data
    (folder / iterable of input dicts / calibrator) to calibrate on with ``method``."""
    m = _load(model)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ValueError(f"per-channel Q/DQ needs opset 13 or later; the model has opset {opset}")
    cal = _as_calibration(calibration, m, method)
    inits = {i.name: i for i in m.graph.initializer}
    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # inserted before the consumer at that index
    act_out: dict[str, str] = {}
    skipped: list[str] = []
    done_w: dict[str, str] = {}
    for idx, act, wname, axis in quantizable(m):
        n = m.graph.node[idx]
        s = cal.scales.get(act)
        if s is None:
            skipped.append(n.name or f"{n.op_type}({act})")
            continue
        pre = new_nodes.setdefault(idx, [])
        if act not in act_out:
            q, dq = f"{act}_QuantizeLinear_Output", f"{act}_DequantizeLinear_Output"
            m.graph.initializer.extend([numpy_helper.from_array(np.array(s, dtype=np.float32), f"{act}_scale"),
                                        numpy_helper.from_array(np.array(0, dtype=np.int8), f"{act}_zero_point")])
            pre.append(helper.make_node("QuantizeLinear", [act, f"{act}_scale", f"{act}_zero_point"], [q],
                                        name=f"{act}_QuantizeLinear"))
            pre.append(helper.make_node("DequantizeLinear", [q, f"{act}_scale", f"{act}_zero_point"], [dq],
                                        name=f"{act}_DequantizeLinear"))
            act_out[act] = dq
        n.input[0] = act_out[act]
        if wname not in done_w:
            w = numpy_helper.to_array(inits[wname]).astype(np.float32)
            wq, ws = _per_channel(w, axis)
            m.graph.initializer.remove(inits[wname])
            m.graph.initializer.extend([numpy_helper.from_array(wq, f"{wname}_quantized"),
                                        numpy_helper.from_array(ws, f"{wname}_scale"),
                                        numpy_helper.from_array(np.zeros(len(ws), np.int8), f"{wname}_zero_point")])
            pre.append(helper.make_node("DequantizeLinear", [f"{wname}_quantized", f"{wname}_scale",
                                                             f"{wname}_zero_point"], [wname], axis=axis,
                                        name=f"{wname}_DequantizeLinear"))
            done_w[wname] = wname
    nodes = []
    for idx, n in enumerate(m.graph.node):
        nodes.extend(new_nodes.get(idx, []))
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    _toposort(m.graph)
    if path is not None:
        onnx.save(m, str(path))
    return m, skipped


def _per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    moved = np.moveaxis(w, axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(1)
    s = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / s.reshape(shape)), -127, 127).astype(np.int8)
    return q, s


def _toposort(g: onnx.GraphProto) -> None:
    """Order nodes so producers come first (inserted Q/DQ nodes may read tensors made later)."""
    produced = {o: i for i, n in enumerate(g.node) for o in n.output}
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    order, seen = [], set()

    def visit(i):
        if i in seen:
            return
        seen.add(i)
        for x in g.node[i].input:
            if x not in known and x in produced:
                visit(produced[x])
        order.append(g.node[i])

    for i in range(len(g.node)):
        visit(i)
    nodes = list(order)
    del g.node[:]
    g.node.extend(nodes)
