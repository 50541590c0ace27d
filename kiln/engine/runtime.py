"""Engine (weights held once, plan, report) and ExecutionContext (per-context stream, CUDA graphs).

An ExecutionContext is meant for one thread at a time (it holds a lock); use one context per thread to
run an engine concurrently.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import DeviceMismatchError, EngineFormatError, InputError, KilnError, ShapeError
from ..ir.convert import torch_to_numpy
from ..ir.dtype import DType
from ..ir.graph import Graph
from ..ir.types import TensorType
from ..ops import Registry, default_registry
from . import device_info
from .buffers import check_output_buffers, check_output_shape
from .precision_flags import float32_precision
from .profile import Profile
from ..runtime.interpreter import as_tensor, inputs_by_name
from .binding import Binding, bind, resolve_device
from .program import Program
from .spec import EngineSpec
from ..threads import check_thread_count, warn_if_spinning

log = logging.getLogger("kiln.runtime")

# One capture at a time per process: captures change the CUDA caching allocator's state.
_CAPTURE_LOCK = threading.Lock()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: DType | None
    shape: tuple  # ints, symbols (str) or None


class Engine:
    """An optimized, device-specific plan with its weights. Build with ``kiln.build``; ``save``/``load``."""

    def __init__(self, graph: Graph, header: dict, report: Any = None, registry: Registry | None = None,
                 tactics: Any = None, source_graph: Graph | None = None, notes: list[str] | None = None, *,
                 plugins: Any = None, binding: Binding | None = None):
        """The one way an engine is made, by ``Engine.load`` and by ``kiln.build`` alike: from its graph (the
        plan), header and report. ``binding``: the graph already bound on this engine's device (the build's
        lowering binds once, kiln/builder/lower.py); None binds it here. Nothing edits an engine afterwards
        but a refit (kiln/builder/refitter.py), which swaps its program whole."""
        self.header = header
        self.report = report
        self.spec = EngineSpec.from_json(header["config"])  # what the engine reads of its build configuration
        self.device = resolve_device(self.spec.device)
        self.registry = registry or default_registry()
        self.output_names: list[str] = list(header["output_names"])
        self.inputs = [TensorInfo(v.name, getattr(v.type, "dtype", None), tuple(getattr(v.type, "shape", None) or ()))
                       for v in graph.inputs]
        self.outputs = [TensorInfo(n, getattr(v.type, "dtype", None), tuple(getattr(v.type, "shape", None) or ()))
                        for n, v in zip(self.output_names, graph.outputs)]
        # Debug tensors (kiln.build's debug_tensors): the plan's outputs after the model's own, kept observable.
        self.debug_names: list[str] = list(header.get("debug_tensors", ()))
        first = len(self.output_names)
        self.debug_tensors = [TensorInfo(n, getattr(v.type, "dtype", None), tuple(getattr(v.type, "shape", None)
                                                                                  or ()))
                              for n, v in zip(self.debug_names, graph.outputs[first:])]
        self._debug_order: tuple = ()  # (name, index in the program's outputs), in the order the layers run
        if self.debug_tensors:
            step_of = {o.id: i for i, n in enumerate(graph.nodes) for o in n.outputs if o is not None}
            order = sorted(range(len(self.debug_tensors)),
                           key=lambda k: step_of.get(graph.outputs[first + k].id, -1))
            self._debug_order = tuple((self.debug_names[k], first + k) for k in order)
        self.profiles: tuple[Profile, ...] = self.spec.profiles
        # What loading changed or replaced (another device, torch or Kiln; tactics that do not apply here)
        self.load_notes: list[str] = list(notes or [])
        self.plugins = plugins  # the kiln.plugin.PluginLibrary its custom ops run from (given by build and load)
        self.signed_by: str | None = None  # the fingerprint of the key that signed the file it was loaded from
        self._tactic_library = tactics  # a kiln.tactics.TacticLibrary (default: Kiln's own)
        # A refittable engine keeps the ONNX graph it was built from, with its current initializers
        # (kiln/builder/refitter.py).
        self.source_graph = source_graph
        self._refit_lock = threading.Lock()
        self._bind(graph, self.load_notes, binding)

    def _bind(self, graph: Graph, notes: list[str], binding: Binding | None = None) -> None:
        """Make ``graph`` the engine's: its constants on the device, its tactics bound (binding.py; or the
        ``binding`` given, made for this graph on this device), its program. The program is assigned last, in
        one step: a run takes the program once (a snapshot), so a context running while the engine is
        refitted sees the old weights or the new ones, never a mix."""
        if binding is None:
            binding = bind(graph, self.device, self.registry, self._tactic_library)
        elif binding.device != self.device:
            raise KilnError(f"the binding given is for {binding.device}, this engine runs on {self.device}")
        notes.extend(binding.notes)
        program = Program(graph, self.device, self.registry, binding.constants, binding.tactics)
        self.graph, self._constants, self._choices, self._tactics = (graph, binding.constants, binding.choices,
                                                                     binding.tactics)
        self.program = program

    # -- io description --------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """The number of layers (nodes of the optimized graph) the engine runs."""
        return len(self.graph.nodes)

    @property
    def tactics(self) -> dict[str, str]:
        """The implementation chosen for each layer that has a choice: {layer name: tactic name}."""
        return {s.node.label: s.tactic for s in self.program.steps if s.tactic}

    @property
    def tactic_choices(self) -> dict[str, dict]:
        """The choice each layer with a tactic space runs, as plain data: {layer name: {"name", "params"}}
        (what ``kiln.tune.export_choices`` writes and ``BuilderConfig.tactic_replay`` reads)."""
        return {label: c.to_json() for label, c in self._choices.items()}

    @property
    def arena_bytes(self) -> int | None:
        """Activation memory planned at build for the largest profile shapes (None without a bound on every
        input dim: the arena is then sized at run time; engines with data-dependent shapes use no arena)."""
        return self.header.get("arena_bytes")

    def create_execution_context(self, arena: bool = True, threads: int | None = None) -> "ExecutionContext":
        """A context with its own arena (``arena=False``: intermediates come from torch's allocator).
        ``threads``: CPU intra-op threads for its runs (process-wide in torch, set before each run; see
        kiln/threads.py); None keeps the process's setting."""
        return ExecutionContext(self, arena=arena, threads=threads)

    def debug_values(self, outs: list[Any]) -> list[tuple[str, Any]]:
        """(name, value) of each debug tensor, taken from a run's full output list (the program's), in the order
        the layers that compute them run (inputs and constants first)."""
        return [(name, outs[i]) for name, i in self._debug_order]

    # -- persistence -----------------------------------------------------------------------
    def serialize(self, weights: bool = True, signing_key: Any = None) -> bytes:
        """The engine file's bytes. ``weights=False``: the plan alone (a weight-stripped engine, loaded with
        ``Engine.load(path, weights_from="model.onnx")``). ``signing_key``: sign the file (Ed25519; an
        Ed25519PrivateKey or its raw 32 bytes), for ``Engine.load(path, trusted_keys=[...])``."""
        from .format import pack
        from .graph_json import Encoder
        encoder = Encoder()  # one for both graphs: initializers a pass left unchanged are stored once
        plan = encoder.graph(self.graph)
        header = dict(self.header)
        if self.report is not None:
            header["report"] = self.report.to_json()
        if not weights:
            if "source" not in header:
                raise KilnError("this engine has no record of the model it was built from (it was built by an "
                                "older Kiln), so it cannot be saved without weights: rebuild it")
            header["weights"] = "stripped"
            header["source"] = {k: v for k, v in header["source"].items() if k != "graph"}
            data = pack(header, plan, {})
        else:
            if self.source_graph is not None:
                header["source"] = dict(header["source"], graph=encoder.graph(self.source_graph))
            data = pack(header, plan, encoder.tensors)
        if signing_key is not None:
            from .signing import sign
            data = sign(data, signing_key)
        return data

    def save(self, path: str | Path, weights: bool = True, signing_key: Any = None) -> None:
        """Write the engine file (see ``serialize`` for ``weights`` and ``signing_key``)."""
        Path(path).write_bytes(self.serialize(weights=weights, signing_key=signing_key))

    @staticmethod
    def deserialize(data: bytes, where: str = "engine bytes", plugins=None, *, trusted_keys: Any = None,
                    weights_from: Any = None, device: str | None = None, strict_device: bool = False) -> "Engine":
        """An engine from the bytes of an engine file, which are treated as hostile: validated (format.py,
        validate.py) before anything is built from them. Every failure is a KilnError. See ``load`` for
        the other arguments."""
        if trusted_keys is not None:  # a key that is not one is the caller's error (TypeError), not the file's
            from .signing import public_key
            trusted_keys = [public_key(k) for k in trusted_keys]
        try:
            return Engine._deserialize(bytes(data), where, trusted_keys, weights_from, device, strict_device, plugins)
        except KilnError:
            raise
        except Exception as e:  # noqa: BLE001 - belt and braces: what validation missed is still a bad file
            raise EngineFormatError(f"{where} could not be loaded: {type(e).__name__}: {e}") from e

    @staticmethod
    def _deserialize(data: bytes, where: str, trusted_keys: Any, weights_from: Any, device: str | None,
                     strict_device: bool, plugins=None) -> "Engine":
        from .format import unpack
        from .graph_json import decode_graph
        from .signing import fingerprint, split
        from .validate import check_engine, check_source_graph, read_report
        # The signature first (before the header is parsed), then the header against its schema.
        header, plan, weights = unpack(data, where, trusted_keys, strict_versions=strict_device)
        built = header
        header, notes = device_info.place(header, device, strict_device, where)
        registry, tactics = default_registry(), None
        records = header.get("plugins", [])
        if records or plugins is not None:
            from ..plugin import PluginLibrary
            plugins = plugins if plugins is not None else PluginLibrary()
            plugins.check_records(records, where)  # before the plan is checked: name what is missing first
            if len(plugins):
                registry, tactics = plugins.registry(), plugins.tactics()
        try:
            report = read_report(header)
        except EngineFormatError as e:
            raise EngineFormatError(f"{where}: {e}") from None
        stripped = header.get("weights") == "stripped"
        stored_source = header.get("source", {}).get("graph")
        header = {k: v for k, v in header.items() if k != "weights"}
        if "source" in header:  # the engine keeps the record; the graph itself becomes source_graph
            header["source"] = {k: v for k, v in header["source"].items() if k != "graph"}
        source_graph = None
        if stripped and weights_from is None:
            raise EngineFormatError(f"{where} was saved without its weights (a weight-stripped engine): load it "
                                    f"with Engine.load(path, weights_from='model.onnx'), the ONNX model it was "
                                    f"built from (or one of the same architecture)")
        if weights_from is not None:
            # The weights are computed by the build's passes (kiln/builder/replay.py): the one place where loading
            # reaches up to the compiler, by name, and only when weights_from is given (the engine package does
            # not import the builder: loading a full engine never needs it, tests/test_imports.py).
            import importlib
            replay = importlib.import_module("kiln.builder.replay")
            # under the build's own configuration (its device's pass decisions), wherever the engine runs now
            plan, weights, source_graph = replay.weights_from_onnx(built, plan, report, weights_from, registry, where)
        check_engine(header, plan, weights, registry, where)
        if source_graph is None and stored_source is not None:
            check_source_graph(stored_source, weights, registry, where)
            source_graph = decode_graph(stored_source, weights)
        graph = decode_graph(plan, weights)
        engine = Engine(graph, header, report, registry, tactics, source_graph=source_graph, notes=notes,
                        plugins=plugins)
        key = split(data)[1]
        engine.signed_by = None if key is None else fingerprint(key)
        return engine

    @staticmethod
    def load(path: str | Path, max_bytes: int | None = None, plugins=None, *, trusted_keys: Any = None,
             weights_from: Any = None, device: str | None = None, strict_device: bool = False) -> "Engine":
        """Load an engine file; one larger than ``max_bytes`` (default ``format.MAX_FILE_BYTES``, 64 GiB) is
        refused before it is read. ``plugins``: the kiln.plugin.PluginLibrary of an engine with custom ops
        (PluginError when the file needs one that is missing, or registered at another version or declaration).

        ``trusted_keys``: Ed25519 public keys (``Ed25519PublicKey`` or raw 32 bytes); when given, only a file
        signed by one of them loads (``save(path, signing_key=...)``, ``kiln sign``), checked before anything
        in it is read. ``weights_from``: an ONNX model (path, bytes or ModelProto) whose initializers become
        the engine's weights: required for a weight-stripped engine (``save(path, weights=False)``); the
        model must be the one the engine was built from or one of the same architecture (names, shapes,
        dtypes and graph are checked: ModelMismatchError).

        ``device``: where to run it ("cpu", "cuda", "cuda:N"; default: where it was built when this machine has
        that device, else the CPU). An engine built on another device (another GPU model, the CPU), or by
        another torch or Kiln of its format version, loads: the stored tactics that do not apply here are
        replaced by this device's default kernels, and ``load_notes`` lists what changed.
        ``strict_device=True`` refuses such an engine instead (DeviceMismatchError / EngineFormatError)."""
        from .format import MAX_FILE_BYTES
        limit = MAX_FILE_BYTES if max_bytes is None else max_bytes
        p = Path(path)
        if not p.is_file():
            raise EngineFormatError(f"engine file {str(p)!r} does not exist")
        size = p.stat().st_size
        if size > limit:
            raise EngineFormatError(f"engine file {str(p)!r} is {size} bytes, over the limit of {limit} bytes "
                                    f"(Engine.load's max_bytes)")
        with p.open("rb") as f:
            data = f.read(size + 1)  # never more than the limit, even if the file grew since stat
        if len(data) != size:
            raise EngineFormatError(f"engine file {str(p)!r} changed size while it was read")
        return Engine.deserialize(data, f"engine file {str(p)!r}", plugins, trusted_keys=trusted_keys,
                                  weights_from=weights_from, device=device, strict_device=strict_device)

    def __repr__(self) -> str:
        return f"Engine({self.device}, {self.num_layers} layers, inputs={[i.name for i in self.inputs]})"


class InferHandle:
    """The pending result of ``infer_async``; ``wait()`` returns the outputs."""

    def __init__(self, event, result: dict[str, Any], finish):
        self._event, self._result, self._finish = event, result, finish

    def done(self) -> bool:
        return self._event is None or self._event.query()

    def wait(self) -> dict[str, Any]:
        if self._event is not None:
            self._event.synchronize()
        return self._finish(self._result)


@dataclass
class _Captured:
    graph: Any
    static_inputs: dict[str, torch.Tensor]
    static_outputs: list[torch.Tensor]
    keep: list  # host buffers the graph copies from on every replay
    layout: Any = None  # the arena layout the graph writes into (keeps its arena alive)


MAX_LAYOUTS = 64  # arena layouts kept per context (one per input-shape signature)
MAX_VALUE_GRAPHS = 8  # CUDA graphs / arena layouts per input shapes for distinct host-input values (a rate, a flag)


def run_key(feed: Mapping[str, torch.Tensor], host_inputs: frozenset[str]) -> tuple:
    """What a recorded arena layout or captured CUDA graph holds for: the inputs' names, shapes and dtypes, and
    the values of the inputs kept on the host (Program.host_inputs), which steer host work such as an If's
    branch. (shapes, values): the second part is empty for an engine without host inputs."""
    shapes = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(feed.items()))
    return shapes, tuple((k, tuple(feed[k].reshape(-1).tolist())) for k in sorted(host_inputs) if k in feed)


