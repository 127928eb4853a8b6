"""Prompt -> U-Net conditioning: AUTOMATIC1111's prompts on diffusers' SD and SDXL text encoders.

Each text is chunked, weighted and scheduled as AUTOMATIC1111 does (``sdlite.prompt_encoding``:
``(word:1.3)``, long prompts in 75-token chunks, ``BREAK``, ``[from:to:when]``, ``[a|b]``); a
prompt of at most 75 tokens without that syntax is encoded exactly as diffusers encodes it.
``plan`` tokenizes and checks every text before any model runs; ``encode`` runs the encoders
once per distinct text and returns the inputs for each stretch of U-Net calls.  Textual
inversion: ``load_textual_inversion`` (``sdlite.embeddings``).  SDXL: each encoder chunks and
weights on its own; the pooled output is encoder 2's, from the first chunk.

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
import onnxruntime as ort

from . import rules
from .embeddings import load_embedding, token_table
from .folder import ModelFolder
from .prompt_encoding import TextPlan, chunk_tokens, empty_chunk, plan_texts, weigh
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
    table: tuple[str, np.ndarray] | None = None  # (initializer, extended token table): embeddings
    table_value: Any = None  # the OrtValue the session reads the table from; lives as long as it

    @property
    def input_name(self) -> str:
        inputs = self.session.inputs
        return "input_ids" if "input_ids" in inputs else next(iter(inputs))

    def run(self, ids: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
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
        # A U-Net exported with a static sequence axis takes one chunk (77 tokens) only.
        seq = unet.inputs["encoder_hidden_states"].shape[1:2]
        self.static_tokens = int(seq[0]) if seq and rules.is_int(seq[0]) else None
        self.max_chunks = rules.MAX_PROMPT_CHUNKS  # per prompt; assign another to change the limit
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

    def load_textual_inversion(
        self, path: str | Path, token: str | None, make_session: Callable[[Path, str, Any], Session]
    ) -> str:
        """Add an embedding to every text encoder (``sdlite.embeddings``); returns its name.

        ``make_session(model, initializer, value)`` makes a text-encoder session whose
        ``initializer`` is overridden by the OrtValue ``value``.
        """
        for enc in self.encoders:
            if enc.table is None:
                enc.table = token_table(enc.session.path, enc.tokenizer.vocab_size)
        emb = load_embedding(path, token, [enc.table[1].shape[1] for enc in self.encoders])
        if not emb.name.strip() or any(ch.isspace() for ch in emb.name):
            raise ValueError(f"embedding name {emb.name!r}: a name is one word (no spaces); pass token=")
        for enc in self.encoders:
            if enc.tokenizer.knows(emb.name):
                raise ValueError(
                    f"embedding name {emb.name!r} is already a word of the tokenizer's vocabulary (or a "
                    "loaded embedding), so prompts could not tell them apart; pass another token="
                )
        for enc, vectors in zip(self.encoders, emb.vectors, strict=True):
            name, table = enc.table
            table = np.concatenate([table, vectors.astype(table.dtype)])
            value = ort.OrtValue.ortvalue_from_numpy(table)
            session = make_session(enc.session.path, name, value)  # before any state changes
            enc.tokenizer.add_embedding(emb.name, len(vectors))
            enc.session, enc.table, enc.table_value = session, (name, table), value
        return emb.name

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

    def plan(
        self,
        prompts: list[str],
        negatives: list[str],
        negative_given: bool,
        do_cfg: bool,
        options: SDXLOptions,
        calls: int,
    ) -> TextPlan:
        """Tokenize and chunk every text of a call (``sdlite.prompt_encoding``), checking its length."""
        zeros = self.sdxl and do_cfg and self.force_zeros and not negative_given
        kinds = []
        for name, texts in (("prompt", prompts), ("negative_prompt", negatives)):
            per_encoder = [(name, texts)]
            if len(self.encoders) == 2:  # encoder 2 reads prompt_2 (default: prompt)
                given = getattr(options, f"{name}_2")
                per_encoder.append((f"{name}_2" if given else name, _texts(f"{name}_2", given, texts)))
            kinds.append([[(field, t[i]) for field, t in per_encoder] for i in range(len(prompts))])
        streams = kinds[1] + kinds[0] if do_cfg and not zeros else kinds[0]
        tokenizers = [e.tokenizer for e in self.encoders]
        plan = plan_texts(tokenizers, streams, calls, zeros, do_cfg, self.max_chunks)
        length = tokenizers[0].model_max_length
        if self.static_tokens is not None and plan.k * length != self.static_tokens:
            size = chunk_tokens(tokenizers[0])
            raise rules.RuleError(
                "prompt",
                f"at most {size} tokens without BREAK, with its negative prompt: this model's U-Net was "
                f"exported with a fixed text length of {self.static_tokens} tokens (a static sequence "
                "axis); re-export it with a dynamic one for longer prompts",
                f"{plan.k} chunks of {size} tokens",
            )
        return plan

    def _embed(self, plan: TextPlan) -> list[dict[str, tuple[np.ndarray, np.ndarray | None]]]:
        """Per encoder: text -> (its weighted chunks' outputs [k*77, D], first chunk's pooled output)."""
        out = []
        for e, enc in enumerate(self.encoders):
            items = list(plan.chunks[e].items())
            pad = empty_chunk(enc.tokenizer)
            chunks = [c for _, cs in items for c in cs + [pad] * (plan.k - len(cs))]
            names = self._outputs[e] if self.sdxl else [enc.session.outputs[0]]
            result = enc.run(np.array([c.ids for c in chunks], dtype=np.int64), names)
            hidden = result[0].astype(np.float32, copy=False)
            pooled = result[1].astype(np.float32, copy=False) if len(result) > 1 else None
            embedded = {}
            for j, (text, _) in enumerate(items):
                rows = range(j * plan.k, (j + 1) * plan.k)
                weighted = [weigh(hidden[r], chunks[r]) for r in rows]
                embedded[text] = (np.concatenate(weighted), None if pooled is None else pooled[rows[0]])
            out.append(embedded)
        return out

    def encode(
        self, plan: TextPlan, per_prompt: int, options: SDXLOptions, height: int, width: int
    ) -> list[tuple[int, dict[str, np.ndarray]]]:
        """(first model call, U-Net text inputs) for each stretch of calls where the texts hold.

        Batch [uncond..., cond...] with guidance; one entry unless prompt editing changes a text.
        """
        embedded = self._embed(plan)
        n = len(plan.streams) // 2 if plan.cfg and not plan.zeros else len(plan.streams)
        time_ids = None
        if self.sdxl:
            pos_ids, neg_ids = self.time_ids(options, height, width)
            time_ids = np.stack([neg_ids] * n + [pos_ids] * n if plan.cfg else [pos_ids] * n)
        out = []
        built: dict[tuple, dict[str, np.ndarray]] = {}  # [a|b] alternates between two, not per call
        for start, texts in plan.segments():
            key = tuple(texts)
            if key not in built:
                built[key] = self._feeds(embedded, texts, plan.zeros, time_ids, per_prompt)
            out.append((start, built[key]))
        return out

    def _feeds(
        self,
        embedded: list[dict[str, tuple[np.ndarray, np.ndarray | None]]],
        texts: list[tuple[str, ...]],
        zeros: bool,
        time_ids: np.ndarray | None,
        per_prompt: int,
    ) -> dict[str, np.ndarray]:
        """The U-Net's text inputs for one text per stream and encoder."""
        emb = np.stack(
            [np.concatenate([e[t][0] for e, t in zip(embedded, row, strict=True)], -1) for row in texts]
        )
        feeds = {"encoder_hidden_states": emb}
        if self.sdxl:
            pooled = np.stack([embedded[-1][row[-1]][1] for row in texts])
            if zeros:
                emb = np.concatenate([np.zeros_like(emb), emb])
                pooled = np.concatenate([np.zeros_like(pooled), pooled])
            feeds = {"encoder_hidden_states": emb, "text_embeds": pooled, "time_ids": time_ids}
        if per_prompt > 1:  # prompt-major order
            feeds = {k: np.repeat(v, per_prompt, axis=0) for k, v in feeds.items()}
        return feeds
