"""A tactic choice as plain data: what an engine stores (``node.meta["tactic"]``), a timing cache records and a
replay file lists."""
from __future__ import annotations

import json
from dataclasses import dataclass, field


class NotApplicable(Exception):
    """A candidate that cannot implement this layer (the message says why)."""


@dataclass(frozen=True)
class Choice:
    name: str
    params: dict = field(default_factory=dict, hash=False, compare=True)

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + "/" + ",".join(f"{k}={_fmt(v)}" for k, v in sorted(self.params.items()))

    def to_json(self) -> dict:
        return {"name": self.name, "params": json.loads(json.dumps(self.params))}

    @staticmethod
    def from_json(d) -> "Choice":
        if isinstance(d, str):
            return Choice(d)
        return Choice(str(d["name"]), dict(d.get("params") or {}))


def _fmt(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


TORCH = Choice("torch")  # every layer's own kernel: the default and the tuner's reference
