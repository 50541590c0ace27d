"""Type and value propagation: what every value's dtype and shape is, and which values are known
constants, for given input shapes.

Each node runs either for real (all inputs known and small: this is constant folding's engine) or on
torch's ``meta`` device (shapes only), using the op's own kernel, so the shape rule of an op is its
kernel. An op may give an explicit ``OpDef.infer`` rule instead. Data-dependent shapes (NonZero,
Unique, ...) come out unknown.

Symbolic dims are handled by probing: each symbol (a named dim; inputs that share a name share it) is
given a distinct probe value, and an output dim equal to a probe gets the symbol back. A probe is taken
inside the symbol's profile range when ``bounds`` give one (so that exporters' clamps, e.g. a Slice of a
position table by the sequence length, see a length the engine can really get) and avoids every integer
the graph mentions; otherwise a large prime. Values computed from a probed dim are ``dynamic`` and are never
folded into constants. Dynamic-ness is tracked per element for small integer (shape) tensors: Shape of a
[batch, seq, 768] tensor is dynamic in its first two elements only, so Gather(Shape(x), 2) is the constant
768 and folds, while Gather(Shape(x), 0) stays computed at run time.
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


@dataclass
class Facts:
    types: dict[int, Any] = field(default_factory=dict)  # value id -> TensorType / SequenceType / ...
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # value id -> known (CPU) tensor
    dynamic: set[int] = field(default_factory=set)  # value ids whose data depends on probed (symbolic) dims
    symbols: dict[int, str] = field(default_factory=dict)  # probe value -> symbol name
    # The same graph propagated with other probe values: a dim that differs there depends on a symbol even
    # when it is not a probe itself (2 * seq after a Concat, seq - 1 after a Slice).
    reference: "Facts | None" = field(default=None, repr=False, compare=False)
    # value id -> bool tensor: which elements of a dynamic small int value depend on probes (absent: all)
    masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def reference_runs(self) -> list["Facts"]:
        """The other propagations, nearest first (the chain of ``reference``)."""
        out, r = [], self.reference
        while r is not None and len(out) < 4:
            out.append(r)
            r = r.reference
        return out

    def is_probe(self, d) -> bool:
        return isinstance(d, int) and d in self.symbols

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
              facts: Facts | None = None, bounds: dict[str, tuple[int, int]] | None = None,
              cache: dict | None = None, probes: dict[str, int] | None = None,
              reference: Facts | None = None) -> Facts:
    """Propagate types through ``graph``; ``input_shapes`` overrides graph input shapes (concrete dims).

    ``bounds`` maps a symbolic dim's name to the (min, max) the engine accepts (from the profiles).
    ``cache`` (a dict kept by the caller between calls on the same graph) remembers each node's results
    with everything they depend on (op, attributes, input types, known input data, dynamic masks): a node
    whose inputs did not change since the last call is not run again, so re-propagating after a pass costs
    little more than the nodes the pass touched and those downstream of a changed type.
    ``probes`` overrides the probe values; ``reference`` is the graph propagated with other probes (see
    ``Facts.reference``), which makes per-dim dynamic tracking exact for dims derived from symbols."""
    registry = registry or default_registry()
    facts = facts or Facts()
    facts.reference = reference
    probes = probes if probes is not None else choose_probes(graph, input_shapes, bounds)
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType):
            facts.types[v.id] = t
            continue
        shape = tuple(input_shapes[v.name]) if input_shapes and v.name in input_shapes else t.shape
        if shape is not None:
            concrete = []
            for i, d in enumerate(shape):
                if isinstance(d, int):
                    concrete.append(d)
                    continue
                name = d if isinstance(d, str) else f"{v.name}_dim{i}"
                p = probes.get(name)
                if p is None:
                    concrete = None
                    break
                facts.symbols[p] = name
                concrete.append(p)
            shape = tuple(concrete) if concrete is not None else None
        facts.types[v.id] = TensorType(t.dtype, shape)
    for c in graph.constants.values():
        facts.types[c.id] = c.type
    opset = graph.opsets.get("", 21)
    if cache is not None and cache.get("__symbols__") != facts.symbols:
        cache.clear()
        cache["__symbols__"] = dict(facts.symbols)
    for node in graph.nodes:
        if cache is None:
            _step(node, facts, registry, opset)
            continue
        key, keep = _node_key(node, facts)
        hit = cache.get(id(node))
        if hit is not None and hit[1] is node and hit[0] == key:
            for vid, t, val, dyn, mask in hit[2]:
                if t is not None:
                    facts.types[vid] = t
                if val is not None:
                    facts.values[vid] = val
                if dyn:
                    facts.dynamic.add(vid)
                if mask is not None:
                    facts.masks[vid] = mask
            continue
        _step(node, facts, registry, opset)
        record = [(o.id, facts.types.get(o.id), facts.values.get(o.id), o.id in facts.dynamic, facts.masks.get(o.id))
                  for o in node.outputs if o is not None]
        cache[id(node)] = (key, node, record, keep)
    return facts


def _attr_key(attrs: dict) -> tuple:
    out = []
    for k, v in sorted(attrs.items()):
        if isinstance(v, (int, float, str, bool)) or v is None:
            out.append((k, type(v).__name__, v))
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str, bool)) for x in v):
            out.append((k, tuple(v)))
        else:  # tensors, graphs: by identity (the cache entry keeps the node, and so them, alive)
            out.append((k, "id", id(v)))
    return tuple(out)


def _node_key(node: Node, facts: Facts) -> tuple[tuple, list]:
    """What ``_step``'s results for ``node`` depend on, and the objects whose identity the key uses."""
    keep, ins = [], []
    for v in node.inputs:
        if v is None:
            ins.append(None)
            continue
        k = v.const if v.const is not None else facts.values.get(v.id)
        m = facts.masks.get(v.id)
        keep += [k, m]
        ins.append((v.id, facts.type_of(v), id(k) if k is not None else None, v.id in facts.dynamic,
                    id(m) if m is not None else None))
    outs = tuple((o.id, o.type) if o is not None else None for o in node.outputs)
    ref = None
    if node.op_type in ("Shape", "Size") and facts.reference is not None and node.inputs:
        ref = tuple(r.type_of(node.inputs[0]) for r in facts.reference_runs())
    return (node.domain, node.op_type, _attr_key(node.attrs), tuple(ins), outs, ref), keep


