"""Full-size reference models in plain PyTorch (torchvision is not required) and an ONNX export helper.

Used by the benchmarks and by the slow model tests. Each constructor returns ``(model, sample, axes)``:
an ``nn.Module`` in eval mode, ``sample(batch, size, generator) -> tuple of inputs`` and the dynamic axes
per input name (for ``export_onnx``). Weights are random (nothing is downloaded); BatchNorm running
statistics are randomized so that folding mistakes show.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


def randomize_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# -- ResNet ---------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, block=Bottleneck, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, n in enumerate(layers):
            w = width * 2 ** i
            for j in range(n):
                stages.append(block(cin, w, 2 if j == 0 and i > 0 else 1))
                cin = w * block.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        y = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def _image_sample(b: int, size: int, g: torch.Generator):
    return (torch.randn(b, 3, size, size, generator=g),)


IMAGE_AXES = {"x": {0: "batch"}}


def resnet50():
    return randomize_batchnorm(ResNet(Bottleneck, (3, 4, 6, 3))).eval(), _image_sample, dict(IMAGE_AXES)


def resnet_tiny():
    """A ResNet with both block kinds' structure at toy width (for fast tests)."""
    return randomize_batchnorm(ResNet(Bottleneck, (1, 2), width=8, num_classes=10)).eval(), _image_sample, \
        dict(IMAGE_AXES)


# -- MobileNetV3-Large --------------------------------------------------------------------------------------
def _div(v: float, d: int = 8) -> int:
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        s = _div(c // 4)
        self.fc1, self.fc2 = nn.Conv2d(c, s, 1), nn.Conv2d(s, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, k, exp, cout, se, act, stride):
        super().__init__()
        Act = nn.Hardswish if act == "HS" else nn.ReLU
        layers = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), Act()]
        layers += [nn.Conv2d(exp, exp, k, stride, (k - 1) // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), Act()]
        if se:
            layers.append(SqueezeExcite(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


_MBV3_LARGE = [  # k, exp, out, se, act, stride
    (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
]


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        cin = 16
        for k, exp, cout, se, act, s in _MBV3_LARGE:
            layers.append(InvertedResidual(cin, k, exp, cout, se, act, s))
            cin = cout
        layers += [nn.Conv2d(cin, 960, 1, bias=False), nn.BatchNorm2d(960), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def mobilenet_v3_large():
    return randomize_batchnorm(MobileNetV3()).eval(), _image_sample, dict(IMAGE_AXES)


# -- ViT-B/16 -------------------------------------------------------------------------------------------
class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // self.heads))
        x = x + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, image=224, patch=16, dim=768, depth=12, heads=12, mlp=3072, num_classes=1000):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        y = self.patch(x).flatten(2).transpose(1, 2)
        y = torch.cat([self.cls.expand(y.shape[0], -1, -1), y], dim=1) + self.pos
        return self.head(self.ln(self.blocks(y))[:, 0])


def vit_b16():
    return ViT().eval(), _image_sample, dict(IMAGE_AXES)


# -- transformers models (random weights from configs) ----------------------------------------------------
class BertWrapper(nn.Module):
    """transformers' BertModel returning a plain tuple (explicit arguments, as torch.export wants them)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class GPT2Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        # An explicit all-ones mask: without one, transformers looks for packed sequences with aten::diff,
        # which the TorchScript exporter cannot export.
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state


def _bert_sample(vocab: int):
    def sample(b: int, s: int, g: torch.Generator):
        ids = torch.randint(0, vocab, (b, s), generator=g)
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[0, s // 2:] = 0  # padding in one row exercises the attention mask
        return ids, mask
    return sample


def bert(attn_implementation: str = "eager", **config):
    from transformers import BertConfig, BertModel
    cfg = BertConfig(attn_implementation=attn_implementation, **config)
    model = BertWrapper(BertModel(cfg, add_pooling_layer=True)).eval()
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return model, _bert_sample(cfg.vocab_size), axes


def bert_base(attn_implementation: str = "eager"):
    return bert(attn_implementation)


def gpt2(attn_implementation: str = "eager", **config):
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(use_cache=False, attn_implementation=attn_implementation, **config)
    vocab = cfg.vocab_size

    def sample(b: int, s: int, g: torch.Generator):
        return (torch.randint(0, vocab, (b, s), generator=g),)
    return GPT2Wrapper(GPT2Model(cfg)).eval(), sample, {"input_ids": {0: "batch", 1: "seq"}}


def gpt2_small(attn_implementation: str = "eager"):
    return gpt2(attn_implementation)


MODELS: dict[str, Callable] = {"resnet50": resnet50, "mobilenet_v3_large": mobilenet_v3_large, "vit_b16": vit_b16,
                               "bert_base": bert_base, "gpt2_small": gpt2_small}


def torchvision_model(name: str):
    """torchvision's own ResNet-50 / MobileNetV3-Large / ViT-B/16 (random weights) where torchvision imports
    (the GPU machine); None elsewhere, and the plain-torch definitions above stand in."""
    try:
        import torchvision.models as tvm
    except Exception:  # noqa: BLE001 - torchvision missing or built for another torch: use the plain models
        return None
    ctor = {"resnet50": tvm.resnet50, "mobilenet_v3_large": tvm.mobilenet_v3_large, "vit_b_16": tvm.vit_b_16,
            "vit_b16": tvm.vit_b_16}.get(name)
    if ctor is None:
        return None
    return randomize_batchnorm(ctor(weights=None)).eval(), _image_sample, dict(IMAGE_AXES)


# -- export -----------------------------------------------------------------------------------------------
def export_onnx(model: nn.Module, inputs: tuple, path: str | Path, dynamic_axes: dict[str, dict[int, str]],
                dynamo: bool = False, opset: int = 18, output_names: list[str] | None = None, **kwargs) -> Path:
    """Export ``model`` to ONNX at ``path``; ``dynamic_axes`` names inputs and their dynamic dims.

    The input names are the keys of ``dynamic_axes`` in order (one per element of ``inputs``). With
    ``dynamo=True`` the axes become torch.export dynamic shapes. ``kwargs`` go to ``torch.onnx.export``
    (e.g. ``do_constant_folding=False`` keeps BatchNormalization nodes in a TorchScript export)."""
    path = Path(path)
    names = list(dynamic_axes)
    kw = {}
    if dynamo:
        kw["dynamic_shapes"] = {n: {a: torch.export.Dim.DYNAMIC for a in dynamic_axes[n]} for n in names}
    else:
        kw["dynamic_axes"] = dynamic_axes
    # nn.MultiheadAttention's inference fast path (torchvision's ViT) has no ONNX export: take the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(inputs), str(path), input_names=names, output_names=output_names,
                              opset_version=opset, dynamo=dynamo, **kw, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path
