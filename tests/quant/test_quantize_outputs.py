"""fp8 convolution chains (kiln/quant/rewrite.py) and kiln/passes/quantize_outputs.py: in an fp8 residual CNN
the convolutions pass fp8 data (requantized outputs), the shortcut too (``addq`` epilogue steps); a block
output that something reads in float is written in float and as an fp8 copy for the next block's
convolutions, and the engine computes exactly what it computed without the copy."""
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.ops import KernelContext
from kiln.ops.quantized import qconv, quantize
from kiln.passes import pipeline

rng = np.random.default_rng(1)


def resnet_blocks(expose_block0: bool = False, downsample: bool = False, pool: bool = False):
    """stem conv -> relu -> [1x1 -> relu -> 3x3 -> relu -> 1x1 (+ block input) -> relu] x 2; with
    ``expose_block0`` block 0's output is a model output too (a reader that wants float); with ``downsample``
    block 0's shortcut is a 1x1 convolution (read only by the residual add); with ``pool`` a 3x3 stride-2
    max-pool follows the stem."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes, inits = [], []

    def conv(x, y, c, o, k, name):
        inits.extend([numpy_helper.from_array((f(o, c, k, k) / np.sqrt(c * k * k)).astype(np.float32), f"{name}.w"),
                      numpy_helper.from_array(0.1 * f(o), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], pads=[k // 2] * 4, name=name))

    conv("x", "s", 3, 32, 3, "stem")
    nodes.append(helper.make_node("Relu", ["s"], ["sr" if pool else "h0"]))
    if pool:
        nodes.append(helper.make_node("MaxPool", ["sr"], ["h0"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1], name="pool"))
    for i in range(2):
        h = f"h{i}"
        conv(h, f"a{i}", 32, 16, 1, f"b{i}.conv1")
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"ar{i}"]))
        conv(f"ar{i}", f"c{i}", 16, 16, 3, f"b{i}.conv2")
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"cr{i}"]))
        conv(f"cr{i}", f"d{i}", 16, 32, 1, f"b{i}.conv3")
        if downsample and i == 0:
            conv(h, "ds0", 32, 32, 1, "b0.downsample")
            h = "ds0"
        nodes.append(helper.make_node("Add", [f"d{i}", h], [f"e{i}"]))
        nodes.append(helper.make_node("Relu", [f"e{i}"], [f"h{i + 1}"]))
    side = 4 if pool else 8
    outs = [helper.make_tensor_value_info(h, TensorProto.FLOAT, [2, 32, side, side])
            for h in (["h2", "h1"] if expose_block0 else ["h2"])]
    g = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def data(n=4):
    return [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def build(model, calib, drop: str | None = None):
    steps = tuple(p for p in pipeline.DEFAULT_PIPELINE if getattr(p, "name", "") != drop)
    return kiln.build(model, fp8=True, int8_calibrator=calib, calibration_method="minmax", pipeline=steps)


def cosine(a, b) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))


def test_fp8_blocks_pass_fp8_between_them():
    model, calib, x = resnet_blocks(), data(), data(1)[0]
    engine = build(model, calib)
    kernels = {layer.name: layer.kernel for layer in engine.report.layers}
    assert all("requant" in kernels[f"b0.{c}"] for c in ("conv1", "conv2", "conv3")), kernels
    assert "addq" in kernels["b1.conv3"] and "requant" not in kernels["b1.conv3"]  # the model's output: float
    assert not any(k.startswith("quantize_layer_outputs") for k in engine.report.fusions)
    got = engine.create_execution_context().infer(x)["h2"]
    reloaded = kiln.Engine.deserialize(engine.serialize())
    np.testing.assert_array_equal(reloaded.create_execution_context().infer(x)["h2"], got)
    assert cosine(got, kiln.build(model).create_execution_context().infer(x)["h2"]) > 0.99


def test_downsample_output_is_fp8_with_its_own_scale(tmp_path):
    """A shortcut convolution's output is read only by the residual add: it gets a scale of its own at
    calibration (kept in the cache: a build from the cache alone is the same engine) and is stored in fp8."""
    model, calib, x = resnet_blocks(downsample=True), data(), data(1)[0]
    cache = tmp_path / "calib.json"
    engine = kiln.build(model, fp8=True, int8_calibrator=calib, calibration_method="minmax",
                        calibration_cache=str(cache))
    kernels = {layer.name: layer.kernel for layer in engine.report.layers}
    host = "b0.downsample" if "addq" in kernels["b0.downsample"] else "b0.conv3"  # the add fuses into one
    residual = "b0.conv3" if host == "b0.downsample" else "b0.downsample"
    assert "addq" in kernels[host] and "[requant out]" in kernels[residual], kernels
    got = engine.create_execution_context().infer(x)["h2"]
    again = kiln.build(model, fp8=True, calibration_cache=str(cache))  # no data: every scale from the cache
    np.testing.assert_array_equal(again.create_execution_context().infer(x)["h2"], got)
    assert cosine(got, kiln.build(model).create_execution_context().infer(x)["h2"]) > 0.99


def test_pool_read_only_by_fp8_convolutions_writes_fp8():
    """The stem's max-pool, read by block 0's 1x1 and shortcut convolutions, writes their fp8 input itself
    (kiln::MaxPoolQuantize): the same codes as the readers' own quantization."""
    model, calib, x = resnet_blocks(downsample=True, pool=True), data(), data(1)[0]
    engine = build(model, calib)
    assert engine.report.fusions.get("quantize_pool_outputs") == 2
    assert "kiln::MaxPoolQuantize" in {layer.op for layer in engine.report.layers}
    got = engine.create_execution_context().infer(x)["h2"]
    reloaded = kiln.Engine.deserialize(engine.serialize())
    np.testing.assert_array_equal(reloaded.create_execution_context().infer(x)["h2"], got)
    plain = build(model, calib, "quantize_pool_outputs")
    assert "MaxPool" in {layer.op for layer in plain.report.layers}
    np.testing.assert_array_equal(got, plain.create_execution_context().infer(x)["h2"])


