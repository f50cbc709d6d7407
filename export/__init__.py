"""Deployment export: fold every normalization, write ONNX / CoreML / ... artifacts, and prove parity."""

from .coreml_export import check_coreml_spec, convert_coreml
from .onnx_export import export_onnx, run_onnx

__all__ = ["check_coreml_spec", "convert_coreml", "export_onnx", "run_onnx"]
