"""The HTTP routes: AUTOMATIC1111's API, OpenAI's images/generations, the page, health and metrics.

Every generation request is checked in full (``schemas.py``, then ``jobs.py`` with the model's
facts; both by ``sdlite.rules``, a 422 naming the field) before it joins the queue, so that one
bad request can never fail the batch it would have shared.  Then it waits for
its job while watching its connection: a client that goes away cancels its work.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from PIL import Image, PngImagePlugin

from .. import images, rules
from ..samplers import SAMPLERS
from ..samplers.names import A1111
from . import jobs
from .batcher import Batcher, BatchKey, Interrupted, Job, JobResult, QueueFull, TaskIdInUse
from .errors import add_error_handlers
from .extras import Extras, add_extra_network_routes
from .guards import guard
from .metrics import CONTENT_TYPE, Metrics
from .previews import Previews
from .schemas import A1111Img2Img, A1111Txt2Img, OpenAIImages

try:
    sdlite_version = version("sdlite")
except PackageNotFoundError:  # a source tree without an install
    sdlite_version = "0+unknown"
STATIC = Path(__file__).resolve().parent / "static"
POLL_SECONDS = 0.1  # how often a waiting request checks that its client is still there


@dataclass
class Settings:
    max_batch: int = 8
    batch_window_ms: float = 20.0
    queue: int = 64
    api_key: str | None = None
    max_body_bytes: int = 20 * 2**20
    body_timeout: float = 30.0  # seconds to receive a request body (slow clients hold a connection)
    allowed_hosts: tuple[str, ...] | None = None  # None: no Host check; () loopback names only
    lora_dir: Path | None = None  # <lora:NAME:W> tags and /sdapi/v1/loras (server/extras.py)
    embeddings_dir: Path | None = None  # textual inversions loaded at start, /sdapi/v1/embeddings
    preview_every: int = 2  # a live preview (progress's current_image) every N steps; 0: none


def _invalid(loc: tuple[Any, ...], msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for checks pydantic cannot make (they depend on the model)."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": msg, "input": value}]
    )


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
            pipe,
            settings.max_batch,
            settings.batch_window_ms / 1000,
            settings.queue,
            self.metrics,
            settings.preview_every,
        )
        self.extras = Extras(pipe, settings.lora_dir, settings.embeddings_dir, self.batcher.pipe_lock)
        self.previews = Previews(self.batcher)
        self.metrics.queue_depth.read = self.batcher.depth
        self.model_name = pipe.folder.name
        # What a request that leaves them out gets: the model family's preset (SD: UniPC, 20 steps,
        # 7.5; SD-Turbo: 1 step, no guidance; ...).  A job's sampler stays None so that the
        # pipeline applies the preset's sampler options (e.g. trailing timesteps) with it.
        self.default_steps = pipe.preset.steps
        self.default_guidance = float(pipe.preset.guidance)
        self.default_sampler = pipe.preset.sampler

    # --- waiting for the model -------------------------------------------------------------

    async def generate(self, request: Request, job: Job) -> JobResult | Response:
        t0 = time.perf_counter()
        job = await self.extras.apply(job)  # LoRA tags -> the job's LoRA set (422 if unknown)
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
        self.extras.restore_tags(job, result)
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
    return json.dumps(info, ensure_ascii=False)  # non-ASCII prompts: 1-3 bytes a character, not 6-12


def _a1111_samplers() -> list[dict[str, Any]]:
    return [
        {"name": name, "aliases": [sampler], "options": {k: str(v) for k, v in opts.items()}}
        for name, (sampler, opts) in A1111.items()
        if name in SAMPLERS
    ]


async def _respond_a1111(request: Request, server: Server, req: A1111Txt2Img, job: Job) -> Any:
    result = await server.generate(request, job)
    if isinstance(result, Response):
        return result
    images = await asyncio.to_thread(
        lambda: [_png_b64(im, p) for im, p in zip(result.images, result.parameters, strict=True)]
    )
    params = req.model_dump()
    if job.images is not None:
        params["init_images"] = None  # as A1111: the response does not echo megabytes back
    return {"images": images, "parameters": params, "info": _a1111_info(req, result, server, job.key)}


def _add_generation_routes(app: FastAPI, server: Server) -> None:
    pipe = server.pipe

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request, req: A1111Txt2Img) -> Any:
        return await _respond_a1111(request, server, req, jobs.a1111_job(pipe, req, None, None))

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request, req: A1111Img2Img) -> Any:
        if pipe.vae_encoder is None:
            raise _invalid(("init_images",), "this model has no VAE encoder: image-to-image is unavailable")
        init = await asyncio.to_thread(_decode_images, req.init_images, "init_images", rules.MAX_INPUT_PIXELS)
        job = jobs.a1111_job(pipe, req, init, float(req.denoising_strength))
        return await _respond_a1111(request, server, req, job)

    @app.post("/v1/images/generations")
    async def openai_images(request: Request, req: OpenAIImages) -> Any:
        result = await server.generate(request, jobs.openai_job(pipe, req))
        if isinstance(result, Response):
            return result
        images = await asyncio.to_thread(
            lambda: [_png_b64(im, p) for im, p in zip(result.images, result.parameters, strict=True)]
        )
        return {
            "created": int(time.time()),
            "data": [{"b64_json": b, "revised_prompt": req.prompt} for b in images],
        }


def _add_progress_routes(app: FastAPI, server: Server) -> None:
    @app.get("/sdapi/v1/progress")
    async def progress(id_task: str | None = None, skip_current_image: bool = False) -> Any:
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
            "current_image": await server.previews.current_image(id_task, skip_current_image),
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


def _add_info_routes(app: FastAPI, server: Server) -> None:
    pipe, settings = server.pipe, server.settings

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

    @app.head("/health", operation_id="health_head")  # its own id: the document's ids are unique
    @app.get("/health")
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

    @app.get("/metrics", response_class=PlainTextResponse)  # documented as text, as it is
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.head("/", response_class=HTMLResponse, operation_id="page_head")
    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


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
    add_error_handlers(app)
    _add_generation_routes(app, server)
    _add_progress_routes(app, server)
    _add_info_routes(app, server)
    add_extra_network_routes(app, server.extras)
    guarded: Any = guard(
        app,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout,
        allowed_hosts=settings.allowed_hosts,
    )
    guarded.server = server  # for tests and embedding
    return guarded
