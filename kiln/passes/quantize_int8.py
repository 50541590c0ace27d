"""INT8 / FP8 layers, by calibration or from a Q/DQ model, held within the accuracy target.

    kiln::Linear(x, W, b) -> kiln::QLinear(x, Wq, sw, b) {x_scale}       (kiln::Conv likewise -> kiln::QConv)

Which layers: with ``int8`` (or ``fp8``) every Linear/Conv with constant weights, minus those that
``layer_precisions`` pins to another precision, plus those it pins to int8/fp8. In a Q/DQ model (explicit
quantization) exactly the layers whose input carried a Q/DQ pair, with the model's scales. Activation
scales come from the model, the calibration cache, or calibration on the data (the graph is run as it
stands here, after fusion, so each scale belongs to the tensor a quantized layer really reads).
With ``int8_activations="dynamic"`` GEMM inputs take per-row scales at run time instead (no data needed);
``int8_smoothing`` (SmoothQuant alpha) divides GEMM inputs per channel by s and multiplies weights by s.
With an accuracy target the result is measured against float32 and, while outside, the most
sensitive layers are put back to float (kiln/quant/sensitivity.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import BuildError
from ..ir.graph import Graph, Node
from ..ops.fused_steps import AddInput, parse_epilogue
from ..quant.cache import Calibration
from ..quant.layer_precision import layer_precision
from ..quant.rewrite import QUANTIZED, ActParams, apply_quantization
from .context import PassContext
from .quantize_outputs import int8_tma_target

log = logging.getLogger("kiln.build")


def _format_for(node: Node, ctx: PassContext, explicit: dict) -> tuple[str | None, str]:
    """(format or None, reason when None) for one kiln::Linear / kiln::Conv."""
    cfg = ctx.config
    want = layer_precision(node, cfg.layer_precisions)
    if want in ("fp32", "fp16", "bf16"):
        return None, f"layer_precisions asks for {want}"
    x, w = node.inputs[0], node.inputs[1]
    if w is None or w.const is None or not w.const.dtype.is_floating_point:
        return None, "weights are not a float constant"
    if ctx.dtype(x) is not None and not ctx.dtype(x).is_float:
        return None, "input is not a float tensor"
    if want is None and not explicit and cfg.is_cuda and (cfg.fp16 or cfg.bf16) and node.op_type == "Conv" \
            and w.const.dim() == 4 and w.const.shape[1] < 16:
        # a network's first convolution (RGB: 3 channels): no 8-bit tensor-core kernel takes it, and quantized
        # values through cuDNN's float16 convolution cost ~2x the float16 layer (ResNet-50's stem on the H200).
        # Only with float16/bfloat16 enabled: without, an INT8 engine quantizes the same layers on every device.
        return None, f"{w.const.shape[1]} input channels: no 8-bit tensor-core kernel (kept in float16)"
    if explicit:
        if want is None and x.name not in explicit:
            return None, "the Q/DQ model does not quantize this layer's input"
        return ("fp8e4m3" if want == "fp8" else "int8"), ""
    if want == "int8" or (want is None and cfg.int8 and not cfg.fp8):
        return "int8", ""
    if want == "fp8" or (want is None and cfg.fp8):
        return "fp8e4m3", ""
    return None, "int8 is not enabled"


def quantize_int8(graph: Graph, ctx: PassContext) -> bool:
    cfg = ctx.config
    explicit = _bypass_fake_quant(graph) if graph.meta.pop("qdq_explicit", False) else {}
    weight_hints: dict[str, tuple] = graph.meta.pop("qdq_weights", {})
    asked = any(v in ("int8", "fp8", "INT8", "FP8") for v in cfg.layer_precisions.values())
    if cfg.strict_types and not explicit:
        return False
    if not (cfg.int8 or cfg.fp8 or explicit or asked):
        return False
    chosen: dict[int, str] = {}
    for i, n in enumerate(graph.nodes):
        if n.domain != "kiln" or n.op_type not in QUANTIZED:
            continue
        fmt, why = _format_for(n, ctx, explicit)
        if fmt is None:
            if cfg.int8 or cfg.fp8 or explicit:
                ctx.reject("quantize_int8", [n], why)
            continue
        n.meta["qid"] = i
        chosen[i] = fmt
    if not chosen:
        return False
    nodes = {n.meta["qid"]: n for n in graph.nodes if "qid" in n.meta}
    inputs_of = {q: nodes[q].inputs[0].name for q in chosen}
    data = Data(graph, ctx)
    params = _activation_params(graph, ctx, chosen, inputs_of, explicit, data)
    for q in list(chosen):
        if inputs_of[q] not in params:
            ctx.reject("quantize_int8", [nodes[q]], f"no range for input {inputs_of[q]!r} (not reached by the "
                                                    f"calibration data)")
            del chosen[q]
    info: dict = {"calibration": "explicit (Q/DQ model)" if explicit else cfg.calibration_method}
    int8_shortcuts = int8_tma_target(cfg)  # int8 residual streams where the int8 TMA kernels add them
    # The activation scales as calibrated, by tensor name: a refit re-quantizes new weights with them
    # (kiln/builder/replay.py). [scale, format] or [scale, format, SmoothQuant divisors].
    info["scales"] = {name: [p.scale, p.dtype] + ([list(p.smooth)] if p.smooth else [])
                      for name, p in params.items() if not p.dynamic and name not in explicit}
    if cfg.accuracy_target is not None:
        from ..quant.sensitivity import fit_to_target
        from .precision import lower_copy
        chosen, info["accuracy"] = fit_to_target(graph, ctx, chosen, params, data.validation(), weight_hints,
                                                 lambda g: lower_copy(g, ctx), int8_shortcuts)
    done = apply_quantization(graph, chosen, params, weight_hints, int8_shortcuts)
    for n in graph.nodes:
        n.meta.pop("qid", None)
    info["layers"] = {n.label: n.meta["precision"] for n in done}
    graph.meta["quantization"] = info
    ctx.count("quantize_int8", len(done))
    return bool(done)


def _fake_quant_params(n: Node) -> ActParams:
    return ActParams(float(n.attrs["scale"]), int(n.attrs.get("zero_point", 0)), n.attrs.get("dtype", "int8"))


def _bypass_fake_quant(graph: Graph) -> dict[str, ActParams]:
    """Explicit quantization: layers reading a kiln::FakeQuant read its input instead (they quantize it
    with the same parameters); a FakeQuant left without readers goes. Returns value name -> parameters."""
    params: dict[str, ActParams] = {}
    for n in graph.nodes:
        if n.domain == "kiln" and n.op_type == "FakeQuant":
            params[n.outputs[0].name] = _fake_quant_params(n)
    for n in list(graph.nodes):
        if n.domain != "kiln" or n.op_type not in QUANTIZED or not n.inputs:
            continue
        fq = n.inputs[0].producer
        if fq is None or fq.domain != "kiln" or fq.op_type != "FakeQuant":
            continue
        a, p = fq.inputs[0], _fake_quant_params(fq)
        if params.setdefault(a.name, p) != p:
            continue  # the tensor is quantized two ways: this layer keeps reading its own FakeQuant
        n.set_input(0, a)
        y = fq.outputs[0]
        if not y.uses and not any(o is y for o in graph.outputs):
            graph.remove(fq)
    return params


def _activation_params(graph: Graph, ctx: PassContext, chosen: dict[int, str], inputs_of: dict[int, str],
                       explicit: dict[str, ActParams], data: "Data") -> dict[str, ActParams]:
    params: dict[str, ActParams] = {}
    need: dict[str, str] = {}
    for q, fmt in chosen.items():
        name = inputs_of[q]
        if name in explicit and fmt == "int8":
            params[name] = explicit[name]
        else:
            need[name] = fmt
    if ctx.config.int8_activations == "dynamic":  # GEMM inputs need no calibration: per-row scales at run time
        linear_only = _linear_only_inputs(graph, chosen, inputs_of)
        for name in [n for n, fmt in need.items() if fmt == "int8" and n in linear_only]:
            params[name] = ActParams(0.0, 0, "int8", None, True)
            del need[name]
    if need:
        smooth_w = _smoothing_candidates(graph, ctx, chosen, inputs_of, need)
        shortcuts = _fp8_shortcut_outputs(graph, chosen, need)
        cal = _calibration(graph, ctx, sorted(need), data, smooth_w, optional=sorted(shortcuts))
        for name, fmt in list(need.items()) + [(n, "fp8e4m3") for n in shortcuts]:
            s = cal.scale(name, fmt)
            if s is not None:
                sm = cal.smoothing.get(name) if name in smooth_w else None
                params[name] = ActParams(s, 0, fmt, tuple(sm) if sm else None)
    # Outputs of quantized layers that feed other quantized layers already have their scale (the reader's
    # input scale), so requantization needs nothing more.
    return params


def _fp8_shortcut_outputs(graph: Graph, chosen: dict[int, str], need: dict[str, str]) -> set[str]:
    """Outputs of fp8 layers read only as the residual (``add:I``) of other fp8 layers' epilogues, e.g. a ResNet
    stage's downsample convolution: no layer quantizes them as its input, so they get a scale of their own
    (optional: a calibration cache without them leaves them float), and the rewrite stores them in fp8."""
    outputs = {id(v) for v in graph.outputs}
    out = set()
    for n in graph.nodes:
        if chosen.get(n.meta.get("qid")) != "fp8e4m3" or not n.outputs or n.outputs[0] is None:
            continue
        y = n.outputs[0]
        if id(y) in outputs or y.name in need or not y.uses:
            continue
        if all(s != 0 and chosen.get(u.meta.get("qid")) == "fp8e4m3"
               and parse_epilogue(u.attrs.get("epilogue", [])).count(AddInput(s)) == 1 for u, s in y.uses):
            out.add(y.name)
    return out


def _linear_only_inputs(graph: Graph, chosen: dict[int, str], inputs_of: dict[int, str]) -> set[str]:
    kinds: dict[str, set[str]] = {}
    for n in graph.nodes:
        q = n.meta.get("qid")
        if q in chosen:
            kinds.setdefault(inputs_of[q], set()).add(n.op_type)
    return {name for name, k in kinds.items() if k == {"Linear"}}


def _smoothing_candidates(graph: Graph, ctx: PassContext, chosen: dict[int, str], inputs_of: dict[int, str],
                          need: dict[str, str]) -> dict[str, torch.Tensor]:
    """Inputs that only int8 kiln::Linear layers read -> max |W| per input channel over those layers."""
    alpha = ctx.config.int8_smoothing
    if not alpha:
        return {}
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        q = n.meta.get("qid")
        if q in chosen:
            readers.setdefault(inputs_of[q], []).append(n)
    out = {}
    for name, nodes in readers.items():
        if need.get(name) != "int8" or any(n.op_type != "Linear" or chosen[n.meta["qid"]] != "int8" for n in nodes):
            continue
        out[name] = torch.stack([n.inputs[1].const.float().abs().amax(0) for n in nodes]).amax(0)
    return out


def _smooth_factors(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> list[float]:
    """SmoothQuant: s_j = max|x_j|^alpha / max|W_j|^(1-alpha), so x / s and W * s share the difficulty."""
    s = x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5).tolist()


def _calibration(graph: Graph, ctx: PassContext, names: list[str], data: "Data",
                 smooth_w: dict[str, torch.Tensor] | None = None, optional: list[str] = ()) -> Calibration:
    """The scales of ``names`` (and of ``optional`` when calibrating anyway): from the cache when it has all of
    ``names``, else by running the data."""
    cfg = ctx.config
    smooth_w = smooth_w or {}
    source = cfg.int8_calibrator
    cached = _read_cache(cfg.calibration_cache, source)
    if cached is not None:  # scales the cache check flagged (outliers): the build report shows them
        ctx.notes += [f"calibration cache: {w}" for w in cached.flagged]
    if cached is not None and all(n in cached for n in names) and all(n in cached.smoothing for n in smooth_w):
        ctx.notes.append(f"int8: scales of {len(names)} tensors read from the calibration cache")
        return cached
    batches = data.calibration()
    if not batches:
        missing = [n for n in names if cached is None or n not in cached]
        raise BuildError(f"INT8 needs activation ranges for {len(missing)} tensor(s) (e.g. {missing[:3]}): give "
                         f"calibration data (BuilderConfig.int8_calibrator: a folder of .npy/.npz, an iterable of "
                         f"input dicts or a calibrator), a calibration_cache that has them, or a Q/DQ model")
    from ..quant.calibrate import calibrate, channel_ranges
    smoothing, multipliers = {}, {}
    if smooth_w:
        x_max = channel_ranges(graph, batches, list(smooth_w), cfg.device, ctx.registry)
        for name, w_max in smooth_w.items():
            if name in x_max and x_max[name].shape == w_max.shape:
                smoothing[name] = _smooth_factors(x_max[name], w_max, cfg.int8_smoothing)
                multipliers[name] = 1.0 / torch.tensor(smoothing[name])
    cal = calibrate(graph, batches, list(names) + [n for n in optional if n not in names], cfg.calibration_method,
                    cfg.device, ctx.registry, multipliers)
    cal.smoothing = smoothing
    ctx.notes.append(f"int8: calibrated {len(cal.scales)} tensors on {len(batches)} batches "
                     f"({cfg.calibration_method})")
    if cached is not None:  # keep what the cache knew about other tensors
        cal.scales = {**cached.scales, **cal.scales}
        cal.smoothing = {**{k: v for k, v in cached.smoothing.items() if k not in cal.scales}, **cal.smoothing}
    _write_cache(cfg.calibration_cache, source, cal)
    return cal


class Data:
    """The build's data, read once: calibration batches, and validation batches for the accuracy target."""

    def __init__(self, graph: Graph, ctx: PassContext):
        self.graph, self.ctx = graph, ctx
        self._cal: list[dict] | None = None

    def _read(self, source) -> list[dict]:
        from ..quant.data import iter_batches
        names = [v.name for v in self.graph.inputs]
        shapes = dict(self.ctx.input_shapes or {})
        for p in self.ctx.config.profiles[:1]:
            shapes.update(p.opt)
        dtypes = {v.name: v.dtype for v in self.graph.inputs}
        return list(iter_batches(source, names, shapes, dtypes, device=self.ctx.config.device))

    # Without validation_data, every HOLD_OUT-th calibration batch (from 4 batches on) is kept out of the
    # ranges and used to check the accuracy target: measured on the batches that set the ranges, an engine
    # can look right and still flip decisions on the next input.
    HOLD_OUT = 4

    def _all_calibration(self) -> list[dict]:
        if self._cal is None:
            self._cal = self._read(self.ctx.config.int8_calibrator)
        return self._cal

    def _held_out(self) -> bool:
        return self.ctx.config.validation_data is None and len(self._all_calibration()) >= self.HOLD_OUT

    def calibration(self) -> list[dict]:
        batches = self._all_calibration()
        if self._held_out():
            return [b for i, b in enumerate(batches) if i % self.HOLD_OUT != self.HOLD_OUT - 1]
        return batches

    def validation(self) -> list[dict]:
        if self.ctx.config.validation_data is not None:
            return self._read(self.ctx.config.validation_data)
        batches = self._all_calibration()
        if self._held_out():
            return [b for i, b in enumerate(batches) if i % self.HOLD_OUT == self.HOLD_OUT - 1]
        return batches


def _read_cache(path: str | None, source) -> Calibration | None:
    if path and Path(path).is_file():
        return Calibration.load(path)
    reader = getattr(source, "read_calibration_cache", None)
    if reader is not None:  # TensorRT calibrators hand the cache over as bytes
        data = reader()
        if data:
            import tempfile
            with tempfile.NamedTemporaryFile("wb", suffix=".cache", delete=False) as f:
                f.write(bytes(data))
            try:
                return Calibration.load(f.name)
            finally:
                Path(f.name).unlink(missing_ok=True)
    return None


def _write_cache(path: str | None, source, cal: Calibration) -> None:
    if path:
        cal.save(path)
    writer = getattr(source, "write_calibration_cache", None)
    if writer is not None:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "calibration.cache"
            cal.save(p)
            writer(p.read_bytes())
