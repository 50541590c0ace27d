"""Optimization profiles: for each dynamic input, the smallest, typical and largest shape.

The builder tunes for them and the engine stores them (header field ``config.profiles``) and checks every
run's input shapes against them; both import Profile from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ShapeError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """An optimization profile: for each dynamic input, the smallest, typical and largest shape.

    Attributes:
        min: the smallest shape per input name, {name: (d0, d1, ...)}.
        opt: the shape per input that the builder tunes for.
        max: the largest shape per input; a run with a shape outside min .. max raises ShapeError.
    """

    min: dict[str, Shape] = field(default_factory=dict)
    opt: dict[str, Shape] = field(default_factory=dict)
    max: dict[str, Shape] = field(default_factory=dict)

    @staticmethod
    def fixed(shapes: dict[str, Shape]) -> "Profile":
        """A profile that fixes every input at one shape (min = opt = max)."""
        shapes = {k: tuple(v) for k, v in shapes.items()}
        return Profile(dict(shapes), dict(shapes), dict(shapes))

    @staticmethod
    def of(**ranges) -> "Profile":
        """``Profile.of(x=((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)))``: (min, opt, max) per input;
        one shape, ``Profile.of(x=(8, 3, 224, 224))``, fixes the input at that shape."""
        lo, opt, hi = {}, {}, {}
        for name, r in ranges.items():
            if not isinstance(r, (tuple, list)) or not r:
                raise ShapeError(f"profile for input {name!r}: give a shape (8, 3, 224, 224) or (min, opt, max) "
                                 f"shapes, got {r!r}")
            if all(isinstance(d, int) and not isinstance(d, bool) for d in r):  # one shape: min = opt = max
                r = (r, r, r)
            if len(r) != 3 or not all(isinstance(s, (tuple, list)) and all(isinstance(d, int) for d in s) for s in r):
                raise ShapeError(f"profile for input {name!r}: give a shape (8, 3, 224, 224) or three shapes "
                                 f"(min, opt, max) of ints, got {r!r}")
            lo[name], opt[name], hi[name] = (tuple(int(d) for d in s) for s in r)
        return Profile(lo, opt, hi)

    def names(self) -> set[str]:
        """The input names this profile gives shapes for."""
        return set(self.min) | set(self.opt) | set(self.max)

    def validate(self) -> None:
        """Raise ShapeError unless every input has min, opt and max shapes of one rank with 0 <= min <= opt <= max."""
        for name in self.names():
            if not (name in self.min and name in self.opt and name in self.max):
                raise ShapeError(f"profile for input {name!r} needs min, opt and max shapes")
            lo, opt, hi = self.min[name], self.opt[name], self.max[name]
            if not (len(lo) == len(opt) == len(hi)):
                raise ShapeError(f"profile for input {name!r}: min {list(lo)}, opt {list(opt)} and max {list(hi)} "
                                 f"have different ranks")
            if any(not (a <= b <= c) for a, b, c in zip(lo, opt, hi)) or any(d < 0 for d in lo):
                raise ShapeError(f"profile for input {name!r}: needs 0 <= min <= opt <= max in every dimension, "
                                 f"got min {list(lo)}, opt {list(opt)}, max {list(hi)}")

    def contains(self, shapes: dict[str, Shape]) -> bool:
        """True when every shape in ``shapes`` lies within min .. max (inputs the profile does not name are ignored)."""
        return self.mismatch(shapes) is None

    def mismatch(self, shapes: dict[str, Shape]) -> str | None:
        """Why ``shapes`` fall outside this profile, or None when they fit."""
        for name, shape in shapes.items():
            if name not in self.min:
                continue
            lo, hi = self.min[name], self.max[name]
            if len(shape) != len(lo) or any(not (a <= d <= b) for a, d, b in zip(lo, shape, hi)):
                return f"input {name!r} has shape {list(shape)}, outside min {list(lo)} .. max {list(hi)}"
        return None

    def to_json(self) -> dict:
        """This profile as plain JSON data: {"min": {name: [dims]}, "opt": ..., "max": ...}."""
        return {k: {n: list(s) for n, s in getattr(self, k).items()} for k in ("min", "opt", "max")}

    @staticmethod
    def from_json(d: dict) -> "Profile":
        """The profile ``to_json`` wrote."""
        return Profile(*({n: tuple(s) for n, s in d[k].items()} for k in ("min", "opt", "max")))
