"""Building an ONNX model of the repository into an engine for the server's device, with the optimization
profile serving needs: dim 0 from 1 to max_batch_size, every other dim as the model fixes it or as
config.pbtxt's ``input { dims }`` gives it (a dynamic non-batch dim needs one, else the build is refused)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ModelFormatError
from .config import DEFAULT_MAX_BATCH_SIZE, ModelSettings

log = logging.getLogger("kiln.serve")


def build_for_serving(onnx_path: Path, settings: ModelSettings, device: str, timing_cache: Path, plugins=None):
    import kiln
    graph = kiln.parse(str(onnx_path), registry=plugins.registry() if plugins is not None else None)
    profile = serving_profile(graph, settings, onnx_path)
    config = kiln.BuilderConfig(device=device, fp16=settings.precision == "fp16", bf16=settings.precision == "bf16",
                                profiles=(profile,) if profile.names() else (), timing_cache=str(timing_cache))
    log.info("building %s for %s (profile %s)", onnx_path, device, profile.to_json() if profile.names() else "none")
    return kiln.build(graph, config, plugins=plugins)


def serving_profile(graph, settings: ModelSettings, where: Path):
    """min/opt/max shapes: dim 0 spans 1..max_batch_size when the model batches (a dynamic dim 0 on every
    input and max_batch_size not 0); other dims fixed."""
    import kiln
    inputs = [(v.name, tuple(getattr(v.type, "shape", None) or ())) for v in graph.inputs]
    batches = settings.max_batch_size != 0 and bool(inputs) and all(s and not isinstance(s[0], int)
                                                                      for _, s in inputs)
    max_batch = settings.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    lo, opt, hi = {}, {}, {}
    for name, shape in inputs:
        rest = shape[1:] if batches else shape
        given = settings.input_dims.get(name)
        if given is not None:
            if len(given) != len(rest) or any(isinstance(d, int) and d != g for d, g in zip(rest, given)) \
                    or any(g < 1 for g in given):
                raise ModelFormatError(f"{where}: config.pbtxt gives input {name!r} dims {list(given)}, which do "
                                       f"not fit the model's {_show(rest)} (dims exclude the batch dim when "
                                       f"max_batch_size > 0; -1 is not allowed for an ONNX build)")
            rest = tuple(given)
        if any(not isinstance(d, int) for d in rest):
            raise ModelFormatError(f"{where}: input {name!r} has dynamic dims {_show(rest)} besides the batch dim; "
                                   f"give them in config.pbtxt as input {{ name: \"{name}\" dims: [...] }}, or "
                                   f"serve an engine built with kiln build --shapes")
        if batches:
            lo[name], opt[name], hi[name] = (1, *rest), (max(1, max_batch // 2), *rest), (max_batch, *rest)
        elif any(not isinstance(d, int) for d in shape):
            lo[name] = opt[name] = hi[name] = tuple(rest)
    return kiln.Profile(lo, opt, hi)


def _show(dims) -> list:
    return [d if isinstance(d, int) else (d or "?") for d in dims]
