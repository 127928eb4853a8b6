"""Running a batch job's groups: one Pipeline call per group, locally or inside each Ray actor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .batch_items import Item
from .batch_manifest import GroupResult
from .networks import EmbeddingLibrary, LoraLibrary, written_parameters
from .prompts import parse_extra_networks
from .samplers.names import normalize

Engine = Callable[[list[list[Item]]], Iterator[GroupResult]]


def run_group(pipe: Any, items: list[Item]) -> GroupResult:
    """One Pipeline call for a group; an exception becomes the group's error, not the job's."""
    import numpy as np

    p = items[0].params
    # On the preset's own sampler, None lets the Pipeline add the preset's sampler options
    # (Turbo: trailing spacing) by its one rule, as it does for a call that names no sampler.
    sampler = None if normalize(p["sampler"]) == normalize(pipe.preset.sampler) else p["sampler"]
    # The prompts as the model reads them: <lora:...> tags out (they made params["loras"]).
    sent = [(_untagged(it.params["prompt"]), _untagged(it.params["negative_prompt"] or "")) for it in items]
    try:
        LoraLibrary().load(pipe, {n: Path(f) for n, f in items[0].files.items()})
        out = pipe(
            [prompt for prompt, _ in sent],
            negative_prompt=[negative for _, negative in sent],
            loras=p.get("loras"),
            vae_tiling=p.get("vae_tiling"),
            vae_tile_size=p.get("vae_tile_size"),
            num_inference_steps=p["steps"],
            guidance_scale=p["guidance"],
            height=p["height"],
            width=p["width"],
            sampler=sampler,
            seed=[it.params["seed"] for it in items],
        )
    except Exception as err:  # recorded per item; the job goes on with the next group
        return GroupResult(items, error=f"{type(err).__name__}: {err}")
    texts = [
        written_parameters(text, sent[i], (it.params["prompt"], it.params["negative_prompt"]))
        for i, (it, text) in enumerate(zip(items, out.parameters, strict=True))
    ]
    return GroupResult(items, [np.asarray(im) for im in out.images], texts, dict(out.timings))


def _untagged(text: str) -> str:
    return parse_extra_networks(text)[0]


def run_isolated(pipe: Any, items: list[Item]) -> list[GroupResult]:
    """The group in one call; if that fails, each item alone, so that an item that cannot run
    fails by itself and its group-mates still get their images (the same pixels: an image does
    not depend on its batch)."""
    result = run_group(pipe, items)
    if result.error is None or len(items) == 1:
        return [result]
    return [run_group(pipe, [it]) for it in items]


def load_pipeline(
    model: Path | str,
    provider: str | None,
    threads: int | None,
    max_pixels: int | None = None,
    embeddings_dir: str | None = None,
) -> Any:
    """The job's Pipeline: ``max_pixels`` its budget per image (None: its family's), every
    textual inversion of ``embeddings_dir`` loaded (those made for another model are skipped)."""
    from .pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model, provider=provider, num_threads=threads)
    if max_pixels is not None:
        pipe.max_pixels = max_pixels
    if embeddings_dir is not None:
        EmbeddingLibrary(embeddings_dir).load_all(pipe)
    return pipe


def local_engine(
    model: Path,
    provider: str | None,
    threads: int | None,
    max_pixels: int | None = None,
    embeddings_dir: str | None = None,
) -> Engine:
    """Groups run one after the other on a Pipeline loaded in this process (on first use)."""

    def run_groups(groups: list[list[Item]]) -> Iterator[GroupResult]:
        pipe = load_pipeline(model, provider, threads, max_pixels, embeddings_dir)
        for g in groups:
            yield from run_isolated(pipe, g)

    return run_groups
