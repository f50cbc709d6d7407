"""Deployment export: fold every normalization, write ONNX / CoreML / TensorRT / INT8 / ExecuTorch / ORT artifacts,
and prove their parity. ``export_model`` is the Python API; ``zoo export`` and ``python -m export`` call it."""

from .api import FORMATS, ExportOptions, ExportResult, export_model
from .cascade import export_cascade, run_cascade
from .coreml_export import check_coreml_spec, convert_coreml
from .errors import ExportError, ExportInputError, FoldCheckError, FormatUnavailableError, ParityError
from .onnx_export import export_onnx, run_onnx

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportInputError",
    "ExportOptions",
    "ExportResult",
    "FoldCheckError",
    "FormatUnavailableError",
    "ParityError",
    "check_coreml_spec",
    "convert_coreml",
    "export_model",
    "export_cascade",
    "export_onnx",
    "run_cascade",
    "run_onnx",
]
