"""A set of plugins, made and passed explicitly: ``kiln.build(model, plugins=lib)``, ``Engine.load(path,
plugins=lib)``. Nothing is found by scanning and nothing registers itself globally: a library is an object
the user's module creates and Kiln is handed (the CLI's ``--plugin MODULE`` imports that module by name and
takes the libraries it defines, as trtexec loads a plugin library).

A library turns into the two things the build and the engine already take: an op registry that includes its
ops (``registry()``) and a tactic library with its tactics as candidates (``tactics()``).
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterable

import torch

from ..errors import PluginError
from .plugin import Plugin

PLUGIN_TACTIC = "plugin"  # the tactic factory for every plugin's implementations; params {"tactic": name}


class PluginLibrary:
    """Custom ops by (domain, name). ``@lib.op("my.domain::SoftClip")`` declares one (see plugin.py)."""

    def __init__(self, plugins: Iterable[Plugin] = ()):
        self._plugins: dict[tuple[str, str], Plugin] = {}
        for p in plugins:
            self.add(p)

    def op(self, qualified_name: str, *, version: str = "1", shape: Callable | None = None, dtypes=None,
           elementwise: bool = False, doc: str | None = None) -> Callable[[Callable], Plugin]:
        """Declares a plugin whose reference (PyTorch, CPU and CUDA) is the decorated function.

        ``qualified_name``: "domain::OpType" as the ONNX node names it. ``version``: recorded in engines; an
        engine built with another version is refused at load. ``shape``: the output rule, called with a
        TensorDesc per input and the attributes, returning a TensorDesc per output (default: the input's for
        an ``elementwise`` op, else the reference run on meta tensors). ``dtypes``: the float input types the
        plugin supports (e.g. ("float32", "float16")); a reduced-precision build keeps it in float32 otherwise.
        ``elementwise``: output element i depends on input element i alone."""
        def register(reference: Callable) -> Plugin:
            p = Plugin.declare(qualified_name, reference, version, shape, dtypes, elementwise, doc)
            self.add(p)
            return p
        return register

    def add(self, plugin: Plugin) -> None:
        """Add ``plugin``; PluginError when another plugin of the same domain and name is already in the library."""
        key = (plugin.domain, plugin.name)
        old = self._plugins.get(key)
        if old is not None and old is not plugin:
            raise PluginError(f"plugin {plugin.qualified_name} is registered twice in one library (versions "
                              f"{old.version} and {plugin.version})")
        self._plugins[key] = plugin

    def replace(self, plugin: Plugin) -> Plugin | None:
        """Put ``plugin`` in place of the one of the same domain and name, if any (returned): a declaration made
        again, as kiln.trt.plugin's decorators do when ``autotune`` follows ``impl``."""
        key = (plugin.domain, plugin.name)
        old = self._plugins.get(key)
        self._plugins[key] = plugin
        return old

    def merged(self, other: "PluginLibrary") -> "PluginLibrary":
        """A new library with the plugins of this one and of ``other`` (PluginError when both declare one op)."""
        return PluginLibrary([*self, *other])

    def get(self, domain: str, name: str) -> Plugin | None:
        """The plugin of ``domain`` and op type ``name``, or None."""
        return self._plugins.get((domain, name))

    def __iter__(self):
        return iter(self._plugins.values())

    def __len__(self) -> int:
        return len(self._plugins)

    def __repr__(self) -> str:
        return f"PluginLibrary({', '.join(p.qualified_name + '@' + p.version for p in self)})"

    # -- what the build and the engine take ---------------------------------------------------------------
    def opset(self):
        """The library's plugins as a Kiln OpSet, each op running its plugin's reference."""
        from ..ops import OpSet
        ops = OpSet("plugins")
        for p in self:
            ops.add(p.name, _kernel(p, p.reference), domain=p.domain, check=p.check_node, elementwise=p.elementwise,
                    float_dtypes=p.dtypes or ())
        return ops

    def registry(self):
        """Kiln's op registry with these plugins' ops added."""
        from ..ops import extended_registry
        return extended_registry([self.opset()]) if len(self) else None

    def tactics(self, base=None):
        """``base`` (default: Kiln's own tactic library) with each plugin's tactics as candidates of its op."""
        from ..tactics import DEFAULT, Row, triton_factory
        lib = DEFAULT if base is None else base
        for p in self:
            if not p.tactics:
                continue
            rows = [Row("torch", {}, "any", 0)]
            rows += [Row(PLUGIN_TACTIC, {"tactic": t.name}, dev, 0) for t in p.tactics
                     for dev in t.offered_devices(lib.triton_on_cpu)]
            lib = lib.with_rows(p.domain, p.name, *rows)

        @triton_factory  # takes the library's triton_on_cpu (for the plugins' Triton tactics)
        def make(node, params: dict, constants: dict, device: torch.device, on_cpu: bool = False):
            return self._make_tactic(node, params, constants, device, on_cpu)
        return lib.with_factories(**{PLUGIN_TACTIC: make})

    def _make_tactic(self, node, params: dict, constants: dict, device: torch.device, on_cpu: bool = False):
        from ..ops.fused_cpu import Tactic
        from ..tactics import NotApplicable
        p = self.get(node.domain, node.op_type)
        t = p.get_tactic(str(params.get("tactic"))) if p is not None else None
        if t is None:
            raise NotApplicable(f"{node.domain}::{node.op_type} has no plugin tactic {params.get('tactic')!r} "
                                f"in this process's plugins")
        if device.type not in t.offered_devices(on_cpu):
            raise NotApplicable(f"plugin tactic {t.name!r} runs on {', '.join(t.offered_devices(on_cpu))}, "
                                f"not {device.type}")
        return Tactic(f"{PLUGIN_TACTIC}:{t.name}", _kernel(p, t.fn))

    # -- what an engine records, and the check at load -------------------------------------------------------
    def records(self, graph) -> list[dict]:
        """The record of every plugin ``graph`` uses (subgraphs included), sorted by name."""
        used = {(n.domain, n.op_type) for n in graph.all_nodes()}
        return [p.record() for key, p in sorted(self._plugins.items()) if key in used]

    def check_records(self, records: list[dict], where: str) -> None:
        """Refuse an engine whose plugins this library lacks or has at another version or signature (all
        problems named at once)."""
        problems = []
        for r in records:
            label = f"{r['domain']}::{r['name']} version {r['version']}"
            p = self.get(r["domain"], r["name"])
            if p is None:
                problems.append(f"{label} is not registered")
            elif p.version != r["version"]:
                problems.append(f"{label} is registered at version {p.version}")
            elif p.signature_hash() != r["signature"]:
                problems.append(f"{label} is registered with another declaration (inputs, attributes, dtypes "
                                f"or elementwise differ from the build's)")
        if problems:
            raise PluginError(f"{where} needs plugins this process does not have as built: " + "; ".join(problems)
                              + ". Register them (the module that declares them: kiln.build/Engine.load "
                                "plugins=, or the CLI's --plugin MODULE) and load again")


