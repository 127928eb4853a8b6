"""A batch job's lines -> items: checked by the rules every entry point shares, then grouped.

Keys, defaults, ids and seeds are described in ``sdlite.batch``'s docstring.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rules

KEYS = ("id", "prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "width", "height")
# An error's text quotes the bad value: keep a manifest line short whatever a line holds.
MAX_ERROR_CHARS = 2000


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
    return Item(item_id, line, params)


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
    """Items with the same size, steps, sampler and guidance, in chunks of at most batch_size
    (fewer when the images would pass ``rules.MAX_BATCH_PIXELS`` together)."""
    by_key: dict[tuple, list[Item]] = {}
    for it in items:
        by_key.setdefault(it.group_key, []).append(it)
    groups = []
    for same in by_key.values():
        area = same[0].params["width"] * same[0].params["height"]
        size = max(1, min(batch_size, rules.MAX_BATCH_PIXELS // area))
        groups += [same[i : i + size] for i in range(0, len(same), size)]
    return groups
