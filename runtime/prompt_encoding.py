"""Prompt text -> token chunks, weights and a schedule, as AUTOMATIC1111 computes conditioning.

AUTOMATIC1111's default ("Original") emphasis, after its modules/sd_hijack_clip.py:

- the prompt is split into (text, weight) pieces (``sdlite.prompts.parse_prompt_attention``) and
  each piece tokenized on its own;
- tokens go into chunks of 75 (a text encoder with fewer positions: its length - 2); ``BREAK``
  closes the current chunk; a chunk that fills up within 20 tokens after a comma moves the words
  after that comma on to the next chunk whole;
- each chunk is [start] + tokens + [end], padded as the tokenizer pads (77 ids) and encoded on its
  own; its output rows are multiplied by their tokens' weights and the chunk is rescaled so that
  its mean equals the unweighted mean (``weigh``);
- a prompt's chunks are concatenated along the sequence (77 x k); every text of a call is padded
  with empty chunks to the same k, so that prompt and negative prompt fit one U-Net batch.

Prompt editing (``[from:to:when]``, ``[a|b]``, ``sdlite.prompts.prompt_schedule``) makes each
text a schedule over the model calls; ``TextPlan.segments`` says which texts apply from which
call on, so the loop swaps the conditioning between calls without any extra U-Net call.  The
rescaling is per prompt and per chunk (AUTOMATIC1111 takes the mean over its whole batch), so that
an image's conditioning depends on its own prompt only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rules
from .prompts import parse_prompt_attention, prompt_schedule, schedule_index
from .tokenizer import CLIPTokenizer

Schedule = list[tuple[int, str]]  # (last model call it applies to, 0-based, as A1111 counts; text)


@dataclass(frozen=True)
class Chunk:
    ids: tuple[int, ...]  # start, up to 75 tokens, end, padding: the tokenizer's model_max_length
    weights: tuple[float, ...]  # one per id (1.0 for start, end and padding)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


def chunk_tokens(tok: CLIPTokenizer) -> int:
    """Tokens per chunk: 75 for CLIP (77 with start and end); a smaller text encoder's own."""
    return min(rules.CHUNK_TOKENS, tok.model_max_length - 2)


def _close(tok: CLIPTokenizer, tokens: list[int], weights: list[float]) -> Chunk:
    pad = chunk_tokens(tok) - len(tokens)
    ids = (tok.bos_token_id, *tokens, tok.eos_token_id, *[tok.pad_token_id] * pad)
    return Chunk(ids, (1.0, *weights, *[1.0] * (pad + 1)))


def empty_chunk(tok: CLIPTokenizer) -> Chunk:
    return _close(tok, [], [])


def chunk_prompt(tok: CLIPTokenizer, text: str, field: str = "prompt") -> list[Chunk]:
    """A prompt's chunks (at least one), by AUTOMATIC1111's rules (module docstring)."""
    parsed = parse_prompt_attention(text, field=field)
    size, backtrack = chunk_tokens(tok), rules.COMMA_BACKTRACK
    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    comma = -1  # position of the current chunk's last comma
    for piece_ids, (piece, weight) in zip(tok.tokens([p for p, _ in parsed]), parsed, strict=True):
        if piece == "BREAK" and weight == -1.0:
            chunks.append(_close(tok, tokens, weights))
            tokens, weights, comma = [], [], -1
            continue
        for token in piece_ids:
            if token == tok.comma_token_id:
                comma = len(tokens)
            elif len(tokens) == size and comma != -1 and size - comma <= backtrack:
                cut = comma + 1  # the words after the comma go on to the next chunk together
                chunks.append(_close(tok, tokens[:cut], weights[:cut]))
                tokens, weights, comma = tokens[cut:], weights[cut:], -1
            if len(tokens) == size:
                chunks.append(_close(tok, tokens, weights))
                tokens, weights, comma = [], [], -1
            ids = tok.expansions.get(token, (token,))  # an embedding's vectors stay in one chunk
            if len(tokens) + len(ids) > size:
                chunks.append(_close(tok, tokens, weights))
                tokens, weights, comma = [], [], -1
            tokens.extend(ids)
            weights.extend([weight] * len(ids))
    if tokens or not chunks:
        chunks.append(_close(tok, tokens, weights))
    return chunks


def weigh(z: np.ndarray, chunk: Chunk) -> np.ndarray:
    """One chunk's encoder output [length, D]: rows times their weights, rescaled to the unweighted mean."""
    if not chunk.weighted:
        return z
    mean = z.mean(dtype=np.float32)
    z = z * np.asarray(chunk.weights, dtype=np.float32)[:, None]
    return z * (mean / z.mean(dtype=np.float32))


@dataclass(frozen=True)
class Stream:
    """One row of the U-Net's text batch before images-per-prompt: a schedule per text encoder."""

    schedules: tuple[Schedule, ...]

    def at(self, call: int) -> tuple[str, ...]:
        return tuple(s[schedule_index(s, call)][1] for s in self.schedules)


@dataclass(frozen=True)
class TextPlan:
    """What a call encodes: every text's chunks per encoder, and the texts of each stream per call."""

    streams: list[Stream]  # [negatives..., prompts...] with guidance (none when zeroed), else prompts
    chunks: list[dict[str, list[Chunk]]]  # per encoder: text -> its chunks
    k: int  # chunks per text, after padding with empty chunks
    calls: int  # model calls in the loop
    zeros: bool  # SDXL: unconditional embeddings are zeros (force_zeros_for_empty_prompt)
    cfg: bool  # the U-Net batch has an unconditional half

    def segments(self) -> list[tuple[int, list[tuple[str, ...]]]]:
        """(first model call, each stream's texts) for every call where some text changes."""
        out: list[tuple[int, list[tuple[str, ...]]]] = []
        for call in range(self.calls):
            texts = [s.at(call) for s in self.streams]
            if not out or texts != out[-1][1]:
                out.append((call, texts))
        return out


def plan_texts(
    tokenizers: list[CLIPTokenizer],
    fields: list[list[tuple[str, str]]],
    calls: int,
    zeros: bool,
    cfg: bool,
    limit: int = rules.MAX_PROMPT_CHUNKS,
) -> TextPlan:
    """``fields[row][encoder]`` = (field name, text as written) -> the plan, every chunk count checked."""
    chunks: list[dict[str, list[Chunk]]] = [{} for _ in tokenizers]
    streams = []
    for row in fields:
        schedules = []
        for e, (tok, (field, text)) in enumerate(zip(tokenizers, row, strict=True)):
            schedule = prompt_schedule(text, calls, field=field)
            for _, plain in schedule:
                if plain not in chunks[e]:
                    chunks[e][plain] = chunk_prompt(tok, plain, field)
                    size = chunk_tokens(tok)
                    # The limit counts 75-token chunks: a smaller text encoder gets as many tokens.
                    rules.check_chunks(field, len(chunks[e][plain]), limit * rules.CHUNK_TOKENS // size, size)
            schedules.append(schedule)
        streams.append(Stream(tuple(schedules)))
    k = max((len(c) for per_encoder in chunks for c in per_encoder.values()), default=1)
    return TextPlan(streams, chunks, k, calls, zeros, cfg)
