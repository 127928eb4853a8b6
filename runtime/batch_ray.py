"""``sdlite batch --engine ray``: the groups of a batch job run on a Ray Data actor pool.

The driver (``sdlite.batch``) parses the job, decides what is left to do, and writes every PNG
and manifest line as results stream back, so input checks, grouping, resume and the manifest are
the local engine's.  Here: one dataset row per group (one Pipeline call); ``map_batches`` over a
fixed pool of ``--ray-workers`` actors, each loading the Pipeline once and running
``sdlite.batch_engine.run_isolated``; the pixels come back as uint8 arrays.  The model folder must be at
the same path on every node (a shared file system, or copied there beforehand).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .batch_engine import Engine, load_pipeline, run_isolated
from .batch_items import Item
from .batch_manifest import GroupResult

GPU_PROVIDERS = ("cuda", "rocm", "tensorrt")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] part of the extra)
    except ImportError as err:
        raise ValueError(
            f"--engine ray needs the ray extra: pip install 'sdlite[ray]' (importing ray failed: {err})"
        ) from None
    return ray


def gpus_per_worker(args: argparse.Namespace) -> float:
    """--ray-gpus-per-worker, else 1 for a GPU --provider (Ray then places one actor per GPU)."""
    if args.ray_gpus_per_worker is not None:
        return float(args.ray_gpus_per_worker)
    provider = (args.provider or "").lower()
    return 1.0 if any(name in provider for name in GPU_PROVIDERS) else 0.0


class PipelineActor:
    """A Ray Data callable class: loads the model once, then runs one group per row."""

    def __init__(
        self,
        model: str,
        provider: str | None,
        threads: int | None,
        max_pixels: int | None = None,
        embeddings_dir: str | None = None,
    ) -> None:
        self.pipe = load_pipeline(model, provider, threads, max_pixels, embeddings_dir)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results = []
        for text in batch["group"]:
            items = [Item.from_json(d) for d in json.loads(str(text))]
            # Pickled: pixels of varying sizes and nested timings do not fit an Arrow column.
            results.append(pickle.dumps(run_isolated(self.pipe, items)))  # a list of GroupResult
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"result": out}


def engine(args: argparse.Namespace, model: Path) -> Engine:
    """The Ray engine for ``sdlite.batch``; fails here (before any work) without the extra."""
    ray = _import_ray()
    gpus = gpus_per_worker(args)

    def run_groups(groups: list[list[Item]]) -> Iterator[GroupResult]:
        if args.ray_address:
            ray.init(address=args.ray_address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=args.ray_num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the driver's bar counts images
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset INFO lines
            rows = [{"group": json.dumps([it.to_json() for it in g])} for g in groups]
            # One block per group: results stream back group by group, as soon as each is done.
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.map_batches(
                PipelineActor,
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=args.ray_workers),
                fn_constructor_kwargs={
                    "model": str(model.resolve()),
                    "provider": args.provider,
                    "threads": args.threads,
                    "max_pixels": args.max_pixels,
                    "embeddings_dir": args.embeddings_dir,
                },
                num_cpus=1,
                num_gpus=gpus,
            )
            for row in ds.iter_rows():
                yield from pickle.loads(row["result"])
        finally:
            ray.shutdown()

    return run_groups
