"""Dynamic tensor memory at run time: a context's intermediate tensors placed in one arena by lifetime.

Which values share storage is the static alias analysis's answer (aliases.py, kept as ``Program.aliases``): a view
lives in its source's storage, a Concat input marked ``in_place`` in a slice of the Concat's output. For each
input-shape signature, the first run of a context *records* every value's tensor (shape, strides, dtype), kept
until the run ends; :func:`plan_layout` places each placeable storage root at those sizes with the build's planner
(``kiln.engine.memory.plan_memory``, a pure function) and returns an :class:`ArenaLayout`: per step, the arena view
its kernel writes into (``out=``). Later runs at that signature allocate nothing for those tensors.

The record only checks the analysis (storage identity, :func:`check_aliases`), as a safety net: a value found in
storage the analysis says it does not share (a kernel returning its input where no trait says so, a branch
returning an outer tensor) is *unplaceable*: it and the storage it was found in keep torch's allocator, since the
arena would otherwise reuse that storage while the value is still read. The layout names each such layer with
the reason (``ArenaLayout.unplaceable``; the context logs it and adds it to its notes).

A root is placeable when the layer that makes it can write into a given buffer (``accepts_out``: its kernel
computes straight into ``out``), it is on the arena's device, and no graph output lives in it (outputs belong to
the caller). Everything else keeps torch's allocator; :class:`ArenaStats` counts both, by op type, so nothing is
placed or left out silently.

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
    aliases: dict = field(default_factory=dict)  # the static alias analysis it placed by (Program.aliases)
    unplaceable: dict = field(default_factory=dict)  # layer name -> why its output was kept out (check_aliases)
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


@dataclass
class AliasCheck:
    """What storage identity in a recorded run says of the static alias analysis (``check_aliases``)."""

    fresh: set  # step outputs that were the first value in their storage (the tensors the run allocated)
    kept_out: set  # values whose storage must stay out of the arena: each mismatch and the storage it was found in
    mismatches: dict  # value id -> why it is unplaceable


def check_aliases(program, recorder: Recorder, inputs: dict) -> AliasCheck:
    """Check ``program.aliases`` (the static analysis) against the storages of the recorded run's tensors: each
    step output must be in fresh storage or in its static root's; a view that the kernel copied is fine."""
    roots = program.aliases
    owner: dict[tuple, int] = {}  # storage key -> the static root of the first value found in it
    outside: set[int] = set()
    for vid, t in list(inputs.items()) + list(program.constants.items()):
        if isinstance(t, torch.Tensor):
            if t.untyped_storage().nbytes():
                owner.setdefault(_storage_key(t), vid)
            outside.add(vid)
    found_in: dict[int, int] = {}  # a mismatched root -> the root whose storage it was found in (reported once)
    check = AliasCheck(set(), set(), {})
    for step in program.steps:
        for vid in step.outputs:
            t = recorder.tensors.get(vid) if vid is not None else None
            if t is None:
                continue
            key, r = _storage_key(t), roots.get(vid, vid)
            o = owner.get(key) if t.untyped_storage().nbytes() else None  # empty storages all share address 0
            if o is None:
                owner[key] = r
                check.fresh.add(vid)
            elif o != r and found_in.get(r) != o and not (o in outside and r in outside):
                found_in[r] = o
                check.kept_out.update((vid, o))
                check.mismatches[vid] = (f"{step.node.op_type} returned the storage of {_name(program, o)!r}, "
                                         f"which the alias analysis does not say its output "
                                         f"{_name(program, vid)!r} shares (no view trait, no in_place mark)")
    return check


def _name(program, vid: int) -> str:
    for v in list(program.graph.inputs) + [o for n in program.graph.nodes for o in list(n.inputs) + list(n.outputs)]:
        if v is not None and v.id == vid:
            return v.name
    return f"#{vid}"


def plan_layout(program, recorder: Recorder, inputs: dict, device: torch.device,
                arena: torch.Tensor | None) -> ArenaLayout:
    """Place the recorded run's placeable storage roots (``program.aliases`` says which values share one);
    ``arena`` is reused when big enough, else a larger one is allocated (the caller keeps the old one alive for
    the layouts that use it)."""
    steps, roots = program.steps, program.aliases
    check = check_aliases(program, recorder, inputs)
    made_by = {vid: i for i, step in enumerate(steps) for vid in step.outputs if vid in recorder.tensors}
    outside = {vid for vid, t in list(inputs.items()) + list(program.constants.items()) if isinstance(t, torch.Tensor)}
    outside.update(vid for o in program.output_ids for vid in (o, roots.get(o, o)))  # outputs are the caller's
    last: dict[int, int] = {}
    for i, step in enumerate(steps):
        for vid in step.reads:
            last[roots.get(vid, vid)] = i

    def placeable(vid: int) -> bool:
        if vid in outside or vid in check.kept_out or roots.get(vid, vid) != vid:
            return False
        t, step = recorder.tensors[vid], steps[made_by[vid]]
        return t.device == device and step.accepts_out and len(step.outputs) == 1 and not t.is_sparse

    # Concat elimination: an in-place input (static: part of the Concat's output) joins the Concat's placement.
    joined: dict[int, tuple[int, int]] = {}  # input value id -> (concat step index, input position)
    for i, step in enumerate(steps):
        c = step.outputs[0] if step.in_place and step.outputs else None
        if c not in made_by or roots.get(c, c) != c or c in outside or c in check.kept_out:
            continue
        for k in step.in_place:
            vid = step.inputs[k] if k < len(step.inputs) else None
            if roots.get(vid) != c or vid not in made_by or vid in check.kept_out \
                    or recorder.tensors[vid].device != device or len(steps[made_by[vid]].outputs) != 1:
                continue
            joined[vid] = (i, k)

    concat_roots = {steps[i].outputs[0] for i, _ in joined.values()}
    placed = [r for r in made_by if placeable(r) or r in concat_roots]
    spans: dict[int, list[int]] = {r: [made_by[r], last.get(r, made_by[r])] for r in placed}
    for r, (ci, _) in joined.items():  # the concat's storage lives from its first producer on
        out_root = steps[ci].outputs[0]
        spans[out_root][0] = min(spans[out_root][0], made_by[r])
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
        placements[made_by[r]] = StepPlacement(out=views[r])
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
            placements[made_by[r]] = StepPlacement(out=out.narrow(axis, s, n), must_land=True)
        copies = tuple((out.narrow(axis, *offsets[k]), k) for k in offsets if k not in in_place)
        placements[ci] = StepPlacement(concat=out, concat_copies=copies)
        stats.concat_in_place += 1
    for r in made_by:
        if r not in check.fresh or r in outside:
            continue
        t = recorder.tensors[r]
        nbytes = _extent_bytes(t.shape, t.stride(), t.element_size())
        if r in views or r in joined:
            stats.placed_tensors += 1
            stats.placed_bytes += nbytes
        else:
            stats.allocator_tensors += 1
            stats.allocator_bytes += nbytes
            op = steps[made_by[r]].node.op_type
            stats.allocator_ops[op] = stats.allocator_ops.get(op, 0) + 1
    unplaceable = {steps[made_by[vid]].node.label: why for vid, why in check.mismatches.items()}
    return ArenaLayout(placements, stats, arena, roots, unplaceable)
