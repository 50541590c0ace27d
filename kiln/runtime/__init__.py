"""The reference interpreter: runs a kiln Graph node by node with each op's own kernel (``kiln.interpret``).

It is the oracle for what the builder's optimized engine must compute (tests compare them); the optimized
runtime itself is kiln/engine (program.py, runtime.py)."""
from .interpreter import Interpreter, interpret

__all__ = ["Interpreter", "interpret"]
