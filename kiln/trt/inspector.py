"""TensorRT's EngineInspector over the engine's build report (kiln/engine/report.py).

``engine.create_engine_inspector()``; ``get_layer_information(i, LayerInformationFormat.JSON)`` and
``get_engine_information(format)``. Kiln always keeps the full report, so every verbosity gives what TensorRT's
ProfilingVerbosity.DETAILED does: name, type, precision, tactic, inputs/outputs shapes, plus Kiln's own fields
(the ONNX nodes a layer covers, its kernel, its measured time).
"""
from __future__ import annotations

import enum
import json

from .. import errors


class LayerInformationFormat(enum.IntEnum):  # NvInferRuntime.h of TensorRT v10.16
    """The text form of EngineInspector's answers: ONELINE (one readable line per layer) or JSON."""

    ONELINE = 0
    JSON = 1


def _layer_dict(layer) -> dict:
    return {"Name": layer.name, "LayerType": layer.op, "Precision": layer.precision, "TacticName": layer.tactic,
            "Kernel": layer.kernel, "Outputs": [{"Dimensions": list(s)} for s in layer.output_shapes],
            "Origin": list(layer.covers), "TimeMs": layer.time_ms}


def _oneline(d: dict) -> str:
    shapes = ", ".join("x".join(str(x) for x in o["Dimensions"]) for o in d["Outputs"])
    return f"{d['Name']}: {d['LayerType']} [{d['Precision']}] tactic={d['TacticName'] or '-'} outputs=({shapes})"


class EngineInspector:
    """What each layer of an engine is, from its build report."""

    def __init__(self, engine):
        self._engine = engine  # an ICudaEngine
        self.execution_context = None  # accepted as in TensorRT; the report has the build's opt shapes

    def _layers(self) -> list:
        report = self._engine.engine.report
        if report is None:
            raise errors.EngineFormatError("this engine carries no build report, so there is nothing to inspect")
        return report.layers

    def get_layer_information(self, layer_index: int, format: LayerInformationFormat) -> str:  # noqa: A002
        """What layer ``layer_index`` is, per ``format``: one line (name, type, precision, tactic, output shapes) or
        JSON (also Kiln's fields: the ONNX nodes it covers, its kernel, its measured time). InputError for an
        index out of range; EngineFormatError for an engine without a build report."""
        layers = self._layers()
        if not 0 <= int(layer_index) < len(layers):
            raise errors.InputError(f"layer index {layer_index} out of range: the engine has {len(layers)} layers")
        d = _layer_dict(layers[int(layer_index)])
        return json.dumps(d) if LayerInformationFormat(format) == LayerInformationFormat.JSON else _oneline(d)

    def get_engine_information(self, format: LayerInformationFormat) -> str:  # noqa: A002
        """Every layer's information per ``format``: one line each, or JSON with the layers and the I/O tensor
        names."""
        layers = [_layer_dict(x) for x in self._layers()]
        if LayerInformationFormat(format) == LayerInformationFormat.ONELINE:
            return "\n".join(_oneline(d) for d in layers) + "\n"
        eng = self._engine
        bindings = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        return json.dumps({"Layers": layers, "Bindings": bindings})
