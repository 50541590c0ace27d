"""What an operator is to Kiln (OpDef), what a kernel sees (KernelContext), and the Registry.

An op family module builds one ``OpSet`` and decorates its kernels into it; ``kiln.ops.default_registry``
lists the families explicitly. Nothing registers itself globally on import.

Kernel contract: ``kernel(ctx, inputs, attrs)`` where ``inputs`` holds one runtime value per node input
(torch.Tensor, a Python list for an ONNX sequence, None for a missing optional input or an empty
optional) and ``attrs`` the node's attributes as plain Python values (ints, floats, str, lists,
torch tensors, kiln Graphs). It returns a torch.Tensor for a single output, or a tuple with one entry
per node output (entries past ``ctx.num_outputs`` are ignored).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..ir.dtype import DType
from ..ir.types import ValueType

Kernel = Callable[["KernelContext", list, dict], Any]
InferRule = Callable[["InferContext", list, dict], list]


@dataclass(frozen=True)
class OpDef:
    op_type: str
    kernel: Kernel
    domain: str = ""
    infer: InferRule | None = None  # static type rule; None: types come from running the kernel on meta tensors
    doc: str = ""


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

    def op(self, *op_types: str, domain: str = "", infer: InferRule | None = None):
        def register(kernel: Kernel) -> Kernel:
            for t in op_types:
                self.ops.append(OpDef(t, kernel, domain, infer, (kernel.__doc__ or "").strip()))
            return kernel
        return register

    def add(self, op_type: str, kernel: Kernel, domain: str = "", infer: InferRule | None = None) -> None:
        self.ops.append(OpDef(op_type, kernel, domain, infer, (kernel.__doc__ or "").strip()))


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

    def why_unsupported(self, domain: str, op_type: str) -> str:
        if _norm_domain(domain) == "" and op_type in self.not_supported:
            return self.not_supported[op_type]
        if _norm_domain(domain) != "":
            return f"domain {domain!r} is not supported"
        return "no Kiln kernel for this operator"
