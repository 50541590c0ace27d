"""kiln.plugin: a custom op declared in a few lines builds, is tuned (its Triton tactic timed and checked against
the reference), is recorded in the engine file as data, and is required, at the same version and declaration,
to load that engine."""
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import kiln
from kiln.errors import EngineFormatError, KernelError, PluginError
from kiln.plugin import PluginLibrary, TensorDesc
from kiln.tactics import DEFAULT

import softclip_plugin


TRITON_ON_CPU = DEFAULT.with_triton_on_cpu()  # the Triton tactic is offered on the CPU, run by the interpreter


def softclip_model(alpha=2.0, extra_attrs=None, shape=(2, 300)):
    attrs = {"alpha": alpha} if alpha is not None else {}
    attrs.update(extra_attrs or {})
    nodes = [helper.make_node("SoftClip", ["x"], ["s"], domain="my.domain", name="softclip", **attrs),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])


def expected(x, alpha=2.0):
    return torch.relu(alpha * torch.tanh(x / alpha))


@pytest.fixture(scope="module")
def built():
    return kiln.build(softclip_model(), plugins=softclip_plugin.plugins, optimization_level=3, tactics=TRITON_ON_CPU)


def test_builds_and_runs_the_reference(built):
    x = torch.randn(2, 300) * 5
    y = built.create_execution_context().infer({"x": x})["y"]
    torch.testing.assert_close(y, expected(x), rtol=1e-6, atol=1e-6)


def test_triton_tactic_is_timed_and_checked(built):
    layer = next(l for l in built.report.layers if l.name == "softclip")
    assert layer.kernel == "plugins.SoftClip"
    assert "plugin/tactic=block256" in layer.candidates, layer.candidates
    assert isinstance(layer.candidates["plugin/tactic=block256"], float)  # timed: it passed the check


def test_engine_records_the_plugin_not_its_code(built, tmp_path):
    [rec] = built.header["plugins"]
    assert rec == softclip_plugin.soft_clip.record()
    assert rec["domain"] == "my.domain" and rec["name"] == "SoftClip" and rec["version"] == "1"
    assert len(rec["signature"]) == 64
    path = tmp_path / "e.engine"
    built.save(path)
    assert b"tanh" not in path.read_bytes()  # the plugin's code is not in the file


def test_load_needs_the_plugin(built, tmp_path):
    path = tmp_path / "e.engine"
    built.save(path)
    with pytest.raises(PluginError, match=r"my\.domain::SoftClip version 1 is not registered"):
        kiln.Engine.load(path)
    x = torch.randn(2, 300)
    got = kiln.Engine.load(path, plugins=softclip_plugin.plugins).create_execution_context().infer({"x": x})["y"]
    torch.testing.assert_close(got, expected(x))


def test_load_refuses_another_version_or_declaration(built, tmp_path):
    path = tmp_path / "e.engine"
    built.save(path)
    v2 = PluginLibrary()
    v2.op("my.domain::SoftClip", version="2", elementwise=True, dtypes=("float32", "float16"))(
        softclip_plugin.soft_clip.reference)
    with pytest.raises(PluginError, match="registered at version 2"):
        kiln.Engine.load(path, plugins=v2)
    other = PluginLibrary()

    @other.op("my.domain::SoftClip", elementwise=True, dtypes=("float32", "float16"))
    def soft_clip(x, *, alpha: float = 1.0, beta: float = 0.0):  # one more attribute
        return alpha * torch.tanh(x / alpha) + beta
    with pytest.raises(PluginError, match="another declaration"):
        kiln.Engine.load(path, plugins=other)


def test_a_wrong_tactic_is_rejected_by_the_check():
    lib = PluginLibrary()

    @lib.op("my.domain::SoftClip", elementwise=True)
    def soft_clip(x, *, alpha: float = 1.0):
        return alpha * torch.tanh(x / alpha)

    @soft_clip.tactic("wrong", devices=("cpu",))
    def wrong(x, *, alpha: float = 1.0):
        return x.clone()

    engine = kiln.build(softclip_model(), plugins=lib, optimization_level=3)
    layer = next(l for l in engine.report.layers if l.name == "softclip")
    assert isinstance(layer.candidates["plugin/tactic=wrong"], str)  # the rejection's reason
    assert engine.tactics.get("softclip", "torch") == "torch"
    x = torch.randn(2, 300) * 5
    torch.testing.assert_close(engine.create_execution_context().infer({"x": x})["y"], expected(x))


def test_nan_and_inf_propagate(built):
    x = torch.randn(2, 300)
    x[0, 0], x[0, 1], x[1, 5] = float("nan"), float("inf"), float("-inf")
    y = built.create_execution_context().infer({"x": x})["y"]
    assert torch.isnan(y[0, 0]) and y[0, 1] == 2.0 and y[1, 5] == 0.0


def test_attributes_are_checked_at_build():
    with pytest.raises(kiln.UnsupportedOpError, match="unknown attribute.*gamma"):
        kiln.build(softclip_model(extra_attrs={"gamma": 1.0}), plugins=softclip_plugin.plugins)
    with pytest.raises(kiln.UnsupportedOpError, match="'alpha' must be a number"):
        kiln.build(softclip_model(alpha="big"), plugins=softclip_plugin.plugins)
    lib = PluginLibrary()

    @lib.op("my.domain::SoftClip")
    def needs_alpha(x, *, alpha: float):
        return alpha * torch.tanh(x / alpha)
    with pytest.raises(kiln.UnsupportedOpError, match="'alpha' \\(float\\) is required"):
        kiln.build(softclip_model(alpha=None), plugins=lib)


