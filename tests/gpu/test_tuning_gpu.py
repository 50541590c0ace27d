"""The tactic tuner on a real GPU (skipped without CUDA): `python -m pytest tests/gpu/test_tuning_gpu.py -q -s`.

Tunes the tiny ResNet and a small BERT in fp16 on CUDA: every candidate (cuDNN NCHW/NHWC, cuDNN fused
conv+relu / conv+add+relu, conv/GEMM + Triton epilogue, Triton GEMM configurations, Triton rows and
elementwise kernels, SDPA backends, unfused attention) is checked against the layer's own kernel; the engine
must match the fp32 reference, run under CUDA graphs, and a second build with the timing cache must time
nothing and choose the same tactics. With ``-s`` each model's per-layer choices and rejections are printed.
"""
from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

import kiln  # noqa: E402
from kiln.tune import export_choices  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny_resnet.onnx"


def rel(got, ref) -> float:
    got, ref = torch.as_tensor(got).double().cpu(), torch.as_tensor(ref).double().cpu()
    assert not torch.isnan(got).any(), "NaN in the output"
    return float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))


def show(tag, engine, seconds):
    r = engine.report
    print(f"\n[{tag}] build {seconds:.2f}s; {r.tuning}")
    kinds = collections.Counter(l.tactic for l in r.layers if l.tactic)
    print("  tactics:", dict(kinds.most_common()))
    for l in r.layers:
        if l.candidates:
            cands = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}: {v[:70]}"
                              for k, v in l.candidates.items())
            print(f"  {l.name[-40:]:<40} {l.tactic:<28} {l.time_ms}  [{cands}]")


def _check_graphs_ran(engine, feeds):
    ctx = engine.create_execution_context()
    out = ctx.infer(feeds)
    ctx.infer(feeds)
    assert ctx.notes == [], ctx.notes  # CUDA graph capture worked with the chosen tactics
    return out


# -- tiny ResNet --------------------------------------------------------------------------------------------------
RESNET_PROFILE = (kiln.Profile.fixed({"image": (8, 3, 64, 64)}),)


def test_resnet_tuned_fp16_correct_and_cached(tmp_path, count_timings):
    cache = str(tmp_path / "timing.json")
    t0 = time.perf_counter()
    e = kiln.build(str(EXAMPLE), device="cuda", fp16=True, profiles=RESNET_PROFILE, timing_cache=cache)
    cold = time.perf_counter() - t0
    show("tiny_resnet fp16 cold", e, cold)
    assert count_timings and e.report.tuning["timed"] > 0
    convs = [l for l in e.report.layers if l.op == "kiln::Conv"]
    assert convs and all(l.tactic for l in convs)
    for l in convs:  # the library alternatives ran correctly somewhere
        timed = {k for k, v in l.candidates.items() if isinstance(v, float)}
        assert timed & {"cudnn/layout=nchw", "cudnn/layout=nhwc"}, l.candidates
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    ref = kiln.build(str(EXAMPLE), device="cpu", profiles=RESNET_PROFILE, optimization_level=1)
    want = ref.create_execution_context().infer({"image": x})
    got = _check_graphs_ran(e, {"image": x})
    for k in want:
        assert rel(got[k].astype(np.float32), want[k]) < 2e-2

    count_timings.clear()
    t0 = time.perf_counter()
    warm = kiln.build(str(EXAMPLE), device="cuda", fp16=True, profiles=RESNET_PROFILE, timing_cache=cache)
    print(f"  warm build {time.perf_counter() - t0:.2f}s")
    assert count_timings == [] and warm.report.tuning["timed"] == 0
    assert warm.tactic_choices == e.tactic_choices and warm.tactics == e.tactics

    # Export -> replay gives the same engine; save -> load keeps the choices.
    path = tmp_path / "tactics.json"
    export_choices(e, path)
    again = kiln.build(str(EXAMPLE), device="cuda", fp16=True, profiles=RESNET_PROFILE, tactic_replay=str(path))
    assert count_timings == [] and again.tactic_choices == e.tactic_choices
    loaded = kiln.Engine.deserialize(e.serialize())
    assert loaded.tactic_choices == e.tactic_choices and loaded.tactics == e.tactics
    out = _check_graphs_ran(loaded, {"image": x})
    for k in out:
        np.testing.assert_allclose(out[k].astype(np.float32), got[k].astype(np.float32), rtol=1e-2, atol=1e-2)


