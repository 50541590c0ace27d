"""Model importers: ONNX -> kiln Graph (``onnx.py``, the only module that reads ONNX protos), external data
(``external_data.py``), a torch.nn.Module -> ONNX through torch.onnx.export (``torch_export.py``), and a kiln
Graph -> ONNX for viewing in Netron (``onnx_export.py``)."""
from .onnx import parse

__all__ = ["parse"]
