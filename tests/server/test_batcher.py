"""The batcher's scheduling on its own, with a recording stand-in for the Pipeline (fast, exact).

The HTTP tests run the real model; these pin down who shares a model call with whom."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from types import SimpleNamespace

import pytest
from sdlite.server.batcher import Batcher, BatchKey, Interrupted, Job, QueueFull, TaskIdInUse
from sdlite.server.metrics import Metrics

TXT = BatchKey(64, 64, 4, "eulera", 7.0, None)


class RecordingPipe:
    """Returns "image" strings naming prompt and seed; runs ``steps`` callback steps, ``delay`` each."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[dict] = []
        self.delay, self.fail = delay, fail
        self.started = threading.Event()

    def __call__(self, prompts, *, negative_prompt, num_inference_steps, seed, callback, image, **kw):
        self.calls.append({"prompts": list(prompts), "seeds": list(seed), "image": image, **kw})
        self.started.set()
        if self.fail:
            raise RuntimeError("model failure")
        for step in range(1, num_inference_steps + 1):
            time.sleep(self.delay)
            if callback(step, num_inference_steps, None) is False:
                return SimpleNamespace(cancelled=True, images=[], parameters=[])
        images = [f"{p}#{s}" for p, s in zip(prompts, seed, strict=True)]
        return SimpleNamespace(cancelled=False, images=images, parameters=[f"params {i}" for i in images])


def _job(prompt: str, n: int = 1, key: BatchKey = TXT, seed: int = 0) -> Job:
    return Job(key, [prompt] * n, [""] * n, [seed + i for i in range(n)])


@pytest.fixture
def make():
    started: list[Batcher] = []

    def _make(pipe, max_batch=8, window=0.2, queue=16) -> Batcher:
        b = Batcher(pipe, max_batch, window, queue, Metrics())
        started.append(b)
        return b

    yield _make
    for b in started:
        b.stop()


def test_compatible_jobs_share_a_call_and_get_their_own_images(make):
    pipe = RecordingPipe()
    b = make(pipe)
    other = BatchKey(64, 64, 4, "eulera", 5.0, None)  # another guidance: never merged
    jobs = [_job("a", seed=10), _job("b", n=2, seed=20), _job("c", key=other, seed=30), _job("d", seed=40)]
    for j in jobs:
        b.submit(j)
    b.start()
    results = [j.future.result(10) for j in jobs]
    assert [c["prompts"] for c in pipe.calls] == [["a", "b", "b", "d"], ["c"]]
    assert pipe.calls[0]["guidance_scale"] == 7.0 and pipe.calls[1]["guidance_scale"] == 5.0
    assert [r.images for r in results] == [["a#10"], ["b#20", "b#21"], ["c#30"], ["d#40"]]
    assert results[1].seeds == [20, 21] and results[1].parameters == ["params b#20", "params b#21"]
    assert b.metrics.batch_size.count == 2


def test_max_batch_splits_a_job_and_keeps_arrival_order(make):
    pipe = RecordingPipe()
    b = make(pipe, max_batch=3)
    jobs = [_job("a", n=2), _job("b", n=3), _job("c")]
    for j in jobs:
        b.submit(j)
    b.start()
    results = [j.future.result(10) for j in jobs]
    assert [c["prompts"] for c in pipe.calls] == [["a", "a", "b"], ["b", "b", "c"]]
    assert results[1].images == ["b#0", "b#1", "b#2"]


def test_queue_bound_raises_queue_full_with_a_retry_time(make):
    b = make(RecordingPipe(), queue=2)
    b.submit(_job("a"))
    b.submit(_job("b"))
    with pytest.raises(QueueFull) as err:
        b.submit(_job("c"))
    assert err.value.retry_after >= 1
    assert b.depth() == 2


def test_cancelled_jobs_leave_the_queue_or_stop_the_call_when_nobody_is_left(make):
    pipe = RecordingPipe(delay=0.05)
    b = make(pipe, max_batch=2, window=0.0)
    first, second, queued = _job("a"), _job("b"), _job("q")
    for j in (first, second):
        b.submit(j)
    b.start()
    assert pipe.started.wait(5)
    b.submit(queued)
    b.cancel(queued)
    assert b.depth() == 0
    with pytest.raises(CancelledError):
        queued.future.result(0)
    b.cancel(first)  # the other member still wants its image: the call goes on
    assert second.future.result(10).images == ["b#0"]
    assert len(pipe.calls) == 1

    pipe.calls.clear()
    lone = Job(BatchKey(64, 64, 1000, "eulera", 7.0, None), ["x"], [""], [0])  # 50 s if it ran
    b.submit(lone)
    time.sleep(0.2)
    t0 = time.monotonic()
    b.cancel(lone)
    follow = _job("after")
    b.submit(follow)
    assert follow.future.result(10).images == ["after#0"]
    assert time.monotonic() - t0 < 5  # the 1000-step call stopped at its next step


