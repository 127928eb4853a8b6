"""What SOURCE names, checked before anything is loaded, and loading it as a diffusers pipeline.

Three kinds: a local diffusers folder (model_index.json), a single-file checkpoint (.safetensors,
or a pickle only when the caller accepts the risk), or a Hugging Face hub id.
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
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    kind: str  # "folder" | "single_file" | "hub"
    location: str
    config: Path | None = None  # the diffusers folder giving a single file's architecture


def _folder_architecture(folder: Path) -> str:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(
            f"SOURCE {str(folder)!r} is a folder but not a diffusers model (no model_index.json)"
        )
    try:
        name = json.loads(index.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"SOURCE {str(folder)!r}: model_index.json has no readable _class_name") from exc
    check_architecture(name)
    return name


def check_architecture(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {name!r}: sdlite export supports {', '.join(sorted(ARCHITECTURES))}"
        )


def resolve(source: str | Path, allow_pickle: bool = False, config: str | Path | None = None) -> Source:
    """Classify SOURCE and refuse what we cannot or should not load, without loading any weights."""
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(
            f"SOURCE {text!r} is a pickle checkpoint ({path.suffix}): loading a pickle can run arbitrary "
            "code hidden in the file, so it is refused. Convert it to .safetensors, or pass --allow-pickle "
            "(allow_pickle=True) if you trust where it came from."
        )
    if path.is_dir():
        _folder_architecture(path)
        if config is not None:
            raise ValueError("--config only applies to a single-file SOURCE (.safetensors), not a folder")
        return Source("folder", str(path))
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
        return Source("single_file", str(path), config_dir)
    if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) or text.startswith((".", "/", "~")):
        raise ValueError(f"SOURCE {text!r} does not exist")
    if not _HUB_ID.match(text):
        raise ValueError(
            f"SOURCE {text!r} is neither an existing folder or file nor a hub id of the form 'owner/name'"
        )
    return Source("hub", text)


def load_pipeline(source: Source):
    """The diffusers pipeline in fp32 on the CPU (the exporter traces fp32; fp16 comes later)."""
    import diffusers
    import torch
    from diffusers import DiffusionPipeline

    if source.kind == "folder":
        pipe = DiffusionPipeline.from_pretrained(
            source.location, torch_dtype=torch.float32, local_files_only=True, safety_checker=None
        )
    elif source.kind == "single_file":
        # The class named by the config folder (SD or SDXL) reads the checkpoint's key layout.
        pipeline_class = getattr(diffusers, _folder_architecture(Path(source.config)))
        pipe = pipeline_class.from_single_file(
            source.location,
            config=str(source.config),
            local_files_only=True,
            torch_dtype=torch.float32,
            safety_checker=None,
        )
    else:
        try:
            pipe = DiffusionPipeline.from_pretrained(
                source.location, torch_dtype=torch.float32, safety_checker=None
            )
        except Exception as exc:  # hub errors come in many types (offline, 404, gated)
            raise ValueError(
                f"SOURCE {source.location!r}: could not load it as a Hugging Face hub model ({exc})"
            ) from exc
    check_architecture(type(pipe).__name__)
    return pipe
