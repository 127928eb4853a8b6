"""`python -m sdlite.export SOURCE OUT [options]` (same as `sdlite export`), or
`python -m sdlite.export convert-lora|convert-embedding IN OUT.safetensors` (sdlite.export.convert)."""

import sys

from .cli import main

sys.exit(main())
