"""LoRAs and embeddings in the server: ``--lora-dir`` and ``--embeddings-dir``, A1111's routes.

``<lora:NAME:WEIGHT>`` tags in a request's prompt or negative prompt are resolved by
``sdlite.networks`` before the job joins the queue (an unknown name is a 422 naming the field),
and the job carries the set in its ``BatchKey``: sdlite merges a set into the model's weights
for a whole call, so requests with different sets never share one.  The worker activates the
set by passing ``loras=`` to the pipe.  Weights add up, as ``sdlite.networks`` adds a name
tagged twice: a LoRA in both prompts counts with the sum of its weights.  A tag names a file of
``--lora-dir`` (by stem or alias), never a path: a client may not make the server read its disk.
Without ``--lora-dir`` every LoRA tag is unknown (422).

Routes: ``GET /sdapi/v1/loras`` (A1111's list of {name, alias, path, metadata}),
``POST /sdapi/v1/refresh-loras`` (rescan the folder) and ``GET /sdapi/v1/embeddings`` (A1111's
{"loaded": ..., "skipped": ...}).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..networks import LORA_KINDS, EmbeddingLibrary, LoraLibrary, written_parameters
from ..prompts import parse_extra_networks
from ..rules import RuleError
from .batcher import Job, JobResult

NO_EMBEDDINGS = {"loaded": {}, "skipped": {}}


def _invalid(field: str, err: ValueError, text: str) -> RequestValidationError:
    """A 422 in FastAPI's shape for an error that names no rule (a bad tag weight, a bad file)."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": str(err), "input": text}]
    )


def _tags(text: str, field: str) -> list[Any]:
    """The extra-network tags of ``text``; a LoRA named by a path is refused here."""
    try:
        _, found = parse_extra_networks(text, field=field)
    except RuleError:
        raise
    except ValueError as err:  # a weight that is not a number
        raise _invalid(field, err, text) from None
    for net in found:
        if net.kind in LORA_KINDS and (
            "/" in net.name or "\\" in net.name or net.name.endswith(".safetensors")
        ):
            raise RuleError(field, "LoRA tags naming a file of --lora-dir by its name, not a path", net.name)
    return found


class Extras:
    """The server's LoRA and embedding folders (either may be None: not given)."""

    def __init__(
        self, pipe: Any, lora_dir: Path | None, embeddings_dir: Path | None, pipe_lock: threading.Lock
    ) -> None:
        self.pipe = pipe
        self.pipe_lock = pipe_lock  # the batcher's: a LoRA is registered on the pipe between calls
        self.index_lock = threading.Lock()  # a refresh rebuilds the index that resolving reads
        self.loras = LoraLibrary(lora_dir)  # None: no folder, every LoRA tag is unknown
        self.embeddings = EmbeddingLibrary(embeddings_dir) if embeddings_dir is not None else None
        if self.embeddings is not None:
            self.embeddings.load_all(pipe)  # before the server serves: no call runs yet

    async def apply(self, job: Job) -> Job:
        """``job`` with its prompts' LoRA tags taken out and their set in its key (422 if unknown)."""
        tags = _tags(job.prompts[0], "prompt") + _tags(job.negatives[0], "negative_prompt")
        if not tags:
            return job  # nothing to resolve: no lock, no thread
        loaded = set(self.pipe.lora_names)
        locked = any(net.kind in LORA_KINDS and net.name not in loaded for net in tags)
        resolve = self._resolve
        negative, neg_set = await asyncio.to_thread(resolve, job.negatives[0], "negative_prompt", locked)
        prompt, pos_set = await asyncio.to_thread(resolve, job.prompts[0], "prompt", locked)
        chosen = {name: pos_set.get(name, 0.0) + neg_set.get(name, 0.0) for name in {*pos_set, *neg_set}}
        loras = tuple(sorted((name, float(w)) for name, w in chosen.items() if w != 0))
        for name, weight in loras:  # each tag's weight is finite, but 1e308 twice is not
            if not math.isfinite(weight):
                raise RuleError("prompt", f"LoRA weights for {name!r} that add up to a finite number", weight)
        job.written = (job.prompts[0], job.negatives[0])
        job.prompts = [prompt] * job.size
        job.negatives = [negative] * job.size
        job.key = dataclasses.replace(job.key, loras=loras)
        return job

    @staticmethod
    def restore_tags(job: Job, result: JobResult) -> None:
        """The images' ``parameters`` with the prompts as sent, tags and all (as A1111 writes them)."""
        if job.written is not None:
            sent = (job.prompts[0], job.negatives[0] or None)
            written = (job.written[0], job.written[1] or None)
            result.parameters = [written_parameters(p, sent, written) for p in result.parameters]

    def _resolve(self, text: str, field: str, locked: bool) -> tuple[str, dict[str, float]]:
        try:
            with self.index_lock:
                if not locked:  # every LoRA is registered already: resolving only reads the pipe
                    return self.loras.resolve(self.pipe, text, field)
                with self.pipe_lock:  # registering one changes the pipe: never while it runs
                    return self.loras.resolve(self.pipe, text, field)
        except RuleError:
            raise
        except (ValueError, OSError) as err:  # a file that cannot be loaded: the client's tag named it
            raise _invalid(field, ValueError(str(err)), text) from None

    def notes(self) -> list[str]:
        """What the folders hold that is not used: repeated names, unreadable or unloadable files."""
        out = list(self.loras.notes)
        if self.embeddings is not None:
            out += self.embeddings.notes
            out += [f"embedding {name!r} not loaded: {err}" for name, err in self.embeddings.errors.items()]
            out += [
                f"embedding {name!r} skipped: made for another model family"
                for name in self.embeddings.skipped
            ]
        return out

    def lora_entries(self) -> list[dict[str, Any]]:
        return self.loras.entries()

    def refresh(self) -> str | None:
        """Read the LoRA folder again; what went wrong (the folder is gone), or None."""
        try:
            with self.index_lock:  # not the pipe's: a refresh need not wait for the running batch
                self.loras.refresh()
        except OSError as err:
            return f"cannot read the LoRA folder: {err}"
        return None

    def embedding_entries(self) -> dict[str, Any]:
        return NO_EMBEDDINGS if self.embeddings is None else self.embeddings.entries()


def add_extra_network_routes(app: FastAPI, extras: Extras) -> None:
    @app.get("/sdapi/v1/loras")
    async def loras() -> Any:
        return await asyncio.to_thread(extras.lora_entries)

    @app.post("/sdapi/v1/refresh-loras")
    async def refresh_loras() -> Any:
        problem = await asyncio.to_thread(extras.refresh)
        if problem is not None:  # the list stays as it was
            return JSONResponse({"detail": problem}, status_code=500)
        return None  # as A1111

    @app.get("/sdapi/v1/embeddings")
    async def embeddings() -> Any:
        return await asyncio.to_thread(extras.embedding_entries)
