"""The builder: a model and a BuilderConfig in, an Engine out.

``builder.py`` tells the whole build in one function: parse, run the pass pipeline, describe layers, tune
tactics, then ``lower`` (lower.py: the optimized graph and the tactic choices become a ``Plan``, plan.py, bound
on the device), the steps over the plan, each with one job (``mark_concats_in_place`` in concat_in_place.py:
producers write into a Concat's output; ``plan_activation_memory`` in memory_plan.py: lifetimes at the largest
shapes -> arena offsets), and last the Engine, built once from the plan, header and weights and never edited
after. ``config.py`` holds every build option (one frozen dataclass); ``report.py`` re-exports the build report
(kiln/engine/report.py); ``replay.py`` and ``refitter.py`` compute new weights through the build's passes."""
from .builder import build
from .config import BuilderConfig, Profile

__all__ = ["build", "BuilderConfig", "Profile"]
