"""Type and value propagation: what every value's dtype and shape is, and which values are known
constants, for given input shapes.

Each node runs either for real (all inputs known and small: this is constant folding's engine) or on
torch's ``meta`` device (shapes only), using the op's own kernel, so the shape rule of an op is its
kernel. An op may give an explicit ``OpDef.infer`` rule instead. Data-dependent shapes (NonZero,
Unique, ...) come out unknown.

Symbolic dims are handled by probing: each symbolic input dim is given a distinct large prime, and an
output dim equal to that prime gets the symbol back. Values computed from a probed dim are marked
``dynamic`` and are never folded into constants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value
from ..ir.types import SequenceType, TensorType
from ..ops import KernelContext, Registry, default_registry

# Values at most this many elements are computed for real when their inputs are known.
MAX_FOLD_ELEMENTS = 1 << 16
_PROBES = (1009, 1013, 1019, 1021, 1031, 1033, 1039, 1049, 1051, 1061, 1063, 1069, 1087, 1091, 1093, 1097)


@dataclass
class Facts:
    types: dict[int, Any] = field(default_factory=dict)  # value id -> TensorType / SequenceType / ...
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # value id -> known (CPU) tensor
    dynamic: set[int] = field(default_factory=set)  # value ids whose data depends on probed (symbolic) dims
    symbols: dict[int, str] = field(default_factory=dict)  # probe value -> symbol name

    def type_of(self, v: Value):
        return self.types.get(v.id, v.type)

    def shape(self, v: Value):
        return getattr(self.type_of(v), "shape", None)

    def known(self, v: Value) -> torch.Tensor | None:
        """The value's data if it is a foldable constant (known and not shape-dynamic)."""
        if v.id in self.dynamic:
            return None
        if v.const is not None:
            return v.const
        return self.values.get(v.id)


def propagate(graph: Graph, input_shapes: dict[str, tuple] | None = None, registry: Registry | None = None,
              facts: Facts | None = None) -> Facts:
    """Propagate types through ``graph``; ``input_shapes`` overrides graph input shapes (concrete dims)."""
    registry = registry or default_registry()
    facts = facts or Facts()
    probe_iter = iter(_PROBES)
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType):
            facts.types[v.id] = t
            continue
        shape = tuple(input_shapes[v.name]) if input_shapes and v.name in input_shapes else t.shape
        if shape is not None:
            concrete = []
            for d in shape:
                if isinstance(d, int):
                    concrete.append(d)
                else:
                    p = next(probe_iter, None)
                    if p is None:
                        concrete = None
                        break
                    facts.symbols[p] = d if isinstance(d, str) else f"{v.name}_dim{len(concrete)}"
                    concrete.append(p)
            shape = tuple(concrete) if concrete is not None else None
        facts.types[v.id] = TensorType(t.dtype, shape)
    for c in graph.constants.values():
        facts.types[c.id] = c.type
    opset = graph.opsets.get("", 21)
    for node in graph.nodes:
        _step(node, facts, registry, opset)
    return facts


def _probed(shape) -> bool:
    return shape is not None and any(isinstance(d, int) and d in _PROBES for d in shape)


