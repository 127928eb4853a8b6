"""Live previews for ``GET /sdapi/v1/progress``: ``current_image`` as A1111 sends it.

The worker keeps each running job's latest preview as a PIL image (``batcher.py``; one per job,
dropped when the job ends), a cheap linear map of the denoised estimate every ``--preview-every``
steps (``sdlite.preview``).  It is encoded to PNG only here, when a client asks, and once per
step: a page polling several times a step pays for one encoding.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import weakref
from typing import Any

from .batcher import Batcher


class Previews:
    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self._lock = threading.Lock()
        # (job, step, base64 PNG), the latest encoded; weak: a finished job (its images) is not kept
        self._last: tuple[weakref.ref, int, str] | None = None

    async def current_image(self, task_id: str | None, skip: bool) -> str | None:
        """Base64 PNG of the latest preview of ``task_id`` (default: the running job), or None."""
        if skip:
            return None
        found = self.batcher.preview(task_id)
        if found is None:
            return None
        job, (step, image) = found
        return await asyncio.to_thread(self._encoded, job, step, image)

    def _encoded(self, job: Any, step: int, image: Any) -> str:
        with self._lock:
            last = self._last
            if last is not None and last[0]() is job and last[1] == step:
                return last[2]
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)  # small images, read once: speed over size
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        with self._lock:
            self._last = (weakref.ref(job), step, b64)
        return b64
