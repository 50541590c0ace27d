"""kiln.trt's network-definition API: networks built layer by layer, as TensorRT's network-API samples do,
checked against the same computation written in torch."""
import json
import os
import re
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln.trt as trt
from kiln import errors
from trt_support import RecordingLogger, engine_buffer, engine_empty, host

RNG = np.random.default_rng(0)




def _run(builder, network, feeds: dict, profile: dict | None = None, config=None) -> dict:
    """Build ``network``, run it once on buffers where the engine runs, return every output by name (numpy)."""
    config = config or builder.create_builder_config()
    if profile:
        p = builder.create_optimization_profile()
        for name, shapes in profile.items():
            p.set_shape(name, *shapes)
        config.add_optimization_profile(p)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    engine = trt.Runtime(builder.logger).deserialize_cuda_engine(plan)
    ctx = engine.create_execution_context()
    outs, held = {}, []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            ctx.set_input_shape(name, feeds[name].shape)
            buf, address = engine_buffer(engine, feeds[name])
            held.append(buf)
            ctx.set_tensor_address(name, address)
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            outs[name], address = engine_empty(engine, ctx.get_tensor_shape(name),
                                               trt.nptype(engine.get_tensor_dtype(name)))
            ctx.set_tensor_address(name, address)
    assert ctx.execute_async_v3(0)
    return {name: host(buf) for name, buf in outs.items()}


def _mnist_weights():
    shapes = {"conv1.weight": (20, 1, 5, 5), "conv1.bias": (20,), "conv2.weight": (50, 20, 5, 5), "conv2.bias": (50,),
              "fc1.weight": (500, 800), "fc1.bias": (500,), "fc2.weight": (10, 500), "fc2.bias": (10,)}
    return {k: (RNG.standard_normal(s) * 0.1).astype(np.float32) for k, s in shapes.items()}


def _populate_mnist(network, weights):
    """network_api_pytorch_mnist's populate_network, call for call (plus a softmax on the logits)."""
    input_tensor = network.add_input(name="data", dtype=trt.float32, shape=(1, 1, 28, 28))

    def add_matmul_as_fc(net, input, outputs, w, b):  # noqa: A002
        m = 1 if len(input.shape) == 3 else input.shape[0]
        k = int(np.prod(input.shape) / m)
        n = int(w.size / k)
        input_reshape = net.add_shuffle(input)
        input_reshape.reshape_dims = trt.Dims2(m, k)
        filter_const = net.add_constant(trt.Dims2(n, k), w)
        mm = net.add_matrix_multiply(input_reshape.get_output(0), trt.MatrixOperation.NONE,
                                     filter_const.get_output(0), trt.MatrixOperation.TRANSPOSE)
        bias_const = net.add_constant(trt.Dims2(1, n), b)
        bias_add = net.add_elementwise(mm.get_output(0), bias_const.get_output(0), trt.ElementWiseOperation.SUM)
        output_reshape = net.add_shuffle(bias_add.get_output(0))
        output_reshape.reshape_dims = trt.Dims4(m, n, 1, 1)
        return output_reshape

    conv1 = network.add_convolution_nd(input=input_tensor, num_output_maps=20, kernel_shape=(5, 5),
                                       kernel=weights["conv1.weight"], bias=weights["conv1.bias"])
    conv1.stride_nd = (1, 1)
    pool1 = network.add_pooling_nd(input=conv1.get_output(0), type=trt.PoolingType.MAX, window_size=(2, 2))
    pool1.stride_nd = trt.Dims2(2, 2)
    conv2 = network.add_convolution_nd(pool1.get_output(0), 50, (5, 5), trt.Weights(weights["conv2.weight"]),
                                       trt.Weights(weights["conv2.bias"]))
    conv2.stride_nd = (1, 1)
    pool2 = network.add_pooling_nd(conv2.get_output(0), trt.PoolingType.MAX, (2, 2))
    pool2.stride_nd = trt.Dims2(2, 2)
    fc1 = add_matmul_as_fc(network, pool2.get_output(0), 500, weights["fc1.weight"], weights["fc1.bias"])
    relu1 = network.add_activation(input=fc1.get_output(0), type=trt.ActivationType.RELU)
    fc2 = add_matmul_as_fc(network, relu1.get_output(0), 10, weights["fc2.weight"], weights["fc2.bias"])
    fc2.get_output(0).name = "logits"
    network.mark_output(tensor=fc2.get_output(0))
    prob = network.add_softmax(fc2.get_output(0))
    prob.axes = 1 << 1
    prob.get_output(0).name = "prob"
    network.mark_output(prob.get_output(0))
    return conv1, prob


