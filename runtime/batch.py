"""``sdlite batch``: resumable batch jobs; the driver shared by the local and the Ray engine.

Modules: ``batch_items`` (job lines -> items), ``batch_manifest`` (the output folder),
``batch_engine`` (one Pipeline call per group), ``batch_ray`` (the Ray engine).

Input, ``JOB.jsonl``: one JSON object per line; blank lines are skipped.  Keys::

    {"id"?: str, "prompt": str, "negative_prompt"?: str, "seed"?: int, "steps"?: int,
     "guidance"?: number, "sampler"?: str, "width"?: int, "height"?: int,
     "loras"?: {name or path: weight}, "vae_tiling"?: bool | null, "vae_tile_size"?: int}

LoRAs (AUTOMATIC1111's extra networks, ``sdlite.networks``): ``loras`` names files in
``--lora-dir`` (by stem, recursively) or gives .safetensors paths; ``<lora:NAME:WEIGHT>`` tags in
the prompt or negative prompt name files in ``--lora-dir`` too and are removed from the text the
model reads (the PNG's parameters keep them).  Weights of one name add up.  A name means one file
for the whole job.  Items with different LoRA sets never share a U-Net call (a set is merged into
the weights of the whole call).  ``--embeddings-dir``: every textual inversion there is loaded
under its file's stem.

A missing key takes the command-line default (``--steps`` etc.), else the model's preset
(``sdlite info`` shows it: SD 20 UniPC steps at guidance 7.5, SD-Turbo 1 step, LCM 4 ...; size:
the model's).  The preset's sampler options (Turbo: trailing spacing) apply to every item whose
sampler is the preset's.  Every value is checked by the rules the CLI, the server and the
Python API share (``sdlite.rules``: ranges, size multiple, pixel budget, prompt text).  A missing
``id`` becomes ``line-NNNN`` (the 1-based line number), so give ids to jobs that will be edited
and resumed.  A missing ``seed`` is derived from the id (the first 4 bytes of
``sha256("sdlite-batch:" + id)``), so a resumed or repeated job regenerates the same image.
An id names the output file: it must be non-empty, at most 200 bytes in UTF-8
(``rules.MAX_NAME_BYTES``: file systems count bytes), without path separators, control
characters or lone surrogates, and must not start with ``.``.  A later line repeating an id is
an error.  ``--max-pixels`` sets the largest image area (default: the model family's).

A bad line fails alone: whatever a line holds (not JSON, JSON nested 100,000 deep, a lone
surrogate in any text, a bad value), it is recorded as an error naming the key, and every other
line runs as if it were not there.  If a group's Pipeline call fails, its items are run one by
one, so only the item that cannot run fails.

Output, in ``--out DIR``: ``<id>.png`` (with AUTOMATIC1111's ``parameters`` chunk) and
``manifest.jsonl``, one JSON object per finished item, appended, flushed and fsynced after its
PNG is renamed into place and fsynced::

    {"id": str | null, "line": int, "status": "ok" | "error", "error": str | null,
     "parameters": {prompt, negative_prompt, seed, steps, guidance, sampler, width, height,
                    loras?, vae_tiling?, vae_tile_size?} | null,
     "seed": int | null, "timings": {...} | null, "png": "<id>.png" | null,
     "png_sha256": str (ok only), "input_sha256": str (input errors only),
     "finished_at": ISO 8601 UTC}

The manifest is ASCII JSON (any text, a lone surrogate included, is written escaped); an error's
text is cut to 2000 characters.

``timings``: images sharing a U-Net batch share every model call, so each gets the batch's
seconds (``text_encoder``, ``unet``, ``vae``, ``total``) divided by ``batch_images``, the batch's
image count; ``save`` is that image's own PNG write.

Resume: rerunning the same command skips an item whose latest manifest line is ``ok`` with the
same parameters and whose PNG is the one recorded (its ``png_sha256``; for records without one,
a PNG that decodes to its end): a truncated or replaced PNG is generated again. Items that
failed while generating are retried; a line that failed input validation (not JSON, unknown
keys, bad values, duplicate id) is recorded once and not again while the line's text is
unchanged (``input_sha256``). A torn last manifest line (``kill -9`` mid-write) is cut off on
start, and so are leftover temporary PNGs (``.<id>.png.<hex>.tmp``). The latest line for an id
is its state. One job at a time per folder: the manifest is locked (``flock``; not on Windows).

Exit status: 0 when every line of the job is ``ok``, otherwise the number of lines that are
errors (input or generation, recorded in this run or an earlier one), at most 100; 2 also for
bad arguments, reported before any model loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import rules
from .arg_types import finite_number, nonneg_number, positive_int
from .batch_engine import Engine, local_engine
from .batch_items import Defaults, InputError, Item, group, parse_job
from .batch_manifest import Manifest, is_done, remove_temp_pngs, write_results
from .errors import UsageError
from .models_dir import model_path
from .networks import LoraLibrary

MAX_EXIT = 100

# --- command line -----------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "batch",
        help="run a JSONL batch job (resumable)",
        description="Generate one PNG per line of JOB.jsonl into --out, grouping compatible lines "
        "(same size, steps, sampler, guidance, LoRA set, VAE tiles) into one U-Net batch. Each line: "
        '{"id"?, "prompt", "negative_prompt"?, "seed"?, "steps"?, "guidance"?, "sampler"?, '
        '"width"?, "height"?, "loras"?, "vae_tiling"?, "vae_tile_size"?}; <lora:NAME:WEIGHT> tags in '
        "prompts name files in --lora-dir. Rerunning the same command resumes: finished items are skipped.",
        epilog="Exit status: 0 when every line is ok; otherwise the number of failed lines (input "
        "errors and generation errors, see OUT/manifest.jsonl), at most 100; 2 also for bad "
        "arguments (nothing is generated).",
    )
    b.add_argument("job", metavar="JOB.jsonl", help="the job: one JSON object per line")
    b.add_argument("--model", metavar="DIR", default=None, help="model folder (default: the demo model)")
    b.add_argument("--out", metavar="DIR", required=True, help="output folder (created if missing)")
    b.add_argument(
        "--batch-size", type=positive_int, default=4, metavar="N", help="images per U-Net batch (default 4)"
    )
    b.add_argument("--engine", choices=("local", "ray"), default="local", help="(default local)")
    _add_line_defaults(b)
    b.add_argument(
        "--provider",
        default=None,
        metavar="NAME",
        help="cpu, cuda, rocm, dml, coreml (default: best available)",
    )
    b.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads per pipeline (default: ORT's)",
    )
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b.add_argument(
        "--lora-dir", metavar="DIR", help="folder of LoRAs named by lines' loras and <lora:...> tags"
    )
    b.add_argument("--embeddings-dir", metavar="DIR", help="load every textual inversion of this folder")
    _add_ray_options(b.add_argument_group("ray engine"))


def _add_line_defaults(b: argparse.ArgumentParser) -> None:
    """What a job line that leaves a key out gets (else the model's preset and size)."""
    b.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="default sampling steps (default: preset's)",
    )
    b.add_argument(
        "--guidance",
        type=finite_number,
        default=None,
        metavar="X",
        help="default guidance (default: preset's)",
    )
    b.add_argument(
        "--sampler", default=None, metavar="NAME", help="default sampler (default: the model preset's)"
    )
    b.add_argument(
        "--width", type=positive_int, default=None, metavar="PX", help="default width (default: model's)"
    )
    b.add_argument(
        "--height", type=positive_int, default=None, metavar="PX", help="default height (default: model's)"
    )
    b.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        metavar="N",
        help="largest image area, width x height; a line over it fails (default: the model family's, "
        f"SD {rules.max_pixels('sd')}, SDXL {rules.max_pixels('sdxl')})",
    )


