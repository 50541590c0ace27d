"""Check one op through Kiln against onnx.reference (the external oracle) on given inputs."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper

import kiln

_NP_TO_ONNX = {np.dtype(k): v for k, v in {
    np.float32: onnx.TensorProto.FLOAT, np.float64: onnx.TensorProto.DOUBLE, np.float16: onnx.TensorProto.FLOAT16,
    np.int8: onnx.TensorProto.INT8, np.int16: onnx.TensorProto.INT16, np.int32: onnx.TensorProto.INT32,
    np.int64: onnx.TensorProto.INT64, np.uint8: onnx.TensorProto.UINT8, np.uint16: onnx.TensorProto.UINT16,
    np.uint32: onnx.TensorProto.UINT32, np.uint64: onnx.TensorProto.UINT64, np.bool_: onnx.TensorProto.BOOL,
}.items()}


def elem_type(a: np.ndarray) -> int:
    a = np.asarray(a)
    if a.dtype in _NP_TO_ONNX:
        return _NP_TO_ONNX[a.dtype]
    return int(kiln.DType.from_numpy(a.dtype))


def one_node_model(op_type: str, inputs: dict[str, np.ndarray | None], attrs: dict, n_outputs: int = 1,
                   opset: int = 21, domain: str = "", const_inputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """A model with a single node; inputs named in ``const_inputs`` become initializers; None = omitted."""
    names = [n if v is not None else "" for n, v in inputs.items()]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, domain=domain, **attrs)
    graph_inputs, inits = [], []
    for n, v in inputs.items():
        if v is None:
            continue
        if n in const_inputs:
            inits.append(onnx.numpy_helper.from_array(np.asarray(v), n))
        else:
            graph_inputs.append(helper.make_tensor_value_info(n, elem_type(v), list(np.shape(v))))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def run_both(model: onnx.ModelProto, feed: dict[str, np.ndarray], device: str = "cpu"):
    from onnx.reference import ReferenceEvaluator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ReferenceEvaluator(model).run(None, feed)
    got = kiln.interpret(kiln.parse(model), feed, device=device)
    outs = [o.name for o in model.graph.output]
    if device != "cpu":
        got = {k: (v.cpu().numpy() if hasattr(v, "cpu") else v) for k, v in got.items()}
    return ref, [got[o] for o in outs]


def check_op(op_type: str, inputs: dict[str, np.ndarray | None], attrs: dict | None = None, n_outputs: int = 1,
             opset: int = 21, rtol: float = 1e-5, atol: float = 1e-6, const_inputs: tuple[str, ...] = (),
             domain: str = "", device: str = "cpu") -> None:
    """Assert that Kiln and onnx.reference agree (dtype, shape, values) on every output."""
    model = one_node_model(op_type, inputs, attrs or {}, n_outputs, opset, domain, const_inputs)
    feed = {n: v for n, v in inputs.items() if v is not None and n not in const_inputs}
    ref, got = run_both(model, feed, device)
    for i, (r, g) in enumerate(zip(ref, got)):
        r, g = np.asarray(r), np.asarray(g)
        assert r.dtype == g.dtype, f"{op_type} output {i}: dtype {g.dtype}, reference {r.dtype}"
        assert r.shape == g.shape, f"{op_type} output {i}: shape {g.shape}, reference {r.shape}"
        if r.dtype.kind in "fc" or r.dtype.kind == "V":
            np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), rtol=rtol, atol=atol,
                                       equal_nan=True, err_msg=f"{op_type} output {i}")
        else:
            np.testing.assert_array_equal(g, r, err_msg=f"{op_type} output {i}")