def test_interrupt_fails_the_running_job_and_a_model_error_reaches_every_member(make):
    pipe = RecordingPipe(delay=0.05)
    b = make(pipe, window=0.0)
    job = Job(BatchKey(64, 64, 1000, "eulera", 7.0, None), ["x"], [""], [0])
    b.submit(job)
    b.start()
    assert pipe.started.wait(5)
    assert b.interrupt("somebody-else") == 0 and job.wanted
    assert b.interrupt(job.task_id) == 1
    with pytest.raises(Interrupted):
        job.future.result(5)

    bad = make(RecordingPipe(fail=True))
    jobs = [_job("a"), _job("b")]
    for j in jobs:
        bad.submit(j)
    bad.start()
    for j in jobs:
        with pytest.raises(RuntimeError, match="model failure"):
            j.future.result(10)


def _long(task_id: str | None = None) -> Job:
    job = Job(BatchKey(64, 64, 1000, "eulera", 7.0, None), ["long"], [""], [0])  # 50 s if it ran
    if task_id:
        job.task_id = task_id
    return job


def test_interrupt_needs_the_task_id_and_never_stops_other_clients_jobs(make):
    pipe = RecordingPipe(delay=0.05)
    b = make(pipe, max_batch=2, window=0.0)
    mine, theirs = _long("mine"), _long("theirs")
    b.submit(mine)
    b.submit(theirs)
    b.start()
    assert pipe.started.wait(5)
    with pytest.raises(TypeError):
        b.interrupt()  # the old "stop whatever runs" form is gone
    assert b.interrupt("mine") == 1
    with pytest.raises(Interrupted):
        mine.future.result(5)
    assert theirs.wanted and b.progress("theirs")["state"] == "running"
    assert b.interrupt("mine") == 0  # already gone
    b.cancel(theirs)


def test_interrupting_queued_jobs_leaves_nothing_in_the_task_table(make):
    pipe = RecordingPipe(delay=0.05)
    b = make(pipe, max_batch=1, window=0.0, queue=8)
    b.start()
    for round_ in range(3):  # the three rounds, each of which used to leave its jobs behind
        running = _long(f"run{round_}")
        b.submit(running)
        assert pipe.started.wait(5)
        queued = [_job(f"q{i}") for i in range(6)]
        for j in queued:
            b.submit(j)
        assert b.tasks() == 7
        for j in queued:
            assert b.interrupt(j.task_id) == 1
            assert b.progress(j.task_id)["state"] == "unknown"  # not "queued" forever
            with pytest.raises(Interrupted):
                j.future.result(0)
        assert b.depth() == 0 and b.tasks() == 1
        assert b.interrupt(running.task_id) == 1
        follow = _job(f"after{round_}")
        b.submit(follow)
        assert follow.future.result(10).images == [f"after{round_}#0"]
        assert b.tasks() == 0
        pipe.started.clear()


def test_every_way_out_empties_the_task_table(make):
    pipe = RecordingPipe(delay=0.02)
    b = make(pipe, max_batch=2, window=0.0, queue=16)
    b.start()
    done = _job("done")
    b.submit(done)
    done.future.result(10)
    split = _long("split")  # more images than one batch: part runs, part waits in the queue
    split.prompts, split.negatives, split.seeds = ["s"] * 3, [""] * 3, [1, 2, 3]
    b.submit(split)
    assert pipe.started.wait(5)
    cancelled_queued = _job("cq")
    b.submit(cancelled_queued)
    b.cancel(cancelled_queued)
    assert b.interrupt("split") == 1  # running and queued at once
    assert b.depth() == 0
    running = _long("cancelled-running")
    pipe.started.clear()
    b.submit(running)
    assert pipe.started.wait(5)  # its model call began
    assert b.progress("cancelled-running")["state"] == "running"
    b.cancel(running)
    follow = _job("follow")
    b.submit(follow)
    follow.future.result(10)
    assert b.tasks() == 0

    failing = make(RecordingPipe(fail=True), window=0.0)
    failing.start()
    jobs = [_job("a"), _job("b")]
    for j in jobs:
        failing.submit(j)
    for j in jobs:
        with pytest.raises(RuntimeError):
            j.future.result(10)
    assert failing.tasks() == 0


def test_a_task_id_in_use_is_refused(make):
    b = make(RecordingPipe(), queue=4)
    first = _job("a")
    b.submit(first)
    second = _job("b")
    second.task_id = first.task_id
    with pytest.raises(TaskIdInUse, match="already in use"):
        b.submit(second)
    assert b.depth() == 1 and b.tasks() == 1
