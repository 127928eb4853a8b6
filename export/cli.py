"""`sdlite export SOURCE OUT [options]`: the command-line face of `export_model`.

`sdlite.cli` (the runtime's CLI) imports this lazily for its `export` subcommand, so the
runtime never needs the export extra; `python -m sdlite.export` runs it directly.
"""

from __future__ import annotations

import argparse
import sys

from .convert import COMMANDS
from .options import DTYPES
from .quantize import METHODS
from .targets import TARGETS

DESCRIPTION = """Export a diffusers Stable Diffusion model to fused ONNX (optimum's layout) for sdlite.
SOURCE is a local diffusers folder, a Hugging Face hub id, or a single .safetensors file
(with --config naming a local diffusers folder of the same architecture).

Converters (pickles to .safetensors, without running their code), taken only as the first argument:
  convert-lora IN OUT.safetensors        a kohya / diffusers LoRA .pt/.ckpt/.bin
  convert-embedding IN OUT.safetensors   an A1111 .pt or diffusers learned_embeds.bin embedding
(a SOURCE folder literally named like one of them is exported as ./convert-lora)."""


def build_parser(prog: str = "sdlite export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", metavar="SOURCE", help="diffusers folder, hub id, or .safetensors file")
    p.add_argument("out", metavar="OUT", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16", help="weights and activations (default fp16)")
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="cuda",
        help="execution provider the fusions are chosen for (default cuda; use cpu to run on the CPU)",
    )
    p.add_argument("--no-optimize", action="store_true", help="skip the graph fusions (plain optimum graphs)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: optimum's)")
    p.add_argument("--fp32-vae", action="store_true", help="keep the VAE decoder in fp32 (fp16 overflow)")
    p.add_argument(
        "--static-shape", metavar="HxW", default=None, help="fix the image size in pixels, e.g. 512x512"
    )
    p.add_argument("--batch", type=int, default=None, help="images per prompt for --static-shape (default 1)")
    p.add_argument(
        "--allow-pickle", action="store_true", help="accept .ckpt/.pt/.bin pickles (can run code!)"
    )
    p.add_argument("--config", metavar="DIR", default=None, help="diffusers folder for a single-file SOURCE")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT (only once the export succeeded)"
    )
    p.add_argument(
        "--quantize", choices=METHODS, default=None, help="dynamic int8 weights (--target cpu --dtype fp32)"
    )
    p.add_argument("--no-validate", action="store_true", help="skip the comparison against PyTorch")
    p.add_argument(
        "--preview-decoder",
        metavar="DIR",
        default=None,
        help="a diffusers AutoencoderTiny folder (TAESD/TAESDXL) to export as preview_decoder/",
    )
    p.add_argument(
        "--separate-qkv",
        action="store_true",
        help="GPU targets: keep attention's Q, K, V weights apart so LoRAs can merge into them",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        from .convert import main as convert_main

        return convert_main(argv)
    args = build_parser().parse_args(argv)
    from .errors import ExportError
    from .exporter import export_model

    try:
        report = export_model(
            args.source,
            args.out,
            dtype=args.dtype,
            target=args.target,
            optimize=not args.no_optimize,
            opset=args.opset,
            fp32_vae=args.fp32_vae,
            static_shape=args.static_shape,
            batch=args.batch,
            allow_pickle=args.allow_pickle,
            config=args.config,
            overwrite=args.overwrite,
            quantize=args.quantize,
            validate=not args.no_validate,
            progress=not args.quiet,
            preview_decoder=args.preview_decoder,
            separate_qkv=args.separate_qkv,
        )
    except (ValueError, ExportError) as exc:
        print(f"sdlite export: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    for name, info in report.components.items():
        fused = ", ".join(f"{op} {n}" for op, n in info.get("fusions", {}).items()) or "none"
        val = info.get("validation", {})
        rel = f"rel err {val['rel_error']:.1e}" if "rel_error" in val else val.get("skipped", "not validated")
        quant = info.get("quantized", {}).get("validation", {})
        if "rel_error" in quant:
            rel += f"; int8 rel err {quant['rel_error']:.1e}"
        print(f"{name}: {info['dtype']}; fused: {fused}; {rel}")
    print(f"exported to {report.out}")
    return 0
