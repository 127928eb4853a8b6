"""Dynamic batching: compatible requests waiting together become one Pipeline call.

Requests are compatible when they share a ``BatchKey`` (size, steps, sampler, guidance, and
text-to-image vs image-to-image with one strength).  One worker thread owns the Pipeline (it is
not thread-safe): it takes the oldest waiting job, waits until that job is ``window`` seconds
old (so that concurrent requests can join), then fills the batch in arrival order with images of
compatible jobs, up to ``max_batch`` images.  A job with more images than fit is split across
batches.  Every image carries its own seed, so it comes out the same whichever batch it is in.

The queue is bounded by ``queue_size`` waiting jobs: ``submit`` raises ``QueueFull`` beyond it.
A job can be cancelled at any time (its client went away): it leaves the queue, or, if it is
running, its images are dropped, and the whole model call is stopped at the next step when no
member of the batch still wants its images.
"""

from __future__ import annotations

import collections
import math
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .metrics import Metrics


@dataclass(frozen=True)
class BatchKey:
    width: int
    height: int
    steps: int
    sampler: str | None  # None: the model's preset sampler (with its options)
    guidance: float
    strength: float | None  # None: text-to-image
    # (name, weight) in name order.  Part of the key because sdlite merges a LoRA set into the
    # weights for the whole call: requests with different sets cannot share one U-Net call.
    loras: tuple[tuple[str, float], ...] = ()


@dataclass
class JobResult:
    images: list[Any]  # PIL images, in the job's order
    seeds: list[int]
    parameters: list[str]  # A1111 "parameters" text per image


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class Interrupted(Exception):
    """The job was stopped by ``interrupt`` (A1111's POST /sdapi/v1/interrupt), not by its client."""


