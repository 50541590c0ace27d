"""The build report's home is kiln/engine/report.py (the engine stores it and reads it back); the builder fills
it in. Kept importable here for ``kiln.builder.report``."""
from ..engine.report import BuildReport, LayerInfo

__all__ = ["BuildReport", "LayerInfo"]
