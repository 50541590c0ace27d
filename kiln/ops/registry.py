"""What an operator is to Kiln (OpDef), what a kernel sees (KernelContext), and the Registry.

An op family module builds one ``OpSet`` and decorates its kernels into it; ``kiln.ops.default_registry``
lists the families explicitly. Nothing registers itself globally on import.

Kernel contract: ``kernel(ctx, inputs, attrs)`` where ``inputs`` holds one runtime value per node input
(torch.Tensor, a Python list for an ONNX sequence, None for a missing optional input or an empty
optional) and ``attrs`` the node's attributes as plain Python values (ints, floats, str, lists,
torch tensors, kiln Graphs). It returns a torch.Tensor for a single output, or a tuple with one entry
per node output (entries past ``ctx.num_outputs`` are ignored). Outputs are new storage unless the op has the
``view`` trait: the alias analysis (kiln/engine/aliases.py) knows only the trait, and the run-time arena places
tensors by it (a kernel returning its input anyway is caught when a run is recorded, kept out of the arena and
reported).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..ir.dtype import DType
from ..ir.types import ValueType

Kernel = Callable[["KernelContext", list, dict], Any]
InferRule = Callable[["InferContext", list, dict], list]
# (attrs, which input slots are given, which outputs are used) -> why the node cannot run, or None. Called by the
# frontend, so an attribute combination a kernel does not implement is refused at parse time with the node named.
CheckRule = Callable[[dict, list, list], "str | None"]


@dataclass(frozen=True)
class Traits:
    """What passes, placement and lowering may assume about an op, declared beside its kernel
    (``@ops.op("Add", elementwise=True, ...)``); the registry answers queries over them (``ops_with``)."""

    elementwise: bool = False  # output element i computed from input elements i alone (after broadcasting)
    broadcasting: bool = False  # inputs broadcast by numpy rules: an Expand feeding one may be redundant
    view: bool = False  # output 0 is a view of input 0 at run time (torch returns one): no memory of its own
    reshape: bool = False  # output 0 is input 0's elements in the same order, in another shape
    same_shape: bool = False  # float op whose single output has input 0's shape and dtype (opset 13+)
    never_fold: bool = False  # outputs must not become constants even when every input is known (random ops)
    host: bool = False  # integer/shape arithmetic that may run on the host when all its inputs are host values
    host_inputs: tuple[int, ...] = ()  # input slots the kernel reads as Python values (a host value is used as is)
    float_dtypes: tuple = ()  # torch float dtypes the kernel takes (empty: any); reduced precision keeps others fp32
    label: Callable[[Any], str] | None = None  # node -> its kernel's name in the build report (default family.Op)


@dataclass(frozen=True)
class OpDef:
    op_type: str
    kernel: Kernel
    domain: str = ""
    infer: InferRule | None = None  # static type rule; None: types come from running the kernel on meta tensors
    doc: str = ""
    traits: Traits = Traits()
    check: CheckRule | None = None


@dataclass
class KernelContext:
    """What a kernel may know about the node it runs, besides its inputs and attributes."""

    opset: int
    device: torch.device
    num_outputs: int = 1
    output_types: list = field(default_factory=list)  # ValueType | None per output, from the IR
    node_name: str = ""
    run_graph: Callable[[Any, list], list] | None = None  # runs a subgraph with given inputs, returns outputs

    def output_dtype(self, i: int = 0) -> DType | None:
        t = self.output_types[i] if i < len(self.output_types) else None
        return getattr(t, "dtype", None)

    def wants(self, i: int) -> bool:
        """Whether the node uses output ``i`` (optional outputs may be skipped)."""
        return i < self.num_outputs


@dataclass
class InferContext:
    """What a static type rule may know: the opset, and constant values of inputs where known."""

    opset: int
    constants: list  # torch.Tensor | None per input
    num_outputs: int = 1


class OpSet:
    """The ops of one family, collected by decorator in that family's module."""

    def __init__(self, family: str):
        self.family = family
        self.ops: list[OpDef] = []

    def op(self, *op_types: str, domain: str = "", infer: InferRule | None = None, check: CheckRule | None = None,
           **traits):
        """Decorates a kernel for ``op_types``; keywords are the ops' ``Traits`` (an unknown one is a TypeError)."""
        t = Traits(**traits)

        def register(kernel: Kernel) -> Kernel:
            for name in op_types:
                self.ops.append(OpDef(name, kernel, domain, infer, (kernel.__doc__ or "").strip(), t, check))
            return kernel
        return register

    def add(self, op_type: str, kernel: Kernel, domain: str = "", infer: InferRule | None = None,
            check: CheckRule | None = None, **traits) -> None:
        self.ops.append(OpDef(op_type, kernel, domain, infer, (kernel.__doc__ or "").strip(), Traits(**traits),
                              check))


_NO_TRAITS = Traits()


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


class Registry:
    """Lookup of OpDefs by (domain, op type); built from an explicit list of OpSets."""

    def __init__(self, opsets: Iterable[OpSet] = (), not_supported: dict[str, str] | None = None):
        self._ops: dict[tuple[str, str], OpDef] = {}
        self.families: dict[tuple[str, str], str] = {}
        self.not_supported = dict(not_supported or {})  # op type -> reason it is left out
        for s in opsets:
            for d in s.ops:
                key = (_norm_domain(d.domain), d.op_type)
                if key in self._ops:
                    raise ValueError(f"op {key} defined twice (families {self.families[key]} and {s.family})")
                self._ops[key] = d
                self.families[key] = s.family

    def get(self, domain: str, op_type: str) -> OpDef | None:
        return self._ops.get((_norm_domain(domain), op_type))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return (_norm_domain(key[0]), key[1]) in self._ops

    def __iter__(self):
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def traits(self, domain: str, op_type: str) -> Traits:
        """The op's traits; an unknown op has none (every trait false)."""
        d = self.get(domain, op_type)
        return d.traits if d is not None else _NO_TRAITS

    def ops_with(self, trait: str, domain: str = "") -> frozenset[str]:
        """Op types of ``domain`` whose ``trait`` is set (true, non-empty), e.g. ``ops_with("elementwise")``."""
        if trait not in Traits.__dataclass_fields__:
            raise ValueError(f"no op trait {trait!r}; traits: {', '.join(Traits.__dataclass_fields__)}")
        dom = _norm_domain(domain)
        return frozenset(t for (d, t), op in self._ops.items() if d == dom and getattr(op.traits, trait))

    def host_input_slots(self) -> frozenset[tuple[str, int]]:
        """(op type, input slot) pairs of ONNX ops whose kernels read that input as a Python value."""
        return frozenset((t, i) for (d, t), op in self._ops.items() if d == "" for i in op.traits.host_inputs)

    def why_unsupported(self, domain: str, op_type: str) -> str:
        if _norm_domain(domain) == "" and op_type in self.not_supported:
            return self.not_supported[op_type]
        if _norm_domain(domain) != "":
            return f"domain {domain!r} is not supported"
        return "no Kiln kernel for this operator"
