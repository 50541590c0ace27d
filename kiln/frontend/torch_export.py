"""A torch.nn.Module -> ONNX bytes, through torch.onnx.export: what ``kiln.build(module, example_inputs=...)`` does
first, so a PyTorch user need not write the export.

Input names are the parameters of the module's ``forward`` (``x`` for ``forward(self, x)``), output names
``output_0``, ``output_1``, ...; a dim is exported dynamic where the build's profiles give it a range (min !=
max), so the engine accepts what the profile promises. Two exporters: "torchscript" (torch.onnx.export with
dynamo=False; the default: fast, and needs nothing beyond torch) and "dynamo" (torch.export based; needs
onnxscript). A failing export is a ModelFormatError that names the exporter and says how to try the other.
"""
from __future__ import annotations

import inspect
import io
import warnings
from typing import Any, Sequence

import torch

from ..errors import InputError, ModelFormatError

EXPORTERS = ("torchscript", "dynamo")


def input_names_of(module: torch.nn.Module, count: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    return names + [f"input_{i}" for i in range(len(names), count)]


def _as_tuple(example_inputs: Any) -> tuple:
    if example_inputs is None:
        raise InputError("kiln.build(module, ...) needs example_inputs=(tensor, ...) to export the module to ONNX")
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in example_inputs):
        return tuple(example_inputs)
    raise InputError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def dynamic_dims(names: Sequence[str], profiles: Sequence) -> dict[str, dict[int, str]]:
    """{input: {dim: symbol}} for the dims some profile lets vary."""
    out: dict[str, dict[int, str]] = {}
    for p in profiles:
        for name in names:
            lo, hi = p.min.get(name), p.max.get(name)
            if lo is None or hi is None:
                continue
            for d, (a, b) in enumerate(zip(lo, hi)):
                if a != b:
                    out.setdefault(name, {})[d] = "batch" if d == 0 else f"{name}_dim{d}"
    return out


def export_module(module: torch.nn.Module, example_inputs: Any, profiles: Sequence = (),
                  exporter: str = "torchscript", opset: int = 18) -> bytes:
    """The module as an ONNX model (bytes), in eval mode, weights included."""
    if exporter not in EXPORTERS:
        raise InputError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    args = _as_tuple(example_inputs)
    names = input_names_of(module, len(args))
    unknown = sorted({n for p in profiles for n in p.names()} - set(names))
    if unknown:
        raise InputError(f"the profiles name input(s) {', '.join(unknown)}, but the module's inputs are "
                         f"{', '.join(names)} (its forward's parameters)")
    dims = dynamic_dims(names, profiles)
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    # nn.MultiheadAttention takes its fused fast path (aten::_native_multi_head_attention, which the TorchScript
    # exporter cannot export) in eval mode without grad; the decomposed path exports as plain attention.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = module(*args)
            count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
            output_names = [f"output_{i}" for i in range(count)]
            if exporter == "torchscript":
                torch.onnx.export(module, args, buf, input_names=names, output_names=output_names,
                                  dynamic_axes=dims or None, opset_version=opset, dynamo=False)
            else:
                shapes = {n: {d: torch.export.Dim(sym) for d, sym in dims.get(n, {}).items()} or None for n in names}
                program = torch.onnx.export(module, args, input_names=names, output_names=output_names,
                                            dynamic_shapes=shapes if dims else None, opset_version=opset,
                                            dynamo=True, external_data=False)
                buf.write(program.model_proto.SerializeToString())
    except Exception as e:  # noqa: BLE001 - the exporter's own error, whatever its type
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        raise ModelFormatError(f"torch.onnx.export ({exporter} exporter) failed: {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:400] if str(e) else ''}. Try exporter={other!r}, or export "
                               f"the model yourself and build the .onnx file") from None
    finally:
        module.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buf.getvalue()
