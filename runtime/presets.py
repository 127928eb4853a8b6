"""Sampling defaults per model family: sampler, steps and guidance that suit the model.

``Pipeline.__call__`` and ``sdlite generate`` take a preset's values for whatever the caller
leaves out (``num_inference_steps``, ``guidance_scale``, ``sampler``); explicit values win.  The
preset's ``sampler_options`` come only with its sampler.

Families (``sdlite.rules.PRESETS``; values from diffusers' documentation of the matching pipelines):

- ``sd``: SD 1.x/2.x, UniPC, 20 steps, guidance 7.5 (sdlite's long-standing defaults).
- ``sdxl``: SDXL, UniPC, 20 steps, guidance 5.0 (StableDiffusionXLPipeline's default).
- ``sd-turbo`` / ``sdxl-turbo``: adversarially distilled; Euler ancestral with ``trailing``
  spacing, 1 step (1-4 work), guidance 0 (so no unconditional pass).
- ``lcm``: an LCM-distilled U-Net (``timestep_cond`` input), LCM sampler, 4 steps, guidance 8.0
  (LatentConsistencyModelPipeline's examples; the guidance goes in as an embedding).
- ``lcm-lora``: an ordinary U-Net with an LCM-LoRA merged in, LCM sampler, 4 steps, guidance
  1.0 (LCM-LoRA's examples: 1.0-2.0; above 1 the unconditional pass comes back).

Detection, first match wins (``detect`` returns the reason too, ``sdlite info`` shows it):

1. ``sdlite.json`` key ``"preset"``: a family name, or an object with any of ``name``,
   ``sampler``, ``steps``, ``guidance``, ``sampler_options`` over a family's values (``base``,
   default the detected family), for a model whose maker knows better;
2. the U-Net has a ``timestep_cond`` input -> ``lcm``;
3. the scheduler config is ``LCMScheduler``'s -> ``lcm-lora``;
4. "turbo" or "lcm" as a word ("sdxl-turbo", "LCM_Dreamshaper") in the folder name, the last
   part of ``sdlite.json``'s source or ``model_index.json``'s ``_name_or_path``, or
   ``sdlite.json``'s architecture -> ``sd(xl)-turbo`` / ``lcm-lora``;
5. otherwise ``sdxl`` for a U-Net with SDXL's ``text_embeds`` input, else ``sd``.

``Pipeline.from_pretrained(..., preset=...)`` (and ``sdlite generate --preset``) overrides it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import rules
from .rules import PRESETS, Preset

__all__ = ["PRESETS", "Preset", "detect", "from_spec", "get"]
PRESET_FILE_KEY = "preset"


_FIELDS = ("name", "base", "sampler", "steps", "guidance", "sampler_options")


def get(name: str) -> Preset:
    if not isinstance(name, str) or name.lower() not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name.lower()]


def from_spec(spec: Any, default: Preset, where: str) -> Preset:
    """A preset from a family name or a dict of overrides (validated: ValueError naming ``where``)."""
    if isinstance(spec, Preset):
        return spec
    if isinstance(spec, str):
        try:
            return replace(get(spec), source=where)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    if not isinstance(spec, dict):
        raise ValueError(
            f"{where}: a preset is a family name ({', '.join(PRESETS)}) or an object, got {spec!r}"
        )
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown preset key(s) {unknown}; allowed: {', '.join(_FIELDS)}")
    base = from_spec(spec["base"], default, where) if "base" in spec else default
    try:  # the limits of a call (sdlite.rules), so that a preset never yields a refused call
        steps = rules.check_int("steps", spec.get("steps", base.steps), 1, rules.MAX_STEPS)
        guidance = rules.check_float("guidance", spec.get("guidance", base.guidance), *rules.GUIDANCE_RANGE)
    except rules.RuleError as err:
        raise ValueError(f"{where}: {err}") from None
    sampler = spec.get("sampler", base.sampler)
    options = spec.get("sampler_options", base.sampler_options if sampler == base.sampler else {})
    if not isinstance(sampler, str) or not isinstance(options, dict):
        raise ValueError(f"{where}: sampler must be a name and sampler_options an object")
    return Preset(str(spec.get("name", base.name)), sampler, steps, guidance, dict(options), where)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # hints only: a missing or unreadable file gives none
    return data if isinstance(data, dict) else {}


def _last_part(value: Any) -> str:
    return re.split(r"[\\/]", value.rstrip("/\\"))[-1] if isinstance(value, str) else ""


def detect(
    folder: Path,
    unet_inputs: Iterable[str],
    scheduler_config: dict[str, Any],
    model_index: dict[str, Any] | None = None,
) -> Preset:
    """The preset for the exported model at ``folder`` (see the module docstring for the rules)."""
    inputs = set(unet_inputs)
    xl = "text_embeds" in inputs
    sdlite_json = _read_json(folder / "sdlite.json")
    if "timestep_cond" in inputs:
        family, why = "lcm", "the U-Net takes timestep_cond"
    elif scheduler_config.get("_class_name") == "LCMScheduler":
        family, why = "lcm-lora", "the scheduler config is LCMScheduler's"
    else:
        family, why = ("sdxl" if xl else "sd"), "the U-Net's inputs"
        # Names only (the last path part), split into words: "sdxl-turbo", "LCM_Dreamshaper".
        hints = {
            "folder name": folder.name,
            "sdlite.json source": _last_part(sdlite_json.get("source")),
            "sdlite.json architecture": str(sdlite_json.get("architecture", "")),
            "model_index.json _name_or_path": _last_part((model_index or {}).get("_name_or_path")),
        }
        for where, text in hints.items():
            words = set(re.split(r"[^a-z0-9]+", text.lower()))
            if "turbo" in words:
                family, why = ("sdxl-turbo" if xl else "sd-turbo"), f"'turbo' in the {where}"
                break
            if "lcm" in words or "latentconsistencymodelpipeline" in words:
                family, why = "lcm-lora", f"'lcm' in the {where}"
                break
    detected = replace(PRESETS[family], source=f"detected: {why}")
    if PRESET_FILE_KEY in sdlite_json:
        return from_spec(sdlite_json[PRESET_FILE_KEY], detected, f'{folder / "sdlite.json"} "preset"')
    return detected
