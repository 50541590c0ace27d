"""kiln.Refitter: new weights for a refittable engine, by their ONNX names, without a rebuild.

    engine = kiln.build("model.onnx", refittable=True)
    r = kiln.Refitter(engine)
    r.set_named_weights("fc.weight", new_w)          # or r.set_weights_from_onnx("retrained.onnx")
    r.refit()                                        # engine now runs the new weights

The engine keeps its ONNX graph with the current initializers (BuilderConfig.refittable). A refit puts the new
values in a copy of that graph and replays the build's passes on it (replay.py): every engine constant is
computed as a fresh build of the new weights computes it (BatchNorm folding, Q/K/V merging, layouts,
quantization with the engine's stored scales), and a refit whose weights would make another graph is refused.
The engine switches to the new weights in one step: a context running meanwhile sees the old weights or the
new ones, never a mix.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import KilnError, ModelMismatchError

__all__ = ["Refitter"]


class Refitter:
    """Sets a refittable engine's weights by their ONNX initializer names (TensorRT's IRefitter)."""

    def __init__(self, engine):
        if getattr(engine, "source_graph", None) is None:
            raise KilnError("this engine is not refittable: build it with BuilderConfig(refittable=True) "
                            "(trtexec --refit, kiln.trt.BuilderFlag.REFIT)")
        self.engine = engine
        self._pending: dict[str, torch.Tensor] = {}

    def get_all_weights(self) -> list[str]:
        """The ONNX initializer names the engine's weights come from, each settable by ``set_named_weights``."""
        from ..engine.source import initializers
        return sorted(initializers(self.engine.source_graph, strict=False))

    def get_missing_weights(self) -> list[str]:
        """Weights that must be set before ``refit``: none, since the engine keeps every initializer's current
        value, and a weight not set keeps it."""
        return []

    def get_named_weights(self, name: str) -> torch.Tensor:
        """The value ``name`` has now (set but not yet refitted: the new one)."""
        if name in self._pending:
            return self._pending[name]
        return self._current()[name]

    def set_named_weights(self, name: str, weights: Any) -> None:
        """New values for the initializer ``name`` (numpy or torch), of its dtype and shape; used by ``refit``."""
        current = self._current()
        if name not in current:
            raise ModelMismatchError(f"the engine's model has no initializer named {name!r} "
                                     f"(Refitter.get_all_weights lists them)")
        t = weights if isinstance(weights, torch.Tensor) else torch.from_numpy(np.array(weights, copy=True))
        t = t.detach().cpu().contiguous()
        want = current[name]
        if t.dtype != want.dtype or tuple(t.shape) != tuple(want.shape):
            raise ModelMismatchError(f"initializer {name!r} is {str(want.dtype)[6:]} {list(want.shape)} in the "
                                     f"engine's model, the new weights are {str(t.dtype)[6:]} {list(t.shape)}")
        self._pending[name] = t.clone()

    def set_weights_from_onnx(self, model: Any) -> None:
        """New values for every initializer, from an ONNX model (path, bytes or ModelProto) of the same
        architecture; the model's graph, initializer names, shapes and dtypes are checked (ModelMismatchError)."""
        from ..engine.source import check_matches, initializers
        from ..frontend.onnx import parse
        graph = parse(model)
        what = f"ONNX model {str(model)!r}" if isinstance(model, str) else "the ONNX model given"
        check_matches(graph, self.engine.header["source"], what)
        self._pending.update(initializers(graph))

    def refit(self, calibration_data: Any = None) -> None:
        """Give the engine the weights set so far; raises ModelMismatchError (the engine unchanged) when they
        would make another graph than the engine's. Quantized layers re-quantize their weights with the
        engine's activation scales; ``calibration_data`` (a folder, an iterable of input dicts or a
        calibrator, as BuilderConfig.int8_calibrator) calibrates the scales anew on it instead."""
        from ..engine.graph_json import decode_graph, encode_graph
        from ..quant.calibrate import copy_graph
        from .replay import replay_weights
        engine = self.engine
        with engine._refit_lock:
            source = copy_graph(engine.source_graph)
            for g in source.walk_graphs():
                for name, v in g.constants.items():
                    if name in self._pending:
                        v.const = self._pending[name]
            keep = copy_graph(source)
            engine_plan, _ = encode_graph(engine.graph)
            plan, weights = replay_weights(source, engine.header["config"], engine.report, engine_plan,
                                           engine.registry, calibration_data, engine.debug_names)
            notes: list[str] = []
            engine._bind(decode_graph(plan, weights), notes)
            engine.source_graph = keep
        self._pending.clear()

    def _current(self) -> dict[str, torch.Tensor]:
        from ..engine.source import initializers
        return initializers(self.engine.source_graph, strict=False)
