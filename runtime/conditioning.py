"""Prompt -> U-Net conditioning, as diffusers' SD and SDXL pipelines compute it.

SD 1.x/2.x: the text encoder's ``last_hidden_state`` (its first output) is ``encoder_hidden_states``.

SDXL (``StableDiffusionXLPipeline.encode_prompt``): each encoder's penultimate hidden state
(``hidden_states[-2]``; optimum exports them as ``hidden_states.0`` .. ``hidden_states.N``),
concatenated along the feature axis (encoder 1 then encoder 2), is ``encoder_hidden_states``;
encoder 2's pooled, projected ``text_embeds`` is the U-Net's ``text_embeds``.  ``prompt_2`` /
``negative_prompt_2`` feed encoder 2 (default: ``prompt`` / ``negative_prompt``).  With
``force_zeros_for_empty_prompt`` (model_index.json; True for SDXL base models) and no
``negative_prompt`` at all, the unconditional embeddings are zeros; an explicit ``""`` is encoded.
A refiner has encoder 2 only.

Time ids (``_get_add_time_ids``): base models ``original_size + crops_coords_top_left +
target_size`` (6 numbers, the same for the unconditional half); refiners
(``requires_aesthetics_score``, 5 numbers) ``original_size + crops_coords_top_left +
(aesthetic_score,)`` and, for the unconditional half, ``original_size + (0, 0) +
(negative_aesthetic_score,)``, as diffusers' img2img pipeline does with its defaults.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import rules
from .folder import ModelFolder
from .sessions import Session
from .tokenizer import CLIPTokenizer

SDXL_INPUTS = ("text_embeds", "time_ids")
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # diffusers' img2img defaults
_HIDDEN = re.compile(r"^hidden_states\.(\d+)$")


@dataclass
class SDXLOptions:
    """The SDXL-only arguments of a pipeline call (None: diffusers' default)."""

    prompt_2: Any = None
    negative_prompt_2: Any = None
    original_size: Any = None
    crops_coords_top_left: Any = None
    target_size: Any = None
    aesthetic_score: Any = None
    negative_aesthetic_score: Any = None

    def given(self) -> list[str]:
        return [k for k, v in vars(self).items() if v is not None]


@dataclass
class TextEncoder:
    tokenizer: CLIPTokenizer
    session: Session

    @property
    def input_name(self) -> str:
        inputs = self.session.inputs
        return "input_ids" if "input_ids" in inputs else next(iter(inputs))

    def run(self, texts: list[str], outputs: list[str]) -> list[np.ndarray]:
        ids = self.tokenizer(texts)
        feeds = {self.input_name: ids}
        if "attention_mask" in self.session.inputs:
            # diffusers calls CLIP without a mask: an all-ones mask is the same computation.
            feeds["attention_mask"] = np.ones_like(ids)
        return self.session.run(feeds, outputs=outputs)

    def penultimate(self) -> str:
        """The output holding ``hidden_states[-2]`` (optimum names them hidden_states.<layer>)."""
        layers = sorted(int(m.group(1)) for o in self.session.outputs if (m := _HIDDEN.match(o)))
        if len(layers) < 2:
            raise ValueError(
                f"{self.session.path}: an SDXL text encoder must output its hidden states "
                f"(hidden_states.0 .. hidden_states.N, as optimum exports SDXL); it outputs "
                f"{', '.join(self.session.outputs)}"
            )
        return f"hidden_states.{layers[-2]}"


def _pair(name: str, value: Any, default: tuple[int, int], lo: int) -> tuple[int, int]:
    if value is None:
        return default
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= lo for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be a pair of integers (height, width) >= {lo}, got {value!r}")


def _score(name: str, value: Any, default: float) -> float:
    return default if value is None else rules.check_float(name, value)


def _texts(name: str, value: Any, fallback: list[str]) -> list[str]:
    """``prompt_2``-style argument: None -> ``fallback``; a str applies to every prompt."""
    if value is None:
        return fallback
    if isinstance(value, str):
        return [rules.check_text(name, value)] * len(fallback)
    if (
        isinstance(value, (list, tuple))
        and all(isinstance(p, str) for p in value)
        and len(value) == len(fallback)
    ):
        return [rules.check_text(name, p) for p in value]
    raise ValueError(
        f"{name} must be a string or a list of {len(fallback)} strings (one per prompt), got {value!r}"
    )


class PromptEncoder:
    """The model's text encoder(s); ``encode`` returns the U-Net's text conditioning inputs."""

    def __init__(self, folder: ModelFolder, unet: Session, make_session: Callable[[Path], Session]) -> None:
        self.sdxl = all(name in unet.inputs for name in SDXL_INPUTS)
        self.encoders: list[TextEncoder] = []
        if "text_encoder" in folder.onnx:
            tok = CLIPTokenizer.from_pretrained(folder.tokenizer_dir)
            self.encoders.append(TextEncoder(tok, make_session(folder.onnx["text_encoder"])))
        self.encoder_2: TextEncoder | None = None
        if "text_encoder_2" in folder.onnx and folder.tokenizer_2_dir is not None:
            tok2 = CLIPTokenizer.from_pretrained(folder.tokenizer_2_dir)
            self.encoder_2 = TextEncoder(tok2, make_session(folder.onnx["text_encoder_2"]))
            self.encoders.append(self.encoder_2)
        self.force_zeros = folder.force_zeros_for_empty_prompt
        self.n_time_ids = 0
        if not self.sdxl:
            if any(name in unet.inputs for name in SDXL_INPUTS):
                raise ValueError(
                    f"unet/model.onnx has only some of SDXL's inputs {SDXL_INPUTS} "
                    f"(inputs: {', '.join(unet.inputs)})"
                )
            if "text_encoder" not in folder.onnx:
                raise ValueError(f"model folder {str(folder.path)!r} has no text_encoder/model.onnx")
            return
        if self.encoder_2 is None:
            raise ValueError(
                "unet/model.onnx takes SDXL's text_embeds and time_ids, but the model folder has no "
                "text_encoder_2/ (with tokenizer_2/) to compute them"
            )
        if "text_embeds" not in self.encoder_2.session.outputs:
            raise ValueError(
                f"text_encoder_2/model.onnx has no 'text_embeds' output (outputs: "
                f"{', '.join(self.encoder_2.session.outputs)}); SDXL needs CLIP with projection"
            )
        self._outputs = [[e.penultimate()] for e in self.encoders]
        self._outputs[-1].append("text_embeds")
        dim = unet.inputs["time_ids"].shape[-1]
        if isinstance(dim, numbers.Integral):
            self.n_time_ids = int(dim)
        else:
            self.n_time_ids = 5 if folder.requires_aesthetics_score else 6
        if self.n_time_ids not in (5, 6):
            raise ValueError(f"unet/model.onnx: time_ids must hold 5 or 6 numbers, the graph says {dim}")

    @property
    def refiner(self) -> bool:
        return self.n_time_ids == 5

    @property
    def sessions(self) -> list[Session]:
        return [e.session for e in self.encoders]

    def check(self, options: SDXLOptions, n_prompts: int) -> None:
        """Refuse SDXL-only arguments the model cannot use (before any model runs)."""
        given = options.given()
        if not self.sdxl and given:
            raise ValueError(
                f"{given[0]} is an SDXL argument, but this model is not SDXL (its U-Net takes no "
                "text_embeds/time_ids)"
            )
        for name in ("prompt_2", "negative_prompt_2"):
            if getattr(options, name) is not None and len(self.encoders) < 2:
                raise ValueError(
                    f"{name} needs a second text encoder, but this model has only "
                    f"{'text_encoder_2 (an SDXL refiner)' if self.sdxl else 'text_encoder'}"
                )
        if self.refiner and options.target_size is not None:
            raise ValueError("target_size: a refiner's time ids hold an aesthetic score, not a target size")
        if not self.refiner:
            for name in ("aesthetic_score", "negative_aesthetic_score"):
                if getattr(options, name) is not None:
                    raise ValueError(
                        f"{name} only applies to SDXL refiners (requires_aesthetics_score: 5 time ids)"
                    )
        # The values themselves (encode() and time_ids() convert them again, cheaply).
        _texts("prompt_2", options.prompt_2, [""] * n_prompts)
        _texts("negative_prompt_2", options.negative_prompt_2, [""] * n_prompts)
        if self.sdxl:
            self.time_ids(options, 1, 1)

    def time_ids(self, options: SDXLOptions, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(time ids, unconditional time ids), each [n_time_ids] float32."""
        original = _pair("original_size", options.original_size, (height, width), 1)
        crops = _pair("crops_coords_top_left", options.crops_coords_top_left, (0, 0), 0)
        if self.refiner:
            aes = _score("aesthetic_score", options.aesthetic_score, AESTHETIC_SCORE)
            neg = _score(
                "negative_aesthetic_score", options.negative_aesthetic_score, NEGATIVE_AESTHETIC_SCORE
            )
            pos_ids, neg_ids = (*original, *crops, aes), (*original, 0, 0, neg)
        else:
            target = _pair("target_size", options.target_size, (height, width), 1)
            pos_ids = neg_ids = (*original, *crops, *target)
        return np.array(pos_ids, dtype=np.float32), np.array(neg_ids, dtype=np.float32)

    def encode(
        self,
        prompts: list[str],
        negatives: list[str],
        negative_given: bool,
        do_cfg: bool,
        per_prompt: int,
        options: SDXLOptions,
        height: int,
        width: int,
    ) -> dict[str, np.ndarray]:
        """U-Net inputs that stay fixed over the loop; batch [uncond..., cond...] with guidance."""
        if not self.sdxl:
            enc = self.encoders[0]
            (emb,) = enc.run(negatives + prompts if do_cfg else prompts, [enc.session.outputs[0]])
            emb = np.repeat(emb, per_prompt, axis=0) if per_prompt > 1 else emb  # prompt-major order
            return {"encoder_hidden_states": emb}

        prompts_2 = _texts("prompt_2", options.prompt_2, prompts)
        negatives_2 = _texts("negative_prompt_2", options.negative_prompt_2, negatives)
        zeros = do_cfg and self.force_zeros and not negative_given
        encode_negatives = do_cfg and not zeros
        n = len(prompts)
        hidden, pooled = [], None
        # diffusers zips [prompt, prompt_2] with the encoders: a refiner's only encoder gets prompt.
        k = len(self.encoders)
        texts_per_encoder = zip((prompts, prompts_2)[:k], (negatives, negatives_2)[:k], strict=True)
        for enc, outputs, (texts, neg) in zip(self.encoders, self._outputs, texts_per_encoder, strict=True):
            result = enc.run(neg + texts if encode_negatives else texts, outputs)
            hidden.append(result[0].astype(np.float32, copy=False))
            if len(result) > 1:
                pooled = result[1].astype(np.float32, copy=False)
        emb = np.concatenate(hidden, axis=-1)
        assert pooled is not None
        if zeros:
            emb = np.concatenate([np.zeros_like(emb), emb])
            pooled = np.concatenate([np.zeros_like(pooled), pooled])
        pos_ids, neg_ids = self.time_ids(options, height, width)
        ids = np.stack([pos_ids] * n)
        if do_cfg:
            ids = np.concatenate([np.stack([neg_ids] * n), ids])
        out = {"encoder_hidden_states": emb, "text_embeds": pooled, "time_ids": ids}
        if per_prompt > 1:
            out = {k: np.repeat(v, per_prompt, axis=0) for k, v in out.items()}
        return out
