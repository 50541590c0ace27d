import sys
from pathlib import Path

# tests/conformance and tests/ops hold helper modules imported by plain name.
for sub in ("conformance", "ops"):
    sys.path.insert(0, str(Path(__file__).parent / sub))
