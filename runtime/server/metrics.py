"""The server's Prometheus metrics, in the text exposition format (version 0.0.4).

Hand-written rather than ``prometheus_client``: five metrics without labels do not justify a
dependency, and the format is small and stable.  The histograms are real Prometheus histograms
(cumulative ``_bucket{le=...}`` series, ``+Inf``, ``_sum`` and ``_count``), so ``histogram_quantile``
works on them.  Every metric is safe to update from any thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up, got inc({amount})")
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        return self._value

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} counter",
            f"{self.name} {_num(self._value)}",
        ]


class Gauge:
    """A gauge read when scraped (e.g. the queue length), so it can never be stale."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {_num(self.read())}",
        ]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct numbers, got {list(buckets)}")
        self.name, self.help = name, help_text
        self.bounds = bounds if math.isinf(bounds[-1]) else [*bounds, math.inf]
        self._counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    self._counts[i] += 1
                    break

    @property
    def count(self) -> int:
        return sum(self._counts)

    def render(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.bounds, counts, strict=True):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {cumulative}')
        lines += [f"{self.name}_sum {_num(total)}", f"{self.name}_count {cumulative}"]
        return lines


class Metrics:
    """The metrics ``/metrics`` shows; ``queue_depth`` is read from the batcher when scraped."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0) -> None:
        self.queue_depth = Gauge(
            "sdlite_queue_depth", "Requests waiting for the model.", lambda: queue_depth()
        )
        self.batch_size = Histogram(
            "sdlite_batch_size_images",
            "Images per model call (one U-Net batch, before classifier-free guidance doubles it).",
            [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
        )
        self.latency = Histogram(
            "sdlite_request_latency_seconds",
            "Time from a generation request's arrival to its response (served requests only).",
            [0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300],
        )
        self.images = Counter("sdlite_images_generated_total", "Images generated and returned.")
        self.rejected = Counter("sdlite_requests_rejected_total", "Requests refused with 429: queue full.")
        self.cancelled = Counter(
            "sdlite_requests_cancelled_total",
            "Requests whose client went away (or interrupted) before the end.",
        )
        self.failed = Counter("sdlite_requests_failed_total", "Requests that failed inside the model (500).")

    def render(self) -> str:
        lines: list[str] = []
        metrics = (
            self.queue_depth,
            self.batch_size,
            self.latency,
            self.images,
            self.rejected,
            self.cancelled,
        )
        for metric in (*metrics, self.failed):
            lines += metric.render()
        return "\n".join(lines) + "\n"
