"""The builder: BuilderConfig and profiles in, an Engine out."""
from .builder import build
from .config import BuilderConfig, Profile

__all__ = ["build", "BuilderConfig", "Profile"]
