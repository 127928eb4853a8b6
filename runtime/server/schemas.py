"""Request bodies: AUTOMATIC1111's txt2img/img2img and OpenAI's images/generations (pydantic v2).

Only the fields sdlite acts on are declared; the many other fields A1111 clients send
(restore_faces, styles, alwayson_scripts, ...) are accepted and ignored, as pydantic ignores
unknown fields.  Range checks that depend on the model (multiples of the VAE factor, sampler
names) are made in ``app.py`` and reported in the same 422 shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

MAX_IMAGES_PER_REQUEST = 64  # one request's batch_size x n_iter: more is a batch job, not a request
MAX_SEED = 2**63 - 1


class A1111Txt2Img(BaseModel):
    prompt: str = ""
    negative_prompt: str = ""
    # Left out (or null): the model family's preset (sdlite.presets), e.g. 20 steps and 7.5 for SD,
    # 1 step without guidance for SD-Turbo.
    steps: int | None = Field(None, ge=1, le=500)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    # "DPM++ 2M Karras", "Euler a", ... (any name `sdlite samplers` lists).  Newer A1111 clients
    # send the schedule separately as `scheduler`: "Karras"/"Exponential" are appended to the name.
    sampler_name: str | None = None
    scheduler: str | None = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED)  # -1: random
    width: int | None = Field(None, ge=1, le=8192)  # default: the model's native size (not 512)
    height: int | None = Field(None, ge=1, le=8192)
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)  # batches in A1111; here a multiplier
    force_task_id: str | None = Field(None, max_length=128)  # the id /sdapi/v1/progress?id_task= takes

    @model_validator(mode="after")
    def _not_too_many(self) -> A1111Txt2Img:
        if self.batch_size * self.n_iter > MAX_IMAGES_PER_REQUEST:
            raise ValueError(
                f"batch_size x n_iter must be at most {MAX_IMAGES_PER_REQUEST} images per request, "
                f"got {self.batch_size} x {self.n_iter}"
            )
        return self

    @property
    def n_images(self) -> int:
        return self.batch_size * self.n_iter


class A1111Img2Img(A1111Txt2Img):
    # Base64 PNG/JPEG/WebP, with or without a "data:image/...;base64," prefix.  Image i of the
    # request starts from init_images[i % len(init_images)].
    init_images: list[str] = Field(min_length=1, max_length=MAX_IMAGES_PER_REQUEST)
    denoising_strength: float = Field(0.75, gt=0, le=1)


class OpenAIImages(BaseModel):
    prompt: str = Field(min_length=1, max_length=32000)
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")  # "WxH"; default: model's
    # Only inline images: the server keeps no files, so it has no URL to hand out ("url" -> 422).
    response_format: Literal["b64_json"] = "b64_json"
    model: str | None = None  # accepted and ignored: the server serves the one model it loaded
    # sdlite extensions (not in OpenAI's API) for reproducible results:
    negative_prompt: str = ""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=500)  # None: the model's preset, as for A1111
    guidance_scale: float | None = Field(None, ge=0, le=100)
    sampler: str | None = None
