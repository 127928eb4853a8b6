"""Fixtures: real ``sdlite serve`` processes with the embedded demo model, and the model in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_helpers import API_KEY, Served, start_server, stop_server


@pytest.fixture(scope="session")
def server() -> Iterator[Served]:
    """Default batching settings but a wider window, so that a loaded CI machine still merges."""
    served = start_server("--max-batch", "8", "--batch-window-ms", "300")
    yield served
    stop_server(served)


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[Served]:
    """A tiny queue, one image per model call, an API key and a 64 KiB body limit."""
    served = start_server(
        "--queue", "4", "--max-batch", "1", "--batch-window-ms", "0",
        "--api-key", API_KEY, "--max-body-bytes", str(64 * 1024),
    )  # fmt: skip
    yield served
    stop_server(served)


@pytest.fixture(scope="session")
def demo_pipe():
    """The same model in this process: what a request served alone must equal."""
    from sdlite import Pipeline
    from sdlite.models import demo_path

    return Pipeline.from_pretrained(demo_path(), provider="cpu")
