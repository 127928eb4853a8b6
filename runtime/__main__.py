"""``python -m sdlite``: the same as the ``sdlite`` console script."""

import sys

from .cli import main

sys.exit(main())
