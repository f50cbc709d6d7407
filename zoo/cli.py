"""The ``zoo`` command: ``zoo list``, ``zoo info`` here; other subcommands live in their packages.

Subcommands of other packages (``train``, ``export``, ...) are looked up by module path and imported only when
used, so ``zoo`` itself never imports ``train`` or ``export``. Each such module exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

# subcommand -> "module:function" taking argv and returning an exit code
EXTERNAL = {
    "train": "train.cli:main",
    "validate": "train.cli:validate_main",
    "export": "export.cli:main",
    "bench": "export.bench:main",
    "cards": "export.cards:main",
    "cascade": "train.cascade:main",
}


def _list(args: argparse.Namespace) -> int:
    from . import get_family, list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    for n in names:
        rep = get_family(n).reported.get(n)
        top1 = f"{rep.top1:5.1f}" if rep and rep.top1 else "    -"
        print(f"{n:32s} {get_family(n).name:16s} top-1 {top1}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from . import model_info

    info = model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    rep = info["reported"] or {}
    print(f"{info['name']}  ({info['family']}: {info['paper']['title']}, arXiv {info['paper']['arxiv']})")
    print(f"  params   {info['params'] / 1e6:8.3f} M   (paper {rep.get('params_m', '-')} M)")
    size = info["pretrained_cfg"]["input_size"]
    print(f"  MACs     {info['macs'] / 1e9:8.3f} G   (paper {rep.get('macs_g', '-')} G) at {size}")
    print(f"  top-1    {rep.get('top1', '-')}   latency (paper): {rep.get('latency') or '-'}")
    cfg = info["pretrained_cfg"]
    print(f"  preprocessing: mean {cfg['mean']} std {cfg['std']} crop_pct {cfg['crop_pct']} {cfg['interpolation']}")
    if info["weights"]:
        print(f"  weights  {info['weights']['url']} ({info['weights']['license']})")
    print(f"  norms left after folding: {', '.join(info['remaining_norms']) or 'none'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoo`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTERNAL:
        module, func = EXTERNAL[argv[0]].split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            print(f"zoo {argv[0]}: not available ({e})", file=sys.stderr)
            return 2
        return int(getattr(mod, func)(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="zoo", description="Efficient vision models with deployment export.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{list,info," + ",".join(EXTERNAL) + "}")
    p = sub.add_parser("list", help="list registered models (optionally matching a pattern)")
    p.add_argument("pattern", nargs="?", default=None, help="wildcard (efficientvit_*) or substring")
    p.set_defaults(fn=_list)
    p = sub.add_parser("info", help="params, MACs, preprocessing, paper numbers of a model")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_info)
    for name in EXTERNAL:
        sub.add_parser(name, help=f"see zoo {name} --help")
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError) as e:
        print(f"zoo {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
