"""``sdlite batch``: resumable batch jobs (the parts shared by the local and the Ray engine).

Input, ``JOB.jsonl``: one JSON object per line; blank lines are skipped.  Keys::

    {"id"?: str, "prompt": str, "negative_prompt"?: str, "seed"?: int, "steps"?: int,
     "guidance"?: number, "sampler"?: str, "width"?: int, "height"?: int}

A missing key takes the command-line default (``--steps`` etc.), else the model's preset
(``sdlite info`` shows it: SD 20 UniPC steps at guidance 7.5, SD-Turbo 1 step, LCM 4 ...; size:
the model's).  The preset's sampler options (Turbo: trailing spacing) apply to every item whose
sampler is the preset's.  A missing
``id`` becomes ``line-NNNN`` (the 1-based line number), so give ids to jobs that will be edited
and resumed.  A missing ``seed`` is derived from the id (the first 4 bytes of
``sha256("sdlite-batch:" + id)``), so a resumed or repeated job regenerates the same image.
An id names the output file: it must be non-empty, at most 200 characters, without path
separators or control characters, and must not start with ``.``.  A later line repeating an id
is an error.

Output, in ``--out DIR``: ``<id>.png`` (with AUTOMATIC1111's ``parameters`` chunk) and
``manifest.jsonl``, one JSON object per finished item, appended, flushed and fsynced after its
PNG is renamed into place and fsynced::

    {"id": str | null, "line": int, "status": "ok" | "error", "error": str | null,
     "parameters": {prompt, negative_prompt, seed, steps, guidance, sampler, width, height} | null,
     "seed": int | null, "timings": {...} | null, "png": "<id>.png" | null,
     "input_sha256": str (input errors only), "finished_at": ISO 8601 UTC}

``timings``: images sharing a U-Net batch share every model call, so each gets the batch's
seconds (``text_encoder``, ``unet``, ``vae``, ``total``) divided by ``batch_images``, the batch's
image count; ``save`` is that image's own PNG write.

Resume: rerunning the same command skips an item whose latest manifest line is ``ok`` with the
same parameters and whose PNG exists.  Items that failed while generating are retried; a line
that failed input validation (not JSON, unknown keys, bad values, duplicate id) is recorded once
and not again while the line's text is unchanged (``input_sha256``).  A torn last manifest line
(``kill -9`` mid-write) is cut off on start, and so are leftover temporary PNGs
(``.<id>.png.<hex>.tmp``).  The latest line for an id is its state.  One job at a time per
folder: the manifest is locked (``flock``; not on Windows).

Exit status: 0 when every line of the job is ``ok``, otherwise the number of lines that are
errors (input or generation, recorded in this run or an earlier one), at most 100; 2 also for
bad arguments, reported before any model loads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import numbers
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
KEYS = ("id", "prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "width", "height")
MAX_SEED = 2**64 - 1  # as the Pipeline's
MAX_STEPS = 10_000
MAX_PIXELS = 4096 * 4096
MAX_ID = 200  # file names are at most 255 bytes on common file systems: leave room for ".png" + temp
MAX_EXIT = 100
_TEMP_PNG = re.compile(r"\..+\.png\.[0-9a-f]{8}\.tmp")


# --- command line -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "batch",
        help="run a JSONL batch job (resumable)",
        description="Generate one PNG per line of JOB.jsonl into --out, grouping compatible lines "
        "(same size, steps, sampler, guidance) into one U-Net batch. Each line: "
        '{"id"?, "prompt", "negative_prompt"?, "seed"?, "steps"?, "guidance"?, "sampler"?, '
        '"width"?, "height"?}. Rerunning the same command resumes: finished items are skipped.',
        epilog="Exit status: 0 when every line is ok; otherwise the number of failed lines (input "
        "errors and generation errors, see OUT/manifest.jsonl), at most 100; 2 also for bad "
        "arguments (nothing is generated).",
    )
    b.add_argument("job", metavar="JOB.jsonl", help="the job: one JSON object per line")
    b.add_argument("--model", metavar="DIR", default=None, help="model folder (default: the demo model)")
    b.add_argument("--out", metavar="DIR", required=True, help="output folder (created if missing)")
    b.add_argument(
        "--batch-size", type=_positive_int, default=4, metavar="N", help="images per U-Net batch (default 4)"
    )
    b.add_argument("--engine", choices=("local", "ray"), default="local", help="(default local)")
    b.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="default sampling steps (default: preset's)",
    )
    b.add_argument(
        "--guidance",
        type=_finite_float,
        default=None,
        metavar="X",
        help="default guidance (default: preset's)",
    )
    b.add_argument(
        "--sampler", default=None, metavar="NAME", help="default sampler (default: the model preset's)"
    )
    b.add_argument(
        "--width", type=_positive_int, default=None, metavar="PX", help="default width (default: model's)"
    )
    b.add_argument(
        "--height", type=_positive_int, default=None, metavar="PX", help="default height (default: model's)"
    )
    b.add_argument(
        "--provider",
        default=None,
        metavar="NAME",
        help="cpu, cuda, rocm, dml, coreml (default: best available)",
    )
    b.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads per pipeline (default: ORT's)",
    )
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    r = b.add_argument_group("ray engine")
    r.add_argument(
        "--ray-address", default=None, metavar="ADDR", help="cluster to join (default: start a local one)"
    )
    r.add_argument(
        "--ray-num-cpus",
        type=_positive_int,
        default=2,
        metavar="N",
        help="CPUs of the local instance started without --ray-address (default 2)",
    )
    r.add_argument(
        "--ray-workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="actors, each loads the model (default 1)",
    )
    r.add_argument(
        "--ray-gpus-per-worker",
        type=_nonneg_float,
        default=None,
        metavar="G",
        help="GPUs per actor (default: 1 with --provider cuda/rocm/tensorrt, else 0)",
    )


# --- job items --------------------------------------------------------------------------------


@dataclass
class Item:
    """One valid job line, its settings resolved."""

    id: str
    line: int
    params: dict[str, Any]  # prompt, negative_prompt, seed, steps, guidance, sampler, width, height

    @property
    def group_key(self) -> tuple:
        p = self.params
        return (p["width"], p["height"], p["steps"], p["sampler"], p["guidance"])

    @property
    def png(self) -> str:
        return f"{self.id}.png"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "line": self.line, "params": self.params}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Item:
        return cls(d["id"], d["line"], d["params"])


@dataclass
class InputError:
    """A job line that cannot become an item: recorded in the manifest, never generated."""

    line: int
    error: str
    sha256: str
    id: str | None = None


@dataclass
class Defaults:
    steps: int = 20
    guidance: float = 7.5
    sampler: str = "unipc"
    width: int | None = None
    height: int | None = None
    size_multiple: int = 8  # the VAE's factor x the U-Net's downsampling
    check_sampler: Callable[[str], None] | None = None


def line_id(line: int) -> str:
    return f"line-{line:04d}"


def derived_seed(item_id: str) -> int:
    """A stable 32-bit seed for an item without one (32 bits: what A1111 and most UIs show)."""
    return int.from_bytes(hashlib.sha256(f"sdlite-batch:{item_id}".encode()).digest()[:4], "big")


def check_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"id must be a string, got {value!r}")
    if not value or len(value) > MAX_ID:
        raise ValueError(f"id must be 1 to {MAX_ID} characters, got {len(value)}")
    bad = [c for c in value if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    if bad:
        raise ValueError(f"id {value!r} must not contain path separators or control characters")
    if value.startswith("."):
        # "." and ".." are folders, and names starting with "." are the temporary files' names.
        raise ValueError(f"id {value!r} must not start with '.'")
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _size(name: str, value: Any, factor: int) -> int:
    if not _is_int(value) or value <= 0 or value % factor:
        raise ValueError(
            f"{name} must be a positive multiple of {factor} (the VAE's factor x the U-Net's "
            f"downsampling), got {value!r}"
        )
    return int(value)


def resolve(obj: Any, line: int, d: Defaults) -> Item:
    """A parsed job line -> an Item; ValueError naming the key otherwise (as the Pipeline checks)."""
    if not isinstance(obj, dict):
        raise ValueError(f"a job line must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(KEYS)}")
    item_id = check_id(obj["id"]) if "id" in obj else line_id(line)
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(
            f"prompt must be a string, got {prompt!r}" if "prompt" in obj else "prompt is missing"
        )
    negative = obj.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"negative_prompt must be a string or null, got {negative!r}")
    seed = obj.get("seed")
    seed = derived_seed(item_id) if seed is None else _int_in("seed", seed, 0, MAX_SEED)
    steps = obj.get("steps")
    steps = d.steps if steps is None else _int_in("steps", steps, 1, MAX_STEPS)
    guidance = obj.get("guidance")
    if guidance is None:
        guidance = d.guidance
    elif isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance!r}")
    sampler = obj.get("sampler")
    if sampler is None:
        sampler = d.sampler
    elif not isinstance(sampler, str):
        raise ValueError(f"sampler must be a sampler name (string), got {sampler!r}")
    elif d.check_sampler is not None:
        d.check_sampler(sampler)
    sizes = {}
    for key in ("width", "height"):
        value = obj.get(key)
        if value is None:
            value = getattr(d, key)
            if value is None:
                raise ValueError(f"{key} is missing and the model folder does not say its size; pass --{key}")
        sizes[key] = _size(key, value, d.size_multiple)
    if sizes["width"] * sizes["height"] > MAX_PIXELS:
        raise ValueError(f"width x height = {sizes['width']}x{sizes['height']} is over {MAX_PIXELS} pixels")
    params = {
        "prompt": prompt,
        "negative_prompt": negative or None,
        "seed": seed,
        "steps": steps,
        "guidance": float(guidance),
        "sampler": sampler,
        "width": sizes["width"],
        "height": sizes["height"],
    }
    return Item(item_id, line, params)


def parse_job(path: Path, d: Defaults) -> tuple[list[Item], list[InputError]]:
    """Read and check every line; bad lines become InputErrors, the rest Items (in file order)."""
    items: list[Item] = []
    errors: list[InputError] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    for n, raw in enumerate(raw_lines, start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        digest = hashlib.sha256(raw).hexdigest()
        obj: Any = None
        try:
            obj = json.loads(raw.decode("utf-8"))
            item = resolve(obj, n, d)
        except UnicodeDecodeError as err:
            errors.append(InputError(n, f"line {n} is not UTF-8: {err}", digest))
            continue
        except json.JSONDecodeError as err:
            errors.append(InputError(n, f"line {n} is not JSON: {err}", digest))
            continue
        except ValueError as err:
            given = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
            errors.append(InputError(n, f"line {n}: {err}", digest, given))
            continue
        if item.id in seen:
            msg = f"line {n}: duplicate id {item.id!r} (first on line {seen[item.id]})"
            errors.append(InputError(n, msg, digest, item.id))
            continue
        seen[item.id] = n
        items.append(item)
    return items, errors


def group(items: Iterable[Item], batch_size: int) -> list[list[Item]]:
    """Items with the same size, steps, sampler and guidance, in chunks of at most batch_size."""
    by_key: dict[tuple, list[Item]] = {}
    for it in items:
        by_key.setdefault(it.group_key, []).append(it)
    return [same[i : i + batch_size] for same in by_key.values() for i in range(0, len(same), batch_size)]


# --- generating one group (run by the local engine and inside each Ray actor) -----------------


@dataclass
class GroupResult:
    items: list[Item]
    pixels: list[Any] = field(default_factory=list)  # uint8 [H, W, 3] per item
    infotexts: list[str] = field(default_factory=list)  # A1111 parameters text per item
    timings: dict[str, float] = field(default_factory=dict)  # the whole call's
    error: str | None = None


def _preset_options(pipe: Any, sampler: str) -> dict[str, Any] | None:
    from .samplers.names import normalize

    preset = getattr(pipe, "preset", None)
    if preset is None or not preset.sampler_options or normalize(sampler) != normalize(preset.sampler):
        return None
    return dict(preset.sampler_options)


def run_group(pipe: Any, items: list[Item]) -> GroupResult:
    """One Pipeline call for a group; an exception becomes the group's error, not the job's."""
    import numpy as np

    p = items[0].params
    try:
        out = pipe(
            [it.params["prompt"] for it in items],
            negative_prompt=[it.params["negative_prompt"] or "" for it in items],
            num_inference_steps=p["steps"],
            guidance_scale=p["guidance"],
            height=p["height"],
            width=p["width"],
            sampler=p["sampler"],
            sampler_options=_preset_options(pipe, p["sampler"]),
            seed=[it.params["seed"] for it in items],
        )
    except Exception as err:  # recorded per item; the job goes on with the next group
        return GroupResult(items, error=f"{type(err).__name__}: {err}")
    return GroupResult(items, [np.asarray(im) for im in out.images], list(out.parameters), dict(out.timings))


# --- the output folder ------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # So that a rename survives a power loss; Windows cannot open folders and needs no such call.
    if os.name == "posix":
        _fsync_file(path)


class Manifest:
    """``OUT/manifest.jsonl``: read on start (a torn last line is cut off), then appended to."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.records: list[dict[str, Any]] = []
        self._file = open(self.path, "a+b")
        self._lock()
        self._file.seek(0)
        data = self._file.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # kill -9 while a line was written: drop the fragment, or the next line would join it.
            self._file.truncate(end)
            os.fsync(self._file.fileno())
        for raw in data[:end].splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self.records.append(rec)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; do not run two jobs on one folder
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise ValueError(f"--out: another sdlite batch is writing to {str(self.path.parent)!r}") from None

    def append(self, record: dict[str, Any]) -> None:
        record = {**record, "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        self._file.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._file.close()

    def latest(self) -> dict[str, dict[str, Any]]:
        """id -> its latest record (records of items; input errors without an id excluded)."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.records:
            if isinstance(rec.get("id"), str) and "input_sha256" not in rec:
                out[rec["id"]] = rec
        return out

    def input_errors(self) -> set[tuple[int, str]]:
        return {
            (rec.get("line"), rec["input_sha256"])
            for rec in self.records
            if isinstance(rec.get("input_sha256"), str)
        }


def _same_params(a: Any, b: dict[str, Any]) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def is_done(item: Item, rec: dict[str, Any] | None, out: Path) -> bool:
    if rec is None or rec.get("status") != "ok" or not _same_params(rec.get("parameters"), item.params):
        return False
    png = out / item.png
    return png.is_file() and png.stat().st_size > 0


def _item_record(item: Item, **fields: Any) -> dict[str, Any]:
    rec = {
        "id": item.id,
        "line": item.line,
        "status": "ok",
        "error": None,
        "parameters": item.params,
        "seed": item.params["seed"],
        "timings": None,
        "png": None,
    }
    rec.update(fields)
    return rec


def write_results(result: GroupResult, out: Path, manifest: Manifest) -> int:
    """PNGs, then their manifest lines; returns the number of failed items."""
    from PIL import Image

    from .images import save_png

    if result.error is not None:
        for it in result.items:
            manifest.append(_item_record(it, status="error", error=result.error))
        return len(result.items)
    n = len(result.items)
    share = {k: v / n for k, v in result.timings.items()}
    for it, px, text in zip(result.items, result.pixels, result.infotexts, strict=True):
        t0 = time.perf_counter()
        path = save_png(Image.fromarray(px), out / it.png, text)
        _fsync_file(path)
        _fsync_dir(out)
        timings = {**share, "batch_images": n, "save": time.perf_counter() - t0}
        manifest.append(_item_record(it, timings=timings, png=it.png))
    return 0


# --- the driver -------------------------------------------------------------------------------

Engine = Callable[[list[list[Item]]], Iterator[GroupResult]]


def _preset(folder: Any) -> Any:
    """The model's preset without loading its graphs: the U-Net's extra inputs read from its config
    (the Pipeline reads them from the graph; the driver of a Ray job never loads one)."""
    from .presets import detect

    unet = folder.configs.get("unet", {})
    inputs = {"sample", "timestep", "encoder_hidden_states"}
    if unet.get("time_cond_proj_dim"):
        inputs.add("timestep_cond")
    if unet.get("addition_embed_type") == "text_time":
        inputs |= {"text_embeds", "time_ids"}
    return detect(folder.path, inputs, folder.scheduler_config, folder.model_index)


def _defaults_for(args: argparse.Namespace, model: Path) -> Defaults:
    from .folder import load_folder
    from .samplers import make_scheduler
    from .samplers.names import normalize

    folder = load_folder(model)
    config = folder.scheduler_config
    checked: dict[str, str | None] = {}

    def check_sampler(name: str) -> None:
        key = normalize(name)
        if key not in checked:
            try:
                make_scheduler(name, config)
                checked[key] = None
            except ValueError as err:
                msg = str(err)
                if msg.startswith("unknown sampler"):
                    msg = f"unknown sampler {name!r} (see 'sdlite samplers' for the names)"
                checked[key] = f"sampler={name!r}: {msg}"
        if checked[key] is not None:
            raise ValueError(checked[key])

    factor = folder.vae_factor or 8
    size = folder.unet_sample_size * factor if folder.unet_sample_size else None
    multiple = factor * folder.unet_downsampling  # what the Pipeline accepts
    preset = _preset(folder)
    steps = preset.steps if args.steps is None else args.steps
    guidance = preset.guidance if args.guidance is None else args.guidance
    sampler = preset.sampler if args.sampler is None else args.sampler
    args.steps, args.guidance, args.sampler = steps, guidance, sampler
    d = Defaults(steps, guidance, sampler, None, None, multiple, check_sampler)
    _int_in("--steps", args.steps, 1, MAX_STEPS)
    try:
        check_sampler(args.sampler)
    except ValueError as err:
        raise ValueError(str(err).replace("sampler=", "--sampler ", 1)) from None
    for key in ("width", "height"):
        value = getattr(args, key)
        if value is not None or size is not None:
            setattr(d, key, _size(f"--{key}", size if value is None else value, multiple))
    return d


def _check_args(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    from .cli import UsageError, _default_model

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
    model = Path(args.model) if args.model else _default_model()
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    return job, out, model


def run(args: argparse.Namespace) -> int:
    job, out, model = _check_args(args)
    defaults = _defaults_for(args, model)
    if args.engine == "ray":
        from . import batch_ray

        engine = batch_ray.engine(args, model)  # checks the extra is installed before any work
    else:
        engine = _local_engine(args, model)
    items, input_errors = parse_job(job, defaults)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    for leftover in out.iterdir():
        # save_png's temporary files, left by a kill mid-write; ours: we hold the folder's lock.
        if _TEMP_PNG.fullmatch(leftover.name):
            leftover.unlink(missing_ok=True)
    try:
        return _execute(items, input_errors, out, manifest, engine, args)
    finally:
        manifest.close()


def _local_engine(args: argparse.Namespace, model: Path) -> Engine:
    def run_groups(groups: list[list[Item]]) -> Iterator[GroupResult]:
        from .pipeline import Pipeline

        pipe = Pipeline.from_pretrained(model, provider=args.provider, num_threads=args.threads)
        for g in groups:
            yield run_group(pipe, g)

    return run_groups


def _execute(
    items: list[Item],
    input_errors: list[InputError],
    out: Path,
    manifest: Manifest,
    engine: Engine,
    args: argparse.Namespace,
) -> int:
    recorded = manifest.input_errors()
    for e in input_errors:
        if (e.line, e.sha256) not in recorded:
            manifest.append(
                {
                    "id": e.id,
                    "line": e.line,
                    "status": "error",
                    "error": e.error,
                    "parameters": None,
                    "seed": None,
                    "timings": None,
                    "png": None,
                    "input_sha256": e.sha256,
                }
            )
    latest = manifest.latest()
    pending = [it for it in items if not is_done(it, latest.get(it.id), out)]
    skipped = len(items) - len(pending)
    failed = 0
    if pending:
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
    n_failed = failed + len(input_errors)
    print(
        f"{len(items) - failed} of {len(items) + len(input_errors)} lines ok "
        f"({len(pending) - failed} generated, {skipped} already done), {n_failed} failed; "
        f"manifest: {manifest.path}",
        file=sys.stderr,
    )
    return min(n_failed, MAX_EXIT)
