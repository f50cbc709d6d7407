"""``python -m export``: the same as ``zoo export``."""

from .cli import main

raise SystemExit(main())