def _step(node: Node, facts: Facts, registry: Registry, opset: int) -> None:
    opdef = registry.get(node.domain, node.op_type)
    outs = [o for o in node.outputs if o is not None]
    in_dynamic = any(v is not None and v.id in facts.dynamic for v in node.inputs)
    if node.op_type == "Shape" and node.inputs and _probed(facts.shape(node.inputs[0])):
        in_dynamic = True
    if opdef is None or any(isinstance(facts.type_of(v), SequenceType) for v in node.inputs if v is not None) \
            or any(True for _ in node.subgraphs()):
        return  # types stay as declared
    known = [None if v is None else (v.const if v.const is not None else facts.values.get(v.id))
             for v in node.inputs]
    real = all(v is None or k is not None for v, k in zip(node.inputs, known))
    small = all(k is None or k.numel() <= MAX_FOLD_ELEMENTS for k in known)
    results = None
    if node.op_type in ("Shape", "Size") and node.inputs and node.inputs[0] is not None:
        t = facts.type_of(node.inputs[0])
        if isinstance(t, TensorType) and t.is_static and t.dtype is not None:
            # A stride-0 CPU tensor has the shape without the memory: the kernel runs for real.
            stub = torch.zeros((), dtype=t.dtype.torch).expand(t.shape)
            results = _run(opdef, node, [stub], torch.device("cpu"), opset)
    if results is not None:
        pass
    elif real and small and node.inputs and opdef.op_type not in _NEVER_FOLD:
        results = _run(opdef, node, [None if k is None else k.cpu() for k in known], torch.device("cpu"), opset)
    if results is None:
        args = []
        for v, k in zip(node.inputs, known):
            if v is None:
                args.append(None)
            elif k is not None and (k.dtype in (torch.int64, torch.int32) and k.numel() <= 64 or k.dim() == 0):
                args.append(k.cpu())  # shape-like data kernels read with .tolist()
            else:
                t = facts.type_of(v)
                if not isinstance(t, TensorType) or t.shape is None or t.dtype is None \
                        or not all(isinstance(d, int) for d in t.shape):
                    return
                args.append(torch.empty(t.shape, dtype=t.dtype.torch, device="meta"))
        results = _run(opdef, node, args, torch.device("meta"), opset)
        if results is None:  # torch mixes CPU and meta tensors only when the CPU ones are 0-d: all on meta
            all_meta = [a.to("meta") if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args]
            results = _run(opdef, node, all_meta, torch.device("meta"), opset)
        if results is None:
            return
        for o, r in zip(node.outputs, results):
            if o is not None and isinstance(r, torch.Tensor) and r.device.type == "cpu" and r.numel() <= MAX_FOLD_ELEMENTS:
                facts.values[o.id] = r
    else:
        for o, r in zip(node.outputs, results):
            if o is not None and isinstance(r, torch.Tensor):
                facts.values[o.id] = r
    for o, r in zip(node.outputs, results):
        if o is None or not isinstance(r, torch.Tensor):
            continue
        declared = o.type if isinstance(o.type, TensorType) else TensorType()
        try:
            dtype = declared.dtype if declared.dtype is not None and declared.dtype.torch == r.dtype \
                else DType.from_torch(r.dtype)
        except TypeError:
            dtype = declared.dtype
        facts.types[o.id] = TensorType(dtype, tuple(r.shape))
        if in_dynamic:
            facts.dynamic.add(o.id)


# Ops whose outputs must not become constants even when their inputs are known.
_NEVER_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                         "Multinomial"})


def _run(opdef, node: Node, args: list, device: torch.device, opset: int):
    ctx = KernelContext(opset=opset, device=device, num_outputs=len(node.outputs),
                        output_types=[o.type if o is not None else None for o in node.outputs],
                        node_name=node.label, run_graph=None)
    try:
        with torch.no_grad():
            out = opdef.kernel(ctx, args, node.attrs)
    except Exception:  # noqa: BLE001 - a kernel that cannot run here just leaves types unknown
        return None
    if isinstance(out, torch.Tensor) or not isinstance(out, tuple):
        out = (out,)
    return list(out)


def symbolic_types(graph: Graph, facts: Facts) -> dict[int, TensorType]:
    """Facts' concrete probe dims turned back into the symbols they stand for."""
    result = {}
    for vid, t in facts.types.items():
        if isinstance(t, TensorType) and t.shape is not None:
            shape = tuple(facts.symbols.get(d, d) if isinstance(d, int) and d in _PROBES else d for d in t.shape)
            result[vid] = TensorType(t.dtype, shape)
        else:
            result[vid] = t
    return result
