"""`--preview-decoder DIR`: a diffusers ``AutoencoderTiny`` (TAESD, TAESDXL) decoder exported beside
the model as ``preview_decoder/model.onnx``, for previews sharper than sdlite.preview's linear map.

Only the decoder is exported (previews never encode), always in fp32: it is ~1 M parameters, so
fp16 saves nothing that matters and would add a second tolerance to judge.  The graph takes
``latent_sample`` = the sampler's latents in the scale the U-Net sees (diffusers' AutoencoderTiny
has scaling_factor 1: a pipeline hands it ``latents / 1.0``) with dynamic batch, height and width,
and returns ``sample`` in [-1, 1] at 8x the latent size.  It is validated like every component:
ONNX Runtime against the PyTorch module on random latents, fp32 tolerance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import ExportError

PREVIEW_DECODER = "preview_decoder"
WEIGHTS = "diffusion_pytorch_model.safetensors"
CLASS = "AutoencoderTiny"
DEFAULT_OPSET = 17


def check_preview_decoder(path: str | os.PathLike | None) -> Path | None:
    """The --preview-decoder folder, checked before anything is loaded: a diffusers AutoencoderTiny
    folder with safetensors weights (pickles are never read for it)."""
    if path is None:
        return None
    folder = Path(path).expanduser()
    config = folder / "config.json"
    what = f"--preview-decoder {str(folder)!r}"
    if not config.is_file():
        raise ValueError(f"{what} must be a diffusers {CLASS} folder (config.json), e.g. madebyollin/taesd")
    try:
        name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{what}: config.json is not readable JSON: {exc}") from exc
    if name != CLASS:
        raise ValueError(f"{what}: config.json names {name!r}; only {CLASS} (TAESD, TAESDXL) is exported")
    if not (folder / WEIGHTS).is_file():
        raise ValueError(f"{what}: {WEIGHTS} is missing (pickled weights are not read)")
    return folder


def decoder_module(tiny):
    """The decoder alone, as a module torch.onnx traces (defined here: torch is imported lazily)."""
    import torch

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = tiny.decoder

        def forward(self, latent_sample):
            return self.decoder(latent_sample)

    return Decode().eval()


def export_preview_decoder(
    src: Path, final: Path, latent_channels: int, opset: int | None, providers: list[str], validate: bool
) -> dict:
    """Write final/preview_decoder/{model.onnx, config.json}; what sdlite.json records about it."""
    import torch
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny.from_pretrained(src, use_safetensors=True, torch_dtype=torch.float32).eval()
    if tiny.config.latent_channels != latent_channels:
        raise ValueError(
            f"--preview-decoder {str(src)!r} decodes {tiny.config.latent_channels} latent channels; "
            f"the model has {latent_channels} (TAESD is for SD-1/2, TAESDXL for SDXL)"
        )
    out = final / PREVIEW_DECODER
    out.mkdir()
    module = decoder_module(tiny)
    dims = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.randn(1, latent_channels, 8, 8),),
            str(out / "model.onnx"),
            input_names=["latent_sample"],
            output_names=["sample"],
            dynamic_axes={"latent_sample": dims, "sample": dims},
            opset_version=opset or DEFAULT_OPSET,
            dynamo=False,
        )
    tiny.save_config(out)
    record: dict = {"dtype": "fp32", "source": str(src), "input": "latent_sample: the U-Net's latents"}
    if validate:
        graph = out / "model.onnx"
        record["validation"] = validate_preview_decoder(module, graph, latent_channels, providers)
    return record


def validate_preview_decoder(module, path: Path, channels: int, providers: list[str]) -> dict:
    """ONNX Runtime against PyTorch on random latents of two sizes; ExportError over tolerance."""
    import onnxruntime as ort
    import torch

    from .validate import TOLERANCE, compare

    session = ort.InferenceSession(str(path), providers=providers)
    rng = np.random.default_rng(0)
    worst = None
    for shape in ((1, channels, 8, 8), (2, channels, 12, 16)):
        latents = rng.standard_normal(shape, dtype=np.float32)
        (got,) = session.run(["sample"], {"latent_sample": latents})
        with torch.no_grad():
            want = module(torch.from_numpy(latents)).numpy()
        check = compare(PREVIEW_DECODER, {"sample": got}, {"sample": want}, TOLERANCE["fp32"])
        if not check.ok:
            raise ExportError(f"{PREVIEW_DECODER}: ONNX differs from PyTorch: {check.as_dict()}")
        worst = check if worst is None or check.rel > worst.rel else worst
    return worst.as_dict()