class ExecutionContext:
    """Runs an engine. Own CUDA stream and CUDA graphs (one per input shape) on the GPU."""

    def __init__(self, engine: Engine, arena: bool = True, threads: int | None = None):
        self.engine = engine
        self.device = engine.device
        self.threads = None if threads is None else check_thread_count(threads)
        if self.device.type == "cpu":
            warn_if_spinning()
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self.use_cuda_graphs = self.device.type == "cuda" and engine.spec.cuda_graphs
        self._graphs: dict[tuple, _Captured | None] = {}
        self._lock = threading.Lock()
        self.notes: list[str] = []
        self.profile_index = 0
        self._input_shapes: dict[str, tuple] = {}
        self._accepted: tuple | None = None  # the last inputs' signature (see _prepare_repeat)
        # Dynamic tensor memory (arena.py): one arena, sized at build for the largest profile shapes.
        self.use_arena = bool(arena) and bool(engine.header.get("arena"))
        self._arena = self._allocate_arena() if self.use_arena else None
        self._layouts: dict[tuple, Any] = {}
        self._last_layout = None
        self._program = engine.program  # the program the layouts and CUDA graphs were made for

    def _allocate_arena(self) -> torch.Tensor:
        size = max(int(self.engine.arena_bytes or 0), 1)
        try:
            return torch.empty(size, dtype=torch.uint8, device=self.device)
        except (RuntimeError, MemoryError) as e:  # the size comes from the engine file (header 'arena_bytes')
            raise DeviceMismatchError(f"cannot allocate this engine's activation arena of {size} bytes (header "
                                      f"field 'arena_bytes') on {self.device}: {str(e).splitlines()[0][:200]}; "
                                      f"create_execution_context(arena=False) runs without one") from None

    # -- TensorRT-style shape setting (optional) ------------------------------------------
    def set_input_shape(self, name: str, shape) -> None:
        """Record the shape of input ``name`` ahead of a run, as TensorRT's contexts need; raises InputError for an
        unknown input. Kiln takes the real shapes from the tensors passed to each run, so this only records it."""
        if name not in {i.name for i in self.engine.inputs}:
            raise InputError(f"unknown input {name!r}; inputs are {[i.name for i in self.engine.inputs]}")
        self._input_shapes[name] = tuple(int(d) for d in shape)

    # -- inputs ------------------------------------------------------------------------------
    def _prepare(self, inputs: Mapping[str, Any] | list) -> tuple[dict[str, torch.Tensor], bool]:
        repeat = self._prepare_repeat(inputs)
        if repeat is not None:
            return repeat
        eng = self.engine
        inputs = inputs_by_name(inputs, [i.name for i in eng.inputs], "engine")
        as_numpy = all(isinstance(x, (np.ndarray, np.generic)) for x in inputs.values())
        out = {}
        for info in eng.inputs:
            if info.name not in inputs:
                raise InputError(f"missing input {info.name!r} (dtype {info.dtype.name.lower() if info.dtype else '?'}"
                                 f", shape {list(info.shape)})")
            t, dtype = as_tensor(info.name, inputs[info.name])
            if info.dtype is not None and dtype is not info.dtype and not (info.dtype.is_subbyte and
                                                                            info.dtype.torch == t.dtype):
                raise InputError(f"input {info.name!r} must have dtype {info.dtype.name.lower()}, "
                                 f"got {dtype.name.lower()}{_cast_hint(info.dtype, dtype)}")
            self._check_shape(info, tuple(t.shape))
            out[info.name] = t
        self._select_profile({k: tuple(v.shape) for k, v in out.items()})
        self._accepted = _signature(eng.inputs, inputs, out)
        return out, as_numpy

    def _prepare_repeat(self, inputs: Any) -> tuple[dict[str, torch.Tensor], bool] | None:
        """The inputs, when they are exactly like the last accepted ones (a dict of plain numpy arrays, or of
        torch tensors, of the same names, dtypes and shapes): then every check above already passed for
        them and the same profile holds, so only the conversion is left. None sends the call the long way.
        A serving loop or benchmark calls with the same signature every time; the checks cost about as much
        as a small layer."""
        accepted = self._accepted
        if accepted is None or type(inputs) is not dict or len(inputs) != len(accepted[1]):
            return None
        as_numpy, entries = accepted
        out = {}
        for name, kind, dtype, shape in entries:
            x = inputs.get(name)
            if type(x) is not kind or x.dtype != dtype or x.shape != shape:
                return None
            # A copy, as numpy_to_torch makes: the run must not see the caller change the array meanwhile.
            out[name] = torch.from_numpy(x.copy()) if as_numpy else x
        return out, as_numpy

    def _check_shape(self, info: TensorInfo, shape: tuple) -> None:
        if info.shape and len(info.shape) != len(shape):
            raise ShapeError(f"input {info.name!r} must have rank {len(info.shape)} (shape {list(info.shape)}), "
                             f"got shape {list(shape)}")
        for i, (want, got) in enumerate(zip(info.shape, shape)):
            if isinstance(want, int) and want != got:
                raise ShapeError(f"input {info.name!r}: dimension {i} is fixed at {want} in this engine, "
                                 f"got shape {list(shape)}")

    def _select_profile(self, shapes: dict[str, tuple]) -> None:
        profiles = self.engine.profiles
        if not profiles:
            return
        if profiles[self.profile_index].contains(shapes):
            return
        for i, p in enumerate(profiles):
            if p.contains(shapes):
                self.profile_index = i
                return
        reasons = "; ".join(f"profile {i}: {p.mismatch(shapes)}" for i, p in enumerate(profiles))
        raise ShapeError(f"input shapes fit no optimization profile of this engine ({reasons}). "
                         f"Rebuild with a profile that covers them.")

    # -- running -----------------------------------------------------------------------------
    def _snapshot(self) -> Program:
        """The engine's program for this run, taken once (a refit swaps it whole). Arena layouts and CUDA
        graphs belong to one program: a refitted engine's runs record them anew."""
        program = self.engine.program
        if program is not self._program:
            self._program = program
            self._layouts.clear()
            self._graphs.clear()
            self._last_layout = None
        return program

    def _eager(self, feed: dict[str, torch.Tensor], program: Program, keep: list | None = None) -> list[torch.Tensor]:
        with float32_precision(self.device, self.engine.spec.tf32):
            return self._launch(feed, program, keep)

    def _launch(self, feed: dict[str, torch.Tensor], program: Program, keep: list | None = None) -> list[torch.Tensor]:
        env = {v.id: feed[v.name] for v in program.graph.inputs}
        with torch.inference_mode():
            if not self.use_arena:
                return program.run(env, keep=keep)
            key = run_key(feed, program.host_inputs)
            layout = self._layouts.get(key)
            if layout is not None:
                self._last_layout = layout
                return program.run(env, keep=keep, layout=layout)
            if key[1] and self._value_keys_over_cap(self._layouts, key, "arena layouts"):
                self._last_layout = None  # an input that counts (a step, an offset): no layout would be reused
                return program.run(env, keep=keep)
            # First run at these shapes: record the tensors, then place them for the runs that follow.
            from .arena import Recorder, plan_layout
            recorder, inputs = Recorder(), dict(env)
            outs = program.run(env, hook=recorder)
            layout = plan_layout(program, recorder, inputs, self.device, self._arena)
            for label, why in layout.unplaceable.items():  # a kernel aliased storage the analysis did not name
                msg = f"arena: layer {label} is kept out of the arena: {why}"
                if msg not in self.notes:
                    self.notes.append(msg)
                    log.warning(msg)
            if layout.arena is not self._arena:
                msg = (f"arena grown from {self._arena.numel()} to {layout.arena.numel()} bytes for input shapes "
                       f"{[list(s) for _, s, _ in key[0]]} (build plan: {self.engine.arena_bytes})")
                self.notes.append(msg)
                log.info(msg)
                self._arena = layout.arena
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[key] = self._last_layout = layout
            return outs

    def memory_stats(self) -> dict | None:
        """Where the last run's intermediates lived: arena bytes, tensors placed in the arena and those left to
        torch's allocator (by op type), Concat layers done in place, layers that declined their buffer, and layers kept
        out of the arena because their kernel returned storage the alias analysis does not name ("unplaceable":
        {layer name: why}; each is also logged once at WARNING and added to ``notes``)."""
        if not self.use_arena:
            return None
        out = {"arena_allocated_bytes": self._arena.numel(), "build_arena_bytes": self.engine.arena_bytes}
        if self._last_layout is not None:
            out.update(self._last_layout.stats.to_json())
            out["declined"] = sorted(self._last_layout.missed)
            out["unplaceable"] = dict(self._last_layout.unplaceable)
        return out

    def _run_on_device(self, feed: dict[str, torch.Tensor]) -> list[Any]:
        program = self._snapshot()
        if self.device.type == "cpu":  # no float32 switches to set on the CPU
            for k, v in feed.items():
                if v.device.type != "cpu":
                    feed[k] = v.cpu()
            return self._launch(feed, program)
        host = program.host_inputs
        feed = {k: (v.cpu() if k in host else v.to(self.device, non_blocking=True)) for k, v in feed.items()}
        if not self.use_cuda_graphs:
            return self._eager(feed, program)
        key = run_key(feed, host)
        cap = self._graphs.get(key, False)
        if cap is False:
            if key[1] and self._value_keys_over_cap(self._graphs, key, "CUDA graphs"):
                return self._eager(feed, program)
            cap = self._graphs[key] = self._capture(feed, program)
        if cap is None:
            return self._eager(feed, program)
        for k, v in feed.items():
            if k not in host:  # a host input's value is part of the key: the graph holds exactly this value
                cap.static_inputs[k].copy_(v, non_blocking=True)
        cap.graph.replay()
        return cap.static_outputs

    def _value_keys_over_cap(self, cache: dict, key: tuple, what: str) -> bool:
        """True when ``cache`` (layouts or graphs) holds MAX_VALUE_GRAPHS entries for the input shapes of ``key``
        already, each for other host-input values: an input whose values do not repeat (a counter) would record
        one per run. Such runs go without (said once in the notes)."""
        if sum(1 for k in cache if k[0] == key[0]) < MAX_VALUE_GRAPHS:
            return False
        msg = (f"{what}: more than {MAX_VALUE_GRAPHS} values of the host input(s) {[k for k, _ in key[1]]} at "
               f"input shapes {[list(s) for _, s, _ in key[0]]}; further values run without")
        if msg not in self.notes:
            self.notes.append(msg)
            log.info(msg)
        return True

    def _capture(self, feed: dict[str, torch.Tensor], program: Program) -> _Captured | None:
        static = {k: v.clone() for k, v in feed.items()}
        try:
            self._eager(static, program)  # warm-up: lazy inits, cuBLAS handles, autotuners
            self.stream.synchronize()
            g = torch.cuda.CUDAGraph()
            # thread_local: other threads' contexts may keep running while this one captures.
            keep: list = []
            with _CAPTURE_LOCK, torch.cuda.graph(g, stream=self.stream, capture_error_mode="thread_local"):
                outs = self._eager(static, program, keep)
            if not all(isinstance(o, torch.Tensor) for o in outs):
                raise RuntimeError("an output is not a tensor")
            return _Captured(g, static, outs, keep, self._last_layout)
        except Exception as e:  # noqa: BLE001 - capture is an optimization: fall back to eager and say so
            msg = (f"CUDA graph capture failed for input shapes {[tuple(v.shape) for v in feed.values()]}: "
                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; running eagerly")
            self.notes.append(msg)
            log.warning(msg)
            self.stream.synchronize()
            return None

    def _finish(self, outs: list[Any], as_numpy: bool, out_buffers: Mapping[str, Any] | None,
                debug: Any = None) -> dict[str, Any]:
        if debug is not None:  # the run is complete here (InferHandle.wait synchronized it)
            debug(self.engine.debug_values(outs))
        result = {}
        for info, x in zip(self.engine.outputs, outs):
            if out_buffers is not None and info.name in out_buffers:
                buf = out_buffers[info.name]
                check_output_shape(info.name, buf, tuple(x.shape))
                if isinstance(buf, np.ndarray):
                    buf[...] = torch_to_numpy(x, info.dtype)
                else:
                    buf.copy_(x)
                result[info.name] = buf
            elif as_numpy and isinstance(x, torch.Tensor):
                result[info.name] = torch_to_numpy(x, info.dtype)
            elif isinstance(x, torch.Tensor) and self.use_cuda_graphs:
                result[info.name] = x.clone()  # static graph outputs are overwritten by the next replay
            else:
                result[info.name] = x
        return result

    def infer(self, inputs: Mapping[str, Any] | list, outputs: Mapping[str, Any] | None = None,
              debug: Any = None) -> dict[str, Any]:
        """Run synchronously. numpy in -> numpy out; torch in -> torch out on the engine's device. ``debug``: see
        ``infer_async``."""
        return self.infer_async(inputs, outputs, debug).wait()

    def infer_async(self, inputs: Mapping[str, Any] | list, outputs: Mapping[str, Any] | None = None,
                    debug: Any = None) -> InferHandle:
        """Enqueue on this context's stream and return at once (on CPU the work is done on return).

        ``debug``: for an engine with debug tensors (``Engine.debug_tensors``), called once the run is complete (in
        ``wait()``) with [(name, torch tensor)] of every debug tensor, in the order the layers computing them ran;
        the tensors are the engine's own (valid until the next run), to read, not to keep or write."""
        check_output_buffers(outputs, self.engine.outputs, self.device)
        feed, as_numpy = self._prepare(inputs)
        if not self.engine.debug_tensors:
            debug = None
        with self._lock:
            if self.stream is None:
                if self.threads is not None and torch.get_num_threads() != self.threads:
                    torch.set_num_threads(self.threads)
                outs = self._run_on_device(feed)
                return InferHandle(None, outs, lambda o: self._finish(o, as_numpy, outputs, debug))
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            direct = not as_numpy and outputs is None and debug is None
            with torch.cuda.stream(self.stream):
                outs = self._run_on_device(feed)
                if not direct and self.use_cuda_graphs:  # read in wait(), after the lock: by then the next replay
                    # (a later infer_async, another thread's run) may have overwritten the graph's static outputs
                    outs = [o.clone() if isinstance(o, torch.Tensor) else o for o in outs]
                result = self._finish(outs, False, None) if direct else outs
                event = torch.cuda.Event()
                event.record(self.stream)
        if direct:
            return InferHandle(event, result, lambda r: r)
        return InferHandle(event, result, lambda o: self._finish(o, as_numpy, outputs, debug))


# numpy element types that numpy_to_torch converts with a plain copy (the others are reinterpreted or widened).
_PLAIN_NUMPY = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.float16, np.int8, np.int16, np.int32,
                                               np.int64, np.uint8, np.bool_))


