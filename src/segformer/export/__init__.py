"""Export: ONNX graphs for ONNX Runtime, INT8 behind the accuracy gate, and exported files as forward functions.

- `onnx.py`: `export_onnx` (dynamic batch/height/width, optional pre/post-processing inside the graph) and its check;
- `graph.py`: the ONNX graph rewrites INT8 needs (node groups, GELU/bias fusion);
- `runtimes.py`: `OnnxForward`, an exported file as a forward for the inference spine (`Segmenter(OnnxForward(p))`);
- `gate.py`: the comparison of a candidate runtime with the float model, and the gate that refuses to write;
- `int8.py`: `export_int8`, step by step: split, export, quantise, compare, gate, write.
"""

from .gate import Comparison, ExportRejected, compare, gate
from .int8 import Int8Report, QuantizationRejected, QuantizeOptions, export_int8
from .onnx import ExportReport, ExportWrapper, check_onnx, export_onnx
from .runtimes import OnnxForward, ort_session

__all__ = [
    "Comparison",
    "ExportRejected",
    "ExportReport",
    "ExportWrapper",
    "Int8Report",
    "OnnxForward",
    "QuantizationRejected",
    "QuantizeOptions",
    "check_onnx",
    "compare",
    "export_int8",
    "export_onnx",
    "gate",
    "ort_session",
]
