"""A batch job's lines -> items: checked by the rules every entry point shares, then grouped.

Keys, defaults, ids and seeds are described in ``sdlite.batch``'s docstring.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rules
from .networks import LoraLibrary

KEYS = (
    "id",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "sampler",
    "width",
    "height",
    "loras",
    "vae_tiling",
    "vae_tile_size",
)
# loras, vae_tiling and vae_tile_size are left out of an item's params when not set, so that the
# records of manifests written before they existed still match (resume).
# An error's text quotes the bad value: keep a manifest line short whatever a line holds.
MAX_ERROR_CHARS = 2000


@dataclass
class Item:
    """One valid job line, its settings resolved."""

    id: str
    line: int
    params: dict[str, Any]  # prompt ... height, and loras, vae_tiling, vae_tile_size when set
    files: dict[str, str] = field(default_factory=dict)  # LoRA name -> file, for params["loras"]

    @property
    def group_key(self) -> tuple:
        """One Pipeline call per key: a LoRA set is merged into the weights of the whole call."""
        p = self.params
        loras = tuple(sorted(p.get("loras", {}).items()))
        tiles = (p.get("vae_tiling"), p.get("vae_tile_size"))
        return (p["width"], p["height"], p["steps"], p["sampler"], p["guidance"], loras, tiles)

    @property
    def png(self) -> str:
        return f"{self.id}.png"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "line": self.line, "params": self.params, "files": self.files}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Item:
        return cls(d["id"], d["line"], d["params"], d.get("files", {}))


@dataclass
class InputError:
    """A job line that cannot become an item: recorded in the manifest, never generated."""

    line: int
    error: str
    sha256: str
    id: str | None = None


@dataclass
class Defaults:
    """What a line leaves out, and the model's size rules (see ``sdlite.batch.defaults_for``)."""

    steps: int = 20
    guidance: float = 7.5
    sampler: str = "unipc"
    width: int | None = None
    height: int | None = None
    size_multiple: int = 8  # the VAE's factor x the U-Net's downsampling
    scheduler_config: dict[str, Any] | None = None  # the model's: what its samplers must take
    max_pixels: int = rules.max_pixels("sd")
    vae_factor: int | None = None  # named in the size rule's message when known
    loras: LoraLibrary = field(default_factory=LoraLibrary)  # where LoRA names and tags resolve
    lora_files: dict[str, str] = field(default_factory=dict)  # name -> file: one file per name per job


def line_id(line: int) -> str:
    return f"line-{line:04d}"


def derived_seed(item_id: str) -> int:
    """A stable 32-bit seed for an item without one (32 bits: what A1111 and most UIs show)."""
    return int.from_bytes(hashlib.sha256(f"sdlite-batch:{item_id}".encode()).digest()[:4], "big")


def check_id(value: Any) -> str:
    """An item's id names its PNG: the rule for file names (``sdlite.rules.check_file_name``)."""
    return rules.check_file_name("id", value)


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """At most ``limit`` characters; the middle goes (the rule's start and the value's end stay)."""
    if len(text) <= limit:
        return text
    half = (limit - len(f" ...[{len(text)} characters cut]... ")) // 2
    return f"{text[:half]} ...[{len(text) - 2 * half} characters cut]... {text[len(text) - half :]}"


def _texts(obj: dict[str, Any]) -> tuple[str, str | None]:
    if "prompt" not in obj:
        raise ValueError("prompt is missing")
    prompt = rules.check_text("prompt", obj["prompt"], rules.MAX_PROMPT_CHARS)
    negative = obj.get("negative_prompt")
    if negative is not None:
        negative = rules.check_text("negative_prompt", negative, rules.MAX_PROMPT_CHARS)
    return prompt, negative or None


def _sampling(obj: dict[str, Any], d: Defaults) -> tuple[int, float, str]:
    steps, guidance, sampler = obj.get("steps"), obj.get("guidance"), obj.get("sampler")
    steps = d.steps if steps is None else rules.check_int("steps", steps, 1, rules.MAX_STEPS)
    guidance = (
        d.guidance if guidance is None else rules.check_float("guidance", guidance, *rules.GUIDANCE_RANGE)
    )
    sampler = d.sampler if sampler is None else rules.check_sampler(sampler, None, d.scheduler_config)
    return steps, float(guidance), sampler


def _sizes(obj: dict[str, Any], d: Defaults) -> tuple[int, int]:
    sizes = []
    for key in ("width", "height"):
        value = obj.get(key)
        if value is None:
            value = getattr(d, key)
            if value is None:
                raise ValueError(f"{key} is missing and the model folder does not say its size; pass --{key}")
        sizes.append(rules.check_size(key, value, d.size_multiple, vae_factor=d.vae_factor))
    rules.check_pixels(sizes[0], sizes[1], 1, d.max_pixels)
    return sizes[0], sizes[1]


