import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # digits.py, minilm.py


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """(model path, calibration batches, test x, test y, fp32 accuracy) of the trained digits CNN."""
    import kiln
    from digits import accuracy, batches, train_digits
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    xtr, xte, yte = train_digits(path)
    acc32 = accuracy(kiln.build(path), xte, yte)
    return path, batches(xtr, 64, 8), xte, yte, acc32