def test_mnist_network_api_sample_matches_torch():
    weights = _mnist_weights()
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    conv1, prob = _populate_mnist(network, weights)
    assert tuple(conv1.get_output(0).shape) == (1, 20, 24, 24)
    assert tuple(prob.get_output(0).shape) == (1, 10, 1, 1) and prob.get_output(0).dtype == trt.float32
    assert network.num_inputs == 1 and network.num_outputs == 2 and network.num_layers == 18
    assert network.get_layer(0) is conv1 and conv1.num_outputs == 1 and conv1.name.endswith("[Convolution]")
    x = RNG.standard_normal((1, 1, 28, 28)).astype(np.float32)
    outs = _run(builder, network, {"data": x})
    assert not logger.errors

    t = {k: torch.from_numpy(v) for k, v in weights.items()}
    y = F.max_pool2d(F.conv2d(torch.from_numpy(x), t["conv1.weight"], t["conv1.bias"]), 2, 2)
    y = F.max_pool2d(F.conv2d(y, t["conv2.weight"], t["conv2.bias"]), 2, 2)
    y = F.relu(y.reshape(1, 800) @ t["fc1.weight"].T + t["fc1.bias"])
    logits = y @ t["fc2.weight"].T + t["fc2.bias"]
    np.testing.assert_allclose(outs["logits"].reshape(1, 10), logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(outs["prob"].reshape(1, 10), torch.softmax(logits, 1).numpy(), atol=1e-4, rtol=1e-4)


def _x(*shape, positive=False):
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


# One row per enum value: (output name, the enum value, the torch reference). The other layers are written out in
# the test. One network holds them all, so one build checks them all.
A, B = 0.3, 1.7
ROWS = [
    *[(f"act_{k.name}", k, f) for k, f in {
        trt.ActivationType.RELU: F.relu, trt.ActivationType.SIGMOID: torch.sigmoid, trt.ActivationType.TANH: torch.tanh,
        trt.ActivationType.LEAKY_RELU: lambda x: F.leaky_relu(x, A), trt.ActivationType.ELU: lambda x: F.elu(x, A),
        trt.ActivationType.SELU: lambda x: B * torch.where(x > 0, x, A * (torch.exp(x) - 1)),
        trt.ActivationType.SOFTSIGN: F.softsign, trt.ActivationType.SOFTPLUS: lambda x: A * torch.log1p(torch.exp(B * x)),
        trt.ActivationType.CLIP: lambda x: torch.clamp(x, A, B),
        trt.ActivationType.HARD_SIGMOID: lambda x: torch.clamp(A * x + B, 0, 1),
        trt.ActivationType.SCALED_TANH: lambda x: A * torch.tanh(B * x),
        trt.ActivationType.THRESHOLDED_RELU: lambda x: torch.where(x > A, x, 0),
        trt.ActivationType.GELU_ERF: F.gelu, trt.ActivationType.GELU_TANH: lambda x: F.gelu(x, approximate="tanh"),
    }.items()],
    *[(f"unary_{k.name}", k, f) for k, f in {
        trt.UnaryOperation.EXP: torch.exp, trt.UnaryOperation.LOG: torch.log, trt.UnaryOperation.SQRT: torch.sqrt,
        trt.UnaryOperation.RECIP: torch.reciprocal, trt.UnaryOperation.ABS: torch.abs, trt.UnaryOperation.NEG: torch.neg,
        trt.UnaryOperation.SIN: torch.sin, trt.UnaryOperation.COS: torch.cos, trt.UnaryOperation.ATAN: torch.atan,
        trt.UnaryOperation.CEIL: torch.ceil, trt.UnaryOperation.FLOOR: torch.floor, trt.UnaryOperation.ERF: torch.erf,
        trt.UnaryOperation.SIGN: torch.sign, trt.UnaryOperation.ROUND: torch.round,
    }.items()],
    *[(f"elementwise_{k.name}", k, f) for k, f in {
        trt.ElementWiseOperation.SUM: torch.add, trt.ElementWiseOperation.PROD: torch.mul,
        trt.ElementWiseOperation.MAX: torch.maximum, trt.ElementWiseOperation.MIN: torch.minimum,
        trt.ElementWiseOperation.SUB: torch.sub, trt.ElementWiseOperation.DIV: torch.div,
        trt.ElementWiseOperation.POW: torch.pow, trt.ElementWiseOperation.FLOOR_DIV: lambda a, b: torch.floor(a / b),
    }.items()],
    *[(f"reduce_{k.name}", k, f) for k, f in {
        trt.ReduceOperation.SUM: lambda x: x.sum((2, 3)), trt.ReduceOperation.PROD: lambda x: x.prod(3, keepdim=True),
        trt.ReduceOperation.MAX: lambda x: x.amax((2, 3)), trt.ReduceOperation.MIN: lambda x: x.amin((2, 3)),
        trt.ReduceOperation.AVG: lambda x: x.mean((2, 3)),
    }.items()],
]


def test_each_layer_against_torch():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    x_np = _x(2, 3, 6, 6, positive=True)
    y_np = _x(2, 3, 6, 6, positive=True)
    x_in = net.add_input("x", trt.float32, (2, 3, 6, 6))
    y_in = net.add_input("y", trt.float32, (1, 3, 1, 6))  # broadcast against x: equal rank, dims of 1
    y_np = np.ascontiguousarray(y_np[:1, :, :1, :])
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    expected = {}

    def out(name, layer, ref):
        assert layer is not None, logger.errors
        layer.get_output(0).name = name
        net.mark_output(layer.get_output(0))
        expected[name] = ref

    w, b = _x(4, 3, 3, 3), _x(4)
    conv = net.add_convolution_nd(x_in, 4, (3, 3), w.ravel(), b)  # flat KCRS weights, as TensorRT takes them
    conv.stride_nd, conv.padding_nd, conv.dilation_nd = (2, 1), (1, 2), (1, 2)  # set after the call, as samples do
    out("conv_stride_pad_dil", conv, F.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), stride=(2, 1),
                                              padding=(1, 2), dilation=(1, 2)))
    wg = _x(6, 1, 3, 3)
    grouped = net.add_convolution_nd(x_in, 6, (3, 3), wg, None)
    grouped.num_groups = 3
    out("conv_groups", grouped, F.conv2d(x, torch.from_numpy(wg), groups=3))
    wd = _x(3, 2, 2, 2)
    deconv = net.add_deconvolution_nd(x_in, 2, (2, 2), wd, None)
    deconv.stride_nd = (2, 2)
    out("deconv", deconv, F.conv_transpose2d(x, torch.from_numpy(wd), stride=2))
    pool = net.add_pooling_nd(x_in, trt.PoolingType.AVERAGE, (3, 3))
    pool.padding_nd, pool.stride_nd = (1, 1), (2, 2)
    out("avgpool_pad", pool, F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    one = net.add_constant((1, 1, 1, 1), np.ones(1, np.float32)).get_output(0)
    shifted = net.add_elementwise(x_in, one, trt.ElementWiseOperation.SUB).get_output(0)  # x - 1: both signs
    for name, kind, ref in ROWS:
        if name.startswith("act_"):
            layer = net.add_activation(shifted, kind)
            layer.alpha, layer.beta = A, B
            out(name, layer, ref(x - 1))
        elif name.startswith("unary_"):
            out(name, net.add_unary(x_in, kind), ref(x))
        elif name.startswith("elementwise_"):
            out(name, net.add_elementwise(x_in, y_in, kind), ref(x, y))
        else:
            keep = kind == trt.ReduceOperation.PROD
            axes = (1 << 3) if keep else (1 << 2 | 1 << 3)
            out(name, net.add_reduce(x_in, kind, axes, keep), ref(x))

    mm = net.add_matrix_multiply(x_in, trt.MatrixOperation.TRANSPOSE, x_in, trt.MatrixOperation.NONE)
    out("matmul_transpose", mm, x.transpose(-1, -2) @ x)
    vec = _x(2, 3, 6)  # a [2, 3] batch of vectors of 6
    v = net.add_constant(vec.shape, vec)
    mv = net.add_matrix_multiply(x_in, trt.MatrixOperation.NONE, v.get_output(0), trt.MatrixOperation.VECTOR)
    out("matmul_vector", mv, (x @ torch.from_numpy(vec).unsqueeze(-1)).squeeze(-1))
    shuffle = net.add_shuffle(x_in)
    shuffle.first_transpose, shuffle.reshape_dims, shuffle.second_transpose = (0, 2, 3, 1), (0, -1, 3), (1, 0, 2)
    out("shuffle", shuffle, x.permute(0, 2, 3, 1).reshape(2, 36, 3).permute(1, 0, 2))
    sm = net.add_softmax(x_in)  # default axis: rank - 3 = 1
    out("softmax_default", sm, torch.softmax(x, 1))
    cat = net.add_concatenation([x_in, x_in])
    cat.axis = 3
    out("concat", cat, torch.cat([x, x], 3))
    sl = net.add_slice(x_in, (1, 0, 5, 0), (1, 3, 3, 2), (1, 1, -2, 3))
    out("slice", sl, torch.from_numpy(np.ascontiguousarray(x_np[1:2, :, 5::-2, 0::3])))
    idx = net.add_constant((2,), np.array([2, 0], np.int32))
    out("gather", net.add_gather(x_in, idx.get_output(0), 1), x[:, [2, 0]])
    sc = net.add_scale(x_in, trt.ScaleMode.CHANNEL, shift=np.array([1, 2, 3], np.float32),
                       scale=np.array([2, 3, 4], np.float32), power=np.array([2, 1, 0.5], np.float32))
    c = lambda a: torch.tensor(a, dtype=torch.float32).reshape(1, 3, 1, 1)  # noqa: E731
    out("scale_channel", sc, (x * c([2, 3, 4]) + c([1, 2, 3])) ** c([2, 1, 0.5]))
    su = net.add_scale(x_in, trt.ScaleMode.UNIFORM, scale=trt.Weights(np.array([3.0], np.float32)))
    out("scale_uniform", su, x * 3)
    gamma = net.add_constant((1, 3, 1, 1), np.array([1, 2, 3], np.float32)).get_output(0)
    beta = net.add_constant((1, 3, 1, 1), np.array([0, 1, -1], np.float32)).get_output(0)
    norm = net.add_normalization(x_in, gamma, beta, 1 << 2 | 1 << 3)
    out("normalization", norm, F.instance_norm(x, eps=1e-5) * c([1, 2, 3]) + c([0, 1, -1]))
    cast = net.add_cast(x_in, trt.int32)
    out("cast", cast, x.to(torch.int32))
    half = net.add_identity(x_in)
    half.set_output_type(0, trt.float16)
    out("output_type", half, x.half())
    assert half.get_output(0).dtype == trt.float16 and half.output_type_is_set(0)
    assert not logger.errors

    outs = _run(builder, net, {"x": x_np, "y": y_np})
    for name, ref in expected.items():
        got = outs[name]
        assert got.shape == tuple(ref.shape), name
        np.testing.assert_allclose(got.astype(np.float32), ref.float().numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_dynamic_input_needs_a_profile():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (-1, 4))
    w = net.add_constant((4, 3), _x(4, 3))
    mm = net.add_matrix_multiply(x, trt.MatrixOperation.NONE, w.get_output(0), trt.MatrixOperation.NONE)
    relu = net.add_activation(mm.get_output(0), trt.ActivationType.RELU)
    assert tuple(relu.get_output(0).shape) == (-1, 3)
    net.mark_output(relu.get_output(0))
    assert builder.build_serialized_network(net, builder.create_builder_config()) is None
    assert any("optimization profile" in e for e in logger.errors)
    logger.errors.clear()
    xs = _x(5, 4)
    outs = _run(builder, net, {"x": xs}, profile={"x": ((1, 4), (4, 4), (8, 4))})
    # TF32 is on by default, as in TensorRT: on a GPU the product carries its 10-bit mantissa (an H100 gave 1.2e-3)
    tol = 2e-3 if os.environ.get("KILN_TEST_DEVICE", "cpu").startswith("cuda") else 1e-5
    np.testing.assert_allclose(next(iter(outs.values())), np.maximum(xs @ w.weights, 0), rtol=tol, atol=tol)


def test_layer_precision_becomes_layer_precisions():
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (1, 8))
    sm = net.add_softmax(x)
    sm.axes = 1 << 1
    sm.name = "probs"
    sm.precision = trt.float16
    net.mark_output(sm.get_output(0))
    assert net.layer_precisions() == {"probs": "fp16"}
    with pytest.raises(errors.InputError, match="Kiln runs layers in"):
        sm.precision = trt.int32
    engine = trt.Runtime(builder.logger).deserialize_cuda_engine(
        builder.build_serialized_network(net, builder.create_builder_config()))
    layers = [json.loads(engine.create_engine_inspector().get_layer_information(i, trt.LayerInformationFormat.JSON))
              for i in range(engine.num_layers)]
    assert {d["Name"]: d["Precision"] for d in layers}["probs"] == "f16"  # the build obeyed it


