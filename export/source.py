"""What SOURCE names, checked before anything is loaded, and loading it as a diffusers pipeline.

Three kinds: a local diffusers folder (model_index.json), a single-file checkpoint (.safetensors,
or a pickle only when the caller accepts the risk), or a Hugging Face hub id.

Pickles (torch.load) can run code hidden in the file, so without allow_pickle every source is read
from safetensors only: a folder (SOURCE or --config) whose weights are pickles is refused here,
before anything is loaded, and diffusers is told to load safetensors or fail (use_safetensors).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# Pipelines we know how to export, with the ONNX components each yields (in optimum's layout).
# Later architectures (SDXL, inpainting, LCM) add an entry here and, if needed, a validator input.
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": ("text_encoder", "unet", "vae_encoder", "vae_decoder"),
    # SD-1/2 layouts with another U-Net: LCM-distilled (timestep_cond input), inpainting (9 channels).
    "LatentConsistencyModelPipeline": ("text_encoder", "unet", "vae_encoder", "vae_decoder"),
    "StableDiffusionInpaintPipeline": ("text_encoder", "unet", "vae_encoder", "vae_decoder"),
    # SDXL: a refiner (requires_aesthetics_score) has no text_encoder; the exporter skips absent ones.
    "StableDiffusionXLPipeline": ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"),
    "StableDiffusionXLImg2ImgPipeline": (
        "text_encoder",
        "text_encoder_2",
        "unet",
        "vae_encoder",
        "vae_decoder",
    ),
    # SDXL inpainting: 9 input channels (latents, mask, masked-image latents).
    "StableDiffusionXLInpaintPipeline": (
        "text_encoder",
        "text_encoder_2",
        "unet",
        "vae_encoder",
        "vae_decoder",
    ),
}
# Architectures whose diffusers pipelines honour the VAE's ``force_upcast`` (decode in fp32 even
# for an fp16 model, because SDXL's VAE overflows fp16); the exporter keeps the VAE fp32 for them.
VAE_UPCAST_ARCHITECTURES = frozenset(
    {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"}
)

# torch.load on these runs arbitrary code embedded in the file (pickle's __reduce__).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# Components the export never loads (from_pretrained is told they are None).
NOT_LOADED = ("safety_checker",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    kind: str  # "folder" | "single_file" | "hub"
    location: str
    config: Path | None = None  # the diffusers folder giving a single file's architecture
    allow_pickle: bool = False  # False: only safetensors weights are loaded


def _model_index(folder: Path) -> dict:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(
            f"SOURCE {str(folder)!r} is a folder but not a diffusers model (no model_index.json)"
        )
    try:
        data = json.loads(index.read_text())
        data["_class_name"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"SOURCE {str(folder)!r}: model_index.json has no readable _class_name") from exc
    return data


def _folder_architecture(folder: Path) -> str:
    name = _model_index(folder)["_class_name"]
    check_architecture(name)
    return name


def check_architecture(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {name!r}: sdlite export supports {', '.join(sorted(ARCHITECTURES))}"
        )


def _pickle_refusal(what: str) -> ValueError:
    return ValueError(
        f"{what}: loading a pickle can run arbitrary code hidden in the file, so it is refused. Convert it "
        "to .safetensors, or pass --allow-pickle (allow_pickle=True) if you trust where it came from."
    )


def pickle_only_weights(folder: Path) -> list[Path]:
    """The pickled weight files of the folder's loaded components that have no .safetensors weights."""
    found = []
    for component, entry in _model_index(folder).items():
        sub = folder / component
        if component.startswith("_") or component in NOT_LOADED or not isinstance(entry, list):
            continue
        files = sorted(p for p in sub.iterdir() if p.is_file()) if sub.is_dir() else []
        if not any(p.suffix == ".safetensors" for p in files):
            found += [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    return found


def _check_weights(folder: Path, role: str, allow_pickle: bool) -> None:
    """Refuse a folder whose weights diffusers could only load by unpickling (see `pickle_only_weights`)."""
    pickles = [] if allow_pickle else pickle_only_weights(folder)
    if pickles:
        names = ", ".join(str(p) for p in pickles)
        raise _pickle_refusal(
            f"{role} {str(folder)!r} holds pickled weights with no .safetensors beside them ({names})"
        )


def resolve(source: str | Path, allow_pickle: bool = False, config: str | Path | None = None) -> Source:
    """Classify SOURCE and refuse what we cannot or should not load, without loading any weights."""
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise _pickle_refusal(f"SOURCE {text!r} is a pickle checkpoint ({path.suffix})")
    if path.is_dir():
        _folder_architecture(path)
        if config is not None:
            raise ValueError("--config only applies to a single-file SOURCE (.safetensors), not a folder")
        _check_weights(path, "SOURCE", allow_pickle)
        return Source("folder", str(path), allow_pickle=allow_pickle)
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
            raise ValueError(
                f"SOURCE {text!r}: unknown file type {path.suffix!r}; expected a diffusers folder, "
                "a .safetensors checkpoint or a hub id"
            )
        if config is None:
            raise ValueError(
                f"SOURCE {text!r} is a single-file checkpoint: pass --config DIR, a local diffusers "
                "folder of the same architecture (its configs, tokenizer and scheduler are used; "
                "nothing is downloaded)"
            )
        config_dir = Path(config).expanduser()
        if not config_dir.is_dir():
            raise ValueError(f"--config {str(config)!r} is not a folder")
        _folder_architecture(config_dir)
        # from_single_file loads what the checkpoint lacks from the config folder's own weights.
        _check_weights(config_dir, "--config", allow_pickle)
        return Source("single_file", str(path), config_dir, allow_pickle)
    if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) or text.startswith((".", "/", "~")):
        raise ValueError(f"SOURCE {text!r} does not exist")
    if not _HUB_ID.match(text):
        raise ValueError(
            f"SOURCE {text!r} is neither an existing folder or file nor a hub id of the form 'owner/name'"
        )
    return Source("hub", text, allow_pickle=allow_pickle)


def load_pipeline(source: Source):
    """The diffusers pipeline in fp32 on the CPU (the exporter traces fp32; fp16 comes later)."""
    import diffusers
    import torch
    from diffusers import DiffusionPipeline

    common = dict(torch_dtype=torch.float32, **dict.fromkeys(NOT_LOADED))
    if source.kind == "single_file":
        # The class named by the config folder (SD or SDXL) reads the checkpoint's key layout.
        pipeline_class = getattr(diffusers, _folder_architecture(Path(source.config)))
        pipe = pipeline_class.from_single_file(
            source.location, config=str(source.config), local_files_only=True, **common
        )
        check_architecture(type(pipe).__name__)
        return pipe
    # Without allow_pickle diffusers loads each component's safetensors or fails; None is its default
    # (safetensors first, a pickle where there is none).
    safe = None if source.allow_pickle else True
    hub = source.kind == "hub"
    expected = Exception if hub else OSError  # hub errors come in many types (offline, 404, gated)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            source.location, use_safetensors=safe, local_files_only=not hub, **common
        )
    except expected as exc:
        pickle = safe and "safetensors" in str(exc)
        hint = " (without --allow-pickle only .safetensors weights are loaded)" if pickle else ""
        what = "as a Hugging Face hub model" if hub else "as a diffusers folder"
        raise ValueError(f"SOURCE {source.location!r}: could not load it {what} ({exc}){hint}") from exc
    check_architecture(type(pipe).__name__)
    return pipe
