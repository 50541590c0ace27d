"""The builder: a model and a BuilderConfig in, an Engine out (``builder.py``: parse, run the pass pipeline,
describe layers, tune tactics, plan memory). ``config.py`` holds every build option (one frozen dataclass);
``lower.py`` names each layer's kernel and plans activation memory; ``concat_in_place.py`` lets producers write
into a Concat's output; ``report.py`` re-exports the build report (kiln/engine/report.py)."""
from .builder import build
from .config import BuilderConfig, Profile

__all__ = ["build", "BuilderConfig", "Profile"]