# -- small BERT ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT))
    from benchmarks import models as M
    model, sample, axes = M.bert("sdpa", vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=512, max_position_embeddings=128)
    g = torch.Generator().manual_seed(0)
    inputs = sample(4, 64, g)
    inputs[1][1, 40:] = 0  # padding in one row: the mask matters
    path = M.export_onnx(model, inputs, tmp_path_factory.mktemp("bert") / "bert.onnx", axes)
    with torch.no_grad():
        ref = model(*inputs)
    return path, inputs, ref


BERT_PROFILE = (kiln.Profile.fixed({"input_ids": (4, 64), "attention_mask": (4, 64)}),)


@pytest.mark.parametrize("level", [3, 5])
def test_bert_tuned_fp16_correct_and_cached(bert_onnx, tmp_path, count_timings, level):
    path, inputs, ref = bert_onnx
    cache = str(tmp_path / "timing.json")
    t0 = time.perf_counter()
    e = kiln.build(str(path), device="cuda", fp16=True, profiles=BERT_PROFILE, timing_cache=cache,
                   optimization_level=level)
    show(f"bert fp16 level {level}", e, time.perf_counter() - t0)
    layers = {l.op: l for l in e.report.layers if l.candidates}
    assert "kiln::Linear" in layers and "kiln::Attention" in layers
    att = layers["kiln::Attention"].candidates
    assert any(k.startswith("sdpa/") for k in att)
    if level == 5:
        lin = layers["kiln::Linear"].candidates
        assert sum(k.startswith("triton_gemm") for k in lin) >= 5
    feeds = {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy()}
    out = _check_graphs_ran(e, feeds)
    for got, want in zip(out.values(), ref):
        assert rel(got.astype(np.float32), want) < 2e-2

    count_timings.clear()
    warm = kiln.build(str(path), device="cuda", fp16=True, profiles=BERT_PROFILE, timing_cache=cache,
                      optimization_level=level)
    assert count_timings == [] and warm.tactic_choices == e.tactic_choices


def test_budget_on_gpu(bert_onnx):
    path, inputs, _ = bert_onnx
    # A budget no build can keep (the Triton kernels of earlier tests are cached on disk, so a real one may be kept).
    e = kiln.build(str(path), device="cuda", fp16=True, profiles=BERT_PROFILE, tuning_budget_s=0.001)
    t = e.report.tuning
    print(f"\n[budget 0.001s] {t}")
    # Honoured = the layers left when the budget ran out took their default tactic untimed (no wall-clock assert).
    assert t["budget_exceeded"] and t["untuned_for_budget"]
    feeds = {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy()}
    _check_graphs_ran(e, feeds)


def _mlp(act: str):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((256, 512)).astype(np.float32) * 0.05,
             "b1": rng.standard_normal(512).astype(np.float32) * 0.1,
             "w2": rng.standard_normal((512, 256)).astype(np.float32) * 0.05,
             "b2": rng.standard_normal(256).astype(np.float32) * 0.1}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"])]
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["hb"], ["a"]))
    else:  # tanh-GELU as an op (opset 20)
        nodes.append(helper.make_node("Gelu", ["hb"], ["a"], approximate="tanh"))
    nodes += [helper.make_node("MatMul", ["a", "w2"], ["o"]), helper.make_node("Add", ["o", "b2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), inits


@pytest.mark.parametrize("act", ["relu", "gelu_tanh"])
def test_mlp_linear_candidates(act):
    """cuBLASLt's fused bias+activation epilogue, the Triton GEMM template and Triton epilogues all run correctly."""
    model, w = _mlp(act)
    prof = (kiln.Profile.fixed({"x": (8, 64, 256)}),)
    e = kiln.build(model, device="cuda", fp16=True, profiles=prof, optimization_level=4)
    show(f"mlp {act}", e, e.report.build_seconds)
    first = next(l for l in e.report.layers if l.op == "kiln::Linear")
    assert isinstance(first.candidates.get("cublaslt"), float), first.candidates
    assert any(k.startswith("triton_gemm") and isinstance(v, float) for k, v in first.candidates.items()), \
        first.candidates
    x = np.random.default_rng(1).standard_normal((8, 64, 256)).astype(np.float32)
    h = x @ w["w1"] + w["b1"]
    h = np.maximum(h, 0) if act == "relu" else torch.nn.functional.gelu(torch.from_numpy(h), approximate="tanh").numpy()
    want = h @ w["w2"] + w["b2"]
    got = _check_graphs_ran(e, {"x": x})["y"]
    assert rel(got.astype(np.float32), want) < 2e-2
