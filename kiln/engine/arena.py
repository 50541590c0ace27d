"""Dynamic tensor memory at run time: a context's intermediate tensors placed in one arena by lifetime.

For each input-shape signature, the first run of a context *records*: every value's tensor (shape, strides,
dtype, and which storage it lives in) is kept until the run ends, so that storage identity shows which
values alias which (views, a kernel returning its input, a branch returning an outer tensor). From that
record, :func:`plan_layout` places each *placeable* storage with the build's planner
(``kiln.engine.memory.plan_memory``, a pure function) and returns an :class:`ArenaLayout`: per step, the arena
view its kernel writes into (``out=``). Later runs at that signature allocate nothing for those tensors.

A storage is placeable when the layer that makes it can write into a given buffer (``accepts_out``: its
kernel computes straight into ``out``), it is on the arena's device, and no graph output aliases it (outputs
belong to the caller). Everything else keeps torch's allocator; :class:`ArenaStats` counts both, by op type,
so nothing is placed or left out silently.

Concat elimination: a Concat marked at build with ``in_place`` inputs gets its output placed, and each of
those inputs is a slice of that placement, written there by its producer; the Concat layer then only copies
its other inputs (if any) into their slices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ops.shape_util import axis as axis_index
from .memory import Lifetime, plan_memory


@dataclass
class StepPlacement:
    out: torch.Tensor | None = None  # the buffer the step's kernel writes its (single) output into
    must_land: bool = False  # the output must end up in ``out`` (a Concat slice): copy it there if it did not
    concat: torch.Tensor | None = None  # a Concat done in place: its output view...
    concat_copies: tuple = ()  # ...and (slice view, input position) for inputs written by this step


@dataclass
class ArenaStats:
    arena_bytes: int = 0  # the arena this layout needs
    placed_tensors: int = 0
    placed_bytes: int = 0
    allocator_tensors: int = 0  # intermediates left to torch's allocator
    allocator_bytes: int = 0
    allocator_ops: dict = field(default_factory=dict)  # op type -> count of those tensors
    concat_in_place: int = 0  # Concat layers whose inputs were written into their slices

    def to_json(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "placed_tensors": self.placed_tensors,
                "placed_bytes": self.placed_bytes, "allocator_tensors": self.allocator_tensors,
                "allocator_bytes": self.allocator_bytes, "allocator_ops": dict(self.allocator_ops),
                "concat_in_place": self.concat_in_place}


@dataclass
class ArenaLayout:
    placements: list  # per step: StepPlacement | None
    stats: ArenaStats
    arena: torch.Tensor  # kept alive by every layout (and CUDA graph) that uses it
    missed: set = field(default_factory=set)  # layers given a buffer whose kernel returned its own instead


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def _extent_bytes(shape, stride, itemsize: int) -> int:
    if any(d == 0 for d in shape):
        return 0
    return (1 + sum((d - 1) * s for d, s in zip(shape, stride))) * itemsize


class Recorder:
    """Collects, during one run, every step's output tensors (keeping them alive, so storages stay distinct)."""

    def __init__(self):
        self.tensors: dict[int, torch.Tensor] = {}  # value id -> tensor

    def __call__(self, step, env) -> None:
        for vid in step.outputs:
            if vid is not None:
                x = env.get(vid)
                if isinstance(x, torch.Tensor):
                    self.tensors[vid] = x


