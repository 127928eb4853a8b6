"""Request bodies: AUTOMATIC1111's txt2img/img2img and OpenAI's images/generations (pydantic v2).

Only the fields sdlite acts on are declared; the many other fields A1111 clients send
(restore_faces, styles, alwayson_scripts, ...) are accepted and ignored, as pydantic ignores
unknown fields.  Range checks that depend on the model (multiples of the VAE factor, sampler
names) are made in ``jobs.py`` and reported in the same 422 shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from .. import rules
from ..rules import MAX_IMAGES, RuleError

OPENAI_MAX_N = 10  # OpenAI's images API takes n in [1, 10]; its clients expect that bound


class Checked(BaseModel):
    """The rules that need no model, by the validators every entry point calls (``sdlite.rules``).

    ``check_fields=False``: each body declares only some of these fields.
    """

    @field_validator("prompt", "negative_prompt", check_fields=False)
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> str:
        return rules.check_text(str(info.field_name), value)

    @field_validator("sampler_name", "scheduler", "sampler", "model", "force_task_id", check_fields=False)
    @classmethod
    def _name(cls, value: Any, info: ValidationInfo) -> str | None:
        # Checked here, not only where used: a bad "scheduler" or "model" is otherwise echoed in
        # the response after a whole generation, and a lone surrogate there cannot be encoded.
        return value if value is None else rules.check_text(str(info.field_name), value, rules.MAX_NAME_CHARS)

    @field_validator("steps", check_fields=False)
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        return value if value is None else rules.check_int("steps", value, 1, rules.MAX_STEPS)

    @field_validator("cfg_scale", "guidance_scale", check_fields=False)
    @classmethod
    def _guidance(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None:
            return None
        return rules.check_float(str(info.field_name), value, *rules.GUIDANCE_RANGE)

    @field_validator("seed", check_fields=False)
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        return value if value is None else rules.check_int("seed", value, 0, rules.MAX_SEED)


class A1111Txt2Img(Checked):
    prompt: str = ""
    negative_prompt: str = ""
    # Left out (or null): the model family's preset (sdlite.presets), e.g. 20 steps and 7.5 for SD,
    # 1 step without guidance for SD-Turbo.
    steps: int | None = None
    cfg_scale: float | None = None
    # "DPM++ 2M Karras", "Euler a", ... (any name `sdlite samplers` lists).  Newer A1111 clients
    # send the schedule separately as `scheduler`: "Karras"/"Exponential" are appended to the name.
    sampler_name: str | None = None
    scheduler: str | None = None
    seed: int = -1  # -1: random
    # Default: the model's native size (not 512); the size rules need the model (jobs.py).
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    n_iter: int = 1  # batches in A1111; here a multiplier
    # The id /sdapi/v1/progress?id_task= and /sdapi/v1/interrupt take.
    force_task_id: str | None = Field(None, max_length=rules.MAX_NAME_CHARS)

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int) -> int:  # A1111's -1 asks for a random seed
        return value if value == -1 else rules.check_int("seed", value, 0, rules.MAX_SEED)

    @field_validator("batch_size", "n_iter")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        value = rules.check_int(str(info.field_name), value, 1, MAX_IMAGES)
        # n_iter is validated after batch_size, so the product's error names a field the client
        # sent (n_iter, the multiplier) rather than the whole body.
        per_call = info.data.get("batch_size") if info.field_name == "n_iter" else None
        if per_call and per_call * value > MAX_IMAGES:
            # one request's images: more is a batch job, not a request
            raise RuleError(
                "n_iter",
                f"at most {MAX_IMAGES // per_call} with batch_size={per_call} "
                f"(batch_size x n_iter: at most {MAX_IMAGES} images per call)",
                value,
            )
        return value

    @property
    def n_images(self) -> int:
        return self.batch_size * self.n_iter


class A1111Img2Img(A1111Txt2Img):
    # Base64 PNG/JPEG/WebP, with or without a "data:image/...;base64," prefix.  Image i of the
    # request starts from init_images[i % len(init_images)].
    init_images: list[str] = Field(min_length=1, max_length=MAX_IMAGES)
    denoising_strength: float = 0.75

    @field_validator("denoising_strength")
    @classmethod
    def _strength(cls, value: float) -> float:
        return rules.check_float("denoising_strength", value, *rules.STRENGTH_RANGE, lo_open=True)


class OpenAIImages(Checked):
    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=OPENAI_MAX_N)
    size: str | None = Field(None, pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")  # "WxH"; default: model's
    # Only inline images: the server keeps no files, so it has no URL to hand out ("url" -> 422).
    response_format: Literal["b64_json"] = "b64_json"
    model: str | None = None  # accepted and ignored: the server serves the one model it loaded
    # sdlite extensions (not in OpenAI's API) for reproducible results:
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None  # None: the model's preset, as for A1111
    guidance_scale: float | None = None
    sampler: str | None = None
