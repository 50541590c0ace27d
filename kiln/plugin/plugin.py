"""One custom op: its declaration (inputs, typed attributes, dtypes, shape rule), its PyTorch reference and its
optional tactics (Triton kernels or other implementations the tuner times and checks against the reference).

The declaration is read from the reference function's signature, so a plugin is a few lines::

    @plugins.op("my.domain::SoftClip", elementwise=True)
    def soft_clip(x, *, alpha: float = 1.0):
        return alpha * torch.tanh(x / alpha)

Positional parameters are the op's inputs (a default of None makes one optional, ``*inputs`` takes any
number); keyword-only parameters are its ONNX attributes, typed by annotation or by their default (int,
float, str, bool, list[int], list[float]); one without a default is required. The ``signature`` of the
declaration (never the code) is what an engine file records, with the version, so that loading an engine
with another plugin than the one it was built with is refused.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import GraphError, KernelError, PluginError
from .desc import TensorDesc

# attribute type name -> its coercion of the values the ONNX frontend hands kernels (TypeError: what it wants)
_ATTR_TYPES: dict[str, Callable[[Any], Any]] = {}


def _as_int(v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("an integer")
    return v


def _as_float(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError("a number")
    return float(v)


def _as_str(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if not isinstance(v, str):
        raise TypeError("a string")
    return v


def _as_bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):  # ONNX has no boolean attribute: 0 / 1 ints stand for them
        return bool(v)
    raise TypeError("0 or 1")


def _list_of(item):
    def coerce(v):
        if not isinstance(v, (list, tuple)):
            raise TypeError("a list")
        return [item(x) for x in v]
    return coerce


def _as_bytes(v):
    if isinstance(v, str):
        return v.encode("utf-8")
    if not isinstance(v, (bytes, bytearray)):
        raise TypeError("bytes or a string")
    return bytes(v)


_ATTR_TYPES.update({"int": _as_int, "float": _as_float, "str": _as_str, "bool": _as_bool, "bytes": _as_bytes,
                    "list[int]": _list_of(_as_int), "list[float]": _list_of(_as_float)})


def _type_name(hint: Any, default: Any, where: str) -> str:
    if hint is inspect.Parameter.empty or hint is None:
        if default is inspect.Parameter.empty or default is None:
            raise PluginError(f"{where}: give the attribute a type annotation or a default value")
        hint = type(default)
        if hint in (list, tuple):
            hint = list[float] if any(isinstance(x, float) for x in default) else list[int]
    origin = typing.get_origin(hint)
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        inner = args[0] if args else int
        name = f"list[{getattr(inner, '__name__', inner)}]"
    else:
        name = getattr(hint, "__name__", str(hint))
    if name not in _ATTR_TYPES:
        raise PluginError(f"{where}: attribute type {name!r} is not one of {', '.join(_ATTR_TYPES)}")
    return name


@dataclass(frozen=True)
class AttrSpec:
    """One declared ONNX attribute of a plugin, read from a keyword-only parameter of its reference.

    Attributes:
        name: the attribute's name (the parameter's).
        type: its type: "int", "float", "str", "bool", "bytes", "list[int]" or "list[float]".
        default: the value used when a node omits the attribute (None when required or when None is its default).
        required: True when the parameter has no default: a node without the attribute is refused.
    """

    name: str
    type: str  # a key of _ATTR_TYPES
    default: Any = None
    required: bool = False

    def to_json(self) -> dict:
        """The attribute's declaration as JSON data (bytes defaults as hex): part of the plugin's signature."""
        default = self.default.hex() if isinstance(self.default, bytes) else self.default
        return {"type": self.type, "required": self.required, "default": default}


@dataclass(frozen=True)
class PluginTactic:
    """One implementation of a plugin besides its reference, which the tuner times and checks against the
    reference before it may be chosen. Made by ``Plugin.tactic`` or ``Plugin.triton``.

    Attributes:
        name: the tactic's name, unique within its plugin (no "/").
        fn: the implementation, with the reference's signature.
        devices: the device types it is offered on: "cuda" (the default) and/or "cpu".
        triton: True when ``fn`` launches Triton kernels (offered on CUDA devices, and on the CPU as well when the
            tactic library asks for it: ``TacticLibrary(triton_on_cpu=True)``, in Triton's interpreter).
    """

    name: str
    fn: Callable
    devices: tuple[str, ...] = ("cuda",)
    triton: bool = False

    def offered_devices(self, triton_on_cpu: bool = False) -> tuple[str, ...]:
        """The device types the tuner may try this tactic on (``devices``, plus "cpu" for a Triton tactic when
        ``triton_on_cpu``: the tactic library's option, see kiln.tactics.TacticLibrary)."""
        if self.triton and triton_on_cpu:
            return tuple(dict.fromkeys(self.devices + ("cpu",)))
        return self.devices


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64", torch.int8: "int8", torch.uint8: "uint8", torch.int32: "int32",
                torch.int64: "int64", torch.bool: "bool"}


@dataclass
class Plugin:
    """A registered custom op. Made by ``PluginLibrary.op``; calling it runs the reference.

    Attributes:
        domain: the ONNX domain of the nodes it implements ("my.domain").
        name: the ONNX op type of those nodes.
        version: recorded in engines; loading an engine built with another version is refused.
        reference: the PyTorch function that defines the op (CPU and CUDA); tactics are checked against it.
        shape: the output rule, ``(*TensorDesc, **attrs) -> TensorDesc`` or a tuple of them; None: the input's
            shape for an elementwise op, else the reference run on meta tensors.
        dtypes: the float input dtypes it supports (torch dtypes); None: any. A reduced-precision build keeps it
            in float32 otherwise.
        elementwise: True when output element i depends on input element i alone.
        doc: a description (by default the reference's docstring).
        tactics: its other implementations (PluginTactic), in the order declared.
        inputs: the input names, from the reference's positional parameters.
        optional_inputs: how many of the last inputs may be omitted (their default is None).
        variadic: True when the reference takes ``*inputs``: any number of further inputs.
        attrs: the declared ONNX attributes by name (AttrSpec), from its keyword-only parameters.
    """

    domain: str
    name: str
    version: str
    reference: Callable
    shape: Callable | None = None  # (*TensorDesc, **attrs) -> TensorDesc | tuple of them
    dtypes: tuple[torch.dtype, ...] | None = None  # input float dtypes it supports (None: any)
    elementwise: bool = False
    doc: str = ""
    tactics: list[PluginTactic] = field(default_factory=list)
    inputs: tuple[str, ...] = ()
    optional_inputs: int = 0
    variadic: bool = False
    attrs: dict[str, AttrSpec] = field(default_factory=dict)

    @staticmethod
    def declare(qualified: str, reference: Callable, version: str = "1", shape: Callable | None = None,
                dtypes=None, elementwise: bool = False, doc: str | None = None, declaration=None) -> "Plugin":
        """``declaration``: (inputs, optional count, variadic, attrs) when they do not come from the reference's
        signature (kiln.trt.plugin reads them from TensorRT's descriptor function)."""
        domain, sep, name = qualified.rpartition("::")
        if not sep or not domain or not name:
            raise PluginError(f"plugin name {qualified!r} must be 'domain::OpName' (the ONNX node's domain and op_type)")
        if domain in ("", "ai.onnx", "kiln"):
            raise PluginError(f"plugin {qualified!r}: domain {domain!r} is reserved for ONNX's and Kiln's own ops")
        if not isinstance(version, str) or not version:
            raise PluginError(f"plugin {qualified!r}: version must be a non-empty string, got {version!r}")
        p = Plugin(domain, name, version, reference, shape, _dtypes(dtypes, qualified), bool(elementwise),
                   (doc if doc is not None else (reference.__doc__ or "")).strip())
        p.inputs, p.optional_inputs, p.variadic, p.attrs = declaration or read_declaration(
            reference, f"plugin {qualified}")
        return p

    @property
    def qualified_name(self) -> str:
        """"domain::name", as ``PluginLibrary.op`` was given it."""
        return f"{self.domain}::{self.name}"

    def __call__(self, *inputs, **attrs):
        return self.reference(*inputs, **attrs)

    def signature(self) -> dict:
        """The declaration as plain data: what an engine's record of this plugin is hashed from."""
        return {"op": self.qualified_name, "version": self.version, "inputs": list(self.inputs),
                "optional_inputs": self.optional_inputs, "variadic": self.variadic,
                "attrs": {k: a.to_json() for k, a in sorted(self.attrs.items())},
                "dtypes": None if self.dtypes is None else [_DTYPE_NAMES.get(d, str(d)) for d in self.dtypes],
                "elementwise": self.elementwise}

    def signature_hash(self) -> str:
        """The SHA-256 hex digest of ``signature()``: what engines record to detect a changed declaration."""
        return hashlib.sha256(json.dumps(self.signature(), sort_keys=True).encode()).hexdigest()

    def record(self) -> dict:
        """What an engine file keeps of the plugin: names, version and the signature's hash, never code."""
        return {"domain": self.domain, "name": self.name, "version": self.version,
                "signature": self.signature_hash()}

    # -- tactics ------------------------------------------------------------------------------------------
    def tactic(self, name: str, devices: tuple[str, ...] = ("cuda",)):
        """Decorates another implementation (same signature as the reference) that the tuner times on
        ``devices`` and checks against the reference before it may be chosen."""
        return self._add_tactic(name, devices, triton=False)

    def triton(self, name: str = "triton"):
        """Decorates a function that launches Triton kernels (same signature as the reference)."""
        return self._add_tactic(name, ("cuda",), triton=True)

    def _add_tactic(self, name: str, devices, triton: bool):
        if not isinstance(name, str) or not name or "/" in name:
            raise PluginError(f"plugin {self.qualified_name}: tactic name must be a non-empty string without '/'")
        if any(t.name == name for t in self.tactics):
            raise PluginError(f"plugin {self.qualified_name}: tactic {name!r} is declared twice")
        devices = (devices,) if isinstance(devices, str) else tuple(devices)
        for d in devices:
            if d not in ("cpu", "cuda"):
                raise PluginError(f"plugin {self.qualified_name}: tactic device {d!r} is not 'cpu' or 'cuda'")

        def register(fn: Callable) -> Callable:
            self.tactics.append(PluginTactic(name, fn, devices, triton))
            return fn
        return register

    def get_tactic(self, name: str) -> PluginTactic | None:
        """The tactic named ``name``, or None."""
        return next((t for t in self.tactics if t.name == name), None)

    # -- running ------------------------------------------------------------------------------------------
    def bind_attrs(self, attrs: dict, node: str) -> dict:
        """The node's ONNX attributes as the reference's keyword arguments, checked against the declaration."""
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise GraphError(f"node {node!r} ({self.qualified_name}): unknown attribute(s) {', '.join(unknown)}; "
                             f"the plugin declares {', '.join(self.attrs) or 'none'}")
        out = {}
        for name, spec in self.attrs.items():
            if name not in attrs:
                if spec.required:
                    raise GraphError(f"node {node!r} ({self.qualified_name}): attribute {name!r} ({spec.type}) "
                                     f"is required")
                out[name] = spec.default
                continue
            try:
                out[name] = _ATTR_TYPES[spec.type](attrs[name])
            except TypeError as e:
                raise GraphError(f"node {node!r} ({self.qualified_name}): attribute {name!r} must be {e} "
                                 f"({spec.type}), got {attrs[name]!r}") from None
        return out

    def check_node(self, attrs: dict, inputs_present: list, outputs_present: list) -> str | None:
        """At parse (the registry's check rule): why the node's attributes or input count do not fit the
        declaration, or None. The parser lists every such node at once in an UnsupportedOpError."""
        try:
            self.bind_attrs(attrs, "")
            self.check_inputs([None] * len(inputs_present), "")
        except GraphError as e:
            return str(e).replace("node '' ", "", 1)
        return None

    def check_inputs(self, inputs: list, node: str) -> None:
        """Raise GraphError when the number of inputs does not fit the declaration, or KernelError when a float
        input has a dtype outside ``dtypes``; ``node`` names the node in the message."""
        n, lo = len(inputs), len(self.inputs) - self.optional_inputs
        if n < lo or (n > len(self.inputs) and not self.variadic):
            want = f"{lo}" + (f" to {len(self.inputs)}" if self.optional_inputs else "") + (" or more" if self.variadic else "")
            raise GraphError(f"node {node!r} ({self.qualified_name}): {n} input(s), the plugin takes {want}")
        if self.dtypes is not None:
            for k, x in enumerate(inputs):
                if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype not in self.dtypes:
                    raise KernelError(f"node {node!r} ({self.qualified_name}): input {k} is {x.dtype}, the plugin "
                                      f"supports {', '.join(_DTYPE_NAMES.get(d, str(d)) for d in self.dtypes)}")

    def output_descs(self, inputs: list, kw: dict) -> list[TensorDesc] | None:
        """Outputs by the shape rule (or an elementwise op's input 0); None: run the reference on meta tensors."""
        if self.shape is None:
            if self.elementwise:
                return [TensorDesc.of(inputs[0])]
            return None
        descs = [TensorDesc.of(x) if isinstance(x, torch.Tensor) else x for x in inputs]
        got = self.shape(*descs, **kw)
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        if not got or not all(isinstance(d, TensorDesc) for d in got):
            raise PluginError(f"plugin {self.qualified_name}: the shape rule must return a TensorDesc or a tuple "
                              f"of them, got {got!r}")
        return got

    def run(self, fn: Callable, inputs: list, kw: dict, node: str):
        """``fn`` (the reference or a tactic) on one node's inputs with its bound attributes (``bind_attrs``);
        meta inputs get outputs by the shape rule."""
        self.check_inputs(inputs, node)
        if any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in inputs):
            descs = self.output_descs(inputs, kw)
            if descs is not None:
                outs = [d.empty("meta") for d in descs]
                return outs[0] if len(outs) == 1 else tuple(outs)
        out = fn(*inputs, **kw)
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
            return tuple(out)
        raise KernelError(f"node {node!r} ({self.qualified_name}): the plugin returned {type(out).__name__}, "
                          f"not a tensor or a tuple of tensors")


