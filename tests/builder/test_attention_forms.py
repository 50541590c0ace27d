"""The attention forms of vision transformers and common exporters (tests/builder/attention_forms.py), each
exported with both exporters: how many kiln::Attention layers the engine has (and how many with the heads folded
in), the reason recorded where a form is not recognized, and the output against PyTorch."""
import numpy as np
import pytest
import torch

import kiln
from kiln.engine.profile import Profile
from kiln.errors import ModelFormatError
from kiln.frontend.torch_export import input_names_of

from attention_forms import FORMS

# form -> (kiln::Attention layers, of them with heads folded in, a recorded rejection's words or None)
EXPECTED = {
    "mha_batch_first": (1, 1, None),  # torchvision's ViT calls it so (need_weights=False)
    "mha_seq_first": (1, 1, None),  # operands [s, b, E]: transposed views in, one out
    "mha_need_weights": (0, 0, "need_weights=True"),  # the probabilities are an output
    "vit_torchvision": (2, 2, None),
    "timm": (1, 1, None),  # packed qkv unbound by Gather, Q pre-scaled
    "timm_fused": (1, 1, None),  # F.scaled_dot_product_attention: scale split over Q and K^T
    "div_sqrt_d": (1, 1, None),
    "scale_split_qk": (1, 1, None),
    "scale_on_k": (1, 1, None),  # K scaled before its Transpose
    "baddbmm_beta0": (1, 1, None),  # [B*H, S, S] scores viewed [B, H, S, S]
    "baddbmm_bias": (1, 1, None),
    # The shifted block's mask is added through a [B/nW, nW, H, N, N] view: that layer runs on those leading
    # dims, which a head-folded layer cannot express.
    "swin_window": (2, 1, "Swin's shifted-window mask"),
    # Cosine attention: Q and K are L2-normalized per head (computed, not only moved), the per-head logit scale
    # goes onto Q.
    "hf_swinv2": (2, 0, "not head splits"),
}
EXPORTERS = ("torchscript", "dynamo")


def _build(name, exporter, profiles=()):
    factory, example, _ = FORMS[name]
    torch.manual_seed(0)
    module, args = factory().eval(), example()
    try:
        engine = kiln.build(module, example_inputs=args, exporter=exporter, profiles=profiles)
    except ModelFormatError as e:  # the exporter's failure, not Kiln's
        pytest.skip(f"{name} does not export with {exporter}: {e}")
    return module, args, engine


@pytest.fixture(scope="module", params=[(f, e) for f in EXPECTED for e in EXPORTERS], ids="-".join)
def built(request):
    return request.param, _build(*request.param)


def _attention_layers(engine):
    return [n for n in engine.graph.nodes if n.domain == "kiln" and n.op_type == "Attention"]


def _reasons(engine):
    return [r["reason"] for r in engine.report.rejections if "attention" in r["rule"]]


def _check_output(module, args, engine, grow_batch=False):
    if grow_batch:  # one more row than the export saw
        args = tuple(torch.cat([a, a[:1] * 0.5]) for a in args)
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, tuple) else (want,)
    names = input_names_of(module, len(args))
    got = engine.create_execution_context().infer({n: a.numpy() for n, a in zip(names, args)})
    for g, w in zip(got.values(), want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


def test_attention_layers_and_reasons(built):
    (name, exporter), (_, _, engine) = built
    layers, heads, reason = EXPECTED[name]
    found = _attention_layers(engine)
    assert len(found) == layers, f"{name}-{exporter}: {len(found)} attention layers, {_reasons(engine)}"
    assert sum(1 for n in found if n.attrs.get("heads")) == heads, _reasons(engine)
    if reason is None:
        assert not _reasons(engine), f"{name}-{exporter}"
    else:
        assert any(reason in r for r in _reasons(engine)), _reasons(engine)


def test_matches_pytorch(built):
    _, (module, args, engine) = built
    _check_output(module, args, engine)


@pytest.mark.parametrize("name", ["timm", "baddbmm_bias", "swin_window"])
def test_dynamic_batch(name):
    """A profile-ranged batch: the position trace and the scores' regrouping are checked at two batch sizes and
    the Reshapes they add read -1 for the batch; the engine is right at a third."""
    _, example, _ = FORMS[name]
    shape = tuple(example()[0].shape)
    profile = Profile.of(x=((1,) + shape[1:], shape, (4,) + shape[1:]))
    module, args, engine = _build(name, "torchscript", (profile,))
    layers, heads, _ = EXPECTED[name]
    found = _attention_layers(engine)
    assert len(found) == layers and sum(1 for n in found if n.attrs.get("heads")) == heads, _reasons(engine)
    _check_output(module, args, engine, grow_batch=True)


def test_mask_added_before_the_scale_is_refused_with_its_reason():
    """softmax((Q @ Kt + m) * s) @ V: the layer's mask is added after its scale, so this form stays unfused."""
    from onnx import TensorProto, helper, numpy_helper
    b, h, s, d = 2, 2, 4, 8
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["qk"]), helper.make_node("Add", ["qk", "m"], ["masked"]),
             helper.make_node("Mul", ["masked", "scale"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    shapes = {"q": [b, h, s, d], "kt": [b, h, d, s], "v": [b, h, s, d], "m": [b, 1, 1, s]}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, sh)
                                           for n, sh in shapes.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.float32(d ** -0.5), "scale")])
    engine = kiln.build(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert not _attention_layers(engine)
    assert any("before they are scaled" in r for r in _reasons(engine)), _reasons(engine)