def _graph_integers(graph: Graph, input_shapes) -> set[int]:
    """Every integer the graph mentions: static dims, small int constants' values, constant dims, int attrs."""
    seen: set[int] = set()
    for v in graph.inputs:
        shape = (input_shapes or {}).get(v.name, getattr(v.type, "shape", None)) or ()
        seen.update(d for d in shape if isinstance(d, int))
    for c in graph.constants.values():
        t = c.const
        seen.update(int(d) for d in t.shape)
        if t.numel() <= 16 and not t.dtype.is_floating_point and not t.dtype.is_complex:
            seen.update(int(x) for x in t.reshape(-1).tolist())
    for n in graph.nodes:
        for a in n.attrs.values():
            if isinstance(a, bool):
                continue
            if isinstance(a, int):
                seen.add(a)
            elif isinstance(a, (list, tuple)):
                seen.update(x for x in a if isinstance(x, int))
            elif isinstance(a, torch.Tensor) and a.numel() <= 16 and not a.dtype.is_floating_point:
                seen.update(int(x) for x in a.reshape(-1).tolist())
    return seen


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, int(n ** 0.5) + 1))


def choose_probes(graph: Graph, input_shapes, bounds, avoid: set[int] = frozenset(),
                  start: int | None = None) -> dict[str, int]:
    """symbol name -> probe value: inside the symbol's (min, max) when a free value is there, else a prime (the
    first free one from ``start``, default just past the range or 97)."""
    names: list[str] = []
    for v in graph.inputs:
        shape = (input_shapes or {}).get(v.name, getattr(v.type, "shape", None))
        for i, d in enumerate(shape or ()):
            if not isinstance(d, int):
                name = d if isinstance(d, str) else f"{v.name}_dim{i}"
                if name not in names:
                    names.append(name)
    out: dict[str, int] = {}
    taken = _graph_integers(graph, input_shapes) | {0, 1} | set(avoid)

    def free(c: int) -> bool:  # a prime dividing no graph integer: unlikely to meet a derived dim
        return _is_prime(c) and c not in taken and not any(t % c == 0 for t in taken if t)

    for name in names:
        lo, hi = (bounds or {}).get(name, (None, None))
        pick = None
        if lo is not None and hi is not None:
            pick = next((c for c in range(hi, max(lo, 2) - 1, -1) if free(c)), None)
        if pick is None:  # just past the range (small probes keep build-time evaluation cheap)
            pick = next((c for c in range(start if start is not None else (hi or 96) + 1, 1 << 16) if free(c)), None)
        if pick is None:
            continue
        out[name] = pick
        taken.add(pick)
    return out


