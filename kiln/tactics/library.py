"""The tactic space as one object: for each layer kind its candidate rows, and for each tactic its factory.

A :class:`Row` names a candidate: the tactic ``name``, its ``params`` (by name), the device type it is offered
on and the optimization level it is offered from. A :class:`TacticLibrary` holds the rows per (domain, op
type) and the factory per tactic name; it lists a layer's candidates (``candidates``) and makes a choice into
a kernel (``make``). It is immutable: ``with_rows`` and ``with_factories`` return a new library, which a test
or an extension passes to ``kiln.build(..., tactics=library)`` (and the engine binds its layers with it)
instead of editing a module's table. ``kiln.tactics.DEFAULT`` is Kiln's own (space.py).

Whether Triton tactics are offered for CPU tensors is the library's ``triton_on_cpu`` (default False), passed to
each factory marked with :func:`triton_factory` as its ``on_cpu`` keyword: those tactics then run in Triton's
interpreter, which is Triton's own switch (``TRITON_INTERPRET=1``, read by Triton); a library asking for them
where Triton is not interpreting raises KilnError. The tests use it; Kiln never reads or sets the variable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import torch

from ..ops.fused_cpu import Tactic
from .choice import Choice, NotApplicable

Factory = Callable[[object, dict, dict, torch.device], Tactic]  # (node, params, constants, device) -> Tactic
# (tactic name, params, level) -> the params of each candidate a row stands for (a row of block configs "*")
Expand = Callable[[str, dict, int], list]


@dataclass(frozen=True)
class Row:
    """One candidate of a layer kind: tactic ``name`` with ``params``, offered on ``device`` ("any", "cpu" or
    "cuda") from optimization level ``min_level`` (2: few, 3: default, 4-5: the widest search)."""

    name: str
    params: dict = field(default_factory=dict, hash=False)
    device: str = "any"
    min_level: int = 0

    def offered(self, device: torch.device, level: int) -> bool:
        return (self.device == "any" or self.device == device.type) and level >= self.min_level


def triton_factory(factory: Factory) -> Factory:
    """Mark ``factory`` as making tactics that launch Triton kernels: ``TacticLibrary.make`` then passes it the
    library's ``triton_on_cpu`` as the keyword ``on_cpu`` (whether a CPU device may get one)."""
    factory.triton = True  # type: ignore[attr-defined]
    return factory


class TacticLibrary:
    """The candidates per layer kind and the factory per tactic name (see the module's docstring).

    ``triton_on_cpu``: offer Triton tactics for CPU tensors too (default False: CUDA only). They run in Triton's
    interpreter, so the process must run under ``TRITON_INTERPRET=1`` (KilnError otherwise); meant for tests."""

    def __init__(self, rows: Mapping[tuple[str, str], Iterable[Row]], factories: Mapping[str, Factory],
                 expand: Expand | None = None, *, triton_on_cpu: bool = False):
        self.space: Mapping[tuple[str, str], tuple[Row, ...]] = MappingProxyType(
            {kind: tuple(rs) for kind, rs in rows.items()})
        self.factories: Mapping[str, Factory] = MappingProxyType(dict(factories))
        self._expand = expand
        self.triton_on_cpu = bool(triton_on_cpu)

    # -- the table --------------------------------------------------------------------------------------------
    def rows(self, domain: str, op_type: str) -> tuple[Row, ...]:
        return self.space.get((domain or "", op_type), ())

    def has_space(self, node) -> bool:
        return (node.domain or "", node.op_type) in self.space

    def with_rows(self, domain: str, op_type: str, *rows: Row) -> "TacticLibrary":
        """A library with ``rows`` appended to the candidates of (domain, op type)."""
        kind = (domain or "", op_type)
        return TacticLibrary({**self.space, kind: self.space.get(kind, ()) + tuple(rows)}, self.factories,
                             self._expand, triton_on_cpu=self.triton_on_cpu)

    def with_factories(self, **factories: Factory) -> "TacticLibrary":
        """A library that also makes the tactics named by the keywords."""
        return TacticLibrary(self.space, {**self.factories, **factories}, self._expand,
                             triton_on_cpu=self.triton_on_cpu)

    def with_triton_on_cpu(self, on: bool = True) -> "TacticLibrary":
        """This library with ``triton_on_cpu`` set to ``on`` (see the class docstring)."""
        return TacticLibrary(self.space, self.factories, self._expand, triton_on_cpu=on)

    def candidates(self, node, device: torch.device, level: int = 3) -> list[Choice]:
        """The choices to time for ``node`` at ``level``, "torch" (the reference) first; [] if it has no space."""
        out = []
        for row in self.rows(node.domain, node.op_type):
            if not row.offered(device, level):
                continue
            if "*" in row.params.values() and self._expand is not None:
                out += [Choice(row.name, p) for p in self._expand(row.name, dict(row.params), level)]
            else:
                out.append(Choice(row.name, dict(row.params)))
        return out

    # -- Choice -> kernel -------------------------------------------------------------------------------------
    def make(self, choice: Choice, node, constants: dict, device: torch.device) -> Tactic | None:
        """The tactic for ``choice`` on ``node`` (None for "torch": the op's own kernel). Raises NotApplicable, or
        KilnError for a Triton tactic on the CPU asked for where Triton is not interpreting."""
        if choice.name == "torch":
            return None
        factory = self.factories.get(choice.name)
        if factory is None:
            raise NotApplicable(f"unknown tactic {choice.name!r}")
        options = {}
        if getattr(factory, "triton", False):
            options["on_cpu"] = self.triton_on_cpu
            if self.triton_on_cpu and device.type == "cpu":
                from ..backends.triton import require_interpreter
                require_interpreter()  # KilnError, not a NotApplicable the tuner would only note
        try:
            t = factory(node, choice.params, constants, device, **options)
        except NotApplicable:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a replayed choice made for another kind of layer
            raise NotApplicable(f"{choice.label} cannot be made for {node.domain}::{node.op_type}: "
                                f"{type(e).__name__}: {e}") from None
        suffix = choice.label[len(choice.name):]  # "/k=v,..." when the choice has params
        return Tactic(t.name + suffix, t.kernel)
