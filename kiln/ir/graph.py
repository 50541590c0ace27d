"""The graph IR: Value, Node, Graph, with use-def links kept consistent by the mutation methods.

A Value is produced by at most one Node (or is a graph input or a constant) and knows its uses.
A subgraph (the body of If/Loop/Scan) is a Graph whose nodes may read Values of enclosing graphs.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import torch

from ..errors import GraphError
from .types import TensorType, ValueType

_ids = itertools.count()


class Value:
    """A tensor (or sequence/optional) flowing between nodes."""

    __slots__ = ("name", "type", "producer", "index", "uses", "const", "id", "meta")

    def __init__(self, name: str, type: ValueType | None = None, const: torch.Tensor | None = None):
        self.name = name
        self.type: ValueType = type if type is not None else TensorType()
        self.producer: Node | None = None  # None for graph inputs and constants
        self.index: int = 0  # which output of the producer
        self.uses: list[tuple[Node, int]] = []  # (consumer, input slot)
        self.const = const  # set for initializers / folded constants
        self.id = next(_ids)
        self.meta: dict[str, Any] = {}

    @property
    def dtype(self):
        """The element type (a DType), or None when unknown or the value is not a tensor."""
        return getattr(self.type, "dtype", None)

    @property
    def shape(self):
        """The shape (see TensorType.shape), or None when unknown or the value is not a tensor."""
        return getattr(self.type, "shape", None)

    @property
    def is_const(self) -> bool:
        """True when the value is a constant (an initializer or a folded result) held in ``const``."""
        return self.const is not None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operator application. ``attrs`` holds plain Python values, torch tensors and Graphs."""

    __slots__ = ("op_type", "domain", "name", "inputs", "outputs", "attrs", "graph", "meta")

    def __init__(self, op_type: str, inputs: Iterable[Value | None], outputs: Iterable[Value | None],
                 attrs: dict[str, Any] | None = None, name: str = "", domain: str = ""):
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.inputs: list[Value | None] = []
        self.outputs: list[Value | None] = list(outputs)
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}
        for i, v in enumerate(self.outputs):
            if v is not None:
                if v.producer is not None:
                    raise GraphError(f"value {v.name!r} is produced by both {v.producer.name!r} and {name!r}")
                v.producer, v.index = self, i
        for v in inputs:
            self.inputs.append(v)
            if v is not None:
                v.uses.append((self, len(self.inputs) - 1))

    def set_input(self, slot: int, value: Value | None) -> None:
        """Make input ``slot`` read ``value`` (None: an omitted optional input), keeping the use lists right."""
        old = self.inputs[slot]
        if old is not None:
            old.uses.remove((self, slot))
        self.inputs[slot] = value
        if value is not None:
            value.uses.append((self, slot))

    def detach(self) -> None:
        """Drop this node's links to its inputs and outputs (used when removing it)."""
        for slot, v in enumerate(self.inputs):
            if v is not None:
                v.uses.remove((self, slot))
        for v in self.outputs:
            if v is not None and v.producer is self:
                v.producer = None

    def subgraphs(self) -> Iterator["Graph"]:
        """The Graphs among this node's attributes (the bodies of If, Loop, Scan), in attribute order."""
        for a in self.attrs.values():
            if isinstance(a, Graph):
                yield a
            elif isinstance(a, list):
                yield from (g for g in a if isinstance(g, Graph))

    @property
    def label(self) -> str:
        """A name for messages: the node's name, or ``<OpType>`` when it has none."""
        return self.name or f"<{self.op_type}>"

    def __repr__(self) -> str:
        return f"Node({self.op_type}, {self.name!r})"


