"""The GPU model zoo of issue 18: architectures Kiln was not tuned on, with random weights (nothing downloaded).

    python benchmarks/run.py --suite zoo --device cuda --fp16 --timing-cache --json zoo.json
    python benchmarks/run.py --suite zoo --zoo-models efficientnet_b0,swin_tiny --batches 1

Each entry says what it covers, where it comes from (timm, torchvision or transformers, built from a config
with random weights) and its large batch. The constructors follow benchmarks/models.py: ``(model, sample,
axes)``, where ``sample(batch, size, generator)`` makes the inputs (``size`` is ignored by models with their
own input size) and ``axes`` names the inputs and their dynamic dims for the ONNX export.

timm and torchvision are on the GPU machine; where they do not import (the development VM), their entries
say so when asked for and the transformers entries still run (``python benchmarks/zoo.py`` lists what this
machine can build).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models import IMAGE_AXES, _bert_sample, _image_sample, bert_base, randomize_batchnorm


@dataclass(frozen=True)
class ZooModel:
    name: str
    covers: str  # the architectural idioms this entry is here for
    source: str  # timm / torchvision / transformers
    build: Callable[[], tuple]
    large_batch: int


class FirstOutput(nn.Module):
    """A model whose forward returns a dict, a dataclass or a tuple, reduced to plain tensors for the export."""

    def __init__(self, model, keys: tuple[str, ...] = ()):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *args):
        out = self.model(*args)
        if isinstance(out, dict) or hasattr(out, "keys"):
            return tuple(out[k] for k in (self.keys or list(out.keys())))
        return out


def _timm(name: str, **kw):
    def build():
        import timm
        model = timm.create_model(name, pretrained=False, **kw)
        return randomize_batchnorm(model).eval(), _image_sample, dict(IMAGE_AXES)
    return build


def _tv_fpn_backbone():
    """A detection backbone with FPN-style top-down resizes and concats: torchvision's ResNet-50 + FPN
    (the backbone of its Faster R-CNN), returning the five pyramid levels."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
    return FirstOutput(randomize_batchnorm(backbone)).eval(), _image_sample, dict(IMAGE_AXES)


def _tv_vit():
    import torchvision.models as tvm
    return tvm.vit_b_16(weights=None).eval(), _image_sample, dict(IMAGE_AXES)


def _hf_encoder(config_name: str, model_name: str, **config):
    """An encoder-only text model from transformers: (input_ids, attention_mask) -> last hidden state."""
    def build():
        import transformers
        cfg = getattr(transformers, config_name)(**config)
        cfg._attn_implementation = "eager"
        model = getattr(transformers, model_name)(cfg)
        return _TextEncoder(model).eval(), _bert_sample(cfg.vocab_size), {
            "input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return build


class _TextEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state


def _t5_encoder():
    """T5-base's encoder (relative position bias in every layer's attention)."""
    from transformers import T5Config, T5EncoderModel
    cfg = T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, use_cache=False)
    cfg._attn_implementation = "eager"
    return _TextEncoder(T5EncoderModel(cfg)).eval(), _bert_sample(cfg.vocab_size), {
        "input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


def _wav2vec2():
    """A conv+attention audio encoder: wav2vec 2.0 base (7 strided 1-D convolutions, then 12 transformer layers
    with a grouped convolutional position embedding); one second of 16 kHz audio per item."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    cfg = Wav2Vec2Config()
    cfg._attn_implementation = "eager"

    def sample(b: int, size: int, g: torch.Generator):
        return (torch.randn(b, 16000, generator=g),)
    return FirstOutput(Wav2Vec2Model(cfg), ("last_hidden_state",)).eval(), sample, {"input_values": {0: "batch"}}


def _hf_swin():
    """Swin-T from transformers (window attention, relative position bias, shifted-window masks)."""
    from transformers import SwinConfig, SwinModel
    cfg = SwinConfig(image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
    cfg._attn_implementation = "eager"
    return FirstOutput(SwinModel(cfg), ("last_hidden_state",)).eval(), _image_sample, dict(IMAGE_AXES)


def _hf_vit():
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig()  # ViT-B/16 at 224
    cfg._attn_implementation = "eager"
    return FirstOutput(ViTModel(cfg, add_pooling_layer=False), ("last_hidden_state",)).eval(), _image_sample, \
        dict(IMAGE_AXES)


ZOO: dict[str, ZooModel] = {z.name: z for z in [
    ZooModel("efficientnet_b0", "depthwise + squeeze-excitation CNN (SiLU)", "timm", _timm("efficientnet_b0"), 256),
    ZooModel("mobilenetv3_large", "depthwise + SE CNN (hardswish)", "timm", _timm("mobilenetv3_large_100"), 256),
    ZooModel("regnety_016", "grouped convolutions + SE", "timm", _timm("regnety_016"), 256),
    ZooModel("resnext50", "grouped convolutions (32x4d)", "timm", _timm("resnext50_32x4d"), 256),
    ZooModel("convnext_tiny", "ConvNeXt blocks (7x7 depthwise, LayerNorm, GELU MLP)", "timm",
             _timm("convnext_tiny"), 128),
    ZooModel("swin_tiny", "window attention, relative position bias, shifted-window masks", "timm",
             _timm("swin_tiny_patch4_window7_224"), 128),
    ZooModel("swin_tiny_hf", "the same idioms as transformers exports them", "transformers", _hf_swin, 128),
    ZooModel("vit_b16_tv", "global attention, nn.MultiheadAttention (torchvision ViT-B/16)", "torchvision",
             _tv_vit, 64),
    ZooModel("vit_b16_timm", "global attention, packed qkv (timm)", "timm", _timm("vit_base_patch16_224"), 64),
    ZooModel("vit_b16_hf", "global attention, separate q/k/v projections (transformers)", "transformers",
             _hf_vit, 64),
    ZooModel("deit_small", "a smaller ViT (timm)", "timm", _timm("deit_small_patch16_224"), 128),
    ZooModel("resnet50_fpn", "detection backbone with FPN top-down resizes and adds", "torchvision",
             _tv_fpn_backbone, 32),
    ZooModel("bert_base", "encoder-only text: BERT (benchmarks/models.py's)", "transformers", bert_base, 64),
    ZooModel("roberta_base", "encoder-only text: RoBERTa (padding-offset positions)", "transformers",
             _hf_encoder("RobertaConfig", "RobertaModel"), 64),
    ZooModel("distilbert", "encoder-only text: DistilBERT (6 layers, no token types)", "transformers",
             _hf_encoder("DistilBertConfig", "DistilBertModel"), 64),
    ZooModel("electra_small", "encoder-only text: ELECTRA-small (embedding projection)", "transformers",
             _hf_encoder("ElectraConfig", "ElectraModel"), 128),
    ZooModel("t5_encoder", "encoder of an encoder-decoder, relative position bias", "transformers", _t5_encoder, 64),
    ZooModel("wav2vec2_base", "conv + attention audio encoder", "transformers", _wav2vec2, 32),
]}


def available(name: str) -> str | None:
    """None when ``name`` can be built on this machine, else why not."""
    source = ZOO[name].source
    try:
        __import__(source)
    except Exception as e:  # noqa: BLE001 - torchvision built for another torch raises more than ImportError
        return f"{source} does not import here ({type(e).__name__})"
    return None


if __name__ == "__main__":
    for z in ZOO.values():
        why = available(z.name)
        print(f"{z.name:18s} {z.source:12s} large batch {z.large_batch:4d}  {z.covers}"
              + (f"  [not here: {why}]" if why else ""))
    sys.exit(0)
