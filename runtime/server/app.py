"""The HTTP routes: AUTOMATIC1111's API, OpenAI's images/generations, the page, health and metrics.

Every generation request is checked in full here (422 naming the field) before it joins the
queue, so that one bad request can never fail the batch it would have shared.  Then it waits for
its job while watching its connection: a client that goes away cancels its work.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, PngImagePlugin

from .. import images
from ..pipeline import MAX_PIXELS
from ..samplers import SAMPLERS, make_scheduler
from ..samplers.names import A1111, normalize
from .batcher import Batcher, BatchKey, Interrupted, Job, JobResult, QueueFull, TaskIdInUse
from .guards import guard
from .metrics import CONTENT_TYPE, Metrics
from .schemas import A1111Img2Img, A1111Txt2Img, OpenAIImages

try:
    sdlite_version = version("sdlite")
except PackageNotFoundError:  # a source tree without an install
    sdlite_version = "0+unknown"
STATIC = Path(__file__).resolve().parent / "static"
POLL_SECONDS = 0.1  # how often a waiting request checks that its client is still there
SCHEDULE_WORDS = {"karras": "Karras", "exponential": "Exponential"}


@dataclass
class Settings:
    max_batch: int = 8
    batch_window_ms: float = 20.0
    queue: int = 64
    api_key: str | None = None
    max_body_bytes: int = 20 * 2**20
    body_timeout: float = 30.0  # seconds to receive a request body (slow clients hold a connection)
    allowed_hosts: tuple[str, ...] | None = None  # None: no Host check; () loopback names only


def _invalid(loc: tuple[Any, ...], msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for checks pydantic cannot make (they depend on the model)."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": msg, "input": value}]
    )


def _random_seed() -> int:
    return secrets.randbits(32)


def _png_b64(image: Image.Image, parameters: str) -> str:
    info = PngImagePlugin.PngInfo()
    try:  # tEXt is Latin-1 only (as images.save_png)
        parameters.encode("latin-1")
        info.add_text("parameters", parameters)
    except UnicodeEncodeError:
        info.add_itxt("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_images(texts: list[str], field: str, max_pixels: int) -> list[Image.Image]:
    """Base64 images, refused by their headers (format, size) before any is decoded."""
    try:
        return images.read_base64_images(texts, field, max_pixels)
    except images.ImageInputError as err:
        loc = (field,) if err.index is None else (field, err.index)
        raise _invalid(loc, str(err), None if err.index is None else texts[err.index][:40]) from None


class Server:
    """The routes' shared state: the pipeline, its batcher and the metrics."""

    def __init__(self, pipe: Any, settings: Settings) -> None:
        self.pipe = pipe
        self.settings = settings
        self.metrics = Metrics()
        self.batcher = Batcher(
            pipe, settings.max_batch, settings.batch_window_ms / 1000, settings.queue, self.metrics
        )
        self.metrics.queue_depth._read = self.batcher.depth
        self.model_name = pipe.folder.name
        # What a request that leaves them out gets: the model family's preset (SD: UniPC, 20 steps,
        # 7.5; SD-Turbo: 1 step, no guidance; ...).  The sampler stays None so that the pipeline
        # applies the preset's sampler options (e.g. trailing timesteps) with it.
        preset = getattr(pipe, "preset", None)
        self.default_steps = preset.steps if preset else 20
        self.default_guidance = float(preset.guidance) if preset else 7.5
        self.default_sampler = preset.sampler if preset else "unipc"

    # --- checks that need the model --------------------------------------------------------

    def size(self, width: int | None, height: int | None, default: tuple[int, int]) -> tuple[int, int]:
        f = self.pipe.vae_scale_factor
        m = getattr(self.pipe, "size_multiple", f)
        static = getattr(self.pipe, "_static_hw", (None, None))
        out = []
        for name, value, dflt, fixed in (
            ("width", width, default[0], static[1]),
            ("height", height, default[1], static[0]),
        ):
            value = dflt if value is None else value
            if value % m:
                raise _invalid(
                    (name,), f"must be a multiple of {m} (the VAE's factor x the U-Net's downsampling)", value
                )
            if fixed is not None and value != fixed * f:
                raise _invalid(
                    (name,), f"must be {fixed * f}: this model was exported with a fixed size", value
                )
            out.append(value)
        if out[0] * out[1] > MAX_PIXELS:
            raise _invalid(("width",), f"width x height must be at most {MAX_PIXELS} pixels", out[0])
        return out[0], out[1]

    def sampler(self, name: str | None, loc: str, schedule: str | None = None) -> str | None:
        if name is None:
            return None  # the preset's
        word = SCHEDULE_WORDS.get((schedule or "").strip().lower())
        if word and word.lower() not in name.lower():
            name = f"{name} {word}"
        try:
            make_scheduler(name, self.pipe.scheduler_config)
        except ValueError:
            names = ", ".join(A1111)
            raise _invalid(
                (loc,), f"unknown sampler; GET /sdapi/v1/samplers lists them: {names}", name
            ) from None
        return normalize(name)  # so that "Euler a" and "euler_a" requests share a batch

    # --- waiting for the model -------------------------------------------------------------

    async def generate(self, request: Request, job: Job) -> JobResult | Response:
        t0 = time.perf_counter()
        try:
            self.batcher.submit(job)
        except QueueFull as err:
            self.metrics.rejected.inc()
            return JSONResponse(
                {"detail": str(err)}, status_code=429, headers={"Retry-After": str(err.retry_after)}
            )
        except Interrupted as err:
            return JSONResponse({"detail": str(err)}, status_code=503)
        except TaskIdInUse as err:
            return JSONResponse({"detail": str(err)}, status_code=409)
        waiting = asyncio.wrap_future(job.future)
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=POLL_SECONDS)
                if not waiting.done() and await request.is_disconnected():
                    self.metrics.cancelled.inc()
                    return Response(status_code=499)  # nobody reads it; uvicorn needs a response
        finally:  # however this ends (disconnect, the task cancelled at shutdown), the job goes
            if not job.future.done():
                self.batcher.cancel(job)
        try:
            result = waiting.result()
        except Interrupted as err:
            self.metrics.cancelled.inc()
            return JSONResponse({"detail": str(err)}, status_code=409)
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            return Response(status_code=499)
        except Exception as err:  # the model call failed: the batch's members all get it
            self.metrics.failed.inc()
            return JSONResponse(
                {"detail": f"generation failed: {type(err).__name__}: {err}"}, status_code=500
            )
        self.metrics.images.inc(len(result.images))
        self.metrics.latency.observe(time.perf_counter() - t0)
        return result


