"""Run a Graph node by node with the op library's kernels: the executable reference for Kiln's kernels.

Inputs and outputs may be numpy arrays or torch tensors; outputs come back as numpy when every input
was numpy (or there were none), as torch tensors otherwise.
"""
from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError, KernelError, KilnError
from ..ir.convert import numpy_to_torch, torch_to_numpy
from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import OptionalType, SequenceType, TensorType
from ..ops import KernelContext, Registry, default_registry


def interpret(graph: Graph, inputs: Mapping[str, Any] | Sequence[Any] | None = None, device: str = "cpu",
              registry: Registry | None = None) -> dict[str, Any]:
    """Run ``graph`` on ``inputs`` (by name, or in graph-input order) and return its outputs by name."""
    return Interpreter(graph, device, registry).run(inputs)


class Interpreter:
    def __init__(self, graph: Graph, device: str | torch.device = "cpu", registry: Registry | None = None):
        self.graph = graph
        self.device = torch.device(device)
        self.registry = registry or default_registry()
        self.opset = graph.opsets.get("", 21)
        self._consts: dict[int, torch.Tensor] = {}
        # id(node) -> (kernel, KernelContext, env holder): made on a node's first run and reused, since If/Loop
        # bodies run their nodes on every call or iteration and building the context cost as much as a small kernel.
        # (Two threads preparing one node at once both build one; either is right.)
        self._prepared: dict[int, tuple] = {}

    # -- inputs ---------------------------------------------------------------------------
    def _bind_inputs(self, inputs) -> tuple[dict[int, Any], bool]:
        g = self.graph
        inputs = inputs_by_name(inputs, [v.name for v in g.inputs], "model")
        env: dict[int, Any] = {}
        as_numpy = all(isinstance(x, (np.ndarray, np.generic)) for x in inputs.values())
        for v in g.inputs:
            if v.name not in inputs:
                if isinstance(v.type, OptionalType):
                    env[v.id] = None
                    continue
                raise InputError(f"missing input {v.name!r} ({v.type})")
            env[v.id] = self._convert_input(v, inputs[v.name])
        return env, as_numpy

    def _convert_input(self, v: Value, x: Any) -> Any:
        if isinstance(v.type, SequenceType):
            if not isinstance(x, (list, tuple)):
                raise InputError(f"input {v.name!r} is a sequence: pass a list of arrays")
            return [self._convert_input(Value(v.name, v.type.elem or TensorType()), e) for e in x]
        if isinstance(v.type, OptionalType):
            return None if x is None else self._convert_input(Value(v.name, v.type.elem or TensorType()), x)
        t, dtype = as_tensor(v.name, x)
        check_tensor_input(v, dtype, tuple(t.shape))
        return t.to(self.device)

    # -- execution ------------------------------------------------------------------------
    def run(self, inputs=None) -> dict[str, Any]:
        env, as_numpy = self._bind_inputs(inputs)
        outs = self.run_graph(self.graph, env, free=True)
        result = {}
        for v, x in zip(self.graph.outputs, outs):
            result[v.name] = _to_user(x, v.type, as_numpy)
        return result

    def _const(self, v: Value) -> torch.Tensor:
        t = self._consts.get(v.id)
        if t is None:
            t = self._consts[v.id] = v.const.to(self.device)
        return t

    def _read(self, v: Value | None, env: dict[int, Any]) -> Any:
        if v is None:
            return None
        if v.id in env:
            return env[v.id]
        if v.const is not None:
            return self._const(v)
        raise KernelError(f"value {v.name!r} was read before it was computed")

    def run_graph(self, graph: Graph, env: dict[int, Any], free: bool = False) -> list[Any]:
        last_use = last_uses(graph) if free else {}
        outputs = {v.id for v in graph.outputs}
        for i, node in enumerate(graph.nodes):
            args = [self._read(v, env) for v in node.inputs]
            results = self._run_node(node, args, env)
            for v, r in zip(node.outputs, results):
                if v is not None:
                    env[v.id] = r
            for vid in last_use.get(i, ()):
                if vid not in outputs:
                    env.pop(vid, None)
        return [self._read(v, env) for v in graph.outputs]

    def node_device(self, node: Node) -> torch.device:
        """Where ``node`` runs (a GPU engine's bodies put their shape arithmetic on the host: engine/bodies.py)."""
        return self.device

    def _prepare(self, node: Node) -> tuple:
        opdef = self.registry.get(node.domain, node.op_type)
        if opdef is None:
            raise KernelError(f"node {node.label}: no kernel for {node.op_type}")
        # The env of the run in progress, per thread: contexts of one engine share its interpreter and may run
        # at once, each with its own env (a subgraph writes its inputs there).
        holder = threading.local()

        def run_subgraph(sub: Graph, sub_inputs: list) -> list:
            if len(sub_inputs) != len(sub.inputs):
                raise KernelError(f"node {node.label}: subgraph {sub.name!r} takes {len(sub.inputs)} inputs, "
                                  f"got {len(sub_inputs)}")
            env = holder.env
            for v, x in zip(sub.inputs, sub_inputs):
                env[v.id] = x
            return self.run_graph(sub, env)

        ctx = KernelContext(opset=self.opset, device=self.node_device(node), num_outputs=len(node.outputs),
                            output_types=[o.type if o is not None else None for o in node.outputs],
                            node_name=node.label, run_graph=run_subgraph)
        prepared = self._prepared[id(node)] = (opdef.kernel, ctx, holder)
        return prepared

    def _run_node(self, node: Node, args: list, env: dict[int, Any]) -> list:
        kernel, ctx, holder = self._prepared.get(id(node)) or self._prepare(node)
        outer = getattr(holder, "env", None)
        holder.env = env
        try:
            out = kernel(ctx, args, node.attrs)
        except KilnError:
            raise
        except Exception as e:  # noqa: BLE001 - any kernel failure becomes a KernelError naming the node
            shapes = ", ".join(_describe(a) for a in args)
            raise KernelError(f"node {node.label} ({node.op_type}) failed on inputs [{shapes}]: "
                              f"{type(e).__name__}: {e}") from e
        finally:
            holder.env = outer  # a node re-entered (a Loop in a Loop body) finds its caller's env again
        if isinstance(out, torch.Tensor) or not isinstance(out, tuple):
            out = (out,)
        if len(out) < sum(1 for o in node.outputs if o is not None):
            raise KernelError(f"node {node.label} ({node.op_type}) produced {len(out)} outputs, "
                              f"the node declares {len(node.outputs)}")
        return list(out[: len(node.outputs)])