def _signature(infos: list, given: Mapping[str, Any], feed: dict[str, torch.Tensor]) -> tuple | None:
    """What ``_prepare_repeat`` compares a later call with: (numpy?, ((name, type, dtype, shape), ...)), or
    None when these inputs cannot take the short way (mixed kinds, types that need more than a copy)."""
    entries = []
    kinds = set()
    for info in infos:
        x = given[info.name]
        if type(x) is np.ndarray and x.dtype in _PLAIN_NUMPY and x.dtype.isnative:
            entries.append((info.name, np.ndarray, x.dtype, x.shape))
        elif type(x) is torch.Tensor and feed[info.name] is x:
            entries.append((info.name, torch.Tensor, x.dtype, x.shape))
        else:
            return None
        kinds.add(entries[-1][1])
    if len(kinds) > 1:
        return None
    return kinds == {np.ndarray}, tuple(entries)


def _cast_hint(want: DType, got: DType) -> str:
    """How to convert, for the usual mix-ups (numpy's float64 and int64 defaults)."""
    if want.torch.is_floating_point != got.torch.is_floating_point or DType.BOOL in (want, got):
        return ""
    name = str(want.torch).replace("torch.", "")
    why = ("numpy and Python floats default to float64; " if got == DType.DOUBLE else
           "numpy and Python ints default to int64; " if got == DType.INT64 else "")
    return f" ({why}cast with x.astype(np.{name}) or tensor.to(torch.{name}))"
