"""One component's export, after capture: fuse for the target, fp16, validate against PyTorch,
optionally quantize, and for an fp16 VAE decoder the fp32 fallback graph the runtime switches to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdlite.folder import FP32_DECODER

from .errors import ExportError
from .options import ExportOptions
from .progress import Progress
from .quantize import QUANTIZED_COMPONENTS
from .source import ARCHITECTURES, VAE_UPCAST_ARCHITECTURES


@dataclass(frozen=True)
class Job:
    """What every component's export shares."""

    pipe: object
    captured: Path  # optimum's fp32 graphs, one folder per component
    final: Path  # where the shipped graphs go, same layout
    options: ExportOptions
    upcast_vae: bool
    latent_hw: tuple[int, int]  # validation's latent size
    providers: list[str]  # validation's execution providers
    static: dict | None  # fix_static_shapes' record, when the graphs are pinned
    log: Progress


def components_of(pipe, architecture: str) -> tuple[str, ...]:
    """The architecture's components that `pipe` has (a refiner has no text_encoder)."""
    return tuple(c for c in ARCHITECTURES[architecture] if getattr(pipe, _module(c), None) is not None)


def upcasts_vae(pipe, architecture: str) -> bool:
    """diffusers' SDXL pipelines run a force_upcast VAE in fp32 even for fp16 models (SDXL's VAE
    overflows fp16 -> black/NaN images); the export does the same."""
    return architecture in VAE_UPCAST_ARCHITECTURES and bool(getattr(pipe.vae.config, "force_upcast", False))


def _module(component: str) -> str:
    return "vae" if component.startswith("vae_") else component


def export_component(job: Job, component: str) -> dict:
    """Write `component`'s graph(s) under job.final; returns its sdlite.json record."""
    import onnx

    dtype = job.options.component_dtype(component, job.upcast_vae)
    path = job.final / component / "model.onnx"
    info = _optimized(job, component, path, dtype)
    if dtype == "fp32" and component.startswith("vae_") and job.options.dtype == "fp16":
        info["kept_fp32"] = (
            "vae force_upcast (as diffusers' SDXL pipelines)" if job.upcast_vae else "--fp32-vae"
        )
    if job.options.validate:
        info = _validated(job, component, path, dtype, info)
    if job.options.quantize and component in QUANTIZED_COMPONENTS:
        info["quantized"] = _quantized(job, component, path)
    if component == "vae_decoder" and info["dtype"] == "fp16":
        # The runtime's fallback when an fp16 decode overflows (NaN/inf) for some image.
        fallback = path.with_name(FP32_DECODER)
        extra = _optimized(job, component, fallback, "fp32", f"fp32 fallback {FP32_DECODER}")
        info["fp32_fallback"] = {"file": FP32_DECODER, "fusions": extra["fusions"]}
        onnx.checker.check_model(str(fallback))
    onnx.checker.check_model(str(path))
    return info


def _optimized(job: Job, component: str, dest: Path, dtype: str, what: str = "") -> dict:
    from .optimize import optimize_component

    options = job.options
    what = what or f"{'fuse for ' + options.target if options.optimize else 'copy'}, {dtype}"
    with job.log.stage(f"{component}: {what}"):
        return optimize_component(
            job.captured / component / "model.onnx",
            dest,
            component,
            options.target,
            dtype == "fp16",
            fuse=options.optimize,
            separate_qkv=options.separate_qkv,
        )


def _check(job: Job, component: str, path: Path, dtype: str) -> dict:
    from .validate import validation_record

    # Static graphs only take their fixed batch; dynamic ones are validated at batch 1.
    batch = job.static["dims"].get(component, {}).get("batch_size", 1) if job.static else 1
    return validation_record(component, path, job.pipe, dtype, job.latent_hw, job.providers, batch)


def _validated(job: Job, component: str, path: Path, dtype: str, info: dict) -> dict:
    with job.log.stage(f"{component}: validate against PyTorch"):
        val = info["validation"] = _check(job, component, path, dtype)
    if component == "vae_decoder" and dtype == "fp16" and not val.get("ok", True):
        # fp16 VAE decoders overflow on some models (SDXL's): keep this one fp32.
        job.log.note(f"vae_decoder fp16 fails validation ({val}); keeping it fp32")
        info = _optimized(job, component, path, "fp32")
        info["kept_fp32"] = f"fp16 failed validation: {val}"
        val = info["validation"] = _check(job, component, path, "fp32")
    if not val.get("ok", True):
        raise ExportError(f"{component}: exported graph differs from PyTorch beyond tolerance: {val}")
    return info


def _quantized(job: Job, component: str, path: Path) -> dict:
    from .quantize import quantize_component

    with job.log.stage(f"{component}: quantize {job.options.quantize}"):
        record = quantize_component(path)
    if job.options.validate:
        qval = record["validation"] = _check(job, component, path, "int8")
        if not qval.get("finite", True) or not qval.get("ok", True):
            raise ExportError(f"{component}: int8 graph fails validation: {qval}")
    return record