def endpoint_probes(probes: dict[str, int], bounds, low: bool) -> dict[str, int]:
    """Each probed symbol at the low (or high) end of its profile range, where the profile gives one.

    Shape arithmetic of real networks (strided convolutions and pools, resizes, integer division) is
    monotone in each input dim, so a derived dim equal at both ends of the range and at the probe is constant
    over the whole range; two nearby probes can both fall into one stride's bucket (1277 and 1279 both give
    159 after a stride of 8) and bake a dynamic dim into the engine. The low end is at least 2: at 1,
    broadcasting would make unrelated shapes differ."""
    out = {}
    for name, p in probes.items():
        lo, hi = (bounds or {}).get(name, (None, None))
        if lo is None or hi is None:
            continue
        out[name] = max(int(lo), 2) if low else max(int(hi), 2)
    return out


def _probed(shape, facts: Facts) -> bool:
    return shape is not None and any(facts.is_probe(d) for d in shape)


def symbolic_shape(v: Value, facts: Facts) -> tuple | None:
    """``v``'s shape with each dim that depends on a symbol named (its symbol where the dim is a probe, else
    ``<value>_dim<i>``) and the others as numbers; None where the shape is unknown."""
    shape = facts.shape(v)
    if shape is None:
        return None
    dyn = _dynamic_dims(v, facts)
    return tuple((facts.symbols.get(d) or f"{v.name}_dim{i}") if dyn[i] else d for i, d in enumerate(shape))


def _dynamic_dims(v: Value | None, facts: Facts) -> list[int]:
    """1 for each dim of ``v`` that depends on a symbol: a probe, or a dim that differs in the reference run."""
    shape = facts.shape(v) if v is not None else None
    if shape is None:
        return []
    dims = [1 if facts.is_probe(d) else 0 for d in shape]
    for run in facts.reference_runs():
        ref = run.shape(v)
        if ref is None or len(ref) != len(shape):  # unknown or another rank there: nothing is provably static
            return [1] * len(shape)
        dims = [1 if dyn or ref[i] != d else 0 for i, (d, dyn) in enumerate(zip(shape, dims))]
    return dims


# Ops that move or select elements: the dynamic mask of the output is the kernel applied to the masks of
# the data inputs (index/axis/shape inputs must be static). Ops with the elementwise trait: the broadcast OR
# of the masks.
_DATA_INPUTS = {"Gather": (0,), "Slice": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Reshape": (0,), "Flatten": (0,),
                "Identity": (0,), "Cast": (0,), "Expand": (0,), "Transpose": (0,), "GatherElements": (0,),
                "Tile": (0,), "Concat": None}


def _mask(v: Value, facts: Facts, like: torch.Tensor | None) -> torch.Tensor | None:
    """The dynamic mask of input ``v`` (bool, its shape) or None when ``v`` is static."""
    if v is None or v.id not in facts.dynamic:
        return None
    m = facts.masks.get(v.id)
    if m is not None:
        return m
    if like is not None:
        return torch.ones(like.shape, dtype=torch.bool)
    return torch.ones((), dtype=torch.bool)