def test_block_output_read_in_float_gets_an_fp8_copy():
    model, calib, x = resnet_blocks(expose_block0=True), data(), data(1)[0]
    engine = build(model, calib)
    assert engine.report.fusions.get("quantize_layer_outputs:QConv") == 1  # block 0's output
    assert "addq" not in {layer.name: layer.kernel for layer in engine.report.layers}["b1.conv3"]
    got = engine.create_execution_context().infer(x)
    reloaded = kiln.Engine.deserialize(engine.serialize())  # the second output is plain data in the file
    for k, v in reloaded.create_execution_context().infer(x).items():
        np.testing.assert_array_equal(v, got[k])
    plain = build(model, calib, "quantize_layer_outputs")
    assert not any(k.startswith("quantize_layer_outputs") for k in plain.report.fusions)
    want = plain.create_execution_context().infer(x)
    for k in ("h1", "h2"):
        np.testing.assert_array_equal(got[k], want[k])  # the same arithmetic, only in another kernel


def test_chain_requantization_reaches_convolutions():
    """conv1 -> conv2 -> conv3 inside a block: the first two write fp8 (out_scale), their readers take it as is."""
    from kiln.quant.rewrite import ActParams, _chain_requantization
    from kiln.ir.graph import Node, Value
    x, y1, y2, y3 = Value("x"), Value("y1"), Value("y2"), Value("y3")
    mk = lambda name, a, b: Node("QConv", [a], [b], {"x_dtype": "fp8e4m3", "x_scale": 0.1}, name=name,  # noqa: E731
                                 domain="kiln")
    n1, n2, n3 = mk("c1", x, y1), mk("c2", y1, y2), mk("c3", y2, y3)

    class G:
        outputs = [y3]
    params = {n: ActParams(0.05, 0, "fp8e4m3") for n in ("x", "y1", "y2")}
    _chain_requantization(G(), [n1, n2, n3], params)
    assert n1.attrs["out_dtype"] == n2.attrs["out_dtype"] == "fp8e4m3" and "out_scale" not in n3.attrs
    assert n2.attrs.get("input_quantized") == n3.attrs.get("input_quantized") == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_op_second_output_is_quantize_of_y_as_stored(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 5, 5, generator=g).to(dtype)
    wq = (torch.randn(8, 16, 3, 3, generator=g) * 40).to(torch.float8_e4m3fn)
    ws, b = torch.rand(8, generator=g) * 1e-3, torch.randn(8, generator=g)
    attrs = {"x_scale": 0.02, "x_dtype": "fp8e4m3", "pads": [1, 1, 1, 1], "epilogue": ["relu"]}
    ctx = KernelContext(opset=17, device=torch.device("cpu"))
    plain = qconv(ctx, [x, wq, ws, b], attrs)
    y, yq = qconv(ctx, [x, wq, ws, b], {**attrs, "q_scale": 0.05, "q_zero_point": 0, "q_dtype": "fp8e4m3"})
    assert torch.equal(y, plain) and y.dtype == dtype
    assert torch.equal(yq.float(), quantize(y, 0.05, 0, "fp8e4m3").float())