def _loras(obj: dict[str, Any], prompt: str, negative: str | None, d: Defaults) -> tuple[dict, dict]:
    """The item's LoRA set ({name: weight}, zeros left out) from ``loras`` and the prompts' tags,
    and the files it names; a name must mean one file for the whole job."""
    explicit = obj.get("loras")
    if explicit is not None and not isinstance(explicit, dict):
        raise rules.RuleError("loras", "an object of LoRA name or .safetensors path -> weight", explicit)
    _, weights, files = d.loras.plan(prompt, "prompt", explicit)
    _, more, more_files = d.loras.plan(negative or "", "negative_prompt")
    for name, weight in more.items():
        weights[name] = weights.get(name, 0.0) + weight
    for name, path in {**more_files, **files}.items():
        known = d.lora_files.setdefault(name, str(path.resolve()))  # absolute: Ray workers' cwd differs
        if Path(known) != path.resolve():
            raise rules.RuleError(
                "loras", f"one file per LoRA name in a job ({name!r} is {known})", str(path)
            )
    loras = {n: w for n, w in sorted(weights.items()) if w != 0}
    return loras, {n: d.lora_files[n] for n in loras}


def _vae(obj: dict[str, Any], width: int, height: int, d: Defaults) -> dict[str, Any]:
    out = {}
    if obj.get("vae_tiling") is not None:
        rules.check_vae_tiling(obj["vae_tiling"], width, height)
        out["vae_tiling"] = obj["vae_tiling"]
    if obj.get("vae_tile_size") is not None:
        out["vae_tile_size"] = rules.check_vae_tile_size(
            obj["vae_tile_size"], d.vae_factor or rules.VAE_FACTOR
        )
    return out


def resolve(obj: Any, line: int, d: Defaults) -> Item:
    """A parsed job line -> an Item; ValueError naming the key otherwise (the rules' wording)."""
    if not isinstance(obj, dict):
        raise ValueError(f"a job line must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(KEYS)}")
    item_id = check_id(obj["id"]) if "id" in obj else line_id(line)
    prompt, negative = _texts(obj)
    seed = obj.get("seed")
    seed = derived_seed(item_id) if seed is None else rules.check_seeds(seed, 1)[0]
    steps, guidance, sampler = _sampling(obj, d)
    width, height = _sizes(obj, d)
    params = {
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "sampler": sampler,
        "width": width,
        "height": height,
    }
    loras, files = _loras(obj, prompt, negative, d)
    if loras:
        params["loras"] = loras
    params |= _vae(obj, width, height, d)
    return Item(item_id, line, params, files)


def _valid_id(obj: Any) -> str | None:
    """The line's id for its error record, when it is one (a bad id is the error, not a name)."""
    try:
        return check_id(obj.get("id")) if isinstance(obj, dict) else None
    except ValueError:
        return None


def _parse_line(raw: bytes, n: int, d: Defaults) -> Item | InputError:
    digest = hashlib.sha256(raw).hexdigest()
    obj: Any = None
    try:
        obj = json.loads(raw.decode("utf-8"))
        return resolve(obj, n, d)
    except UnicodeDecodeError as err:
        return InputError(n, f"line {n} is not UTF-8: {err}", digest)
    except json.JSONDecodeError as err:
        return InputError(n, clip(f"line {n} is not JSON: {err}"), digest)
    except RecursionError:
        # json.loads (or the repr quoting a value) recurses once per level: a line of 100,000
        # "[" would otherwise end the whole job.
        return InputError(n, f"line {n}: JSON nested too deeply (a job line is one flat object)", digest)
    except ValueError as err:  # RuleError among them: its text names the key
        return InputError(n, clip(f"line {n}: {err}"), digest, _valid_id(obj))


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
        parsed = _parse_line(raw, n, d)
        if isinstance(parsed, InputError):
            errors.append(parsed)
        elif parsed.id in seen:
            msg = f"line {n}: duplicate id {parsed.id!r} (first on line {seen[parsed.id]})"
            errors.append(InputError(n, msg, hashlib.sha256(raw).hexdigest(), parsed.id))
        else:
            seen[parsed.id] = n
            items.append(parsed)
    return items, errors


def group(items: Iterable[Item], batch_size: int) -> list[list[Item]]:
    """Items with the same size, steps, sampler, guidance, LoRA set and VAE tiles, in chunks of at
    most batch_size (fewer when the images would pass ``rules.MAX_BATCH_PIXELS`` together)."""
    by_key: dict[tuple, list[Item]] = {}
    for it in items:
        by_key.setdefault(it.group_key, []).append(it)
    groups = []
    for same in by_key.values():
        area = same[0].params["width"] * same[0].params["height"]
        size = max(1, min(batch_size, rules.MAX_BATCH_PIXELS // area))
        groups += [same[i : i + size] for i in range(0, len(same), size)]
    return groups
