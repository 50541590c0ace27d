"""Calibration results and the calibration cache file, so a second build needs no data.

A ``Calibration`` maps tensor names to int8 scales (``amax / 127``, symmetric), the number TensorRT
caches. Two file formats, chosen by the file name when writing and sniffed when reading:

- JSON (``*.json``): ``{"format": "kiln-calibration", "version": 1, "method": ..., "scales": {name: scale}}``
- TensorRT's text cache: a first line ``TRT-<version>-<Algorithm>``, then ``name: <hex of the big-endian
  float32 scale>`` per tensor, as ``trtexec --calib`` reads and writes it.

A cache file is untrusted input (measured: zero, NaN, infinite or 1000x scales used to build INT8 engines that
gave NaN or cosine 0.13 against float32, silently). ``load`` refuses a malformed file or a scale no kernel can use
with CalibrationCacheError naming the tensor, and flags outliers (``check_scales``).
"""
from __future__ import annotations

import json
import logging
import math
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CalibrationCacheError

log = logging.getLogger("kiln.quant")

INT8_MAX = 127.0
FP8_MAX = 448.0

_TRT_NAMES = {"entropy": "EntropyCalibration", "entropy2": "EntropyCalibration2", "minmax": "MinMaxCalibration",
              "percentile": "LegacyCalibration"}
_FROM_TRT = {v: k for k, v in _TRT_NAMES.items()}


@dataclass
class Calibration:
    scales: dict[str, float] = field(default_factory=dict)  # tensor name -> int8 scale (amax / 127)
    method: str = "entropy2"
    # tensor name -> per-channel SmoothQuant divisors s; that tensor's scale is the scale of x / s
    smoothing: dict[str, list[float]] = field(default_factory=dict)
    # suspicious scales found when loading (each names its tensor), for the build report; not saved
    flagged: list[str] = field(default_factory=list, compare=False, repr=False)

    @staticmethod
    def from_amax(amax: dict[str, float], method: str) -> "Calibration":
        return Calibration({k: _f32(_positive(v) / INT8_MAX) for k, v in amax.items()}, method)

    def amax(self, name: str) -> float | None:
        s = self.scales.get(name)
        return None if s is None else s * INT8_MAX

    def scale(self, name: str, fmt: str = "int8") -> float | None:
        a = self.amax(name)
        if a is None:
            return None
        return a / FP8_MAX if fmt == "fp8e4m3" else a / INT8_MAX

    def __contains__(self, name: str) -> bool:
        return name in self.scales

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        p = Path(path)
        if p.suffix.lower() == ".json":
            p.write_text(json.dumps({"format": "kiln-calibration", "version": 1, "method": self.method,
                                     "scales": self.scales, "smoothing": self.smoothing}, sort_keys=True))
            return
        base = self.method.split(":")[0]
        lines = [f"TRT-8601-{_TRT_NAMES.get(base, 'EntropyCalibration2')}"]
        for name in sorted(self.scales):
            lines.append(f"{name}: {struct.pack('>f', self.scales[name]).hex()}")
        for name in sorted(self.smoothing):  # Kiln's addition; TensorRT has no per-channel activation data
            lines.append(f"kiln-smooth:{name}: " + ",".join(struct.pack(">f", v).hex() for v in self.smoothing[name]))
        p.write_text("\n".join(lines) + "\n")

    @staticmethod
    def load(path: str | Path) -> "Calibration":
        """The cache in ``path``. A cache is untrusted input: a malformed file or a scale that cannot work
        raises CalibrationCacheError naming the tensor; a scale that is merely suspicious (an outlier next to
        the others) is logged and kept in ``flagged``, so the build can go on and the report can say so."""
        p = Path(path)
        text = _read_text(p)
        cal = _parse_json(text, p) if text.lstrip().startswith("{") else _parse_trt(text, p)
        cal.flagged = check_scales(cal, f"calibration cache {str(p)!r}")
        if cal.flagged:
            more = len(cal.flagged) - 10
            shown = "; ".join(cal.flagged[:10]) + (f"; and {more} more" if more > 0 else "")
            msg = f"calibration cache {str(p)!r}: {len(cal.flagged)} suspicious scale(s): {shown}"
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return cal


# -- reading: every failure is a CalibrationCacheError --------------------------------------------------------
MAX_FILE_BYTES = 64 << 20  # one float per tensor (and a few per channel): real caches are kilobytes


def _read_text(p: Path) -> str:
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CalibrationCacheError(f"cannot read calibration cache {str(p)!r}: {e}") from e
    if len(data) > MAX_FILE_BYTES:
        raise CalibrationCacheError(f"calibration cache {str(p)!r} is over {MAX_FILE_BYTES >> 20} MiB: "
                                    f"not a calibration cache")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationCacheError(f"calibration cache {str(p)!r} is not text: {e}") from e


def _parse_json(text: str, p: Path) -> Calibration:
    try:
        d = json.loads(text)
    except RecursionError:  # json's parser recurses per nesting level: a hostile file can exhaust the stack
        raise CalibrationCacheError(f"calibration cache {str(p)!r} is nested too deeply to be a calibration "
                                    f"cache") from None
    except ValueError as e:  # also the int-digits limit of a huge number literal
        raise CalibrationCacheError(f"calibration cache {str(p)!r} is not valid JSON: {e}") from e
    if not isinstance(d, dict) or d.get("format") != "kiln-calibration":
        raise CalibrationCacheError(f"{str(p)!r} is JSON but not a Kiln calibration cache")
    scales, smoothing, method = d.get("scales"), d.get("smoothing", {}), d.get("method", "entropy2")
    if not isinstance(scales, dict) or not isinstance(smoothing, dict) or not isinstance(method, str):
        raise CalibrationCacheError(f"calibration cache {str(p)!r}: 'scales' and 'smoothing' must be objects, "
                                    f"'method' a string")
    out = Calibration({k: _number(v, k, p) for k, v in scales.items()}, method)
    for k, v in smoothing.items():
        if not isinstance(v, list):
            raise CalibrationCacheError(f"calibration cache {str(p)!r}: smoothing of tensor {k!r} is not a list")
        out.smoothing[k] = [_number(x, k, p) for x in v]
    return out


