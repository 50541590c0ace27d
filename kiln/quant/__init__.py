"""Reduced precision for Kiln: observers, calibrators (minmax, entropy, entropy2, percentile), the
calibration cache, Q/DQ import/export, and the accuracy target.

Building with INT8 is a BuilderConfig matter (``int8=True`` with ``int8_calibrator`` data or a
``calibration_cache``; or a Q/DQ model); this package also offers the pieces on their own.

Files: observers.py, calibrators.py, calibrate.py (run the data through), data.py (data sources), cache.py
(the calibration cache), rewrite.py (layers made kiln::QLinear / kiln::QConv), sensitivity.py and accuracy.py
(the accuracy target), layer_precision.py (per-layer constraints), config_check.py (BuilderConfig's fields),
qdq_export.py and cli.py (``kiln quantize``).
"""
from __future__ import annotations

from .accuracy import AccuracyTarget, compare
from .cache import Calibration
from .calibrators import METHODS, compute_amax
from .layer_precision import layer_precision
from .observers import HistogramObserver


def calibrate(*args, **kwargs):
    """See kiln.quant.calibrate.calibrate."""
    from .calibrate import calibrate as _calibrate
    return _calibrate(*args, **kwargs)


def calibrate_model(*args, **kwargs):
    """See kiln.quant.qdq_export.calibrate_model."""
    from .qdq_export import calibrate_model as _cm
    return _cm(*args, **kwargs)


def write_qdq_model(*args, **kwargs):
    """See kiln.quant.qdq_export.write_qdq_model."""
    from .qdq_export import write_qdq_model as _w
    return _w(*args, **kwargs)


__all__ = ["AccuracyTarget", "Calibration", "HistogramObserver", "METHODS", "calibrate", "calibrate_model",
           "compare", "compute_amax", "layer_precision", "write_qdq_model"]
