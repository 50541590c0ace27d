"""Check com.microsoft contrib ops through a Kiln build against onnxruntime's CPU session (the oracle).

The model is built (``kiln.build``, so the lowering pass runs) and, unless ``interpret=False``, also
interpreted node by node (the op's reference kernel without any lowering): both must match onnxruntime.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import kiln
from oracle import one_node_model

MS = "com.microsoft"


def ort_run(model: onnx.ModelProto, feed: dict) -> list:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the op's own CPU kernel
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def ms_model(op: str, inputs: dict, attrs: dict | None = None, n_outputs: int = 1, const_inputs=(),
             outputs: list[str] | None = None) -> onnx.ModelProto:
    """One com.microsoft node; ``outputs`` names its outputs ("" skips an optional one)."""
    m = one_node_model(op, inputs, attrs or {}, n_outputs, opset=17, domain=MS, const_inputs=tuple(const_inputs))
    if outputs is not None:
        node = m.graph.node[0]
        del node.output[:]
        node.output.extend(outputs)
        del m.graph.output[:]
        m.graph.output.extend(helper.make_value_info(o, onnx.TypeProto()) for o in outputs if o)
    return m


def check_ms(op: str, inputs: dict, attrs: dict | None = None, n_outputs: int = 1, const_inputs=(),
             outputs: list[str] | None = None, rtol: float = 1e-5, atol: float = 1e-5, interpret: bool = True,
             model: onnx.ModelProto | None = None, want: list | None = None,
             lowered: bool | None = None) -> kiln.Engine:
    """Assert that a Kiln build (and the interpreter) agrees with onnxruntime on every output; returns the engine.

    ``want``: the expected outputs, for ops onnxruntime implements only on CUDA (computed in numpy by the test).
    ``lowered``: whether the build must (True) or must not (False) have rewritten the op into standard layers."""
    model = model or ms_model(op, inputs, attrs, n_outputs, const_inputs, outputs)
    feed = {n: v for n, v in inputs.items() if v is not None and n not in const_inputs}
    want = ort_run(model, feed) if want is None else want
    engine = kiln.build(model, device="cpu")
    if lowered is not None:
        done = engine.report.fusions.get(f"lower_contrib_ms:{op}", 0) > 0
        assert done == lowered, f"{op}: lowered={done}, expected {lowered}; report: {engine.report.fusions}"
    names = [o.name for o in model.graph.output]
    runs = {"build": engine.create_execution_context().infer(feed)}
    if interpret:
        runs["interpret"] = kiln.interpret(kiln.parse(model), feed, device="cpu")
    for how, got in runs.items():
        for name, w in zip(names, want):
            g = np.asarray(got[name])
            assert g.shape == w.shape, f"{op} {how} {name}: shape {g.shape}, onnxruntime {w.shape}"
            assert g.dtype == w.dtype, f"{op} {how} {name}: dtype {g.dtype}, onnxruntime {w.dtype}"
            if w.dtype.kind == "f":
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{op} {how} {name}")
            else:
                np.testing.assert_array_equal(g, w, err_msg=f"{op} {how} {name}")
    return engine


def rand(shape, seed: int = 0, lo: float = -2.0, hi: float = 2.0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)