def inputs_by_name(inputs: Any, names: list[str], owner: str) -> dict[str, Any]:
    """User inputs (a dict by name, or a list in input order) as a dict; InputError for a wrong count or name."""
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, Mapping):
        if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)):
            raise InputError(f"inputs must be a dict of name -> array, or a list in input order "
                             f"({', '.join(names)}); got {type(inputs).__name__}")
        inputs = list(inputs)
        if len(inputs) != len(names):
            raise InputError(f"expected {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
        inputs = dict(zip(names, inputs))
    unknown = [k for k in inputs if k not in set(names)]
    if unknown:
        raise InputError(f"unknown input name(s) {', '.join(map(repr, unknown))}; the {owner}'s inputs are: "
                         f"{', '.join(repr(n) for n in names) or '(none)'}")
    return inputs


def as_tensor(name: str, x: Any) -> tuple[torch.Tensor, DType]:
    """A user's input value (numpy array or torch tensor) as a tensor and its element type, or InputError."""
    try:
        if isinstance(x, (np.ndarray, np.generic)):
            return numpy_to_torch(np.asarray(x))
        if isinstance(x, torch.Tensor):
            return x, DType.from_torch(x.dtype)
    except (TypeError, ValueError) as e:
        raise InputError(f"input {name!r}: {e}") from None
    raise InputError(f"input {name!r}: expected a numpy array or torch tensor, got {type(x).__name__}")


def check_tensor_input(v: Value, dtype: DType, shape: tuple) -> None:
    """Raise InputError when a run-time tensor does not fit the input's declared type."""
    t = v.type
    if not isinstance(t, TensorType):
        return
    if t.dtype is not None and t.dtype is not dtype and not (t.dtype.is_subbyte and dtype.torch == t.dtype.torch):
        raise InputError(f"input {v.name!r} must have dtype {t.dtype.name.lower()}, got {dtype.name.lower()}")
    if t.shape is not None:
        if len(t.shape) != len(shape):
            raise InputError(f"input {v.name!r} must have rank {len(t.shape)} (shape {_fmt_shape(t.shape)}), "
                             f"got shape {list(shape)}")
        for i, (want, got) in enumerate(zip(t.shape, shape)):
            if isinstance(want, int) and want != got:
                raise InputError(f"input {v.name!r}: dimension {i} must be {want} (shape {_fmt_shape(t.shape)}), "
                                 f"got shape {list(shape)}")


def _fmt_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _describe(a: Any) -> str:
    if isinstance(a, torch.Tensor):
        return f"{str(a.dtype).replace('torch.', '')}{list(a.shape)}"
    if isinstance(a, list):
        return f"seq(len={len(a)})"
    return "None" if a is None else type(a).__name__


def last_uses(graph: Graph) -> dict[int, list[int]]:
    """node index -> ids of values (computed in this graph) whose last reader is that node."""
    from ..ir.graph import outer_reads
    last: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v is not None:
                last[v.id] = i
        for sg in n.subgraphs():
            for v in outer_reads(sg):
                last[v.id] = i
    by_node: dict[int, list[int]] = {}
    for vid, i in last.items():
        by_node.setdefault(i, []).append(vid)
    return by_node


def _to_user(x: Any, vtype, as_numpy: bool) -> Any:
    if isinstance(x, list):
        elem = vtype.elem if isinstance(vtype, SequenceType) else None
        return [_to_user(e, elem, as_numpy) for e in x]
    if x is None:
        return None
    if isinstance(vtype, OptionalType):
        vtype = vtype.elem
    if isinstance(x, torch.Tensor) and as_numpy:
        return torch_to_numpy(x, getattr(vtype, "dtype", None))
    return x