class TaskIdInUse(ValueError):
    """Another queued or running job already has this task id (A1111's ``force_task_id``)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task id {task_id!r} is already in use by a queued or running job")


@dataclass(eq=False)
class Job:
    key: BatchKey
    prompts: list[str]  # one per image
    negatives: list[str]  # one per image
    seeds: list[int]  # one per image
    images: list[Any] | None = None  # image-to-image: one init image per image
    task_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    future: Future = field(default_factory=Future)
    enqueued: float = 0.0
    taken: int = 0  # images handed to batches so far
    step: int = 0
    total: int = 0
    running: bool = False
    cancelled: bool = False
    interrupted: bool = False
    preview: Any = None  # (step, PIL image): the latest preview while running, None once it ends
    written: tuple[str, str] | None = None  # the prompts as sent, when LoRA tags were taken out
    _results: dict[int, tuple[Any, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if n == 0 or len(self.negatives) != n or len(self.seeds) != n:
            raise ValueError("a job needs one prompt, negative prompt and seed per image")
        if self.images is not None and len(self.images) != n:
            raise ValueError("an image-to-image job needs one init image per image")

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def wanted(self) -> bool:
        return not (self.cancelled or self.interrupted or self.future.done())


class Batcher:
    def __init__(
        self,
        pipe: Any,
        max_batch: int,
        window: float,
        queue_size: int,
        metrics: Metrics,
        preview_every: int = 0,
    ) -> None:
        self.pipe = pipe
        # Only the worker calls the pipe; anything else that changes it (loading a LoRA) holds this.
        self.pipe_lock = threading.Lock()
        self.preview_every = preview_every  # 0: no previews
        self.max_batch = max_batch
        self.window = window
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: list[Job] = []
        # Queued and running jobs by task id (progress and interrupt lookups).  Every way out of the
        # batcher (done, failed, interrupted or cancelled, queued or running) goes through
        # _forget, so this never holds more than the queue and one batch.
        self._tasks: dict[str, Job] = {}
        self._batch_seconds = 0.0  # moving average, for Retry-After
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- the HTTP side -----------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False  # a lifespan may start the app again after stopping it (test clients do)
        self._thread = threading.Thread(target=self._work, name="sdlite-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work: waiting jobs fail, the running batch stops at its next step."""
        with self._cond:
            self._stopping = True
            for job in list(self._queue) + self._running:
                job.interrupted = True
                _fail(job, Interrupted("the server is shutting down"))
            self._queue.clear()
            self._tasks.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise Interrupted("the server is shutting down")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(self._retry_after())
            if job.task_id in self._tasks:
                raise TaskIdInUse(job.task_id)
            job.enqueued = time.monotonic()
            self._queue.append(job)
            self._tasks[job.task_id] = job
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: forget the job (its running batch stops if nobody else wants it)."""
        with self._cond:
            job.cancelled = True
            self._forget(job)
            job.future.cancel()

    def interrupt(self, task_id: str) -> int:
        """Stop the job ``task_id``, queued or running (its batch stops if nobody else wants it).

        Only by its id: one client must not be able to stop everybody's work.  Returns 1 or 0."""
        with self._cond:
            job = self._tasks.get(task_id)
            if job is None or not job.wanted:
                return 0
            job.interrupted = True
            self._forget(job)
            _fail(job, Interrupted("interrupted (POST /sdapi/v1/interrupt)"))
            return 1

    def depth(self) -> int:
        return len(self._queue)

    def tasks(self) -> int:
        """Jobs queued or running: what the task table holds."""
        with self._cond:
            return len(self._tasks)

    def _forget(self, job: Job) -> None:
        """Take ``job`` out of the queue and the task table (the caller holds the lock)."""
        if job in self._queue:
            self._queue.remove(job)
        if self._tasks.get(job.task_id) is job:
            del self._tasks[job.task_id]
        job.preview = None

    def progress(self, task_id: str | None = None) -> dict[str, Any]:
        """Where a job is: ``state`` queued/running/unknown, ``step``/``total``, jobs ahead of it."""
        with self._cond:
            if task_id is None:
                job = next((j for j in self._running if j.wanted), None)
            else:
                job = self._tasks.get(task_id)
            if job is None:
                return {"state": "idle" if task_id is None else "unknown", "step": 0, "total": 0, "queued": 0}
            ahead = self._queue.index(job) if job in self._queue else 0
            return {
                "state": "running" if job.running else "queued",
                "step": job.step,
                "total": job.total,
                "queued": ahead,
                "eta": self._batch_seconds * (ahead / self.max_batch + 1) * (1 - _fraction(job)),
            }

    def preview(self, task_id: str | None = None) -> tuple[Any, Any] | None:
        """The latest preview of ``task_id`` (default: the running job) as (job, (step, image))."""
        with self._cond:
            if task_id is None:
                job = next((j for j in self._running if j.wanted), None)
            else:
                job = self._tasks.get(task_id)
            if job is None or job.preview is None:
                return None
            return job, job.preview

    def _retry_after(self) -> int:
        batches = math.ceil(sum(j.size for j in self._queue) / self.max_batch) + 1
        return max(1, math.ceil(batches * (self._batch_seconds or 1.0)))

    # --- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        if self.preview_every:
            try:  # fitted once, before any request waits on it; a model it fails on gets no previews
                self.pipe.preview_map  # noqa: B018
            except Exception:
                self.preview_every = 0
        while True:
            parts = self._take_batch()
            if parts is None:
                return
            try:
                self._run_batch(parts)
            except Exception as err:  # a bug here must not leave the worker dead and every client waiting
                with self._cond:
                    for job, _, _ in parts:
                        self._forget(job)
                        _fail(job, err)
                    self._running = []

    def _take_batch(self) -> list[tuple[Job, int, int]] | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                head = self._queue[0]
                # Wait for company until the oldest job is `window` old or the batch is full.
                # A job that waited behind a busy worker is already old enough: no extra delay.
                room = sum(j.size - j.taken for j in self._queue if j.key == head.key)
                remaining = head.enqueued + self.window - time.monotonic()
                if remaining > 0 and room < self.max_batch:
                    self._cond.wait(remaining)
                    continue
                break
            parts: list[tuple[Job, int, int]] = []
            free = self.max_batch
            for job in list(self._queue):
                if free == 0:
                    break
                if job.key != head.key:
                    continue
                n = min(job.size - job.taken, free)
                parts.append((job, job.taken, job.taken + n))
                job.taken += n
                free -= n
                job.running = True
                if job.taken == job.size:
                    self._queue.remove(job)
            self._running = [job for job, _, _ in parts]
            return parts

    def _run_batch(self, parts: list[tuple[Job, int, int]]) -> None:
        jobs = [job for job, _, _ in parts]

        def on_step(step: int, total: int, latents: Any) -> bool:
            for job in jobs:
                job.step, job.total = step, total
            return any(job.wanted for job in jobs)  # False stops the loop: nobody wants these images

        t0 = time.perf_counter()
        try:
            out = self._call_model(parts, on_step)
        except Exception as err:  # the whole batch failed: every member hears why
            with self._cond:
                for job in jobs:
                    self._forget(job)
                    _fail(job, err)
                self._running = []
            return
        finally:
            elapsed = time.perf_counter() - t0
            self._batch_seconds = (
                elapsed if not self._batch_seconds else 0.7 * self._batch_seconds + 0.3 * elapsed
            )
        self.metrics.batch_size.observe(sum(hi - lo for _, lo, hi in parts))
        self._deliver(parts, out)

    def _call_model(self, parts: list[tuple[Job, int, int]], on_step: Any) -> Any:
        key = parts[0][0].key
        images = None if key.strength is None else [im for job, lo, hi in parts for im in job.images[lo:hi]]
        preview = self._previewer(parts, key.width) if self.preview_every else None
        with self.pipe_lock:
            return self.pipe(
                [p for job, lo, hi in parts for p in job.prompts[lo:hi]],
                negative_prompt=[p for job, lo, hi in parts for p in job.negatives[lo:hi]],
                num_inference_steps=key.steps,
                guidance_scale=key.guidance,
                height=key.height,
                width=key.width,
                sampler=key.sampler,
                seed=[s for job, lo, hi in parts for s in job.seeds[lo:hi]],
                image=images,
                strength=key.strength,
                callback=on_step,
                preview=preview,
                preview_every=self.preview_every or 1,
                loras=dict(key.loras) or None,
            )

    def _previewer(self, parts: list[tuple[Job, int, int]], width: int) -> Any:
        """The pipe's preview callback: each wanted job keeps only its latest picture, its first
        image's tile of the batch's sheet (encoded only when someone asks, see ``progress``)."""
        offsets, offset = [], 0
        for job, lo, hi in parts:
            offsets.append((job, offset))
            offset += hi - lo

        def keep(step: int, total: int, sheet: Any) -> None:
            for job, at in offsets:
                if job.wanted:
                    tile = sheet.crop((at * width, 0, (at + 1) * width, sheet.height))
                    with self._cond:
                        if job.wanted and job.task_id in self._tasks:
                            job.preview = (step, tile)

        return keep

    def _deliver(self, parts: list[tuple[Job, int, int]], out: Any) -> None:
        """Each job gets its share of the batch's images; a job with all of them is done."""
        with self._cond:
            offset = 0
            for job, lo, hi in parts:
                for i in range(lo, hi):
                    if not out.cancelled:
                        job._results[i] = (out.images[offset], out.parameters[offset])
                    offset += 1
                if not job.wanted:
                    self._forget(job)
                elif out.cancelled:  # cannot happen while the job is wanted, but never leave it hanging
                    self._forget(job)
                    _fail(job, Interrupted("the model call was stopped"))
                elif len(job._results) == job.size:
                    self._forget(job)
                    results = [job._results[i] for i in range(job.size)]
                    job.future.set_result(
                        JobResult([r[0] for r in results], job.seeds, [r[1] for r in results])
                    )
                else:
                    job.running = False  # more of its images wait in the queue
            self._running = []


def _fail(job: Job, err: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(err)


def _fraction(job: Job) -> float:
    done = len(job._results) + (min(job.step / job.total, 1.0) if job.total else 0.0)
    return min(done / job.size, 1.0)
