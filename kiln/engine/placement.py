"""Host placement for GPU engines: shape arithmetic runs on the CPU, as TensorRT keeps shape tensors on the host.

Kernels read shape-like inputs (Reshape's target shape, Slice's starts, axes, ...) as Python ints. If those
values lived on the GPU, every read would synchronize the device and CUDA graph capture would fail. So:
- small integer constants and the outputs of Shape/Size are host values;
- a node of an op with the ``host`` trait (integer / shape arithmetic) whose inputs are all host values runs on
  the host;
- a device layer that reads a host value in a data slot gets it copied from pinned memory (capturable); the
  slots an op's kernel reads as Python values (its ``host_inputs`` trait) take a host value as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..ir.dtype import DType
from ..ir.graph import Graph, Node
from ..ops import Registry, default_registry

MAX_HOST_CONSTANT = 64  # elements: shape vectors, axes, scalars

@dataclass
class Placement:
    host_values: set[int]  # value ids that live on the host
    host_nodes: set[int]  # id(node) of nodes that run on the host
    moves: dict[int, tuple[int, ...]]  # id(node) -> input slots whose host value must be copied to the device
    host_inputs: frozenset[str] = frozenset()  # graph inputs kept on the host (see host_input_candidates)
    # bodies only (plan_body_placement): body outputs handed back on the host (read by their callers as values)
    host_outputs: set[int] = field(default_factory=set)


def is_host_constant(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.is_complex() and t.numel() <= MAX_HOST_CONSTANT


def host_constants(graph: Graph, registry: Registry | None = None) -> set[int]:
    """Ids of the constants that live on the host: the main graph's as plan_placement decides, and those of
    If/Loop bodies that only kernels reading Python values take (body_host_constants)."""
    registry = registry or default_registry()
    main = plan_placement(graph, registry).host_values & {v.id for v in graph.constants.values()}
    return main | body_host_constants(graph, registry)


def body_host_constants(graph: Graph, registry: Registry) -> set[int]:
    """Ids of the small integer constants of If/Loop/Scan bodies that live on the host, as the main graph's do:
    all but a body's own outputs (those leave the body as device values), except the outputs a body hands back
    on the host (``host_outputs``: a branch's constant Reshape target). A body layer that reads one as data gets
    a device copy (plan_body_placement); one read as a Python value from the device would be a device-to-host
    copy, which CUDA graph capture refuses (silero-vad's STFT padding in its If bodies ran eagerly on every
    shape)."""
    return _body_constants(graph, set(_host_returned_outputs(graph, registry)))


def _body_constants(graph: Graph, returned: set[int]) -> set[int]:
    """body_host_constants, given the ids of the body outputs handed back on the host."""
    outputs = {v.id for g in graph.walk_graphs() for v in g.outputs} - returned
    return {v.id for g in graph.walk_graphs() if g is not graph for v in g.constants.values()
            if is_host_constant(v.const) and v.id not in outputs}


def _host_returned_outputs(graph: Graph, registry: Registry):
    """Ids of the body outputs a body may hand back on the host: an If branch's output whose If output every
    reader takes as a Python value (and the caller does not get), and a Loop body's condition."""
    host_slots = registry.host_input_slots()
    for g in graph.walk_graphs():
        for n in g.nodes:
            for body in n.subgraphs():
                if n.op_type == "If":
                    for b, o in zip(body.outputs, n.outputs):
                        if o is not None and o not in g.outputs and o.uses and all(
                                u.domain == "" and (u.op_type, i) in host_slots for u, i in o.uses):
                            yield b.id
                elif n.op_type == "Loop" and body.outputs:
                    yield body.outputs[0].id


def plan_body_placement(graph: Graph, registry: Registry, outer: Placement) -> Placement:
    """Host placement inside If/Loop/Scan bodies, by the main graph's rules (``_place``): Shape and Size, and
    host-trait layers whose inputs are all host values (body constants, the enclosing graphs' host values), run
    on the host; a device layer reading a host value as data gets a pinned copy (``moves``). A body's outputs
    that end up on the host are copied to the device when it returns (kiln/engine/bodies.py): its caller treats
    them as device values; except (``host_outputs``) an If's output that every reader takes as a Python value
    (a Reshape target chosen by a branch) and a Loop's condition, which stay on the host. Before this a body's
    Shape made its result on the device from a pageable host list, and capture failed on every shape of
    silero-vad (H100, 2026-12-07)."""
    host_ops, host_slots = registry.ops_with("host"), registry.host_input_slots()
    returned = set(_host_returned_outputs(graph, registry))
    body_consts = _body_constants(graph, returned)
    merged = Placement(set(), set(), {})

    def visit(g: Graph, outer_host: set[int]) -> None:
        for n in g.nodes:
            for body in n.subgraphs():
                consts = {v.id for v in body.constants.values()} & body_consts
                p = _place(body, consts | outer_host, host_ops, host_slots)
                merged.host_values |= p.host_values - outer_host
                merged.host_nodes |= p.host_nodes
                merged.moves.update(p.moves)
                merged.host_outputs |= {b.id for b in body.outputs if b.id in returned and b.id in p.host_values}
                visit(body, p.host_values)

    visit(graph, outer.host_values)
    return merged


def plan_placement(graph: Graph, registry: Registry | None = None) -> Placement:
    """Small integer constants live on the host; so do small float ones (Resize's scales, a divisor of a
    size computed from Shape) as long as every reader takes them as Python values or runs on the host: on
    the device, a kernel reading them would synchronize, and CUDA graph capture failed on every model with
    a Resize. Float candidates read as data by a device layer go back to the device, until none is left."""
    registry = registry or default_registry()
    host_ops, host_slots = registry.ops_with("host"), registry.host_input_slots()
    # (a float read inside an If/Loop body stays on the device: a body layer reading it as data would get a
    # host-to-device copy on every call or iteration, plan_body_placement)
    in_bodies = {v.id for g in graph.walk_graphs() if g is not graph for n in g.nodes for v in n.inputs
                 if v is not None}
    floats = {v.id for v in graph.constants.values()
              if not is_host_constant(v.const) and v.const.numel() <= MAX_HOST_CONSTANT and not v.const.is_complex()
              and v.id not in in_bodies}
    inputs = host_input_candidates(graph, in_bodies)
    while True:
        placement = _place(graph, {v.id for v in graph.constants.values() if is_host_constant(v.const)} | floats
                           | inputs, host_ops, host_slots)
        demoted = {v.id for n in graph.nodes if id(n) in placement.moves
                   for i in placement.moves[id(n)] if (v := n.inputs[i]).id in floats | inputs}
        # A value computed on the host from an input reaches no copy when a body reads it or the caller gets it
        # as an output: on the device before, it would now reach a device kernel or the caller as a CPU tensor.
        behind = _inputs_behind(graph, placement, inputs)
        demoted |= {i for vid in in_bodies | {v.id for v in graph.outputs} for i in behind.get(vid, ())}
        if not demoted:
            placement.host_inputs = frozenset(v.name for v in graph.inputs if v.id in inputs)
            return placement
        floats -= demoted
        inputs -= demoted


def host_input_candidates(graph: Graph, in_bodies: set[int]) -> set[int]:
    """Ids of the graph inputs that may stay on the host: small integer or bool tensors of a static shape (a
    sample rate, a mode flag, a length) not read inside a subgraph. One stays on the host only if every layer
    that reads it runs on the host or reads it as a Python value (an If's condition); a device layer reading it
    as data demotes it (plan_placement). Their values then decide host work that a CUDA graph bakes in, so a
    context keys its captured graphs by them (runtime.py)."""
    out = set()
    for v in graph.inputs:
        t = v.type
        shape, dtype = getattr(t, "shape", None), getattr(t, "dtype", None)
        if shape is None or dtype is None or v.id in in_bodies or v in graph.outputs \
                or not all(isinstance(d, int) for d in shape):
            continue
        if not (dtype.is_int or dtype is DType.BOOL) or dtype.is_subbyte or math.prod(shape) > MAX_HOST_CONSTANT:
            continue  # (a string input has no torch dtype at all)
        out.add(v.id)
    return out


def _inputs_behind(graph: Graph, placement: Placement, inputs: set[int]) -> dict[int, set[int]]:
    """For each host value computed from host ``inputs`` (graph input ids), the inputs it is computed from."""
    behind = {i: {i} for i in inputs}
    for n in graph.nodes:
        if id(n) in placement.host_nodes:
            src = set().union(*(behind.get(v.id, ()) for v in n.inputs if v is not None))
            if src:
                behind.update((o.id, src) for o in n.outputs if o is not None)
    return behind


def _place(graph: Graph, host_consts: set[int], host_ops: frozenset[str],
           host_slots: frozenset[tuple[str, int]]) -> Placement:
    host: set[int] = set(host_consts)
    host_nodes: set[int] = set()
    moves: dict[int, tuple[int, ...]] = {}
    for n in graph.nodes:
        ins = [v for v in n.inputs if v is not None]
        runs_on_host = n.domain == "" and n.op_type in host_ops and not any(True for _ in n.subgraphs()) and (
            n.op_type in ("Shape", "Size") or (ins and all(v.id in host for v in ins)))
        if runs_on_host:
            host_nodes.add(id(n))
            host.update(o.id for o in n.outputs if o is not None)
            continue
        slots = tuple(i for i, v in enumerate(n.inputs)
                      if v is not None and v.id in host and (n.op_type, i) not in host_slots)
        if slots:
            moves[id(n)] = slots
    return Placement(host, host_nodes, moves)


def to_device(t: torch.Tensor, device: torch.device, keep: list | None) -> torch.Tensor:
    """Copy a host value to the device from pinned memory (allowed inside CUDA graph capture).

    ``keep`` collects the pinned buffers a captured graph reads, so they outlive the capture."""
    if t.device.type != "cpu":
        return t
    if not t.is_pinned() and t.numel() <= MAX_HOST_CONSTANT and torch.cuda.is_current_stream_capturing():
        # A value computed on the host during capture (a body's shape arithmetic): pinning it there allocates
        # from the caching host allocator, whose event queries invalidate the capture (silero-vad on the H100:
        # "operation failed due to a previous error during capture"). Its few numbers are written by fill
        # kernels instead; the graph bakes them, as it bakes every host decision of the shapes it was captured for.
        out = torch.empty(t.shape, dtype=t.dtype, device=device)
        flat = out.view(-1)
        for i, v in enumerate(t.reshape(-1).tolist()):
            flat[i].fill_(v)
        return out
    pinned = t if t.is_pinned() else t.pin_memory()
    if keep is not None:
        keep.append(pinned)
    return pinned.to(device, non_blocking=True)
