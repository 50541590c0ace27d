"""TensorRT's Python plugin decorators (``tensorrt.plugin``, TensorRT 10.7+) over kiln.plugin, so a TensorRT
Python-plugin sample ports by changing its import::

    import kiln.trt.plugin as trtp   # instead of: import tensorrt.plugin as trtp

    @trtp.register("sample::elemwise_add_plugin")
    def add_plugin_desc(inp0: trtp.TensorDesc, block_size: int) -> trtp.TensorDesc:
        return inp0.like()

    @trtp.impl("sample::elemwise_add_plugin")
    def add_plugin_impl(inp0: trtp.Tensor, block_size: int, outputs: tuple, stream: int) -> None:
        ...launch a Triton kernel writing outputs[0]...

``register`` declares the inputs (parameters annotated ``TensorDesc``), the attributes (the other parameters)
and the output rule; ``impl`` is the implementation, which writes the preallocated ``outputs``; ``autotune``
gives the supported types and custom tactics (each tactic becomes a candidate the tuner times and checks);
``aot_impl`` is accepted and kept, but Kiln launches plugins through ``impl`` (it does not load PTX).

Unlike kiln.plugin's libraries, which are passed explicitly, TensorRT's registry is one per process: so is
this one (``registered()``), and kiln.trt's parser, builder and runtime use it, as TensorRT's do. An ONNX node
reaches a plugin by its domain (``sample`` above) or by TensorRT's convention of an op_type equal to the
plugin's name with a ``plugin_namespace`` attribute.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import PluginError
from ..plugin import PluginLibrary
from ..plugin import TensorDesc as _KilnDesc
from ..plugin.plugin import Plugin, PluginTactic, read_declaration

__all__ = ["register", "impl", "autotune", "aot_impl", "op", "PluginCall", "TensorDesc", "Tensor",
           "AutoTuneCombination", "KernelLaunchParams", "SymExprs", "from_shape_expr", "registered"]

_REGISTRY = PluginLibrary()
_DECLS: dict[str, "_Decl"] = {}

Tensor = torch.Tensor  # impl receives torch tensors (TensorRT's Tensor supports torch.as_tensor the same way)


class TensorDesc:
    """TensorRT's tensor descriptor: ``shape_expr`` (concrete dims: Kiln's shape rules see probe sizes for
    symbolic dims), ``dtype`` (a kiln.trt.DataType), ``like()``, ``aliased()``."""

    def __init__(self, shape_expr, dtype):
        self.shape_expr = tuple(int(d) for d in shape_expr)
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape_expr)

    def like(self) -> "TensorDesc":
        return TensorDesc(self.shape_expr, self.dtype)

    def aliased(self) -> "TensorDesc":
        return self.like()

    @staticmethod
    def _of(d: _KilnDesc) -> "TensorDesc":
        from . import DataType, _TO_TRT
        from ..ir.dtype import DType
        return TensorDesc(d.shape, _TO_TRT.get(DType.from_torch(d.dtype), DataType.FLOAT))

    def _kiln(self) -> _KilnDesc:
        from .types import _TO_KILN
        return _KilnDesc(self.shape_expr, _TO_KILN[self.dtype].torch)


def from_shape_expr(shape_expr, dtype) -> TensorDesc:
    """An output descriptor of the given shape and dtype (TensorRT's ``trtp.from_shape_expr``)."""
    return TensorDesc(shape_expr, dtype)


@dataclass
class AutoTuneCombination:
    """Supported types as TensorRT writes them, one comma-separated entry per input then output, alternatives
    joined by '|' ("FP32|FP16, FP32|FP16"); ``tactics``: the plugin's custom tactic numbers to time."""

    io_types: str = ""
    layouts: str = ""
    tactics: list = field(default_factory=list)

    def pos(self, *args) -> None:  # TensorRT's per-position form: accepted for fidelity, types from io_types
        pass

    def tactics_(self, tactics) -> None:
        self.tactics = list(tactics)


@dataclass
class KernelLaunchParams:
    grid_x: Any = 1
    grid_y: Any = 1
    grid_z: Any = 1
    block_x: Any = 1
    block_y: Any = 1
    block_z: Any = 1
    shared_mem: Any = 0


class SymExprs(list):
    """Extra kernel arguments of an aot_impl (kept, not launched by Kiln)."""


_TYPE_NAMES = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class _Decl:
    plugin_id: str
    desc: Callable
    inputs: tuple
    attrs: dict
    impl: Callable | None = None
    aot_impl: Callable | None = None
    tactics: list = field(default_factory=list)
    dtypes: tuple | None = None


@dataclass(frozen=True)
class PluginCall:
    """A registered plugin applied to network tensors with attribute values: what ``op.<namespace>.<name>(...)``
    makes and ``INetworkDefinition.add_plugin`` adds as a layer."""

    plugin_id: str
    inputs: tuple
    attrs: dict

    def output_count(self) -> int:
        """How many outputs the plugin's descriptor function declares for these inputs (dynamic dims as 1)."""
        decl = _decl(self.plugin_id, "add_plugin")
        descs = [TensorDesc([d if d >= 0 else 1 for d in t.shape], t.dtype) for t in self.inputs]
        got = decl.desc(*descs, **self.attrs)
        return len(got) if isinstance(got, (tuple, list)) else 1


class _Namespace:
    """``op.<namespace>``: its plugins by name."""

    def __init__(self, namespace: str):
        self._namespace = namespace

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("__"):
            raise AttributeError(name)
        plugin_id = f"{self._namespace}::{name}"
        decl = _decl(plugin_id, "op")

        def call(*inputs, **attrs) -> PluginCall:
            unknown = sorted(set(attrs) - set(decl.attrs))
            if unknown:
                raise PluginError(f"plugin {plugin_id}: no attribute(s) {unknown}; it declares {sorted(decl.attrs)}")
            return PluginCall(plugin_id, tuple(inputs), dict(attrs))
        return call


class _Ops:
    """TensorRT's ``tensorrt.plugin.op``: ``op.<namespace>.<name>(tensors..., attr=value)`` for a registered
    plugin, passed to ``INetworkDefinition.add_plugin``."""

    def __getattr__(self, namespace: str) -> _Namespace:
        if namespace.startswith("__"):
            raise AttributeError(namespace)
        return _Namespace(namespace)


op = _Ops()


def registered() -> PluginLibrary:
    """The process's plugins registered through these decorators (those with an ``impl``)."""
    return _REGISTRY


def register(plugin_id: str, lazy_register: bool = False) -> Callable:
    """Declares a plugin: inputs are the parameters annotated TensorDesc, attributes the others; the function
    returns the output descriptor(s)."""
    def decorate(desc: Callable) -> Callable:
        if plugin_id in _DECLS:
            raise PluginError(f"plugin {plugin_id} is already registered")
        inputs, optional, variadic, attrs = read_declaration(desc, f"plugin {plugin_id}", _annotated_desc)
        _DECLS[plugin_id] = _Decl(plugin_id, desc, inputs, attrs)
        return desc
    return decorate


def impl(plugin_id: str) -> Callable:
    """The implementation: ``(inputs..., attributes..., outputs, stream[, tactic]) -> None``, writing outputs."""
    def decorate(fn: Callable) -> Callable:
        decl = _decl(plugin_id, "impl")
        decl.impl = fn
        _publish(decl)
        return fn
    return decorate


def autotune(plugin_id: str) -> Callable:
    """The supported type combinations and custom tactics: ``(input descs..., attributes..., outputs) ->
    [AutoTuneCombination]``. Called once, at registration, with float32 descriptors of unknown shape."""
    def decorate(fn: Callable) -> Callable:
        decl = _decl(plugin_id, "autotune")
        probe = [TensorDesc((), _float32()) for _ in decl.inputs]
        kw = {k: a.default for k, a in decl.attrs.items() if k in inspect.signature(fn).parameters}
        try:
            combos = fn(*probe, **kw, outputs=(TensorDesc((), _float32()),))
        except Exception as e:  # noqa: BLE001 - an autotune function that needs real shapes
            raise PluginError(f"plugin {plugin_id}: the autotune function could not run at registration "
                              f"({type(e).__name__}: {e}); Kiln reads the supported types and tactics from it once")
        types, tactics = set(), []
        for c in combos or []:
            first = c.io_types.split(",")[0] if c.io_types else ""
            for t in first.split("|"):
                if t.strip():
                    if t.strip() not in _TYPE_NAMES:
                        raise PluginError(f"plugin {plugin_id}: type {t.strip()!r} is not one of {', '.join(_TYPE_NAMES)}")
                    types.add(_TYPE_NAMES[t.strip()])
            tactics += [int(x) for x in c.tactics if int(x) not in tactics]
        decl.dtypes = tuple(sorted(types, key=str)) if types else None
        decl.tactics = tactics
        _publish(decl)
        return fn
    return decorate


def aot_impl(plugin_id: str) -> Callable:
    """Kept for fidelity: Kiln runs ``impl`` (a build that only has an aot_impl is refused, naming the plugin)."""
    def decorate(fn: Callable) -> Callable:
        _decl(plugin_id, "aot_impl").aot_impl = fn
        return fn
    return decorate


def missing_impl(graph) -> list[str]:
    """Plugins ``graph`` uses that have an aot_impl but no impl (Kiln cannot launch PTX)."""
    used = {f"{n.domain}::{n.op_type}" for n in graph.all_nodes()}
    return sorted(pid for pid, d in _DECLS.items() if pid in used and d.impl is None)


def rename_plugin_nodes(model) -> None:
    """TensorRT's ONNX convention, ``op_type`` = the plugin's name with a ``plugin_namespace`` attribute,
    rewritten in place to Kiln's (the node's domain is the namespace; the plugin_* attributes dropped)."""
    from onnx import helper
    graphs, namespaces = [model.graph], set()
    while graphs:
        g = graphs.pop()
        for n in g.node:
            attrs = {a.name: a for a in n.attribute}
            ns = attrs.get("plugin_namespace")
            if ns is not None and f"{helper.get_attribute_value(ns).decode()}::{n.op_type}" in _DECLS:
                n.domain = helper.get_attribute_value(ns).decode()
                namespaces.add(n.domain)
                keep = [a for a in n.attribute if a.name not in ("plugin_namespace", "plugin_version")]
                del n.attribute[:]
                n.attribute.extend(keep)
            graphs += [a.g for a in n.attribute if a.HasField("g")] + [x for a in n.attribute for x in a.graphs]
    have = {o.domain for o in model.opset_import}
    for ns in sorted(namespaces - have):
        model.opset_import.append(helper.make_opsetid(ns, 1))


# -- internals -----------------------------------------------------------------------------------------------
def _annotated_desc(param, hint) -> bool:
    return hint is TensorDesc or hint == "TensorDesc" or hint == "trtp.TensorDesc"


def _float32():
    from . import DataType
    return DataType.FLOAT


def _decl(plugin_id: str, what: str) -> _Decl:
    decl = _DECLS.get(plugin_id)
    if decl is None:
        raise PluginError(f"@{what}({plugin_id!r}): register the plugin first with @register({plugin_id!r})")
    return decl


def _publish(decl: _Decl) -> None:
    """(Re)make the kiln Plugin from the declaration, once it has an impl."""
    if decl.impl is None:
        return
    plugin = Plugin.declare(decl.plugin_id, _reference(decl), "1", _shape_rule(decl), decl.dtypes,
                            doc=decl.desc.__doc__ or "", declaration=(decl.inputs, 0, False, dict(decl.attrs)))
    plugin.tactics = [PluginTactic(f"tactic{t}", _reference(decl, t), ("cpu", "cuda")) for t in decl.tactics]
    _REGISTRY.replace(plugin)  # re-decorating (autotune after impl) replaces it


def _shape_rule(decl: _Decl):
    def rule(*descs, **attrs):
        got = decl.desc(*[TensorDesc._of(d) for d in descs], **attrs)
        got = got if isinstance(got, (tuple, list)) else (got,)
        return tuple(g._kiln() for g in got)
    return rule


def _reference(decl: _Decl, tactic: int | None = None):
    """A kiln reference: allocate the outputs by the descriptor rule, then call impl to write them."""
    params = inspect.signature(decl.impl).parameters
    rule = _shape_rule(decl)

    def run(*inputs, **attrs):
        outs = tuple(d.empty(inputs[0].device) for d in rule(*[_KilnDesc.of(x) for x in inputs], **attrs))
        kw = {k: v for k, v in attrs.items() if k in params}
        stream = torch.cuda.current_stream().cuda_stream if inputs[0].is_cuda else 0
        if "tactic" in params:
            kw["tactic"] = tactic if tactic is not None else 0
        decl.impl(*inputs, **kw, outputs=outs, stream=stream)
        return outs[0] if len(outs) == 1 else outs
    return run