def _add_ray_options(r: Any) -> None:
    r.add_argument(
        "--ray-address", default=None, metavar="ADDR", help="cluster to join (default: start a local one)"
    )
    r.add_argument(
        "--ray-num-cpus",
        type=positive_int,
        default=2,
        metavar="N",
        help="CPUs of the local instance started without --ray-address (default 2)",
    )
    r.add_argument(
        "--ray-workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="actors, each loads the model (default 1)",
    )
    r.add_argument(
        "--ray-gpus-per-worker",
        type=nonneg_number,
        default=None,
        metavar="G",
        help="GPUs per actor (default: 1 with --provider cuda/rocm/tensorrt, else 0)",
    )


# --- the model's defaults and rules, read from its folder (the driver of a Ray job loads no graph)


def folder_preset(folder: Any) -> rules.Preset:
    """The model's preset from its configs alone: the U-Net inputs its config implies (the Pipeline
    reads them from the graph; the driver of a Ray job loads no graph)."""
    from .conditioning import SDXL_INPUTS
    from .graph import UNET_INPUTS
    from .lcm import TIMESTEP_COND
    from .presets import detect

    unet = folder.configs.get("unet", {})
    inputs = set(UNET_INPUTS)
    if unet.get("time_cond_proj_dim"):
        inputs.add(TIMESTEP_COND)
    if unet.get("addition_embed_type") == "text_time":
        inputs |= set(SDXL_INPUTS)
    return detect(folder.path, inputs, folder.scheduler_config, folder.model_index)


