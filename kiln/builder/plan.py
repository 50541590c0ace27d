"""The Plan: what the build decided, as plain data, before any Engine exists.

``lower`` (lower.py) makes it from the optimized graph and the tuner's choices; the steps over it, each a
function ``Plan -> Plan`` with one job, fill in the rest: ``mark_concats_in_place`` (concat_in_place.py) and
``plan_activation_memory`` (memory_plan.py). ``kiln.build`` then constructs the Engine once, last, from
``plan.graph``, a header holding ``plan.header_fields()``, and ``plan.binding``; nothing edits it afterwards.

The graph is the plan's own (the build's copy): a step that decides something the engine file stores writes
it on the graph's nodes (``in_place`` on a Concat), which is how the file keeps it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.binding import Binding
from ..engine.memory import MemoryPlan
from ..ir.graph import Graph, Node
from ..ops import Registry


@dataclass(frozen=True)
class Layer:
    """One layer of the plan, with the decisions bound on the device.

    Attributes:
        node: the graph node it runs.
        on_host: it runs on the host (shape arithmetic of a GPU engine, kiln/engine/placement.py).
        tactic: the bound tactic's name ("" for the op's own kernel).
        accepts_out: its kernel computes straight into a given buffer (``out=``) where it runs.
    """

    node: Node
    on_host: bool
    tactic: str
    accepts_out: bool


@dataclass(frozen=True)
class Plan:
    """The lowered graph and the decisions of the steps over it.

    Attributes:
        graph: the optimized graph, its layers in run order (what the engine file stores).
        layers: one ``Layer`` per node of ``graph``, in the same order.
        binding: the graph's constants and tactics bound on the device (kiln/engine/binding.py).
        registry: the op registry the plan was made with.
        concat_inputs_in_place: how many Concat inputs their producers write in place (mark_concats_in_place).
        rejections: report JSON for the steps' refusals (a Concat input that cannot be written in place).
        memory: the activation memory plan at the largest shapes (None: not planned ahead).
        arena: whether a run-time arena can hold every placed tensor (header field "arena").
        notes: what the steps want the build report to say.
    """

    graph: Graph
    layers: tuple[Layer, ...]
    binding: Binding
    registry: Registry
    concat_inputs_in_place: int = 0
    rejections: tuple[dict, ...] = ()
    memory: MemoryPlan | None = None
    arena: bool = False
    notes: tuple[str, ...] = ()

    def layer(self, node: Node) -> Layer | None:
        """The plan's layer for ``node`` (None for a node of no layer of this plan)."""
        return self._by_node.get(id(node))

    @property
    def _by_node(self) -> dict[int, Layer]:
        cached = self.__dict__.get("_by_node_cache")
        if cached is None:
            cached = {id(layer.node): layer for layer in self.layers}
            object.__setattr__(self, "_by_node_cache", cached)
        return cached

    def header_fields(self) -> dict:
        """The engine header's fields this plan decides: "arena", and "arena_bytes" when it was planned."""
        out: dict = {"arena": self.arena}
        if self.memory is not None and self.arena:
            out["arena_bytes"] = self.memory.arena_bytes
        return out