def _kernel(plugin: Plugin, fn: Callable):
    # A node's attributes are bound (checked, coerced) once, not on every inference: keyed by the attrs dict,
    # which the runtime passes unchanged on each call; the entry keeps the dict, so an id is never reused.
    bound: dict[int, tuple[dict, dict]] = {}

    def kernel(ctx, inputs: list, attrs: dict):
        node = ctx.node_name or plugin.qualified_name
        hit = bound.get(id(attrs))
        if hit is None or hit[0] is not attrs:
            if len(bound) > 1024:  # builds make and drop copies of graphs: keep the table small
                bound.clear()
            hit = bound[id(attrs)] = (attrs, plugin.bind_attrs(attrs, node))
        return plugin.run(fn, inputs, hit[1], node)
    kernel.__doc__ = plugin.doc
    return kernel


def load_modules(names: Iterable[str]) -> PluginLibrary | None:
    """The plugins of the named modules (each imported by name, as the user wrote it): every PluginLibrary the
    module defines at its top level, and the plugins declared through kiln.trt.plugin's decorators."""
    merged, found = PluginLibrary(), False
    for name in names:
        if not name.replace(".", "_").isidentifier():
            raise PluginError(f"--plugin takes a module name (importable from the current directory or "
                              f"PYTHONPATH), got {name!r}")
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise PluginError(f"plugin module {name!r} could not be imported: {e}") from None
        libs = [v for v in vars(module).values() if isinstance(v, PluginLibrary)]
        trt = _trt_plugins()
        if not libs and trt is None:
            raise PluginError(f"plugin module {name!r} defines no kiln.plugin.PluginLibrary and registers no "
                              f"kiln.trt.plugin op")
        for lib in libs + ([trt] if trt is not None else []):
            for p in lib:
                if merged.get(p.domain, p.name) is not p:
                    merged.add(p)
            found = True
    return merged if found else None


def _trt_plugins() -> PluginLibrary | None:
    """The kiln.trt.plugin registry when that module is loaded and holds plugins (TensorRT's is per process)."""
    import sys
    trt_plugin = sys.modules.get("kiln.trt.plugin")
    if trt_plugin is None:
        return None
    lib = trt_plugin.registered()
    return lib if len(lib) else None
