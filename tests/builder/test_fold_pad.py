"""passes/fold_pad.py: a zero Pad becomes the padding of the Conv/AveragePool after it, and only then; every case
matches onnx.reference (NaN inputs included)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln

rng = np.random.default_rng(0)
F = TensorProto.FLOAT


def _model(pads, consumer, opset=17, value=None, axes=None, extra_readers=(), pad_attrs=None):
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w")]
    pad_inputs = ["x"]
    attrs = dict(pad_attrs or {})
    if opset >= 11:
        inits.append(numpy_helper.from_array(np.array(pads, np.int64), "pads"))
        pad_inputs.append("pads")
        if value is not None or axes is not None:
            inits.append(numpy_helper.from_array(np.array(value or 0.0, np.float32), "value"))
            pad_inputs.append("value")
        if axes is not None:
            inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
            pad_inputs.append("axes")
    else:
        attrs["pads"] = pads
        if value is not None:
            attrs["value"] = value
    nodes = [helper.make_node("Pad", pad_inputs, ["p"], **attrs), consumer]
    outputs = ["y"] + [r.output[0] for r in extra_readers]
    nodes += list(extra_readers)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 3, 9, 11])],
                          [helper.make_tensor_value_info(o, F, None) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _check(m, nan=False):
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    if nan:
        x[0, 1, 4, 5] = np.nan
        x[1, 2, 0, 0] = np.inf
    engine = kiln.build(m, kiln.BuilderConfig(device="cpu"))
    got = engine.create_execution_context().infer({"x": x})
    for o, want in zip(m.graph.output, ReferenceEvaluator(m).run(None, {"x": x})):
        np.testing.assert_allclose(got[o.name], want, rtol=1e-4, atol=1e-4, equal_nan=True)
    return engine


def _ops(engine):
    return [layer.op for layer in engine.report.layers]


CONV = helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 0, 1, 0], strides=[2, 1])


@pytest.mark.parametrize("nan", [False, True])
def test_asymmetric_pad_folds_into_conv(nan):
    e = _check(_model([0, 0, 1, 2, 0, 0, 0, 1], CONV), nan=nan)
    assert "Pad" not in _ops(e) and e.report.fusions.get("fold_pad") == 1


def test_old_opset_pad_attributes_fold():
    e = _check(_model([0, 0, 2, 1, 0, 0, 2, 1], helper.make_node("Conv", ["p", "w"], ["y"]), opset=10))
    assert "Pad" not in _ops(e)


def test_pad_with_axes_input_folds():
    e = _check(_model([1, 1, 2, 0], CONV, opset=18, axes=[2, 3]))
    assert "Pad" not in _ops(e)


@pytest.mark.parametrize("case, reason", [
    (dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5), "pad value"),
    (dict(pads=[1, 0, 1, 1, 0, 0, 1, 1]), "batch"),
    (dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], pad_attrs={"mode": "reflect"}), "mode"),
])
def test_pads_that_are_not_zero_padding_stay(case, reason):
    m = _model(case["pads"], helper.make_node("Conv", ["p", "w"], ["y"]), value=case.get("value"),
               pad_attrs=case.get("pad_attrs"))
    e = _check(m)
    assert "Pad" in _ops(e)
    assert any(r["rule"] == "fold_pad" and reason in r["reason"] for r in e.report.rejections)


def test_average_pool_counts_the_pads_zeros():
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3])  # count_include_pad 0, no own pads
    e = _check(_model([0, 0, 1, 1, 0, 0, 1, 1], pool))
    assert "Pad" not in _ops(e)


def test_average_pool_that_excludes_its_own_padding_keeps_the_pad():
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    e = _check(_model([0, 0, 1, 1, 0, 0, 1, 1], pool))
    assert "Pad" in _ops(e)


def test_max_pool_is_left_alone():
    pool = helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3])
    e = _check(_model([0, 0, 1, 1, 0, 0, 1, 1], pool))
    assert "Pad" in _ops(e)


def test_a_pad_read_elsewhere_stays_for_that_reader():
    relu = helper.make_node("Relu", ["p"], ["r"])
    e = _check(_model([0, 0, 1, 1, 0, 0, 1, 1], helper.make_node("Conv", ["p", "w"], ["y"]), extra_readers=[relu]))
    assert "Pad" in _ops(e) and e.report.fusions.get("fold_pad") == 1
