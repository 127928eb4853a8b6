"""`export_model`: a diffusers model -> the folder sdlite's runtime (and optimum) loads.

Stages: check arguments and SOURCE (nothing loaded yet) -> load the pipeline -> disk check ->
graph capture with optimum's exporter -> per component: fuse for the target, fp16, validate
against PyTorch, optionally quantize -> sdlite.json -> rename into place.

Everything is built in a hidden temporary folder beside OUT and renamed at the end, so a failed
or interrupted export leaves no half-written OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sdlite.folder import FP32_DECODER

from . import source as sources
from .quantize import check_quantize
from .targets import PROVIDERS, check_target

DTYPES = ("fp16", "fp32")
MIN_OPSET = 14  # the U-Net attention fusions need opset >= 14 graphs (Trilu/LayerNorm patterns)
SDLITE_JSON = "sdlite.json"
FORMAT_VERSION = 1
# Libraries whose versions shape the graphs, recorded in sdlite.json.
_VERSIONED = (
    "sdlite",
    "torch",
    "diffusers",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
)


class ExportError(RuntimeError):
    """The export ran but its result is not acceptable (e.g. validation over tolerance)."""


@dataclass
class ExportReport:
    out: Path
    source: str
    architecture: str
    dtype: str
    target: str
    opset: int
    components: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def fusions(self, component: str) -> dict[str, int]:
        return self.components[component].get("fusions", {})


def _versions() -> dict[str, str]:
    found = {}
    for dist in _VERSIONED:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)
    except ImportError:  # private module moved: let the exporter itself reject what it cannot do
        return 99


def parse_static_shape(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768) (height, width in pixels)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"static shape must be HEIGHTxWIDTH in pixels, like 512x512; got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"static shape must be positive; got {text!r}")
    return h, w


def check_arguments(
    dtype: str,
    target: str,
    opset: int | None,
    static_shape: tuple[int, int] | None,
    batch: int | None,
    quantize: str | None,
) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    check_target(target)
    if opset is not None and not (MIN_OPSET <= opset <= _max_opset()):
        raise ValueError(f"opset must be between {MIN_OPSET} and {_max_opset()}; got {opset}")
    if batch is not None and static_shape is None:
        raise ValueError("--batch only applies with --static-shape HxW")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1; got {batch}")
    check_quantize(quantize, target, dtype)


class _Progress:
    """One line per stage on stderr: '[sdlite export] stage ... 3.1 s'."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"[sdlite export] {text}", file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        self.note(f"{name} ...")
        yield
        self.note(f"{name} done in {time.perf_counter() - start:.1f} s")


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