def _output_masks(node: Node, opdef, facts: Facts, known: list, results: list, opset: int) -> list | None:
    """Per-output dynamic masks (None entry: output static), or None: every output wholly dynamic."""
    op = node.op_type
    if node.domain != "" or not all(isinstance(r, torch.Tensor) for r in results):
        return None
    if op in ("Shape", "Size"):
        t = facts.type_of(node.inputs[0])
        if op == "Size" or not isinstance(t, TensorType) or t.shape is None:
            return None
        probes = torch.tensor(sorted(facts.symbols), dtype=results[0].dtype) if facts.symbols else None
        if probes is None:
            return [None]
        # Shape(x, start, end): which of the selected dims are probes.
        dims = torch.tensor(_dynamic_dims(node.inputs[0], facts), dtype=torch.int64)
        sel = _shape_slice(len(t.shape), node.attrs)
        m = dims[sel[0]:sel[1]].bool()
        return [m if m.any() else None]
    if any(not isinstance(k, torch.Tensor) for v, k in zip(node.inputs, known) if v is not None):
        return None
    masks = [_mask(v, facts, k) for v, k in zip(node.inputs, known)]
    if opdef.traits.elementwise:
        out_shape = results[0].shape
        m = torch.zeros(out_shape, dtype=torch.bool)
        for x in masks:
            if x is not None:
                try:
                    m |= x.broadcast_to(out_shape)
                except RuntimeError:
                    return None
        return [m if m.any() else None]
    if op in _DATA_INPUTS:
        data = _DATA_INPUTS[op] or tuple(range(len(node.inputs)))
        if any(m is not None for i, m in enumerate(masks) if i not in data):
            return None  # an index/shape operand is dynamic
        if all(masks[i] is None for i in data):
            return [None]
        args = []
        for i, (v, k) in enumerate(zip(node.inputs, known)):
            if i in data and v is not None:
                m = masks[i] if masks[i] is not None else torch.zeros(k.shape, dtype=torch.bool)
                args.append(m.to(torch.int64))
            else:
                args.append(k)
        if op in ("Cast", "Identity"):
            return [masks[0]]
        res = _run(opdef, node, args, torch.device("cpu"), opset)
        if res is None or not isinstance(res[0], torch.Tensor) or res[0].shape != results[0].shape:
            return None
        m = res[0] != 0
        return [m if m.any() else None]
    return None


def _shape_slice(rank: int, attrs: dict) -> tuple[int, int]:
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = max(0, min(rank, end + rank if end < 0 else end))
    return start, end


def _step(node: Node, facts: Facts, registry: Registry, opset: int) -> None:
    opdef = registry.get(node.domain, node.op_type)
    outs = [o for o in node.outputs if o is not None]
    in_dynamic = any(v is not None and v.id in facts.dynamic for v in node.inputs)
    if node.op_type in ("Shape", "Size") and node.inputs and any(_dynamic_dims(node.inputs[0], facts)):
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
    elif real and small and node.inputs and not opdef.traits.never_fold:
        results = _run(opdef, node, [None if k is None else k.cpu() for k in known], torch.device("cpu"), opset)
    if results is None and opdef.traits.same_shape and len(node.outputs) == 1 \
            and node.inputs and node.inputs[0] is not None:
        # Output type = input type: no need to run torch's (slow, Python) meta decomposition.
        t = facts.type_of(node.inputs[0])
        if isinstance(t, TensorType) and t.is_static and t.dtype is not None and t.dtype.is_float \
                and node.outputs[0] is not None:
            facts.types[node.outputs[0].id] = TensorType(t.dtype, tuple(t.shape))
            if in_dynamic:
                facts.dynamic.add(node.outputs[0].id)
            return
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
    masks = None
    if in_dynamic:
        small = [k if k is None or k.numel() <= 4096 else None for k in known]
        if all(r.numel() <= 4096 for r in results if isinstance(r, torch.Tensor)) \
                and all(isinstance(r, torch.Tensor) and r.device.type == "cpu" for r in results):
            masks = _output_masks(node, opdef, facts, small, results, opset)
    for i, (o, r) in enumerate(zip(node.outputs, results)):
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
            m = masks[i] if masks is not None and i < len(masks) else True
            if m is None:
                continue  # every element is static: e.g. Gather(Shape(x), 2) when only x's dim 0 is symbolic
            facts.dynamic.add(o.id)
            if isinstance(m, torch.Tensor) and not m.all():
                facts.masks[o.id] = m


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
            shape = tuple(facts.symbols.get(d, d) if facts.is_probe(d) else d for d in t.shape)
            result[vid] = TensorType(t.dtype, shape)
        else:
            result[vid] = t
    return result
