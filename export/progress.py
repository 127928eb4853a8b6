"""Progress lines on stderr, one per stage: '[sdlite export] stage ... done in 3.1 s'."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"[sdlite export] {text}", file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self.note(f"{name} ...")
        yield
        self.note(f"{name} done in {time.perf_counter() - start:.1f} s")
