"""``kiln quantize``: calibrate a float model and write a Q/DQ ONNX model (and the calibration cache).

    kiln quantize model.onnx -o model.qdq.onnx --calib-data DIR [--calib-method entropy2] [--cache calib.json]
    kiln quantize model.onnx -o model.qdq.onnx --cache calib.cache          # scales from an existing cache

``main(argv)`` returns the process exit status; the CLI wires it as a subcommand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln quantize", description="Write a Q/DQ (int8) ONNX model from a "
                                "calibration, for Kiln or other runtimes.")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the Q/DQ model")
    p.add_argument("--calib-data", help="folder of .npz / .npy calibration batches")
    p.add_argument("--calib-method", default="entropy2",
                   help="minmax | entropy | entropy2 | percentile[:P] (default entropy2)")
    p.add_argument("--cache", help="calibration cache: read when it exists and no data is given, else written "
                   "(.json: Kiln JSON, otherwise TensorRT's text format)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return quantize(args.model, args.output, args.calib_data, args.calib_method, args.cache)


def quantize(model: str, output: str, calib_data: str | None, calib_method: str, cache: str | None,
             report=None) -> int:
    """Calibrate (or read ``cache``) and write the Q/DQ model; returns the exit status. ``report(text, doc)``
    receives the result (default: the text is printed)."""
    from ..errors import KilnError
    from .cache import Calibration
    from .qdq_export import calibrate_model, write_qdq_model
    try:
        if calib_data:
            cal = calibrate_model(model, calib_data, calib_method)
            if cache:
                cal.save(cache)
        elif cache and Path(cache).is_file():
            cal = Calibration.load(cache)
        else:
            print("kiln quantize: give --calib-data, or --cache naming an existing calibration cache",
                  file=sys.stderr)
            return 2
        _, skipped = write_qdq_model(model, cal, output, calib_method)
    except (OSError, ValueError, KilnError) as e:  # (a bad cache is a CalibrationCacheError)
        print(f"kiln quantize: error: {e}", file=sys.stderr)
        return 1
    text = (f"wrote {output} ({len(cal.scales)} calibrated tensors"
            + (f"; left in float (no scale): {', '.join(skipped)}" if skipped else "") + ")")
    doc = {"model": output, "calibrated_tensors": len(cal.scales), "left_in_float": list(skipped)}
    (report or (lambda t, d: print(t)))(text, doc)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