def plan_layout(program, recorder: Recorder, inputs: dict, device: torch.device,
                arena: torch.Tensor | None) -> ArenaLayout:
    """Place the recorded run's placeable storages; ``arena`` is reused when big enough, else a larger one
    is allocated (the caller keeps the old one alive for the layouts that use it)."""
    steps = program.steps
    known: dict[tuple, int] = {}  # storage key -> root value id (the first value seen in that storage)
    root_of: dict[int, int] = {}
    outside: set[int] = set()  # roots that are not intermediates: inputs, constants
    for vid, t in list(inputs.items()) + list(program.constants.items()):
        if isinstance(t, torch.Tensor):
            key = _storage_key(t)
            r = known.setdefault(key, vid)
            root_of[vid] = r
            outside.add(r)
    producer: dict[int, int] = {}  # root -> step index that made it
    for i, step in enumerate(steps):
        for vid in step.outputs:
            t = recorder.tensors.get(vid) if vid is not None else None
            if t is None:
                continue
            key = _storage_key(t)
            r = known.get(key)
            if r is None:
                known[key] = r = vid
                producer[r] = i
            root_of[vid] = r
    last: dict[int, int] = {}
    for i, step in enumerate(steps):
        for vid in step.reads:
            r = root_of.get(vid)
            if r is not None:
                last[r] = i
    for vid in program.output_ids:
        r = root_of.get(vid)
        if r is not None:
            outside.add(r)

    def placeable(r: int) -> bool:
        if r in outside or r not in producer:
            return False
        t = recorder.tensors[r]
        step = steps[producer[r]]
        return t.device == device and step.accepts_out and len(step.outputs) == 1 and not t.is_sparse

    # Concat elimination: an in-place input that is a fresh storage of its own joins the Concat's placement.
    joined: dict[int, tuple[int, int]] = {}  # input root -> (concat step index, input position)
    for i, step in enumerate(steps):
        if not step.in_place or not step.outputs or step.outputs[0] is None:
            continue
        out_root = root_of.get(step.outputs[0])
        if out_root is None or out_root in outside or out_root != step.outputs[0]:
            continue
        for k in step.in_place:
            vid = step.inputs[k] if k < len(step.inputs) else None
            r = root_of.get(vid) if vid is not None else None
            if r is None or r != vid or r in outside or r not in producer or recorder.tensors[r].device != device \
                    or len(steps[producer[r]].outputs) != 1:
                continue
            joined[r] = (i, k)

    concat_roots = {steps[i].outputs[0] for i, _ in joined.values()}
    placed = [r for r in producer if (placeable(r) or r in concat_roots) and r not in joined]
    spans: dict[int, list[int]] = {r: [producer[r], last.get(r, producer[r])] for r in placed}
    for r, (ci, _) in joined.items():  # the concat's storage lives from its first producer on
        out_root = steps[ci].outputs[0]
        spans[out_root][0] = min(spans[out_root][0], producer[r])
        spans[out_root][1] = max(spans[out_root][1], last.get(r, ci))
    sizes = {}
    for r in placed:
        t = recorder.tensors[r]
        sizes[r] = _extent_bytes(t.shape, t.stride(), t.element_size())
    plan = plan_memory([Lifetime(sizes[r], spans[r][0], spans[r][1]) for r in placed])
    if arena is None or arena.numel() < plan.arena_bytes or arena.device != device:
        arena = torch.empty(max(plan.arena_bytes, 1), dtype=torch.uint8, device=device)
    views: dict[int, torch.Tensor] = {}
    for r, off in zip(placed, plan.offsets):
        t = recorder.tensors[r]
        raw = arena[off:off + sizes[r]]
        views[r] = raw.view(t.dtype).as_strided(tuple(t.shape), t.stride()) if sizes[r] else \
            torch.empty_strided(tuple(t.shape), t.stride(), dtype=t.dtype, device=device)

    placements: list = [None] * len(steps)
    stats = ArenaStats(arena_bytes=plan.arena_bytes)
    for r in placed:
        if r in concat_roots:
            continue
        placements[producer[r]] = StepPlacement(out=views[r])
    by_concat: dict[int, list[tuple[int, int]]] = {}
    for r, (ci, k) in joined.items():
        by_concat.setdefault(ci, []).append((r, k))
    for ci, members in by_concat.items():
        step = steps[ci]
        out = views[step.outputs[0]]
        axis = axis_index(int(step.attrs.get("axis", 1)), out.dim())
        offsets, start = {}, 0
        for k, vid in enumerate(step.inputs):
            t = recorder.tensors.get(vid) if vid is not None else None
            if t is None:
                t = inputs.get(vid, program.constants.get(vid)) if vid is not None else None
            if t is None:
                continue
            offsets[k] = (start, t.shape[axis])
            start += t.shape[axis]
        in_place = {k for _, k in members}
        for r, k in members:
            s, n = offsets[k]
            placements[producer[r]] = StepPlacement(out=out.narrow(axis, s, n), must_land=True)
        copies = tuple((out.narrow(axis, *offsets[k]), k) for k in offsets if k not in in_place)
        placements[ci] = StepPlacement(concat=out, concat_copies=copies)
        stats.concat_in_place += 1
    for r in producer:
        t = recorder.tensors[r]
        if r in outside:
            continue
        nbytes = _extent_bytes(t.shape, t.stride(), t.element_size())
        if r in views or r in joined:
            stats.placed_tensors += 1
            stats.placed_bytes += nbytes
        else:
            stats.allocator_tensors += 1
            stats.allocator_bytes += nbytes
            op = steps[producer[r]].node.op_type
            stats.allocator_ops[op] = stats.allocator_ops.get(op, 0) + 1
    return ArenaLayout(placements, stats, arena)

