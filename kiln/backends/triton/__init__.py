"""Generated Triton kernels for fused regions (kiln::Elementwise), row reductions (Softmax, LayerNormalization,
RMSNormalization, ReduceSum/Mean/SumSquare/Max/Min over trailing dims) and GEMM/convolution epilogues
(kiln::Linear, kiln::Conv; a Triton GEMM template with the epilogue fused for fp16/bf16 Linear).

Integration (at engine load, on a CUDA device)::

    from kiln.backends import triton as kt
    layer = kt.compile_layer(node, device)      # a TritonLayer, or None
    layer, reason = kt.try_compile_layer(node, device)   # the same, with why not
    tactics = kt.choose_tactics(nodes, device)  # {node: layer} for every layer it takes
    layers = kt.candidates(node, device)        # a tuner's choices (GEMM template block configs included)

A layer has ``name`` and ``kernel`` (the Tactic shape Program expects) and is itself a kernel
``(ctx, inputs, attrs, out=None)``. Sources are generated from the node's description (never read from an
engine file), compiled on first call and cached (``cache.set_cache_dir``; ``cache.stats``).

On a CPU device layers are offered only when the caller asks (``on_cpu=True``; a build asks through
``kiln.tactics.TacticLibrary(triton_on_cpu=True)``), and they then run in Triton's interpreter: the process must
run under ``TRITON_INTERPRET=1`` (Triton's own switch, read by Triton), else asking is a KilnError. The tests do
this; nothing here reads or sets the environment.
"""
from __future__ import annotations

import torch

from ...errors import KilnError
from . import cache
from .cache import cache_dir, clear_memory, set_cache_dir
from .ops import Unsupported

__all__ = ["available", "require_interpreter", "compile_layer", "try_compile_layer", "choose_tactics", "candidates",
           "cache", "cache_dir", "set_cache_dir", "clear_memory", "Unsupported", "SUPPORTED"]

SUPPORTED = {("kiln", "Elementwise"), ("", "Softmax"), ("", "LayerNormalization"), ("", "RMSNormalization"),
             ("kiln", "Linear"), ("kiln", "Conv"), ("", "ReduceSum"), ("", "ReduceMean"), ("", "ReduceSumSquare"),
             ("", "ReduceMax"), ("", "ReduceMin"), ("kiln", "LayerNormQuantize")}


def available(device: torch.device | str | None = None, on_cpu: bool = False) -> tuple[bool, str]:
    """(whether generated kernels can run on ``device``, why not). ``on_cpu``: offer them for CPU tensors too, in
    Triton's interpreter (KilnError when Triton is not interpreting: ``require_interpreter``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed"
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type == "cpu":
        if not on_cpu:
            return False, ("generated kernels run on CPU tensors only when asked for (TacticLibrary(triton_on_cpu="
                           "True), on_cpu=True), in Triton's interpreter")
        require_interpreter()
        return True, ""
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False, f"no CUDA device for {dev}"
    if torch.version.hip is not None:
        return False, "ROCm is not tested"
    return True, ""


def require_interpreter() -> None:
    """Raise KilnError unless Triton runs kernels in its interpreter, which generated kernels on CPU tensors need."""
    try:
        from .launch import interpreting
        on = interpreting()
    except ImportError:
        raise KilnError("Triton kernels on CPU tensors (triton_on_cpu / on_cpu=True) need triton, which is not "
                        "installed") from None
    if not on:
        raise KilnError("Triton kernels on CPU tensors (triton_on_cpu / on_cpu=True) run in Triton's interpreter, "
                        "which is off in this process: run it under TRITON_INTERPRET=1 (set before triton is "
                        "imported), or leave triton_on_cpu off")


def try_compile_layer(node, device, registry=None, opset: int | None = None, *, on_cpu: bool = False):
    """(layer, "") when a generated kernel implements ``node`` on ``device``, else (None, reason). ``on_cpu``: see
    ``available``."""
    ok, why = available(device, on_cpu)
    if not ok:
        return None, why
    key = (node.domain or "", node.op_type)
    if key not in SUPPORTED:
        return None, f"{node.domain + '::' if node.domain else ''}{node.op_type} has no Triton generator"
    if registry is None:
        from ...ops import default_registry
        registry = default_registry()
    opdef = registry.get(node.domain, node.op_type)
    if opdef is None:
        return None, "no plain kernel to fall back on"
    if opset is None:
        graph = getattr(node, "graph", None)
        opset = graph.opsets.get("", 21) if graph is not None and hasattr(graph, "opsets") else 21
    from .layers import ElementwiseLayer, EpilogueLayer, ReduceLayer, RowLayer
    try:
        if key == ("kiln", "Elementwise"):
            return ElementwiseLayer(node, opdef.kernel, opset), ""
        if key[1].startswith("Reduce"):
            return ReduceLayer(node, opdef.kernel, opset), ""
        if key[0] == "kiln" and key[1] != "LayerNormQuantize":
            return EpilogueLayer(node, opdef.kernel), ""
        return RowLayer(node, opdef.kernel, opset), ""
    except Unsupported as e:
        return None, str(e)


def candidates(node, device, registry=None, opset: int | None = None, *, on_cpu: bool = False) -> list:
    """Every generated implementation of ``node`` a tuner may time (each checked against the plain kernel first):
    the default layer, plus for kiln::Linear the GEMM template at each block configuration of ``gemm.CONFIGS``.
    ``on_cpu``: see ``available``."""
    first, _ = try_compile_layer(node, device, registry, opset, on_cpu=on_cpu)
    out = [first] if first is not None else []
    if (node.domain, node.op_type) == ("kiln", "Linear") and available(device, on_cpu)[0]:
        from .gemm import CONFIGS
        from .layers import GemmLayer
        if registry is None:
            from ...ops import default_registry
            registry = default_registry()
        fallback = registry.get("kiln", "Linear").kernel
        for cfg in CONFIGS:
            try:
                out.append(GemmLayer(node, fallback, cfg))
            except Unsupported:
                break
    return out


def compile_layer(node, device, registry=None, opset: int | None = None, *, on_cpu: bool = False):
    """A TritonLayer implementing ``node`` on ``device``, or None (``try_compile_layer`` says why)."""
    return try_compile_layer(node, device, registry, opset, on_cpu=on_cpu)[0]


def choose_tactics(nodes, device, registry=None, reasons: dict | None = None, ops=None, *,
                   on_cpu: bool = False) -> dict:
    """{node: layer} for the nodes a generated kernel takes; ``reasons`` collects {label: why not}.

    ``ops`` limits the (domain, op type) pairs considered (default: all of SUPPORTED), e.g. only the fused
    kinds, leaving Softmax/LayerNorm to torch's kernels until a tuner has timed both. ``on_cpu``: see
    ``available``."""
    ok, why = available(device, on_cpu)
    out = {}
    if not ok:
        return out
    wanted = SUPPORTED if ops is None else {(d or "", t) for d, t in ops}
    for n in nodes:
        if (n.domain or "", n.op_type) not in wanted or (n.domain or "", n.op_type) not in SUPPORTED:
            continue
        layer, why = try_compile_layer(n, device, registry, on_cpu=on_cpu)
        if layer is not None:
            out[n] = layer
        elif reasons is not None:
            reasons[n.label] = why
    return out