def defaults_for(args: argparse.Namespace, model: Path) -> Defaults:
    """The job's defaults (flags, else the model's preset and size), each flag checked by its rule."""
    from .folder import load_folder

    folder = load_folder(model)
    preset = folder_preset(folder)
    factor = folder.vae_factor or rules.VAE_FACTOR
    multiple = rules.size_multiple(factor, folder.unet_downsampling)
    native = folder.unet_sample_size * factor if folder.unet_sample_size else None
    d = Defaults(
        preset.steps,
        preset.guidance,
        preset.sampler,
        size_multiple=multiple,
        scheduler_config=folder.scheduler_config,
        max_pixels=args.max_pixels or rules.max_pixels("sdxl" if folder.is_sdxl else "sd"),
        vae_factor=factor,
    )
    if args.steps is not None:
        d.steps = rules.check_int("--steps", args.steps, 1, rules.MAX_STEPS)
    if args.guidance is not None:
        d.guidance = rules.check_float("--guidance", args.guidance, *rules.GUIDANCE_RANGE)
    if args.sampler is not None:
        try:
            d.sampler = rules.check_sampler(args.sampler, None, d.scheduler_config)
        except rules.RuleError as err:
            raise rules.RuleError("--sampler", err.allowed, err.value) from None
    for key in ("width", "height"):
        value = native if getattr(args, key) is None else getattr(args, key)
        if value is not None:
            setattr(d, key, rules.check_size(f"--{key}", value, multiple, vae_factor=factor))
    if d.width is not None and d.height is not None:
        rules.check_pixels(d.width, d.height, 1, d.max_pixels)
    d.loras = LoraLibrary(_folder("--lora-dir", args.lora_dir) if args.lora_dir else None)
    return d


def _folder(flag: str, path: str) -> Path:
    if not Path(path).is_dir():
        raise UsageError(f"{flag}: folder {path!r} does not exist")
    return Path(path).resolve()


def _check_args(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    job = Path(args.job)
    if not job.is_file():
        raise UsageError(
            f"job file {str(job)!r} does not exist" if not job.exists() else f"{str(job)!r} is not a file"
        )
    if not os.access(job, os.R_OK):
        raise UsageError(f"job file {str(job)!r} is not readable")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    if args.embeddings_dir is not None:  # absolute: Ray workers' cwd differs
        args.embeddings_dir = str(_folder("--embeddings-dir", args.embeddings_dir))
    return job, out, model_path(args.model)


# --- the driver -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    job, out, model = _check_args(args)
    defaults = defaults_for(args, model)
    if args.engine == "ray":
        from . import batch_ray

        engine = batch_ray.engine(args, model)  # checks the extra is installed before any work
    else:
        engine = local_engine(model, args.provider, args.threads, args.max_pixels, args.embeddings_dir)
    items, input_errors = parse_job(job, defaults)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    remove_temp_pngs(out)
    try:
        return _execute(items, input_errors, out, manifest, engine, args)
    finally:
        manifest.close()


def _generate(
    pending: list[Item], out: Path, manifest: Manifest, engine: Engine, args: argparse.Namespace
) -> int:
    """Runs the pending items; returns how many failed."""
    failed = 0
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), unit="img", file=sys.stderr, desc="batch", dynamic_ncols=True)
    try:
        for result in engine(group(pending, args.batch_size)):
            failed += write_results(result, out, manifest)
            if bar is not None:
                bar.update(len(result.items))
    finally:
        if bar is not None:
            bar.close()
    return failed


def _execute(
    items: list[Item],
    input_errors: list[InputError],
    out: Path,
    manifest: Manifest,
    engine: Engine,
    args: argparse.Namespace,
) -> int:
    manifest.record_input_errors(input_errors)
    latest = manifest.latest()
    pending = [it for it in items if not is_done(it, latest.get(it.id), out)]
    skipped = len(items) - len(pending)
    failed = _generate(pending, out, manifest, engine, args) if pending else 0
    n_failed = failed + len(input_errors)
    print(
        f"{len(items) - failed} of {len(items) + len(input_errors)} lines ok "
        f"({len(pending) - failed} generated, {skipped} already done), {n_failed} failed; "
        f"manifest: {manifest.path}",
        file=sys.stderr,
    )
    return min(n_failed, MAX_EXIT)