@pytest.mark.parametrize("fp16,device,kept", [(True, "cuda", True), (False, "cuda", False), (True, "cpu", False)])
def test_first_convolution_stays_float16_on_cuda(fp16, device, kept):
    """A 3-channel convolution has no 8-bit tensor-core kernel: with float16 enabled on CUDA it is not
    quantized (and says why); without float16, or on the CPU, it is (the same layers on every device)."""
    from kiln.builder.config import BuilderConfig
    from kiln.ir.graph import Node, Value
    from kiln.passes.quantize_int8 import _format_for

    class Ctx:
        config = BuilderConfig(device=device, fp16=fp16, int8=True)

        def dtype(self, v):
            return None
    w = Value("w", const=torch.randn(16, 3, 7, 7))
    fmt, why = _format_for(Node("Conv", [Value("x"), w], [Value("y")], {}, name="stem", domain="kiln"), Ctx(), {})
    assert (fmt is None) == kept
    assert ("3 input channels" in why) == kept


def test_int8_copies_only_where_the_int8_tma_kernels_run(monkeypatch):
    """int8 copies need the int8 TMA kernels (Hopper): off on the CPU and on older GPUs, on from 9.0."""
    from kiln.builder.config import BuilderConfig
    from kiln.passes import quantize_outputs

    class Ctx:
        def __init__(self, device):
            self.config = BuilderConfig(device=device, int8=True)
    assert quantize_outputs._copy_formats(Ctx("cpu")) == ("fp8e4m3",)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, formats in [((8, 0), ("fp8e4m3",)), ((9, 0), ("fp8e4m3", "int8"))]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert quantize_outputs._copy_formats(Ctx("cuda")) == formats


def test_int8_block_outputs_and_pool_write_int8_copies(monkeypatch):
    """With int8 copies on (as on a Hopper GPU), a block output read in float also gets an int8 copy for the next
    block's convolutions and the stem pool writes int8 codes; the engine computes exactly what it computed without
    them (the copy is quantize(Y as stored), what each reader computed itself). The 3-channel stem is no TMA layer."""
    from kiln.passes import quantize_outputs
    monkeypatch.setattr(quantize_outputs, "_copy_formats", lambda ctx: ("fp8e4m3", "int8"))
    model, calib, x = resnet_blocks(expose_block0=True, downsample=True, pool=True), data(), data(1)[0]

    def build_int8(*drop):
        steps = tuple(p for p in pipeline.DEFAULT_PIPELINE if getattr(p, "name", "") not in drop)
        return kiln.build(model, int8=True, int8_calibrator=calib, calibration_method="minmax", pipeline=steps)
    engine = build_int8()
    assert engine.report.fusions.get("quantize_layer_outputs:QConv") == 1  # block 0's output
    assert engine.report.fusions.get("quantize_pool_outputs") == 2  # read by conv1 and the downsample
    got = engine.create_execution_context().infer(x)
    reloaded = kiln.Engine.deserialize(engine.serialize())
    for k, v in reloaded.create_execution_context().infer(x).items():
        np.testing.assert_array_equal(v, got[k])
    plain = build_int8("quantize_layer_outputs", "quantize_pool_outputs")
    assert not any(k.startswith("quantize_") and "outputs" in k for k in plain.report.fusions)
    want = plain.create_execution_context().infer(x)
    for k in ("h1", "h2"):
        np.testing.assert_array_equal(got[k], want[k])


def test_int8_shortcuts_where_the_int8_tma_kernels_run(monkeypatch):
    """On Hopper (int8_tma_target) symmetric int8 blocks pass int8 between them as fp8 ones do: the shortcut is
    added from int8 codes (``addq``) and the block output requantized; elsewhere the residual stays float."""
    from kiln.passes import quantize_int8
    model, calib, x = resnet_blocks(), data(), data(1)[0]

    def kernels(engine):
        return {layer.name: layer.kernel for layer in engine.report.layers}
    plain = kiln.build(model, int8=True, int8_calibrator=calib, calibration_method="minmax")
    assert not any("addq" in k for k in kernels(plain).values())
    monkeypatch.setattr(quantize_int8, "int8_tma_target", lambda config: True)
    engine = kiln.build(model, int8=True, int8_calibrator=calib, calibration_method="minmax")
    k = kernels(engine)
    assert "addq" in k["b1.conv3"] and all("requant" in k[f"b0.{c}"] for c in ("conv1", "conv2", "conv3")), k
    got = engine.create_execution_context().infer(x)["h2"]
    reloaded = kiln.Engine.deserialize(engine.serialize())
    np.testing.assert_array_equal(reloaded.create_execution_context().infer(x)["h2"], got)
    want = kiln.build(model).create_execution_context().infer(x)["h2"]
    assert cosine(got, want) > 0.99
    assert cosine(plain.create_execution_context().infer(x)["h2"], want) > 0.99