class Graph:
    """Nodes in topological order, graph inputs/outputs, and constants (initializers)."""

    def __init__(self, name: str = "graph", parent: "Graph | None" = None):
        self.name = name
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, Value] = {}
        self.opsets: dict[str, int] = {"": 21} if parent is None else dict(parent.opsets)
        self.meta: dict[str, Any] = {}

    # -- construction -------------------------------------------------------------------
    def add_input(self, value: Value) -> Value:
        """Append ``value`` to the graph's inputs and return it."""
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, tensor: torch.Tensor, type: ValueType | None = None) -> Value:
        """Add a constant named ``name`` holding ``tensor`` and return its Value; the type is taken from the tensor
        unless given."""
        from .dtype import DType
        if type is None:
            type = TensorType(DType.from_torch(tensor.dtype), tuple(tensor.shape))
        v = Value(name, type, const=tensor)
        self.constants[name] = v
        return v

    def append(self, node: Node) -> Node:
        """Append ``node`` at the end of the graph and return it."""
        node.graph = self
        self.nodes.append(node)
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        """Insert ``node`` just before ``anchor`` (a node of this graph) and return it."""
        node.graph = self
        self.nodes.insert(self.nodes.index(anchor), node)
        return node

    def remove(self, node: Node) -> None:
        """Remove ``node`` and its links to its inputs; raises GraphError while one of its outputs is still used."""
        for v in node.outputs:
            if v is not None and v.uses:
                raise GraphError(f"cannot remove node {node.label}: output {v.name!r} is still used")
        node.detach()
        self.nodes.remove(node)
        node.graph = None

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every consumer of ``old`` (here and in subgraphs) at ``new``; graph outputs too."""
        for node, slot in list(old.uses):
            node.set_input(slot, new)
        for g in self.walk_graphs():
            g.outputs = [new if o is old else o for o in g.outputs]

    # -- queries ------------------------------------------------------------------------
    def walk_graphs(self) -> Iterator["Graph"]:
        """This graph, then every subgraph nested in its nodes, depth first."""
        yield self
        for n in self.nodes:
            for sg in n.subgraphs():
                yield from sg.walk_graphs()

    def all_nodes(self) -> Iterator[Node]:
        """Every node, including those inside subgraphs."""
        for g in self.walk_graphs():
            yield from g.nodes

    def values(self) -> Iterator[Value]:
        """Every value of this graph once: inputs, constants, then node outputs (subgraphs not included)."""
        seen: set[int] = set()
        for v in itertools.chain(self.inputs, self.constants.values(),
                                 (o for n in self.nodes for o in n.outputs if o is not None)):
            if v.id not in seen:
                seen.add(v.id)
                yield v

    def toposort(self) -> None:
        """Reorder nodes so that each comes after the producers of its inputs; raise on cycles."""
        local = {id(n) for n in self.nodes}
        deps: dict[int, set[int]] = {}
        for n in self.nodes:
            d = set()
            for v in _reads(n):
                if v.producer is not None and id(v.producer) in local and v.producer is not n:
                    d.add(id(v.producer))
                elif v.producer is n:
                    raise GraphError(f"node {n.label} ({n.op_type}) reads its own output {v.name!r}: cycle")
            deps[id(n)] = d
        order, done, by_id = [], set(), {id(n): n for n in self.nodes}
        ready = [n for n in self.nodes if not deps[id(n)]]
        users: dict[int, list[Node]] = {}
        for n in self.nodes:
            for d in deps[id(n)]:
                users.setdefault(d, []).append(n)
        pending = {id(n): len(deps[id(n)]) for n in self.nodes}
        while ready:
            n = ready.pop(0)
            order.append(n)
            done.add(id(n))
            for u in users.get(id(n), []):
                pending[id(u)] -= 1
                if pending[id(u)] == 0:
                    ready.append(u)
        if len(order) != len(self.nodes):
            stuck = [by_id[i].label for i in by_id if i not in done][:5]
            raise GraphError(f"graph {self.name!r} has a cycle through node(s) {', '.join(stuck)}")
        self.nodes = order

    def verify(self) -> None:
        """Check the graph's invariants (unique value names, use-def links, every input defined before use,
        topological order); raises GraphError naming the first broken one."""
        from .verify import verify
        verify(self)

    def __str__(self) -> str:
        from .printer import format_graph
        return format_graph(self)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"


def new_constant(graph: Graph, hint: str, tensor: torch.Tensor) -> Value:
    """A new constant of ``graph`` named ``hint`` (``hint_1``, ``hint_2``, ... when the name is taken)."""
    name, i = hint, 0
    while name in graph.constants:
        i += 1
        name = f"{hint}_{i}"
    return graph.add_constant(name, tensor)


def _reads(node: Node) -> Iterator[Value]:
    """Values a node reads: its inputs, and outer-scope values its subgraphs read."""
    for v in node.inputs:
        if v is not None:
            yield v
    for sg in node.subgraphs():
        yield from outer_reads(sg)


def outer_reads(graph: Graph) -> list[Value]:
    """Values used inside ``graph`` (or its nested subgraphs) that are defined outside it."""
    defined: set[int] = set()
    found: dict[int, Value] = {}
    for g in graph.walk_graphs():
        defined.update(v.id for v in g.inputs)
        defined.update(v.id for v in g.constants.values())
        for n in g.nodes:
            defined.update(o.id for o in n.outputs if o is not None)
    for g in graph.walk_graphs():
        for n in g.nodes:
            for v in n.inputs:
                if v is not None and v.id not in defined:
                    found[v.id] = v
        for v in g.outputs:
            if v.id not in defined:
                found[v.id] = v
    return list(found.values())