def _is_positional(param: inspect.Parameter, hint: Any) -> bool:
    return param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)


def read_declaration(fn: Callable, where: str, is_input: Callable = _is_positional, skip: tuple = ()):
    """(input names, how many of them are optional, variadic, {attribute: AttrSpec}) from ``fn``'s signature.
    ``is_input(param, type hint)`` says which parameters are inputs (default: the positional ones; the others
    are attributes); parameters named in ``skip`` are neither (kiln.trt.plugin's ``outputs``, ``stream``)."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: fall back on defaults
        hints = {}
    inputs, optional, variadic, attrs = [], 0, False, {}
    for p in sig.parameters.values():
        hint = hints.get(p.name, p.annotation)
        if p.name in skip:
            continue
        if p.kind == p.VAR_POSITIONAL:
            variadic = True
        elif p.kind == p.VAR_KEYWORD:
            raise PluginError(f"{where}: **{p.name} is not allowed; declare each attribute as a "
                              f"keyword-only parameter (after '*')")
        elif is_input(p, hint):
            if p.default is None:
                optional += 1
            elif optional:
                raise PluginError(f"{where}: input {p.name!r} follows an optional input; optional inputs "
                                  f"(default None) come last")
            inputs.append(p.name)
        else:
            t = _type_name(hint, p.default, f"{where} attribute {p.name!r}")
            required = p.default is inspect.Parameter.empty
            default = None if required or p.default is None else _ATTR_TYPES[t](p.default)
            attrs[p.name] = AttrSpec(p.name, t, default, required)
    if not inputs and not variadic:
        raise PluginError(f"{where}: no inputs; the reference's positional parameters are the op's inputs")
    return tuple(inputs), optional, variadic, attrs


def _dtypes(dtypes, qualified: str):
    if dtypes is None:
        return None
    if isinstance(dtypes, (str, torch.dtype)):
        dtypes = (dtypes,)
    out = []
    by_name = {v: k for k, v in _DTYPE_NAMES.items()} | {"fp32": torch.float32, "fp16": torch.float16,
                                                           "bf16": torch.bfloat16, "half": torch.float16,
                                                           "float": torch.float32}
    for d in dtypes:
        t = d if isinstance(d, torch.dtype) else by_name.get(str(d))
        if t is None:
            raise PluginError(f"plugin {qualified}: dtype {d!r} is not one of {', '.join(sorted(by_name))}")
        out.append(t)
    return tuple(out)
