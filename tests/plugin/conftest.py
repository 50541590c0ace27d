"""The plugin tests run Triton kernels on the CPU through TRITON_INTERPRET=1 (set before triton is imported),
and import the user-style plugin module from this folder by name."""
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