def test_without_the_plugin_the_op_is_unsupported():
    with pytest.raises(kiln.UnsupportedOpError, match="SoftClip"):
        kiln.build(softclip_model())


def test_float32_only_plugin_stays_float32_in_a_reduced_precision_build():
    lib = PluginLibrary()
    seen = []

    @lib.op("my.domain::SoftClip", elementwise=True, dtypes=("float32",))
    def soft_clip(x, *, alpha: float = 1.0):
        seen.append(x.dtype)
        return alpha * torch.tanh(x / alpha)

    engine = kiln.build(softclip_model(), plugins=lib, bf16=True, accuracy_target=None)
    x = torch.randn(2, 300)
    y = engine.create_execution_context().infer({"x": x})["y"]
    assert set(d for d in seen if d != torch.float32) == set()
    torch.testing.assert_close(y, expected(x), rtol=2e-2, atol=2e-2)


def test_shape_rule_and_several_outputs():
    lib = PluginLibrary()

    calls = []

    def halves(x: TensorDesc):
        calls.append(x.shape)
        half = x.with_shape(*x.shape[:-1], x.shape[-1] // 2)
        return half, half

    @lib.op("my.domain::SplitSum", shape=halves)
    def split_sum(x):
        a, b = x.chunk(2, dim=-1)
        return a + b, a - b

    node = helper.make_node("SplitSum", ["x"], ["s", "d"], domain="my.domain")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("d", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])
    engine = kiln.build(m, plugins=lib, profiles=[kiln.Profile.of(x=((1, 8), (3, 8), (5, 8)))])
    assert calls and all(len(c) == 2 and c[1] == 8 for c in calls)  # the build's shape inference used the rule
    x = torch.randn(5, 8)
    out = engine.create_execution_context().infer({"x": x})
    torch.testing.assert_close(out["s"], x[:, :4] + x[:, 4:])
    torch.testing.assert_close(out["d"], x[:, :4] - x[:, 4:])


def test_a_plugin_returning_the_wrong_thing_is_a_kernel_error():
    lib = PluginLibrary()

    @lib.op("my.domain::SoftClip", elementwise=True)
    def bad(x, *, alpha: float = 1.0):
        return x.numpy()

    engine = kiln.build(softclip_model(), plugins=lib, optimization_level=0)
    with pytest.raises(KernelError, match="returned ndarray"):
        engine.create_execution_context().infer({"x": torch.randn(2, 300)})


@pytest.mark.parametrize("name, decl, match", [
    ("SoftClip", lambda x: x, "must be 'domain::OpName'"),
    ("::SoftClip", lambda x: x, "must be 'domain::OpName'"),
    ("kiln::SoftClip", lambda x: x, "reserved"),
    ("my.domain::A", lambda *, alpha=1.0: None, "no inputs"),
    ("my.domain::A", lambda x, **kw: x, r"\*\*kw is not allowed"),
    ("my.domain::A", lambda x, y=None, z=1: x, "follows an optional input"),
])
def test_declaration_errors(name, decl, match):
    with pytest.raises(PluginError, match=match):
        PluginLibrary().op(name)(decl)


def test_attribute_without_type_or_default_is_refused():
    def f(x, *, alpha):
        return x
    with pytest.raises(PluginError, match="type annotation or a default"):
        PluginLibrary().op("my.domain::A")(f)


def test_registering_one_op_twice_is_refused():
    lib = PluginLibrary()
    lib.op("my.domain::A")(lambda x: x)
    with pytest.raises(PluginError, match="registered twice"):
        lib.op("my.domain::A", version="2")(lambda x: x)


@pytest.mark.parametrize("records, match", [
    ([{"domain": "my.domain", "name": "SoftClip", "version": 1, "signature": "0" * 64}], "plugins' 0 version"),
    ({"domain": "my.domain"}, "'plugins'"),
    ([["my.domain", "SoftClip"]], "'plugins' 0"),
])
def test_malformed_plugin_record_is_a_format_error(built, records, match):
    """An edited file carries a valid checksum (it is unkeyed): the record's fields are validated."""
    from kiln.engine.format import pack
    from kiln.engine.graph_json import encode_graph
    plan, weights = encode_graph(built.graph)
    data = pack(dict(built.header, plugins=records), plan, weights)
    with pytest.raises(EngineFormatError, match=match):
        kiln.Engine.deserialize(data, plugins=softclip_plugin.plugins)


def test_checked_on_float16_too():
    engine = kiln.build(softclip_model(), plugins=softclip_plugin.plugins, fp16=True, accuracy_target=None,
                        optimization_level=3, tactics=TRITON_ON_CPU)
    x = torch.randn(2, 300) * 3
    y = engine.create_execution_context().infer({"x": x})["y"]
    np.testing.assert_allclose(y.numpy(), expected(x).numpy(), rtol=1e-2, atol=1e-2)


def test_the_triton_tactic_is_offered_on_the_cpu_only_when_asked():
    engine = kiln.build(softclip_model(), plugins=softclip_plugin.plugins, optimization_level=3)
    layer = next(l for l in engine.report.layers if l.name == "softclip")
    assert not any("block256" in c for c in layer.candidates), layer.candidates
