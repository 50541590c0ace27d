"""Dynamic tensor memory: place every intermediate tensor in one arena by its lifetime.

``plan_memory`` is a pure function from (size, first step, last step) per tensor to byte offsets.
Greedy best-fit by decreasing size: each tensor goes to the lowest aligned offset where it overlaps no
already-placed tensor whose lifetime overlaps its own. Tested on its own (tests/engine/test_memory.py).
"""
from __future__ import annotations

from dataclasses import dataclass

ALIGNMENT = 256  # bytes; what cuBLAS/cuDNN like for their operands


@dataclass(frozen=True)
class Lifetime:
    size: int  # bytes
    start: int  # index of the step that writes it
    end: int  # index of the last step that reads it (inclusive)


@dataclass(frozen=True)
class MemoryPlan:
    offsets: tuple[int, ...]
    arena_bytes: int
    naive_bytes: int  # every tensor in its own buffer
    lower_bound_bytes: int  # the largest total of tensors alive at one step

    def to_json(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
                "lower_bound_bytes": self.lower_bound_bytes}


def _align(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


def lower_bound(tensors: list[Lifetime]) -> int:
    if not tensors:
        return 0
    events: dict[int, int] = {}
    for t in tensors:
        events[t.start] = events.get(t.start, 0) + t.size
        events[t.end + 1] = events.get(t.end + 1, 0) - t.size
    live = peak = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


def plan_memory(tensors: list[Lifetime], alignment: int = ALIGNMENT) -> MemoryPlan:
    order = sorted(range(len(tensors)), key=lambda i: (-tensors[i].size, tensors[i].start, i))
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, end)
    offsets = [0] * len(tensors)
    arena = 0
    for i in order:
        t = tensors[i]
        size = _align(max(t.size, 1), alignment)
        busy = sorted((o, o + s) for o, s, a, b in placed if a <= t.end and t.start <= b)
        offset = 0
        best = None
        for lo, hi in busy:  # first-fit gap, preferring the tightest gap that fits
            if lo - offset >= size and (best is None or lo - offset < best[1]):
                best = (offset, lo - offset)
            offset = max(offset, hi)
        chosen = best[0] if best is not None else offset
        offsets[i] = chosen
        placed.append((chosen, size, t.start, t.end))
        arena = max(arena, chosen + size)
    naive = sum(_align(max(t.size, 1), alignment) for t in tensors)
    return MemoryPlan(tuple(offsets), arena, naive, lower_bound(tensors))


def overlaps(tensors: list[Lifetime], plan: MemoryPlan, alignment: int = ALIGNMENT) -> list[tuple[int, int]]:
    """Pairs of tensors alive at the same time whose bytes overlap (empty for a correct plan)."""
    bad = []
    for i, a in enumerate(tensors):
        for j in range(i + 1, len(tensors)):
            b = tensors[j]
            if a.start <= b.end and b.start <= a.end:
                oa, ob = plan.offsets[i], plan.offsets[j]
                if oa < ob + max(b.size, 1) and ob < oa + max(a.size, 1):
                    bad.append((i, j))
    return bad
