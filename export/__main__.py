"""`python -m sdlite.export SOURCE OUT [options]` (same as `sdlite export`)."""

import sys

from .cli import main

sys.exit(main())
