"""A dynamic-batch profile builds BERT to the same layers as a fixed one (no shape arithmetic left behind for the
symbolic batch), and the dynamic engine matches onnxruntime at the profile's smallest and largest batch."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln import Profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
M = pytest.importorskip("benchmarks.models")
pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

BATCH, SEQ = 4, 16


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model, sample, axes = M.bert(request.param, vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
    args = sample(BATCH, SEQ, torch.Generator().manual_seed(0))
    path = M.export_onnx(model, args, tmp_path_factory.mktemp(request.param) / "bert.onnx", axes)
    return str(path), list(axes)


def _build(path, names, min_batch):
    prof = Profile.of(**{n: ((min_batch, SEQ), (BATCH, SEQ), (BATCH, SEQ)) for n in names})
    return kiln.build(path, profiles=(prof,), device="cpu")


def test_dynamic_batch_builds_the_static_layers(exported):
    path, names = exported
    static, dynamic = _build(path, names, BATCH), _build(path, names, 1)
    layer_ops = [Counter(l.op for l in e.report.layers) for e in (static, dynamic)]
    assert layer_ops[1] == layer_ops[0]
    assert not {"Shape", "Range", "Expand", "Concat", "Unsqueeze"} & set(layer_ops[1])


def test_dynamic_batch_matches_onnxruntime(exported):
    path, names = exported
    engine = _build(path, names, 1)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b in (1, BATCH):
        mask = np.ones((b, SEQ), np.int64)
        mask[0, SEQ // 2:] = 0  # padding exercises the attention mask
        feeds = dict(zip(names, (rng.integers(0, 100, (b, SEQ)), mask)))
        got = engine.create_execution_context().infer(feeds)
        for out, ref in zip(sess.get_outputs(), sess.run(None, feeds)):
            np.testing.assert_allclose(got[out.name], ref, rtol=1e-4, atol=1e-4)
