"""Executing graphs."""
from .interpreter import Interpreter, interpret

__all__ = ["Interpreter", "interpret"]
