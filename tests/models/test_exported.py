"""Models exported in the test with torch.onnx.export (TorchScript and dynamo exporters), run by Kiln
and compared with PyTorch's own output on random input.

Each (model, exporter) export happens once per session (module-scoped fixture) into a temporary
folder; nothing is downloaded (transformers models are built from tiny configs with random weights).
An exporter failing for reasons outside Kiln skips that combination with the exporter's message.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kiln

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.models import BertWrapper as Bert, GPT2Wrapper as GPT2  # noqa: E402

# KILN_TEST_DEVICE=cuda runs the same checks on the GPU (numpy results come back to the host).
DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")

RTOL, ATOL = 1e-4, 1e-4
OPSET = 18


# -- the models ----------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        y = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running stats, so folding mistakes show
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


class CausalDecoder(nn.Module):
    """A GPT-2-style decoder of our own: token + position embeddings, pre-LN blocks with an explicit causal mask."""

    def __init__(self, vocab=100, dim=64, heads=4, layers=2, max_len=64):
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim),
            "ln2": nn.LayerNorm(dim), "fc": nn.Linear(dim, 4 * dim), "out": nn.Linear(4 * dim, dim),
        }) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, input_ids):
        b, s = input_ids.shape
        x = self.tok(input_ids) + self.pos(torch.arange(s, device=input_ids.device))
        causal = torch.triu(torch.ones(s, s, dtype=torch.bool, device=x.device), diagonal=1)
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).split(x.shape[-1], dim=-1)
            q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
            att = att.masked_fill(causal, float("-inf")).softmax(-1)
            x = x + blk["proj"]((att @ v).transpose(1, 2).reshape(b, s, -1))
            x = x + blk["out"](nn.functional.gelu(blk["fc"](blk["ln2"](x))))
        return self.ln_f(x)


def make_cnn():
    model = _randomize_bn(SmallCNN())
    sample = lambda b, s, g: (torch.randn(b, 3, s, s, generator=g),)  # noqa: E731
    return model, sample, ["x"], ["logits"], {"x": {0: "batch", 2: "h", 3: "w"}}, [(2, 32), (3, 24)]


def make_bert():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
    model = Bert(BertModel(cfg))

    def sample(b, s, g):
        ids = torch.randint(0, 100, (b, s), generator=g)
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[0, s // 2:] = 0  # padding in one row exercises the attention mask
        return ids, mask
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return model, sample, ["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"], axes, \
        [(2, 16), (1, 9)]


def make_gpt2():
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64, use_cache=False,
                     attn_implementation="eager")
    return GPT2(GPT2Model(cfg)), _ids_sample, ["input_ids"], ["last_hidden_state"], \
        {"input_ids": {0: "batch", 1: "seq"}}, [(2, 16), (1, 7)]


def make_distilbert():
    from transformers import DistilBertConfig, DistilBertModel

    class DistilBert(nn.Module):  # the last hidden state, as a tensor (the model returns a ModelOutput)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    cfg = DistilBertConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64,
                           attn_implementation="eager")
    model = DistilBert(DistilBertModel(cfg))

    def sample(b, s, g):
        ids = torch.randint(0, 100, (b, s), generator=g)
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[0, s // 2:] = 0
        return ids, mask
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return model, sample, ["input_ids", "attention_mask"], ["last_hidden_state"], axes, [(2, 16), (1, 9)]


def make_decoder():
    return CausalDecoder(), _ids_sample, ["input_ids"], ["hidden"], {"input_ids": {0: "batch", 1: "seq"}}, \
        [(2, 16), (3, 5)]


def _ids_sample(b, s, g):
    return (torch.randint(0, 100, (b, s), generator=g),)


MODELS = {"cnn": make_cnn, "bert": make_bert, "gpt2": make_gpt2, "distilbert": make_distilbert, "decoder": make_decoder}
EXPORTERS = {"torchscript": False, "dynamo": True}


# -- export once per (model, exporter) ------------------------------------------------------------
@pytest.fixture(scope="module", params=[(m, e) for m in MODELS for e in EXPORTERS], ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    name, exporter = request.param
    torch.manual_seed(0)
    model, sample, in_names, out_names, axes, shapes = MODELS[name]()
    model.eval()
    path = tmp_path_factory.mktemp(f"{name}-{exporter}") / "model.onnx"
    args = sample(*shapes[0], torch.Generator().manual_seed(0))
    if EXPORTERS[exporter]:  # the dynamo exporter takes torch.export's dynamic_shapes, keyed by argument name
        dyn = {"dynamic_shapes": {n: {a: torch.export.Dim.DYNAMIC for a in axes[n]} for n in in_names}}
    else:
        dyn = {"dynamic_axes": axes}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), input_names=in_names, output_names=out_names,
                              opset_version=OPSET, dynamo=EXPORTERS[exporter], **dyn)
    except Exception as e:  # noqa: BLE001 - an exporter failure is PyTorch's, not Kiln's
        pytest.skip(f"torch.onnx.export ({exporter}) cannot export {name}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300] if str(e) else ''}")
    return name, model, sample, in_names, out_names, shapes, path


def test_exported_model(exported):
    name, model, sample, in_names, out_names, shapes, path = exported
    graph = kiln.parse(path)
    assert [v.name for v in graph.inputs] == in_names
    for i, (batch, size) in enumerate(shapes):  # the export shape, then another one through the dynamic axes
        args = sample(batch, size, torch.Generator().manual_seed(10 + i))
        with torch.no_grad():
            want = model(*args)
        want = want if isinstance(want, tuple) else (want,)
        got = _host(kiln.interpret(graph, {n: a.numpy() for n, a in zip(in_names, args)}, device=DEVICE))
        for o, w in zip(out_names, want):
            np.testing.assert_allclose(got[o], w.numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} output {o} at batch={batch}, size={size}")


def test_exported_model_engine_saves_loads_and_matches(exported, tmp_path):
    """Build, save, load, run at both shapes: tied embeddings and equal LayerNorm weights (BERT, GPT-2 and
    DistilBERT from transformers) once made engine.save crash."""
    name, model, sample, in_names, out_names, shapes, path = exported
    axes = {}
    for batch, size in shapes:
        args = sample(batch, size, torch.Generator().manual_seed(0))
        for n, a in zip(in_names, args):
            lo, hi = axes.get(n, (a.shape, a.shape))
            axes[n] = (tuple(map(min, lo, a.shape)), tuple(map(max, hi, a.shape)))
    profile = kiln.Profile.of(**{n: (lo, hi, hi) for n, (lo, hi) in axes.items()})
    engine = kiln.build(path, kiln.BuilderConfig(device=DEVICE, profiles=(profile,)))
    engine.save(tmp_path / "m.engine")
    ctx = kiln.Engine.load(tmp_path / "m.engine").create_execution_context()
    for i, (batch, size) in enumerate(shapes):
        args = sample(batch, size, torch.Generator().manual_seed(20 + i))
        with torch.no_grad():
            want = model(*args)
        want = want if isinstance(want, tuple) else (want,)
        got = ctx.infer({n: a.numpy() for n, a in zip(in_names, args)})
        for o, w in zip(out_names, want):
            np.testing.assert_allclose(got[o], w.numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} engine output {o} at batch={batch}, size={size}")


def _host(outputs: dict) -> dict:
    return {k: v.cpu().numpy() if hasattr(v, "cpu") else v for k, v in outputs.items()}
