"""Request bodies -> batcher jobs, checked by ``sdlite.rules`` with the loaded model's facts.

``schemas.py`` checks the rules that need no model (pydantic validators calling the same
validators); here the rest: size multiple, fixed-size exports, pixel budget, sampler names, seeds
and strength against steps.  A broken rule raises ``RuleError`` naming the body field; the app
turns it into a 422 in FastAPI's shape (``detail[].loc``), so the CLI, batch jobs, the Python
API and the server word the same rule the same way.
"""

from __future__ import annotations

import secrets
from typing import Any

from .. import rules
from ..rules import RuleError
from ..samplers.names import normalize
from .batcher import BatchKey, Job
from .schemas import A1111Txt2Img, OpenAIImages

SCHEDULE_WORDS = {"karras": "Karras", "exponential": "Exponential"}


def _as(field: str, err: RuleError) -> RuleError:
    return RuleError(field, err.allowed, err.value)


def random_seed() -> int:
    return secrets.randbits(32)


def image_size(
    pipe: Any, width: int | None, height: int | None, default: tuple[int, int], n: int
) -> tuple[int, int]:
    """Width and height (default: ``default``) as the Pipeline will check them for ``n`` images."""
    graph = pipe.graph
    static_h, static_w = graph.static_size
    m, f = graph.size_multiple, graph.vae_factor
    w = rules.check_size("width", default[0] if width is None else width, m, static_w, vae_factor=f)
    h = rules.check_size("height", default[1] if height is None else height, m, static_h, vae_factor=f)
    try:
        rules.check_pixels(w, h, n, pipe.max_pixels)
    except RuleError as err:
        raise _as("width", err) from None  # the field a client most likely sets
    return w, h


def sampler_name(pipe: Any, name: str | None, field: str, schedule: str | None = None) -> str | None:
    """A sampler name the model takes, normalised so that "Euler a" and "euler_a" share a batch."""
    if name is None:
        return None  # the preset's, with its options (the Pipeline adds them)
    word = SCHEDULE_WORDS.get((schedule or "").strip().lower())
    if word and word.lower() not in name.lower():
        name = f"{name} {word}"
    try:
        rules.check_sampler(name, None, pipe.scheduler_config)
    except RuleError as err:
        raise _as(field, err) from None
    return normalize(name)


def _seeds(seed: int | None, n: int) -> list[int]:
    return rules.check_seeds(random_seed() if seed in (None, -1) else seed, n)


def a1111_job(pipe: Any, req: A1111Txt2Img, init: list[Any] | None, strength: float | None) -> Job:
    """A txt2img (``init`` None) or img2img request -> its job; RuleError naming a body field."""
    default = (pipe.default_size, pipe.default_size)
    if init is not None:  # as the Pipeline: the init image's size, rounded down to the multiple
        f = pipe.graph.size_multiple
        default = (max(init[0].width // f * f, f), max(init[0].height // f * f, f))
    n = req.n_images
    try:
        width, height = image_size(pipe, req.width, req.height, default, n)
    except RuleError as err:
        if init is not None and req.width is None and req.height is None:
            raise _as("init_images", err) from None  # the size came from the image, not the body
        raise
    sampler = sampler_name(pipe, req.sampler_name, "sampler_name", req.scheduler)
    steps = pipe.preset.steps if req.steps is None else req.steps
    guidance = pipe.preset.guidance if req.cfg_scale is None else req.cfg_scale
    if strength is not None:
        rules.check_strength(strength, steps, "denoising_strength", "steps")
    key = BatchKey(width, height, steps, sampler, float(guidance), strength)
    job = Job(
        key,
        [req.prompt] * n,
        [req.negative_prompt] * n,
        _seeds(req.seed, n),
        None if init is None else [init[i % len(init)] for i in range(n)],
    )
    if req.force_task_id:
        job.task_id = req.force_task_id
    return job


def openai_job(pipe: Any, req: OpenAIImages) -> Job:
    """An images/generations request -> its job; size errors name ``size``."""
    w = h = None
    if req.size is not None:
        w, h = (int(v) for v in req.size.split("x"))
    try:
        width, height = image_size(pipe, w, h, (pipe.default_size, pipe.default_size), req.n)
    except RuleError as err:
        raise _as("size", err) from None
    steps = pipe.preset.steps if req.steps is None else req.steps
    guidance = pipe.preset.guidance if req.guidance_scale is None else req.guidance_scale
    key = BatchKey(width, height, steps, sampler_name(pipe, req.sampler, "sampler"), float(guidance), None)
    return Job(key, [req.prompt] * req.n, [req.negative_prompt] * req.n, _seeds(req.seed, req.n))