def _parse_trt(text: str, p: Path) -> Calibration:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise CalibrationCacheError(f"{str(p)!r} is not a calibration cache (neither Kiln JSON nor TensorRT text)")
    method = _FROM_TRT.get(lines[0].split("-", 2)[-1], "entropy2")
    scales, smoothing = {}, {}
    for i, ln in enumerate(lines[1:], 2):
        name, sep, hexval = ln.rpartition(":")
        if not sep or not name.strip():
            raise CalibrationCacheError(f"calibration cache {str(p)!r}: line {i} is not 'tensor name: hex scale'")
        if name.startswith("kiln-smooth:"):
            name = name[len("kiln-smooth:"):].strip()
            smoothing[name] = [_hex_f32(h, name, p) for h in hexval.strip().split(",")]
            continue
        scales[name.strip()] = _hex_f32(hexval, name.strip(), p)
    return Calibration(scales, method, smoothing)


def _hex_f32(h: str, name: str, p: Path) -> float:
    h = h.strip()
    if len(h) != 8:
        raise CalibrationCacheError(f"calibration cache {str(p)!r}: tensor {name!r} has {h[:20]!r}, not the 8 hex "
                                    f"digits of a float32")
    try:
        return struct.unpack(">f", bytes.fromhex(h))[0]
    except ValueError:
        raise CalibrationCacheError(f"calibration cache {str(p)!r}: tensor {name!r} has {h!r}, not hex "
                                    f"digits") from None


def _number(v, name: str, p: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CalibrationCacheError(f"calibration cache {str(p)!r}: tensor {name!r} has {str(v)[:40]!r}, not a "
                                    f"number")
    try:
        return float(v)
    except OverflowError:  # an integer literal past float range
        raise CalibrationCacheError(f"calibration cache {str(p)!r}: tensor {name!r} has a scale past float "
                                    f"range") from None


# -- checking the numbers ------------------------------------------------------------------------------------
F32_MAX = 3.4028234663852886e38
F32_TINY = 1.1754943508222875e-38  # the smallest normal float32: below it 1 / scale overflows
F16_MAX = 65504.0
OUTLIER = 1000.0  # a scale this many times above or below the median of the others is flagged


def check_scales(cal: Calibration, where: str = "calibration cache") -> list[str]:
    """Raise CalibrationCacheError for a scale no kernel can use (zero, negative, NaN, infinite, subnormal, or a
    range past float32: quantizing with it gives NaN, infinities or all zeros); return warnings, each naming its
    tensor, for scales that can run but are most likely tampered with or broken: 1000x above or below the
    median of the other scales, or a range float16 cannot hold."""
    for name, s in cal.scales.items():
        why = _unusable(s)
        if why:
            raise CalibrationCacheError(f"{where}: tensor {name!r} has scale {s!r}, which {why}; calibrate again "
                                        f"or delete the cache")
    for name, factors in cal.smoothing.items():
        bad = next((f for f in factors if not (math.isfinite(f) and f > 0)), None)
        if bad is not None:
            raise CalibrationCacheError(f"{where}: tensor {name!r} has smoothing factor {bad!r}; factors divide "
                                        f"the tensor, so each must be finite and positive")
    found = []
    ranked = sorted((s, name) for name, s in cal.scales.items())
    for i, (s, name) in enumerate(ranked):
        if s * INT8_MAX > F16_MAX:
            found.append(f"tensor {name!r}: scale {s:.6g} means a range of {s * INT8_MAX:.6g}, past float16's")
        if len(ranked) < 2:
            continue
        med = _median_without([r[0] for r in ranked], i)
        if s >= OUTLIER * med:
            found.append(f"tensor {name!r}: scale {s:.6g} is {s / med:.3g}x the median of the others ({med:.6g})")
        elif s * OUTLIER <= med:
            found.append(f"tensor {name!r}: scale {s:.6g} is 1/{med / s:.3g} of the median of the others "
                         f"({med:.6g})")
    return found


def _unusable(s: float) -> str | None:
    if not math.isfinite(s):
        return "is not finite"
    if s <= 0:
        return "is not positive"
    if s < F32_TINY:
        return "is subnormal in float32 (its reciprocal overflows)"
    if s * INT8_MAX > F32_MAX * (1 + 2 ** -24):  # (float32 rounding of the largest ranges stays in)
        return "means a range past float32's"
    return None


def _median_without(ranked: list[float], i: int) -> float:
    """The median of the sorted ``ranked`` without its ``i``-th element (an outlier must not move its own
    yardstick: with two scales the median of both would be half the outlier)."""
    def at(k: int) -> float:
        return ranked[k if k < i else k + 1]
    m = len(ranked) - 1
    return at(m // 2) if m % 2 else (at(m // 2 - 1) + at(m // 2)) / 2


def _f32(x: float) -> float:
    """Scales are float32 (as TensorRT's cache and the kernels hold them): round once, here."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


def _positive(a: float) -> float:
    return float(a) if a > 0 else 1.0  # an all-zero tensor: any scale represents it exactly
