"""`export_model`: a diffusers model -> the folder sdlite's runtime (and optimum) loads.

Stages: check options and SOURCE (nothing loaded yet) -> load the pipeline -> disk check ->
graph capture with optimum's exporter -> per component (components.py): fuse for the target,
fp16, validate against PyTorch, optionally quantize -> the live-preview map fitted with the
exported decoder (preview_map.py) -> sdlite.json -> rename into place.

Everything is built in a hidden temporary folder beside OUT and renamed at the end, so a failed
or interrupted export leaves no half-written OUT.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from . import source as sources
from .errors import ExportError
from .options import ExportOptions, parse_static_shape
from .progress import Progress
from .report import ExportReport, graph_opset, write_sdlite_json


def export_model(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "fp16",
    target: str = "cuda",
    optimize: bool = True,
    opset: int | None = None,
    fp32_vae: bool = False,
    static_shape: tuple[int, int] | str | None = None,
    batch: int | None = None,
    allow_pickle: bool = False,
    config: str | os.PathLike | None = None,
    overwrite: bool = False,
    quantize: str | None = None,
    validate: bool = True,
    progress: bool = True,
    preview_decoder: str | os.PathLike | None = None,
    separate_qkv: bool = False,
) -> ExportReport:
    """Export a diffusers Stable Diffusion model to fused (and fp16) ONNX in optimum's layout.

    Raises ValueError for bad arguments or SOURCE (before anything is loaded or written) and
    ExportError when the exported graphs fail validation. On any failure OUT is left untouched.
    ``preview_decoder``: a diffusers AutoencoderTiny folder (TAESD) also exported, as
    preview_decoder/model.onnx (see preview_decoder.py). ``separate_qkv``: on GPU targets, keep
    attention's Q, K and V projections as separate weights, as the CPU target does, so that LoRAs
    can merge into them (ONNX Runtime's GPU fusion otherwise packs them into one weight).
    """
    start = time.perf_counter()
    if isinstance(static_shape, str):
        static_shape = parse_static_shape(static_shape)
    options = ExportOptions(
        dtype=dtype,
        target=target,
        optimize=optimize,
        opset=opset,
        fp32_vae=fp32_vae,
        static_shape=static_shape,
        batch=batch,
        quantize=quantize,
        allow_pickle=allow_pickle,
        validate=validate,
        preview_decoder=None if preview_decoder is None else str(preview_decoder),
        separate_qkv=separate_qkv,
    )
    out = _check_out(out, overwrite)
    src = sources.resolve(source, allow_pickle=allow_pickle, config=config)
    log = Progress(progress)
    report = _build_and_rename(src, out, options, log)
    report.seconds = time.perf_counter() - start
    log.note(f"wrote {out} in {report.seconds:.1f} s")
    return report


def _check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ValueError(f"OUT {str(out)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT {str(out)!r} exists and is not a folder")
    return out


def _build_and_rename(src: sources.Source, out: Path, options: ExportOptions, log: Progress) -> ExportReport:
    """Build in a temporary folder beside OUT, then rename it into place; on failure remove it all."""
    # Parents we create are removed again on failure, so a failed export leaves nothing behind.
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".sdlite-tmp", dir=out.parent))
    try:
        report = _export_into(work, src, out, options, log)
        if out.exists():
            os.replace(out, work / "previous")  # --overwrite: the old folder goes only once the new is ready
        os.replace(work / "final", out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return report


def _fp32_bytes(pipe) -> int:
    total = 0
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            total += sum(p.numel() for p in module.parameters()) * 4
    return total


def check_disk(where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if free < needed:
        raise ValueError(
            f"not enough disk space for the export in {where}: about {needed / 2**30:.1f} GiB needed "
            f"(fp32 capture plus the final graphs), {free / 2**30:.1f} GiB free"
        )


def _check_layout(folder: Path, components: tuple[str, ...]) -> None:
    missing = [c for c in components if not (folder / c / "model.onnx").is_file()]
    if missing:
        raise ExportError(f"optimum's exporter produced no graph for: {', '.join(missing)}")


def _export_into(
    work: Path, src: sources.Source, out: Path, options: ExportOptions, log: Progress
) -> ExportReport:
    """Load, capture and export every component into work/final, with its sdlite.json."""
    from . import ort_shim
    from .capture import capture
    from .components import Job, components_of, export_component, upcasts_vae
    from .shapes import fix_static_shapes, validation_latent_hw
    from .validate import validation_providers

    with log.stage(f"load {src.location}"):
        pipe = sources.load_pipeline(src)
    architecture = type(pipe).__name__
    components = components_of(pipe, architecture)
    final_factor = 0.5 if options.dtype == "fp16" else 1.0
    check_disk(out.parent, int(_fp32_bytes(pipe) * (1.0 + final_factor) * 1.1) + 64 * 2**20)

    captured, final = work / "capture", work / "final"
    with log.stage("graph capture (optimum exporter)"):
        capture(pipe, captured, opset=options.opset)
    _check_layout(captured, components)
    static = None
    if options.static_shape is not None:
        static = fix_static_shapes(captured, components, pipe, options.static_shape, options.images)
    # Configs, tokenizer, scheduler, model_index.json: everything but the graphs, as optimum wrote it.
    shutil.copytree(captured, final, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data", "*.onnx.data"))

    providers = validation_providers(options.target)
    job = Job(
        pipe=pipe,
        captured=captured,
        final=final,
        options=options,
        upcast_vae=upcasts_vae(pipe, architecture),
        latent_hw=validation_latent_hw(pipe, static),
        providers=providers,
        static=static,
        log=log,
    )
    results = {component: export_component(job, component) for component in components}
    preview = _export_previews(final, pipe, options, providers, log, results)
    opset = graph_opset(final / "unet" / "model.onnx")
    report = ExportReport(out, str(src.location), architecture, options.dtype, options.target, opset, results)
    write_sdlite_json(
        final,
        report,
        options,
        source_kind=src.kind,
        static_shape=static,
        ort_shim=ort_shim.apply() if options.optimize else False,
        validated_on=providers[0] if options.validate else None,
        preview=preview,
    )
    return report


def _export_previews(
    final: Path, pipe, options: ExportOptions, providers: list[str], log: Progress, results: dict
) -> dict:
    """The --preview-decoder graph (into ``results``), then the preview map; returns the map's record."""
    from .preview_decoder import PREVIEW_DECODER, export_preview_decoder
    from .preview_map import write_preview_map

    if options.preview_decoder is not None:
        with log.stage(f"preview decoder {options.preview_decoder}"):
            results[PREVIEW_DECODER] = export_preview_decoder(
                Path(options.preview_decoder),
                final,
                pipe.vae.config.latent_channels,
                options.opset,
                providers,
                options.validate,
            )
    with log.stage("preview map (fitted with the exported VAE decoder)"):
        return write_preview_map(final, providers)
