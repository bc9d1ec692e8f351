"""Export: ONNX graphs for ONNX Runtime, INT8 behind the accuracy gate."""

from .int8 import Int8Report, QuantizationRejected, QuantizeOptions, export_int8
from .onnx import ExportReport, ExportWrapper, check_onnx, export_onnx, ort_session

__all__ = [
    "ExportReport",
    "ExportWrapper",
    "Int8Report",
    "QuantizationRejected",
    "QuantizeOptions",
    "check_onnx",
    "export_int8",
    "export_onnx",
    "ort_session",
]
