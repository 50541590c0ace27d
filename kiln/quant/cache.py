"""Calibration results and the calibration cache file, so a second build needs no data.

A ``Calibration`` maps tensor names to int8 scales (``amax / 127``, symmetric), the number TensorRT
caches. Two file formats, chosen by the file name when writing and sniffed when reading:

- JSON (``*.json``): ``{"format": "kiln-calibration", "version": 1, "method": ..., "scales": {name: scale}}``
- TensorRT's text cache: a first line ``TRT-<version>-<Algorithm>``, then ``name: <hex of the big-endian
  float32 scale>`` per tensor, as ``trtexec --calib`` reads and writes it.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

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
        p = Path(path)
        text = p.read_text()
        if text.lstrip().startswith("{"):
            d = json.loads(text)
            if d.get("format") != "kiln-calibration":
                raise ValueError(f"{str(p)!r} is JSON but not a Kiln calibration cache")
            return Calibration({k: float(v) for k, v in d["scales"].items()}, d.get("method", "entropy2"),
                               {k: [float(x) for x in v] for k, v in d.get("smoothing", {}).items()})
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines or not lines[0].startswith("TRT-"):
            raise ValueError(f"{str(p)!r} is not a calibration cache (neither Kiln JSON nor TensorRT text)")
        method = _FROM_TRT.get(lines[0].split("-", 2)[-1], "entropy2")
        scales, smoothing = {}, {}
        for ln in lines[1:]:
            name, _, hexval = ln.rpartition(":")
            if name.startswith("kiln-smooth:"):
                smoothing[name[len("kiln-smooth:"):].strip()] = [struct.unpack(">f", bytes.fromhex(h))[0]
                                                                 for h in hexval.strip().split(",")]
                continue
            scales[name.strip()] = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
        return Calibration(scales, method, smoothing)


def _f32(x: float) -> float:
    """Scales are float32 (as TensorRT's cache and the kernels hold them): round once, here."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


def _positive(a: float) -> float:
    return float(a) if a > 0 else 1.0  # an all-zero tensor: any scale represents it exactly
