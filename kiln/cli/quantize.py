"""`kiln quantize`: calibrate a float model and write a Q/DQ (int8) ONNX model for Kiln or other runtimes."""
from __future__ import annotations


def add_parser(sub, common) -> None:
    p = sub.add_parser("quantize", parents=[common], help="write a Q/DQ int8 ONNX model from a calibration",
                       description="Calibrate MODEL on the batches in --calib-data (or read scales from --cache) "
                                   "and write a Q/DQ ONNX model (QuantizeLinear/DequantizeLinear around each "
                                   "quantizable layer), usable by Kiln, onnxruntime or TensorRT.")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the Q/DQ model")
    p.add_argument("--calib-data", metavar="DIR", help="folder of .npz/.npy calibration batches (input name -> array)")
    p.add_argument("--calib-method", default="entropy2", metavar="METHOD",
                   help="minmax | entropy | entropy2 | percentile[:P] (default entropy2)")
    p.add_argument("--cache", metavar="FILE", help="calibration cache: read when it exists and no data is given, "
                   "else written (.json: Kiln JSON, otherwise TensorRT's text format)")


def run(args) -> int:
    from ..quant.cli import quantize
    from .output import emit
    return quantize(args.model, args.output, args.calib_data, args.calib_method, args.cache,
                    report=lambda text, doc: emit(args, text, doc))
