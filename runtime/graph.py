"""What the exported graphs fix, read once when a model folder loads.

An ONNX export may pin the batch and the image size, picks the U-Net's inputs (SDXL's
``text_embeds`` / ``time_ids``, LCM's ``timestep_cond``, 9 channels for inpainting) and the
VAE's factor.  ``read_graph`` reads all of it into one frozen ``Graph`` (``pipe.graph``), so that
no other code needs to look inside a session.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rules
from .conditioning import SDXL_INPUTS
from .folder import ModelFolder
from .lcm import TIMESTEP_COND
from .sessions import Session

UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
LATENT_PARAMETERS = "latent_parameters"  # a VAE encoder that outputs mean and log-variance


@dataclass(frozen=True)
class Graph:
    unet_channels: int  # 9 for inpainting U-Nets: latents (4), mask (1), masked-image latents (4)
    latent_channels: int
    vae_factor: int  # pixels per latent cell
    size_multiple: int  # image sides are multiples of this: the VAE's factor x the U-Net's downsampling
    default_size: int  # pixels: the U-Net's sample size x the VAE's factor
    static_size: tuple[int | None, int | None]  # (height, width) in pixels when the export fixes them
    unet_batch: int | None  # fixed batches of a static export (U-Net: 2 x images with guidance)
    decoder_batch: int | None
    encoder_batch: int | None
    encoder_output: str | None  # the VAE encoder's output used (None: no encoder)
    time_cond_dim: int | None  # LCM-distilled U-Nets: the guidance embedding's width
    sdxl: bool  # the U-Net takes SDXL's text_embeds and time_ids
    timestep_dtype: type
    timestep_rank: int  # 1: a [B] timestep, 0: a scalar

    @property
    def family(self) -> str:
        return "sdxl" if self.sdxl else "sd"

    @property
    def inpainting(self) -> bool:
        return self.unet_channels == 9


def _dim(value: object) -> int | None:
    return int(value) if rules.is_int(value) else None


def _first_batch(session: Session | None) -> int | None:
    if session is None:
        return None
    shape = next(iter(session.inputs.values())).shape
    return _dim(shape[0]) if shape else None


def _check_unet_inputs(unet: Session) -> None:
    names = unet.inputs
    for need in UNET_INPUTS:
        if need not in names:
            raise ValueError(
                f"unet/model.onnx has no input {need!r} (inputs: {', '.join(names)}); "
                "is it a Stable Diffusion U-Net?"
            )
    extra = sorted(set(names) - {*UNET_INPUTS, TIMESTEP_COND, *SDXL_INPUTS})
    if extra:
        raise ValueError(
            f"unet/model.onnx also needs inputs {extra}, which sdlite does not know; it runs U-Nets "
            "with sample, timestep, encoder_hidden_states and optionally SDXL's text_embeds + "
            "time_ids or LCM's timestep_cond"
        )


def _factor_from_decoder(decoder: Session) -> int:
    # Old diffusers exports carry no VAE config; their decoder output dims read "... * 8".
    for dim in decoder.output_shapes[decoder.outputs[0]][2:]:
        if isinstance(dim, str) and "*" in dim:
            tail = dim.rsplit("*", 1)[1].strip()
            if tail.isdigit():
                return int(tail)
    return rules.VAE_FACTOR


def _time_cond_dim(folder: ModelFolder, unet: Session) -> int | None:
    cond = unet.inputs.get(TIMESTEP_COND)
    if cond is None:
        return None
    config_dim = folder.configs.get("unet", {}).get("time_cond_proj_dim", 256)
    return _dim(cond.shape[-1]) or int(config_dim)


def read_graph(folder: ModelFolder, unet: Session, decoder: Session, encoder: Session | None) -> Graph:
    """The graphs' facts (ValueError for a U-Net whose inputs sdlite cannot feed)."""
    _check_unet_inputs(unet)
    shape = unet.inputs["sample"].shape
    channels = _dim(shape[1]) or 4
    factor = folder.vae_factor or _factor_from_decoder(decoder)
    static = (_dim(shape[2]), _dim(shape[3]))
    sample_size = folder.unet_sample_size or next((d for d in static if d), None) or 512 // factor
    encoder_output = None
    if encoder is not None:
        outs = encoder.outputs
        encoder_output = LATENT_PARAMETERS if LATENT_PARAMETERS in outs else outs[0]
    timestep = unet.inputs["timestep"]
    return Graph(
        unet_channels=channels,
        latent_channels=4 if channels == 9 else channels,
        vae_factor=factor,
        size_multiple=rules.size_multiple(factor, folder.unet_downsampling),
        default_size=sample_size * factor,
        static_size=tuple(None if d is None else d * factor for d in static),  # type: ignore[arg-type]
        unet_batch=_dim(shape[0]),
        decoder_batch=_first_batch(decoder),
        encoder_batch=_first_batch(encoder),
        encoder_output=encoder_output,
        time_cond_dim=_time_cond_dim(folder, unet),
        sdxl=all(name in unet.inputs for name in SDXL_INPUTS),
        timestep_dtype=timestep.dtype,
        timestep_rank=timestep.rank,
    )
