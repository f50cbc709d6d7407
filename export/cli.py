"""``zoo export`` / ``python -m export``: parse the flags, call :func:`export.export_model`, print the summary.

Exit codes: 0 every requested format written and verified; 1 a format failed its check or cannot be built here (the
others are written, the manifest says which); 2 bad input (unknown model or format, checkpoint of another model,
unwritable output directory, ...) or a failed fold check, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _formats(text: str) -> tuple[str, ...]:
    from .api import FORMATS

    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        shown = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown format(s) {shown}; choose from {', '.join(FORMATS)}")
    return formats


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zoo export``."""
    p = argparse.ArgumentParser(
        prog="zoo export",
        description="Fold every normalization, export deployment artifacts and prove their parity.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="registered model name (see `zoo list`)")
    what.add_argument("--cascade", help="a cascade.json of zoo cascade fit: every member, plus the policy and runner")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint file (.safetensors/.pth; ours, the authors' or timm's layout)")
    src.add_argument("--pretrained", action="store_true", help="the variant's released weights")
    p.add_argument(
        "--formats",
        type=_formats,
        default=("onnx",),
        help="comma-separated: onnx,onnx-int8,ort,coreml,executorch,executorch-int8,tensorrt (default onnx)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--imgsz", type=int, default=None, help="input side (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the artifacts (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch (ONNX, INT8, .ort, TensorRT)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch of the TensorRT profile (default 64)")
    p.add_argument("--half", action="store_true", help="also an FP16 ONNX; TensorRT builds an FP16 engine")
    p.add_argument("--fold-input-norm", action="store_true", help="artifacts take RGB pixels; 1/std folded in")
    p.add_argument("--pixel-range", type=int, choices=(1, 255), default=1, help="pixel range with --fold-input-norm")
    p.add_argument("--calib-data", help="'digits' or an image directory (INT8 calibration; real-input checks)")
    p.add_argument("--val-data", help="'digits' or an image-folder directory for INT8-vs-FP32 top-1")
    p.add_argument("--calib-size", type=int, default=64, help="calibration images (default 64)")
    p.add_argument("--zeroq-steps", type=int, default=100, help="steps of data-free calibration (default 100)")
    p.add_argument(
        "--max-int8-drop", type=float, default=1.0, help="INT8 budget: top-1 drop vs FP32, points (default 1.0)"
    )
    p.add_argument(
        "--min-int8-agreement", type=float, default=98.0, help="INT8 budget: top-1 agreement with FP32, %% (98)"
    )
    p.add_argument(
        "--min-int8-cosine", type=float, default=0.99, help="INT8 budget without labels: logit cosine (0.99)"
    )
    p.add_argument(
        "--int8-calibration",
        type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
        default=("minmax", "percentile"),
        help="calibration methods the INT8 search tries: minmax,percentile,entropy (default minmax,percentile)",
    )
    p.add_argument(
        "--int8-reduce-range",
        choices=("auto", "on", "off"),
        default="auto",
        help="7-bit weights: auto = on x86 CPUs without VNNI, where 8-bit products saturate (default auto)",
    )
    p.add_argument(
        "--no-int8-fallback",
        dest="int8_fallback",
        action="store_false",
        help="do not keep sensitive ops in float to meet the INT8 budget",
    )
    p.add_argument(
        "--int8-placement",
        choices=("auto", "qdq"),
        default="auto",
        help="auto: with or without Q/DQ on residual Adds, whichever runs faster here (Adds quantized for TensorRT); "
        "qdq: always Q/DQ on the Adds",
    )
    p.add_argument("--coreml-precision", choices=("float16", "float32"), default="float16")
    p.add_argument("--coreml-input", choices=("image", "tensor"), default="image")
    p.add_argument("--trt-sparse", action="store_true", help="TensorRT: allow 2:4 sparse kernels (SPARSE_WEIGHTS)")
    p.add_argument("--trt-workspace-mb", type=int, default=2048)
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size if the checkpoint does not say")
    p.add_argument("--latency-seconds", type=float, default=1.0, help="time per candidate for latency (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    return p


def _cascade(args: argparse.Namespace, opts: object) -> int:
    """``zoo export --cascade``: a member's checkpoint comes from the cascade.json, not from --checkpoint."""
    from .cascade import main_cascade
    from .errors import ExportInputError

    if args.checkpoint or args.pretrained:
        raise ExportInputError("--cascade takes its members' checkpoints from the cascade.json: drop --checkpoint")
    return main_cascade(args.cascade, args.out, opts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``zoo export`` and ``python -m export``."""
    import weights
    import zoo

    from .api import ExportOptions, export_model
    from .errors import ExportInputError, FoldCheckError, ParityError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        opts = ExportOptions(
            formats=args.formats, img_size=args.imgsz, batch=args.batch, dynamic_batch=args.dynamic_batch,
            max_batch=args.max_batch, half=args.half, fold_input_norm=args.fold_input_norm,
            pixel_range=args.pixel_range, calib_data=args.calib_data, val_data=args.val_data,
            calib_size=args.calib_size, zeroq_steps=args.zeroq_steps, max_int8_drop=args.max_int8_drop,
            min_int8_agreement=args.min_int8_agreement, min_int8_cosine=args.min_int8_cosine,
            int8_calibration=args.int8_calibration, int8_reduce_range=args.int8_reduce_range,
            int8_fallback=args.int8_fallback,
            int8_placement=args.int8_placement,
            coreml_precision=args.coreml_precision, coreml_input=args.coreml_input, trt_sparse=args.trt_sparse,
            trt_workspace_mb=args.trt_workspace_mb, opset=args.opset, latency_seconds=args.latency_seconds,
            threads=args.threads, num_classes=args.num_classes,
        )  # fmt: skip
        if args.cascade:
            return _cascade(args, opts)
        result = export_model(args.model, args.out, opts, checkpoint=args.checkpoint, pretrained=args.pretrained)
    except (ExportInputError, zoo.UnknownModelError, zoo.CascadeError, weights.WeightsError, OSError, TypeError) as e:
        print(f"zoo export: error: {e}", file=sys.stderr)
        return 2
    except ParityError as e:  # only the cascade raises it here: a member's format failing is a result, below
        print(f"zoo export: {e}", file=sys.stderr)
        return 1
    except FoldCheckError as e:
        print(f"zoo export: fold check failed, nothing written: {e}", file=sys.stderr)
        return 2
    print(result.summary)
    print(f"manifest: {result.out_dir / 'manifest.json'}")
    for fmt, err in result.failed.items():
        print(f"zoo export: {fmt} failed: {err}", file=sys.stderr)
    return 0 if result.ok else 1