def _a1111_info(req: A1111Txt2Img, result: JobResult, server: Server, key: BatchKey) -> str:
    n = len(result.seeds)
    info = {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * n,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * n,
        "seed": result.seeds[0],
        "all_seeds": result.seeds,
        "subseed": -1,
        "all_subseeds": [-1] * n,
        "subseed_strength": 0,
        "width": key.width,
        "height": key.height,
        "sampler_name": req.sampler_name or server.default_sampler,
        "cfg_scale": key.guidance,
        "steps": key.steps,
        "batch_size": req.batch_size,
        "restore_faces": False,
        "sd_model_name": server.model_name,
        "sd_model_hash": None,
        "denoising_strength": key.strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": result.parameters,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"sdlite {sdlite_version}",
    }
    return json.dumps(info)


def _a1111_samplers() -> list[dict[str, Any]]:
    return [
        {"name": name, "aliases": [sampler], "options": {k: str(v) for k, v in opts.items()}}
        for name, (sampler, opts) in A1111.items()
        if name in SAMPLERS
    ]


def create_app(pipe: Any, settings: Settings | None = None) -> Any:
    """The ASGI application serving ``pipe`` (a loaded ``Pipeline``), guards included."""
    settings = settings or Settings()
    server = Server(pipe, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        server.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(server.batcher.stop)

    app = FastAPI(title="sdlite", version=sdlite_version, lifespan=lifespan)
    app.state.server = server

    async def a1111(
        request: Request, req: A1111Txt2Img, init: list[Image.Image] | None, strength: float | None
    ) -> Any:
        default = (pipe.default_size, pipe.default_size)
        if init is not None:  # as the Pipeline: the init image's size, rounded down to the multiple
            f = pipe.size_multiple
            default = (max(init[0].width // f * f, f), max(init[0].height // f * f, f))
        width, height = server.size(req.width, req.height, default)
        sampler = server.sampler(req.sampler_name, "sampler_name", req.scheduler)
        steps = server.default_steps if req.steps is None else req.steps
        guidance = server.default_guidance if req.cfg_scale is None else float(req.cfg_scale)
        if strength is not None and int(steps * strength) < 1:
            raise _invalid(
                ("denoising_strength",), f"steps x denoising_strength must be >= 1 (steps={steps})", strength
            )
        n = req.n_images
        base = _random_seed() if req.seed == -1 else req.seed
        if base + n - 1 > 2**64 - 1:
            raise _invalid(("seed",), "seed + images - 1 must fit in 64 bits", req.seed)
        key = BatchKey(width, height, steps, sampler, guidance, strength)
        job = Job(
            key,
            [req.prompt] * n,
            [req.negative_prompt] * n,
            [base + i for i in range(n)],
            None if init is None else [init[i % len(init)] for i in range(n)],
        )
        if req.force_task_id:
            job.task_id = req.force_task_id
        result = await server.generate(request, job)
        if isinstance(result, Response):
            return result
        images = await asyncio.to_thread(
            lambda: [_png_b64(im, p) for im, p in zip(result.images, result.parameters, strict=True)]
        )
        params = req.model_dump()
        if init is not None:
            params["init_images"] = None  # as A1111: the response does not echo megabytes back
        return {
            "images": images,
            "parameters": params,
            "info": _a1111_info(req, result, server, key),
        }

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request, req: A1111Txt2Img) -> Any:
        return await a1111(request, req, None, None)

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request, req: A1111Img2Img) -> Any:
        if pipe.vae_encoder is None:
            raise _invalid(("init_images",), "this model has no VAE encoder: image-to-image is unavailable")
        init = await asyncio.to_thread(_decode_images, req.init_images, "init_images", MAX_PIXELS)
        return await a1111(request, req, init, float(req.denoising_strength))

    @app.post("/v1/images/generations")
    async def openai_images(request: Request, req: OpenAIImages) -> Any:
        w = h = None
        if req.size is not None:
            w, h = (int(v) for v in req.size.split("x"))
        try:
            width, height = server.size(w, h, (pipe.default_size, pipe.default_size))
        except RequestValidationError as err:
            raise _invalid(("size",), err.errors()[0]["msg"], req.size) from None
        sampler = server.sampler(req.sampler, "sampler")
        base = _random_seed() if req.seed is None else req.seed
        steps = server.default_steps if req.steps is None else req.steps
        guidance = server.default_guidance if req.guidance_scale is None else float(req.guidance_scale)
        job = Job(
            BatchKey(width, height, steps, sampler, guidance, None),
            [req.prompt] * req.n,
            [req.negative_prompt] * req.n,
            [base + i for i in range(req.n)],
        )
        result = await server.generate(request, job)
        if isinstance(result, Response):
            return result
        images = await asyncio.to_thread(
            lambda: [_png_b64(im, p) for im, p in zip(result.images, result.parameters, strict=True)]
        )
        return {
            "created": int(time.time()),
            "data": [{"b64_json": b, "revised_prompt": req.prompt} for b in images],
        }

    @app.get("/sdapi/v1/progress")
    async def progress(id_task: str | None = None) -> Any:
        p = server.batcher.progress(id_task)
        fraction = p["step"] / p["total"] if p["total"] else 0.0
        return {
            "progress": fraction,
            "eta_relative": p.get("eta", 0.0),
            "state": {
                "skipped": False,
                "interrupted": False,
                "job": p["state"],
                "job_count": server.batcher.depth(),
                "job_timestamp": "",
                "job_no": 0,
                "sampling_step": p["step"],
                "sampling_steps": p["total"],
                "queue_position": p["queued"],
            },
            "current_image": None,
            "textinfo": p["state"],
        }

    @app.post("/sdapi/v1/interrupt")
    async def interrupt(
        id_task: str | None = None, body: Annotated[dict[str, Any] | None, Body()] = None
    ) -> Any:
        # Only the caller's own job, by its id (?id_task= or {"id_task": ...}, the force_task_id
        # it sent): never everybody's, whatever A1111 does with a bare interrupt.
        task = id_task if id_task is not None else (body or {}).get("id_task")
        if not isinstance(task, str) or not task:
            raise _invalid(
                ("id_task",), "required: the force_task_id of the request to stop (?id_task= or JSON)", task
            )
        return {"interrupted": server.batcher.interrupt(task)}

    @app.get("/sdapi/v1/samplers")
    async def samplers() -> Any:
        return _a1111_samplers()

    @app.get("/sdapi/v1/sd-models")
    async def sd_models() -> Any:
        return [
            {
                "title": server.model_name,
                "model_name": server.model_name,
                "hash": None,
                "sha256": None,
                "filename": str(pipe.folder.path),
                "config": None,
            }
        ]

    @app.get("/sdapi/v1/options")
    async def options() -> Any:
        return {"sd_model_checkpoint": server.model_name}  # the one setting clients read

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> Any:
        return {
            "status": "ok",
            "model": server.model_name,
            "default_size": pipe.default_size,
            "queue": server.batcher.depth(),
            "queue_limit": settings.queue,
            "max_batch": settings.max_batch,
            "auth": settings.api_key is not None,
            "defaults": {
                "sampler": server.default_sampler,
                "steps": server.default_steps,
                "guidance": server.default_guidance,
            },
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    guarded: Any = guard(
        app,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout,
        allowed_hosts=settings.allowed_hosts,
    )
    guarded.server = server  # for tests and embedding
    return guarded
