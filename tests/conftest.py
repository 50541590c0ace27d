import sys
from pathlib import Path

import pytest

# tests/conformance and tests/ops hold helper modules imported by plain name.
for sub in ("conformance", "ops"):
    sys.path.insert(0, str(Path(__file__).parent / sub))


@pytest.fixture
def count_timings(monkeypatch):
    """Counts every candidate timing the tuner makes (Timer.__call__)."""
    from kiln.tune import tuner
    calls = []
    real = tuner.Timer.__call__

    def counted(self, fn, device):
        calls.append(1)
        return real(self, fn, device)
    monkeypatch.setattr(tuner.Timer, "__call__", counted)
    return calls
