"""``python -m train ...``: the same as ``zoo train ...``."""

from .cli import main

raise SystemExit(main())