def test_bad_calls_are_refused_with_a_reason():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (1, 3, 8, 8))
    # a shape mismatch: logged, and the call returns None as TensorRT's does
    assert net.add_elementwise(x, net.add_input("v", trt.float32, (1, 5, 8, 8)), trt.ElementWiseOperation.SUM) is None
    assert logger.errors and "add_elementwise" in logger.errors[-1]
    assert net.add_elementwise(x, net.add_input("r", trt.float32, (8, 8)), trt.ElementWiseOperation.SUM) is None
    assert "equal ranks" in logger.errors[-1]
    assert net.add_convolution_nd(x, 4, (3, 3), np.zeros(7, np.float32), None) is None
    assert "not a multiple" in logger.errors[-1]
    assert net.add_constant((2, 2), np.zeros(3, np.float32)) is None and "3 weights" in logger.errors[-1]
    assert net.add_reduce(x, trt.ReduceOperation.SUM, 1 << 5, False) is None and "rank 4" in logger.errors[-1]
    assert net.num_layers == 0  # refused layers are not kept
    # wrong arguments raise at once, naming the call
    with pytest.raises(errors.InputError, match="add_activation: 99 is not a ActivationType"):
        net.add_activation(x, 99)
    with pytest.raises(errors.InputError, match="is not a ActivationType"):
        net.add_activation(x, trt.PoolingType.MAX)
    with pytest.raises(errors.InputError, match="the layer that should have made it failed"):
        net.add_unary(None, trt.UnaryOperation.EXP)
    other = builder.create_network(0).add_input("z", trt.float32, (1,))
    with pytest.raises(errors.InputError, match="another network"):
        net.add_unary(other, trt.UnaryOperation.EXP)
    softmax = net.add_softmax(x)
    with pytest.raises(errors.InputError, match="exactly one bit"):
        softmax.axes = 0b110
    # duplicate tensor names fail the build with the names
    a = net.add_unary(x, trt.UnaryOperation.ABS)
    a.get_output(0).name = "x"
    net.mark_output(a.get_output(0))
    logger.errors.clear()
    assert builder.build_serialized_network(net, builder.create_builder_config()) is None
    assert "['x'] used more than once" in logger.errors[-1]
    # a setting made after the call that does not fit fails the build, naming the layer
    a.get_output(0).name = "a"
    reshape = net.add_shuffle(a.get_output(0))
    reshape.reshape_dims = (5, 7)
    reshape.name = "bad_reshape"
    assert builder.build_serialized_network(net, builder.create_builder_config()) is None
    assert "layer 'bad_reshape'" in logger.errors[-1]


