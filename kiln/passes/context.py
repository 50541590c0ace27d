"""What a pass sees besides the graph: the config, the op registry, type facts, and the report it writes to."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ir.graph import Graph, Node
from ..ops import Registry, default_registry
from .propagate import Facts, choose_probes, endpoint_probes, propagate

if TYPE_CHECKING:  # the builder makes the config and passes it in; the passes never import the builder
    from ..builder.config import BuilderConfig


@dataclass
class Rejection:
    """A fusion rule that matched (part of) a pattern but did not rewrite it, and why."""

    rule: str
    nodes: list[str]
    reason: str

    def to_json(self) -> dict:
        return {"rule": self.rule, "nodes": self.nodes, "reason": self.reason}


@dataclass
class PassContext:
    graph: Graph
    config: BuilderConfig
    registry: Registry = field(default_factory=default_registry)
    input_shapes: dict[str, tuple] | None = None  # static dims known at build (from profiles or the model)
    rejections: list[Rejection] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)  # rule name -> rewrites done
    notes: list[str] = field(default_factory=list)  # fallbacks and other things the report must show
    _facts: Facts | None = None
    _cache: dict = field(default_factory=dict)  # propagate's per-node memo, kept across invalidations
    _ref_cache: dict = field(default_factory=dict)  # the same for the reference runs (other probe values)
    _ref_high_cache: dict = field(default_factory=dict)
    caches: dict = field(default_factory=dict)  # name -> propagate memo, for passes' own propagations

    @property
    def facts(self) -> Facts:
        """Types of all values; recomputed after any pass that changed the graph."""
        if self._facts is None:
            bounds = self.symbol_bounds()
            probes = choose_probes(self.graph, self.input_shapes, bounds)
            reference = None
            if probes:
                # Other runs tell dims derived from symbols (2 * seq): at each end of the profile range where
                # there is one (so no stride maps every run to one size), else at other free probe values.
                other = choose_probes(self.graph, self.input_shapes, bounds, avoid=set(probes.values()))
                # A symbol no profile bounds gets a small probe in the low run: exporters clamp by table sizes
                # (a Slice of a 64-row position table by the sequence length), which two large probes both hit,
                # and the clamped dim would look constant (a BERT export built without a profile failed so).
                small = choose_probes(self.graph, self.input_shapes, {}, start=17,
                                      avoid=set(probes.values()) | set(other.values()))
                low = {**other, **{k: v for k, v in small.items() if k not in bounds and v < 97},
                       **endpoint_probes(probes, bounds, low=True)}
                high = {**other, **endpoint_probes(probes, bounds, low=False)}
                if high != low and high != probes:
                    reference = propagate(self.graph, self.input_shapes, self.registry, cache=self._ref_high_cache,
                                          probes=high)
                reference = propagate(self.graph, self.input_shapes, self.registry, cache=self._ref_cache,
                                      probes=low, reference=reference)
            self._facts = propagate(self.graph, self.input_shapes, self.registry, cache=self._cache, probes=probes,
                                    reference=reference)
        return self._facts

    def symbol_bounds(self) -> dict[str, tuple[int, int]]:
        return symbol_bounds(self.input_shapes, self.config.profiles)

    def invalidate(self) -> None:
        self._facts = None

    def reject(self, rule: str, nodes: list[Node], reason: str) -> None:
        key = (rule, tuple(n.label for n in nodes))
        if any((r.rule, tuple(r.nodes)) == key for r in self.rejections):
            return
        self.rejections.append(Rejection(rule, [n.label for n in nodes], reason))

    def count(self, rule: str, n: int = 1) -> None:
        self.applied[rule] = self.applied.get(rule, 0) + n

    def shape(self, v) -> Any:
        return self.facts.shape(v)

    def shape_runs(self, v) -> list[tuple] | None:
        """``v``'s concrete shape in each propagation run: at the probe values of the profile-ranged dims, then
        at the reference runs' other values (one entry when every dim is static). What a pass finds the same at
        two values of a dim holds for that dim whatever its value; a dim that differs between runs must not be
        baked into a constant. None when a shape is unknown, or a dim is probed but no other run exists."""
        runs = [self.shape(v)] + [r.shape(v) for r in self.facts.reference_runs()]
        if any(s is None or not all(isinstance(d, int) for d in s) for s in runs):
            return None
        if len(runs) == 1 and any(self.facts.is_probe(d) for d in runs[0]):
            return None
        return [tuple(s) for s in runs]

    def dtype(self, v):
        return getattr(self.facts.type_of(v), "dtype", None)


def symbol_bounds(input_shapes: dict | None, profiles) -> dict[str, tuple[int, int]]:
    """Each symbolic input dim's (min, max) over the profiles; inputs sharing a symbol intersect."""
    out: dict[str, tuple[int, int]] = {}
    for name, shape in (input_shapes or {}).items():
        for i, d in enumerate(shape):
            if isinstance(d, int) or d is None:
                continue
            lo = [p.min[name][i] for p in profiles if name in p.min]
            hi = [p.max[name][i] for p in profiles if name in p.max]
            if not lo or not hi:
                continue
            a, b = out.get(d, (min(lo), max(hi)))
            out[d] = (max(a, min(lo)), min(b, max(hi)))
    return {k: v for k, v in out.items() if v[0] <= v[1]}
