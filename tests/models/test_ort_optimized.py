"""Models rewritten by onnxruntime's tools build in Kiln and match onnxruntime (issue 19):

- BERT and GPT-2 (transformers, random weights, small configs) exported with torch.onnx.export, then fused by
  ``onnxruntime.transformers.optimizer.optimize_model`` (com.microsoft Attention, EmbedLayerNormalization,
  SkipLayerNormalization, BiasGelu, FastGelu) and/or quantized by ``onnxruntime.quantization.quantize_dynamic``
  (QAttention, QEmbedLayerNormalization, DynamicQuantizeLinear + MatMulInteger);
- a MatMul model whose weights ``MatMulNBitsQuantizer`` turned into 4-bit blocks (com.microsoft MatMulNBits).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import kiln

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.models import bert, gpt2  # noqa: E402

pytest.importorskip("onnxruntime")
import onnxruntime as ort  # noqa: E402

SMALL = {
    "bert": lambda: bert(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64),
    "gpt2": lambda: gpt2(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64),
}
SHAPES = [(2, 8), (1, 5)]  # (batch, sequence): the export shape, then another one through the dynamic axes


def _ms_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft"}


@pytest.fixture(scope="module", params=["bert", "gpt2"])
def variants(request, tmp_path_factory):
    """The plain export and its optimized / quantized forms, with the sampler and input names."""
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    name = request.param
    torch.manual_seed(0)
    model, sample, axes = SMALL[name]()
    d = tmp_path_factory.mktemp(f"ort-{name}")
    plain = d / "plain.onnx"
    args = sample(*SHAPES[0], torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(plain), input_names=list(axes), dynamic_axes=axes, opset_version=17,
                          dynamo=False)
        optimize_model(str(plain), model_type=name, num_heads=4, hidden_size=64).save_model_to_file(
            str(d / "optimized.onnx"))
        # shape inference cannot type the contrib ops' outputs; their readers are float
        # reduce_range: 7-bit weights, which onnxruntime's x86 kernels without VNNI multiply exactly (full-range
        # ones saturate there, and the oracle is off by up to 4e-3 on an AVX2-only CPU; tests/ops/test_contrib_ms_quant.py)
        quantize_dynamic(str(d / "optimized.onnx"), str(d / "optimized_int8.onnx"), reduce_range=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        quantize_dynamic(str(plain), str(d / "plain_int8.onnx"), reduce_range=True)
    return name, sample, list(axes), d


def _check(path: Path, sample, names: list[str], atol: float) -> kiln.Engine:
    profile = kiln.Profile.of(**{n: ((1, 1), SHAPES[0], (2, 16)) for n in names})
    engine = kiln.build(str(path), kiln.BuilderConfig(device="cpu", profiles=(profile,)))
    ctx = engine.create_execution_context()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    for i, (b, s) in enumerate(SHAPES):
        feed = {n: a.numpy() for n, a in zip(names, sample(b, s, torch.Generator().manual_seed(30 + i)))}
        want = sess.run(None, feed)
        got = ctx.infer(feed)
        for o, w in zip(outs, want):
            np.testing.assert_allclose(got[o], w, rtol=1e-4, atol=atol, err_msg=f"{path.name} {o} at {b}x{s}")
    return engine


def test_optimized_model_matches_onnxruntime(variants):
    name, sample, names, d = variants
    ms = _ms_ops(d / "optimized.onnx")
    assert {"SkipLayerNormalization"} <= ms, ms
    engine = _check(d / "optimized.onnx", sample, names, atol=1e-4)
    lowered = {k.split(":", 1)[1] for k in engine.report.fusions if k.startswith("lower_contrib_ms:")}
    assert lowered >= ms - {"EmbedLayerNormalization"}, (lowered, ms)


def test_bert_optimized_builds_the_plain_exports_layers(variants):
    """The attention and feed-forward layers of the fused model are the ones Kiln builds for the plain export."""
    name, sample, names, d = variants
    if name != "bert":
        pytest.skip("onnxruntime's optimizer fuses no attention in this GPT-2 export")
    kinds = {}
    for which in ("plain", "optimized"):
        profile = kiln.Profile.of(**{n: ((1, 1), SHAPES[0], (2, 16)) for n in names})
        engine = kiln.build(str(d / f"{which}.onnx"), kiln.BuilderConfig(device="cpu", profiles=(profile,)))
        kinds[which] = sorted(n.op_type for n in engine.graph.nodes if n.domain == "kiln"
                              and n.op_type in ("Attention", "Linear"))
    assert kinds["optimized"].count("Attention") == kinds["plain"].count("Attention") == 2
    assert "Attention" in kinds["optimized"] and "Linear" in kinds["optimized"]


@pytest.mark.parametrize("which", ["optimized_int8", "plain_int8"])
def test_quantized_model_matches_onnxruntime(variants, which):
    name, sample, names, d = variants
    if which == "optimized_int8" and name == "bert":
        assert {"QAttention", "QEmbedLayerNormalization"} <= _ms_ops(d / f"{which}.onnx")
    _check(d / f"{which}.onnx", sample, names, atol=2e-3)


@pytest.mark.parametrize("symmetric", [False, True])
def test_matmul_nbits_quantizer_model(tmp_path, symmetric):
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    k, n = 64, 24
    g = np.random.default_rng(0)
    w = numpy_helper.from_array(g.normal(0, 0.1, (k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 3, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 3, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=symmetric)
    q.process()
    path = tmp_path / "nbits.onnx"
    q.model.save_model_to_file(str(path))
    assert _ms_ops(path) == {"MatMulNBits"}
    x = g.normal(0, 1, (2, 3, k)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = kiln.build(str(path), device="cpu").create_execution_context().infer({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