def _header_enum(header: str, name: str) -> dict[str, int]:
    body = re.search(r"enum class " + name + r" : int32_t\s*\{(.*?)\};", header, re.S).group(1)
    return {m[0]: int(m[1]) for m in re.findall(r"\bk([A-Z0-9_]+)\s*=\s*(\d+)", body)}


LAYER_ENUMS = [trt.ActivationType, trt.PoolingType, trt.ScaleMode, trt.ElementWiseOperation, trt.GatherMode,
               trt.UnaryOperation, trt.ReduceOperation, trt.MatrixOperation]


def test_layer_enum_values_are_tensorrts():
    # Values of NVIDIA/TensorRT v10.16 include/NvInfer.h, written out so the test needs no checkout ...
    pinned = {
        "ActivationType": dict(RELU=0, SIGMOID=1, TANH=2, LEAKY_RELU=3, ELU=4, SELU=5, SOFTSIGN=6, SOFTPLUS=7, CLIP=8,
                               HARD_SIGMOID=9, SCALED_TANH=10, THRESHOLDED_RELU=11, GELU_ERF=12, GELU_TANH=13),
        "PoolingType": dict(MAX=0, AVERAGE=1, MAX_AVERAGE_BLEND=2),
        "ScaleMode": dict(UNIFORM=0, CHANNEL=1, ELEMENTWISE=2),
        "ElementWiseOperation": dict(SUM=0, PROD=1, MAX=2, MIN=3, SUB=4, DIV=5, POW=6, FLOOR_DIV=7, AND=8, OR=9, XOR=10,
                                     EQUAL=11, GREATER=12, LESS=13),
        "GatherMode": dict(DEFAULT=0, ELEMENT=1, ND=2),
        "UnaryOperation": dict(EXP=0, LOG=1, SQRT=2, RECIP=3, ABS=4, NEG=5, SIN=6, COS=7, TAN=8, SINH=9, COSH=10,
                               ASIN=11, ACOS=12, ATAN=13, ASINH=14, ACOSH=15, ATANH=16, CEIL=17, FLOOR=18, ERF=19,
                               NOT=20, SIGN=21, ROUND=22, ISINF=23, ISNAN=24),
        "ReduceOperation": dict(SUM=0, PROD=1, MAX=2, MIN=3, AVG=4, NONE=5),
        "MatrixOperation": dict(NONE=0, TRANSPOSE=1, VECTOR=2),
    }
    for cls in LAYER_ENUMS:
        assert {m.name: int(m) for m in cls} == pinned[cls.__name__], cls.__name__
    # ... and against the header itself where a TensorRT checkout is at hand
    repo = "/work/.mirror/NVIDIA+TensorRT/repo"
    try:
        header = subprocess.run(["git", "-C", repo, "show", "v10.16:include/NvInfer.h"], capture_output=True,
                                text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        header = ""
    for cls in LAYER_ENUMS if header else []:
        assert _header_enum(header, cls.__name__) == pinned[cls.__name__], cls.__name__


def test_wrong_input_counts_and_unwritable_settings():
    logger = RecordingLogger()
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (1, 3, 4, 4))
    with pytest.raises(errors.InputError, match="add_concatenation: takes at least 1 input tensor"):
        net.add_concatenation([])
    conv = net.add_convolution_nd(x, 2, (3, 3), np.zeros(54, np.float32))
    conv.kernel_size_nd = (5, 5)  # 54 weights no longer fit 2 maps of 5x5
    with pytest.raises(errors.GraphError, match=r"\[Convolution\].*cannot reshape"):
        conv.get_output(0).shape


