"""Custom ops (plugins): a PyTorch reference, a shape rule, typed attributes and optional Triton kernels.

    import torch, kiln
    from kiln.plugin import PluginLibrary

    plugins = PluginLibrary()

    @plugins.op("my.domain::SoftClip", elementwise=True, dtypes=("float32", "float16"))
    def soft_clip(x, *, alpha: float = 1.0):
        return alpha * torch.tanh(x / alpha)

    engine = kiln.build("model.onnx", plugins=plugins)       # nodes my.domain::SoftClip run soft_clip
    engine.save("model.engine")
    kiln.Engine.load("model.engine", plugins=plugins)        # refused without it, or with another version

``@soft_clip.triton("name")`` adds a function that launches Triton kernels as a tactic the tuner times and checks
against the reference (``@soft_clip.tactic("name", devices=...)`` any other implementation). Engine files keep
each plugin's name, version and a hash of its declaration, never its code. On the CLI, ``--plugin MODULE``
imports a module by name and takes the libraries it defines. ``kiln.trt.plugin`` offers TensorRT's decorators
on top of this.

Files: ``plugin.py`` (one plugin: declaration, reference, tactics), ``library.py`` (PluginLibrary: the ops
registry and tactic library it adds to a build), ``desc.py`` (TensorDesc, what a shape rule sees).
"""
from .desc import TensorDesc
from .library import PluginLibrary, load_modules
from .plugin import AttrSpec, Plugin, PluginTactic

__all__ = ["PluginLibrary", "Plugin", "PluginTactic", "AttrSpec", "TensorDesc", "load_modules"]
