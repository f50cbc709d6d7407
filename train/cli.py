"""``zoo train`` / ``python -m train`` and ``zoo validate``: argument parsing only; the work is ``train.fit``.

Every :class:`TrainConfig` field is a flag with the dashed name (``batch_size`` -> ``--batch-size``, timm's names);
booleans also take ``--no-...``. Precedence: defaults < the resumed run's ``config.json`` < ``--recipe`` < flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import TrainConfig, field_types, list_recipes, load_recipe

__all__ = ["main", "validate_main", "build_parser", "parse_config"]

_ALIASES = {"batch_size": ["-b"], "workers": ["-j"], "validation_batch_size": ["-vb"]}
_OPTIONAL_VALUE = {"pretrained": True, "torchcompile": "inductor"}  # flag alone means this


class _KeyValue(argparse.Action):
    """``key=value ...`` into a dict; values are Python literals where they parse (``True``, ``0.1``), else text."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        out = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"{option_string}: expected key=value, got {item!r}")
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                out[key] = value
        setattr(namespace, self.dest, out)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(inner type, optional)`` of ``X | None``."""
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    flags = [*_ALIASES.get(f.name, []), "--" + f.name.replace("_", "-")]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
    # SUPPRESS: only flags actually given land in the namespace, so they override the recipe and nothing else does
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
    tp, _ = _base_type(tp)
    origin = typing.get_origin(tp)
    if f.name in _OPTIONAL_VALUE:
        kw.update(nargs="?", const=_OPTIONAL_VALUE[f.name], metavar="VALUE")
    elif tp is bool:
        kw["action"] = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
    elif origin is dict:
        kw.update(nargs="*", action=_KeyValue, metavar="KEY=VALUE")
    elif origin is tuple:
        args = typing.get_args(tp)
        kw.update(type=args[0], nargs="+" if Ellipsis in args else len(args))
    else:
        kw["type"] = tp
    parser.add_argument(*flags, **kw)


def build_parser(prog: str = "zoo train") -> argparse.ArgumentParser:
    """The argument parser, generated from :class:`TrainConfig` so that flags and fields never drift apart."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train or fine-tune a zoo model (single process, or DDP under torchrun --nproc_per_node=N).",
    )
    parser.add_argument(
        "--recipe", help=f"TOML recipe file or shipped recipe name ({', '.join(list_recipes())}); flags override it"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    types_ = field_types()
    for f in dataclasses.fields(TrainConfig):
        _add_field(parser, f, types_[f.name])
    return parser


def parse_config(argv: Sequence[str]) -> TrainConfig:
    """Resolve defaults, a resumed run's config, the recipe and the flags into a :class:`TrainConfig`."""
    args = vars(build_parser().parse_args(list(argv)))
    args.pop("print_config", None)
    recipe = args.pop("recipe", None)
    values: dict[str, Any] = {}
    if args.get("resume"):
        from .checkpoint import resolve_resume

        run_dir = resolve_resume(args["resume"]).parent
        saved = run_dir / "config.json"
        if saved.is_file():
            values.update(json.loads(saved.read_text()))
        values["output"] = str(run_dir)
    if recipe:
        values.update(load_recipe(recipe))
    values.update(args)
    return TrainConfig.from_dict(values, origin="zoo train")


def _setup_logging() -> None:
    quiet = int(os.environ.get("RANK", "0")) != 0
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """``zoo train``: parse the flags into a config and call :func:`train.fit`."""
    from weights import WeightsError

    from .data import BadImageError
    from .loop import NonFiniteLossError, fit

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"zoo train: error: {e}", file=sys.stderr)
        return 2
    if "--print-config" in argv:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    _setup_logging()
    try:
        result = fit(cfg)
    except NonFiniteLossError as e:
        print(f"zoo train: {e}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, FileNotFoundError, BadImageError, WeightsError) as e:
        print(f"zoo train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zoo train: interrupted; resume with: zoo train --resume {cfg.output}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0 and result["best"] is not None:
        out = Path(result["output"])
        print(
            f"best val {result['eval_metric']} {result['best']:.2f} at epoch {result['best_epoch']}; "
            f"weights: {out / 'best.safetensors'}, metrics: {out / 'metrics.jsonl'}"
        )
    return 0


def validate_main(argv: Sequence[str] | None = None) -> int:
    """``zoo validate --checkpoint PATH [--model NAME] [--data ...]``: top-1 / top-5 and loss."""
    from weights import WeightsError

    from .data import BadImageError
    from .validate import validate

    p = argparse.ArgumentParser(prog="zoo validate", description="Top-1 / top-5 and loss of a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="weights file (.safetensors from zoo train, or .pth)")
    p.add_argument("--model", help="registered model name (default: recorded in the checkpoint)")
    p.add_argument("--data", default="digits", help="ImageFolder root, torchvision dataset name, or digits")
    p.add_argument("--data-dir", help="root of a torchvision dataset given by name")
    p.add_argument("--img-size", type=int, help="input side (default: recorded in the checkpoint, else the model's)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the dataset's)")
    p.add_argument("--model-kwargs", nargs="*", action=_KeyValue, metavar="KEY=VALUE", help="create_model kwargs")
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--device", default="", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="mixed precision")
    p.add_argument("--crop-pct", type=float, help="centre-crop fraction (default: the model's)")
    p.add_argument("--on-bad-image", choices=("skip", "stop"), default="skip")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = vars(p.parse_args(list(sys.argv[1:] if argv is None else argv)))
    as_json = args.pop("json")
    try:
        r = validate(**args)
    except (ValueError, TypeError, FileNotFoundError, BadImageError, WeightsError) as e:
        print(f"zoo validate: error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(r))
    else:
        print(
            f"{r['model']} @ {r['img_size']} px on {args['data']} ({r['val_images']} images): "
            f"top-1 {r['val_top1']:.2f}%  top-5 {r['val_top5']:.2f}%  loss {r['val_loss']:.4f}"
        )
    return 0