def test_engine_reports_the_shapes_of_a_networks_outputs():
    """A network built with add_* declares no output shapes; the engine's are the inferred ones (-1 where the
    profile lets a dim vary), so buffers sized from ``engine.get_tensor_shape`` fit (they were () before, and a
    GPU engine then wrote past the caller's buffer)."""
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    net = builder.create_network(0)
    x = net.add_input("x", trt.float32, (-1, 4))
    w = net.add_constant((4, 3), _x(4, 3))
    mm = net.add_matrix_multiply(x, trt.MatrixOperation.NONE, w.get_output(0), trt.MatrixOperation.NONE)
    net.mark_output(mm.get_output(0))
    total = net.add_reduce(mm.get_output(0), trt.ReduceOperation.SUM, 1 << 1, False)
    net.mark_output(total.get_output(0))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (4, 4), (8, 4))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(builder.logger).deserialize_cuda_engine(builder.build_serialized_network(net, config))
    outputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
               if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]
    assert [tuple(engine.get_tensor_shape(n)) for n in outputs] == [(-1, 3), (-1,)]

    static = builder.create_network(0)
    y = static.add_input("y", trt.float32, (2, 4))
    static.mark_output(static.add_activation(y, trt.ActivationType.RELU).get_output(0))
    engine = trt.Runtime(builder.logger).deserialize_cuda_engine(
        builder.build_serialized_network(static, builder.create_builder_config()))
    assert tuple(engine.get_tensor_shape(engine.get_tensor_name(1))) == (2, 4)