def _latent_factor(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def _fix_static_shapes(
    folder: Path, components: tuple[str, ...], pipe, hw: tuple[int, int], batch: int
) -> dict:
    """Pin optimum's symbolic dims (ORT's make_dim_param_fixed) so ORT can plan memory statically.

    The U-Net runs the unconditional and conditional halves of classifier-free guidance as one
    batch, as diffusers does, so its batch is 2 x `batch`. The text encoder keeps dynamic shapes
    (the runtime may encode prompts and negative prompts separately).
    """
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    f = _latent_factor(pipe)
    # The U-Net halves the latent once per down block but the last.
    multiple = f * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    h, w = hw
    if h % multiple or w % multiple:
        raise ValueError(
            f"static shape {h}x{w}: height and width must be multiples of {multiple} for this model"
        )
    dims = {
        "unet": {"batch_size": 2 * batch, "height": h // f, "width": w // f},
        "vae_encoder": {"batch_size": batch, "sample_height": h, "sample_width": w},
        "vae_decoder": {"batch_size": batch, "latent_height": h // f, "latent_width": w // f},
    }
    for component in components:
        if component not in dims:
            continue
        path = folder / component / "model.onnx"
        model = onnx.load(str(path), load_external_data=False)
        for name, value in dims[component].items():
            make_dim_param_fixed(model.graph, name, value)
        onnx.save_model(model, str(path))  # weights untouched: external data (if any) stays valid
    return {"height": h, "width": w, "batch": batch, "dims": dims}


def _validation_providers(target: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    provider = PROVIDERS[target]
    if provider in available and provider != "CPUExecutionProvider":
        return [provider, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _validate(component, path, pipe, dtype, latent_hw, providers, batch=1) -> dict:
    from .validate import validate_component

    try:
        check = validate_component(component, path, pipe, dtype, latent_hw, batch=batch, providers=providers)
    except Exception as exc:  # noqa: BLE001 - recorded, then judged below
        text = str(exc)
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
            # e.g. a --target cuda graph (NhwcConv, GroupNorm) on a machine without that provider.
            return {"skipped": f"no kernels for this graph on {providers[0]}: {text.splitlines()[0][:200]}"}
        raise ExportError(f"{component}: validation could not run the exported graph: {exc}") from exc
    return check.as_dict()


def _has_component(pipe, component: str) -> bool:
    module = "vae" if component.startswith("vae_") else component
    return getattr(pipe, module, None) is not None


def _check_layout(folder: Path, components: tuple[str, ...]) -> None:
    missing = [c for c in components if not (folder / c / "model.onnx").is_file()]
    if missing:
        raise ExportError(f"optimum's exporter produced no graph for: {', '.join(missing)}")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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
) -> ExportReport:
    """Export a diffusers Stable Diffusion model to fused (and fp16) ONNX in optimum's layout.

    Raises ValueError for bad arguments or SOURCE (before anything is loaded or written) and
    ExportError when the exported graphs fail validation. On any failure OUT is left untouched.
    """
    start = time.perf_counter()
    if isinstance(static_shape, str):
        static_shape = parse_static_shape(static_shape)
    check_arguments(dtype, target, opset, static_shape, batch, quantize)
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ValueError(f"OUT {str(out)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT {str(out)!r} exists and is not a folder")
    src = sources.resolve(source, allow_pickle=allow_pickle, config=config)
    log = _Progress(progress)

    # Parents we create are removed again on failure, so a failed export leaves nothing behind.
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".sdlite-tmp", dir=out.parent))
    try:
        report = _export_into(
            work,
            src,
            out,
            log,
            dtype,
            target,
            optimize,
            opset,
            fp32_vae,
            static_shape,
            batch or 1,
            quantize,
            validate,
        )
        final = work / "final"
        if out.exists():
            os.replace(out, work / "previous")  # --overwrite: the old folder goes only once the new is ready
        os.replace(final, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    report.out = out
    report.seconds = time.perf_counter() - start
    log.note(f"wrote {out} in {report.seconds:.1f} s")
    return report


def _export_into(
    work, src, out, log, dtype, target, optimize, opset, fp32_vae, static_shape, batch, quantize, validate
) -> ExportReport:
    import onnx

    from . import ort_shim
    from .capture import capture
    from .optimize import optimize_component
    from .quantize import QUANTIZED_COMPONENTS, quantize_component

    with log.stage(f"load {src.location}"):
        pipe = sources.load_pipeline(src)
    architecture = type(pipe).__name__
    # A refiner (SDXL img2img) has no text_encoder: export the components the pipeline has.
    components = tuple(c for c in sources.ARCHITECTURES[architecture] if _has_component(pipe, c))
    # diffusers' SDXL pipelines run a force_upcast VAE in fp32 even for fp16 models (SDXL's VAE
    # overflows fp16 -> black/NaN images): do the same, both VAE graphs stay fp32.
    upcast_vae = architecture in sources.VAE_UPCAST_ARCHITECTURES and bool(
        getattr(pipe.vae.config, "force_upcast", False)
    )

    fp32_bytes = _fp32_bytes(pipe)
    final_factor = 0.5 if dtype == "fp16" else 1.0
    check_disk(out.parent, int(fp32_bytes * (1.0 + final_factor) * 1.1) + 64 * 2**20)

    captured, final = work / "capture", work / "final"
    with log.stage("graph capture (optimum exporter)"):
        capture(pipe, captured, opset=opset)
    _check_layout(captured, components)
    static = None
    if static_shape is not None:
        static = _fix_static_shapes(captured, components, pipe, static_shape, batch)

    # Configs, tokenizer, scheduler, model_index.json: everything but the graphs, as optimum wrote it.
    shutil.copytree(captured, final, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data", "*.onnx.data"))

    f = _latent_factor(pipe)
    if static is not None:
        latent_hw = (static_shape[0] // f, static_shape[1] // f)
    else:
        latent_hw = (min(pipe.unet.config.sample_size, 32),) * 2
    providers = _validation_providers(target)
    results: dict[str, dict] = {}
    for component in components:
        want = "fp32" if (dtype == "fp32" or (component == "vae_decoder" and fp32_vae)) else "fp16"
        if upcast_vae and component.startswith("vae_"):
            want = "fp32"
        path = final / component / "model.onnx"
        # Static graphs only take their fixed batch; dynamic ones are validated at batch 1.
        vbatch = static["dims"].get(component, {}).get("batch_size", 1) if static else 1
        with log.stage(f"{component}: {'fuse for ' + target if optimize else 'copy'}, {want}"):
            info = optimize_component(
                captured / component / "model.onnx", path, component, target, want == "fp16", fuse=optimize
            )
        if want == "fp32" and component.startswith("vae_") and dtype == "fp16":
            info["kept_fp32"] = (
                "vae force_upcast (as diffusers' SDXL pipelines)" if upcast_vae else "--fp32-vae"
            )
        if validate:
            with log.stage(f"{component}: validate against PyTorch"):
                info["validation"] = _validate(component, path, pipe, want, latent_hw, providers, vbatch)
            val = info["validation"]
            if component == "vae_decoder" and want == "fp16" and not val.get("ok", True):
                # fp16 VAE decoders overflow on some models (SDXL's): keep this one fp32.
                log.note(f"vae_decoder fp16 fails validation ({val}); keeping it fp32")
                info = optimize_component(
                    captured / component / "model.onnx", path, component, target, False, fuse=optimize
                )
                info["kept_fp32"] = f"fp16 failed validation: {val}"
                info["validation"] = _validate(component, path, pipe, "fp32", latent_hw, providers, vbatch)
                val = info["validation"]
            if not val.get("ok", True):
                raise ExportError(f"{component}: exported graph differs from PyTorch beyond tolerance: {val}")
        if quantize and component in QUANTIZED_COMPONENTS:
            with log.stage(f"{component}: quantize {quantize}"):
                info["quantized"] = quantize_component(path)
            if validate:
                info["quantized"]["validation"] = _validate(
                    component, path, pipe, "int8", latent_hw, providers, vbatch
                )
                qval = info["quantized"]["validation"]
                if not qval.get("finite", True) or not qval.get("ok", True):
                    raise ExportError(f"{component}: int8 graph fails validation: {qval}")
        if component == "vae_decoder" and info["dtype"] == "fp16":
            # The runtime's fallback when an fp16 decode overflows (NaN/inf) for some image.
            fallback = path.with_name(FP32_DECODER)
            with log.stage(f"{component}: fp32 fallback {FP32_DECODER}"):
                extra = optimize_component(
                    captured / component / "model.onnx", fallback, component, target, False, fuse=optimize
                )
            info["fp32_fallback"] = {"file": FP32_DECODER, "fusions": extra["fusions"]}
            onnx.checker.check_model(str(fallback))
        onnx.checker.check_model(str(path))
        results[component] = info

    opset_used = max(
        (
            o.version
            for o in onnx.load(str(final / "unet" / "model.onnx"), load_external_data=False).opset_import
            if o.domain in ("", "ai.onnx")
        ),
        default=0,
    )
    report = ExportReport(out, str(src.location), architecture, dtype, target, opset_used, results)
    _write_json(
        final / SDLITE_JSON,
        {
            "format": FORMAT_VERSION,
            "source": report.source,
            "source_kind": src.kind,
            "architecture": architecture,
            "dtype": dtype,
            "target": target,
            "provider": PROVIDERS[target],
            "opset": opset_used,
            "optimized": optimize,
            "fp32_vae": fp32_vae,
            "quantize": quantize,
            "static_shape": static,
            "io_dtype": "graph inputs/outputs use the component's dtype (float16 for fp16 graphs)",
            "ort_shim_fusion_attention_unet": ort_shim.apply() if optimize else False,
            "validated_on": providers[0] if validate else None,
            "versions": _versions(),
            "components": results,
        },
    )
    return report
