"""``sdlite`` command line: ``generate``, ``info``, ``samplers``, ``batch``, ``serve`` and ``export``.

Exit status: 0 on success, 2 for bad arguments or a bad model folder (nothing is written),
1 for a failure while generating or writing (a full disk: "no space left on device writing
PATH"), 130 when interrupted, 141 (128 + SIGPIPE, as a C tool's) when stdout is closed early
(``sdlite samplers | head -1``): quietly.  No user error prints a traceback; an unexpected
failure prints one line, and its traceback with ``SDLITE_DEBUG=1``.  ``--out``: see ``sdlite.cli_out``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cli_extras, rules
from .arg_types import integer, number, pixel_budget, pixel_budget_help
from .cli_out import DEFAULT_OUT, check_out, out_paths, save_all
from .errors import UsageError
from .models_dir import model_path

# What Python makes of argument bytes that are not UTF-8 (PEP 383's surrogate escapes).
NOT_UTF8 = re.compile("[\udc80-\udcff]")
DEBUG_ENV = "SDLITE_DEBUG"
EXIT_SIGPIPE = 141


# The Pipeline's argument names -> the flags that set them, so that an error names what was typed.
# (The prompt is positional: its errors keep the name "prompt".)
FLAGS = {
    "prompt_2": "--prompt-2",
    "negative_prompt": "--negative-prompt",
    "negative_prompt_2": "--negative-prompt-2",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "sampler": "--sampler",
    "seed": "--seed",
    "width": "--width",
    "height": "--height",
    "num_images_per_prompt": "--num-images",
    "strength": "--strength",
    "vae_tile_size": "--vae-tile-size",
    "preview_every": "--preview-every",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdlite", description="Stable Diffusion on ONNX Runtime, without PyTorch."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_generate(sub)
    i = sub.add_parser("info", help="describe a model folder: components, dtypes, sizes, providers")
    i.add_argument(
        "model", nargs="?", default=None, metavar="DIR", help="model folder (default: the demo model)"
    )
    sub.add_parser("samplers", help="list the sampler names")
    # Their modules import only the standard library at the top: `sdlite --help` stays fast.
    from . import batch
    from .server import cli as serve

    batch.add_parser(sub)
    serve.add_parser(sub)
    sub.add_parser("export", help="export a diffusers model to ONNX (needs 'sdlite[export]')", add_help=False)
    return p


def _add_generate(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate images from a prompt (text-to-image or image-to-image)")
    g.add_argument("prompt", help="what to draw")
    g.add_argument("--model", metavar="DIR", help="exported model folder (default: the embedded demo model)")
    g.add_argument("--negative-prompt", default=None, metavar="TEXT", help="what to steer away from")
    g.add_argument(
        "--prompt-2", default=None, metavar="TEXT", help="SDXL: prompt for the second text encoder"
    )
    g.add_argument(
        "--negative-prompt-2", default=None, metavar="TEXT", help="SDXL: negative prompt for encoder 2"
    )
    g.add_argument("--steps", type=integer, default=None, help="sampling steps (default: the model's preset)")
    g.add_argument(
        "--guidance", type=number, default=None, help="classifier-free guidance scale (default: preset)"
    )
    g.add_argument("--sampler", default=None, help="sampler name, see 'sdlite samplers' (default: preset)")
    g.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="sampling defaults of a model family: sd, sdxl, sd-turbo, sdxl-turbo, lcm, lcm-lora "
        "(default: detected, see 'sdlite info')",
    )
    g.add_argument("--seed", type=integer, default=None, help="seed of the first image (default random)")
    g.add_argument("--width", type=integer, default=None, help="image width in pixels (default: model's)")
    g.add_argument("--height", type=integer, default=None, help="image height in pixels (default: model's)")
    g.add_argument("-n", "--num-images", type=integer, default=1, help="number of images (default 1)")
    g.add_argument("--image", metavar="PATH", default=None, help="start from this image (image-to-image)")
    g.add_argument(
        "--mask", metavar="PATH", default=None, help="inpaint: white = repaint, black = keep (needs --image)"
    )
    g.add_argument(
        "--strength",
        type=number,
        default=None,
        help="strength in (0, 1] (default 0.8 for image-to-image, 1.0 for inpainting)",
    )
    g.add_argument("--provider", default=None, help="cpu, cuda, rocm, dml, coreml (default: best available)")
    g.add_argument(
        "--max-pixels", metavar="N", type=pixel_budget, default=None, help=pixel_budget_help("allowed")
    )
    g.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="PATH",
        help="PNG to write; {seed} and {i} are replaced, the rest is literal; with -n > 1 and neither, "
        "-{i} is added (out.png -> out-1.png, ...); a folder gets the default name (%(default)s)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    cli_extras.add_flags(g)


def _check_flags(args: argparse.Namespace) -> None:
    """The rules that need no model, checked before it loads (sizes: ``_check_size``); the Pipeline
    checks them all again.  Named as the Pipeline names them; ``_flag_error`` adds the flag."""
    for name in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "out"):
        _check_utf8(name, getattr(args, name))
    for name in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2"):
        if getattr(args, name) is not None:
            rules.check_text(name, getattr(args, name))
    n = rules.check_images(args.num_images, 1)
    if args.steps is not None:
        rules.check_int("num_inference_steps", args.steps, 1, rules.MAX_STEPS)
    if args.guidance is not None:
        rules.check_float("guidance_scale", args.guidance, *rules.GUIDANCE_RANGE)
    if args.strength is not None:
        rules.check_float("strength", args.strength, *rules.STRENGTH_RANGE, lo_open=True)
    if args.seed is not None:
        rules.check_seeds(args.seed, n)
    if args.sampler is not None:
        rules.check_sampler(args.sampler)


def _check_utf8(name: str, value: str | None) -> None:
    # The rules would call it a lone surrogate, which is true of the str but not of what was typed.
    if value is not None and (bad := NOT_UTF8.search(value)) is not None:
        label = FLAGS.get(name, name if name == "prompt" else f"--{name}")
        raise UsageError(
            f"{label} is not valid UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x}); "
            "give it in UTF-8, your terminal's usual encoding"
        )


def _flag_error(err: rules.RuleError) -> str:
    """A broken rule worded with the flag that set the value (and the Pipeline's name for it)."""
    flag = FLAGS.get(err.field)
    if flag is None:
        return str(err)
    label = flag if flag[2:].replace("-", "_") == err.field else f"{flag} ({err.field})"
    return str(rules.RuleError(label, err.allowed, err.value))


def _inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """--image, --mask and --preset checked (and the images read) before the model loads."""
    from . import images

    image = images.load_image(args.image, "--image") if args.image is not None else None
    if args.mask is not None and image is None:
        raise UsageError("--mask needs --image (inpainting repaints the masked area of the image)")
    if args.preset is not None:
        from .presets import get as get_preset

        get_preset(args.preset)  # a bad name is an error before the model loads
    mask = None
    if args.mask is not None:
        from .inpaint import load_mask

        mask = load_mask(args.mask, "--mask")
    return image, mask


def _check_size(args: argparse.Namespace, model: Path, image: Any) -> None:
    """--width, --height and the pixel budget checked from the folder's JSON files, before any
    session loads: a --width of 100000 costs no model load.  The Pipeline checks them again."""
    from .folder import load_folder

    folder = load_folder(model)
    factor = folder.vae_factor  # None: only the VAE's graph tells, and the Pipeline checks the sides
    multiple = rules.size_multiple(factor, folder.unet_downsampling) if factor else None
    native = folder.unet_sample_size * factor if factor and folder.unet_sample_size else None
    sides = []
    for key in ("width", "height"):
        value = getattr(args, key)
        if value is not None and multiple:
            rules.check_size(key, value, multiple, vae_factor=factor)
        elif value is None and image is not None and multiple:  # image-to-image: the image's size
            value = max(getattr(image, key) // multiple * multiple, multiple)
        sides.append(native if value is None else value)
    budget = args.max_pixels or rules.max_pixels("sdxl" if folder.is_sdxl else "sd")
    if None not in sides:
        rules.check_pixels(*sides, args.num_images, budget)
    cli_extras.check_vae(args, factor, sides)


def _generate(args: argparse.Namespace) -> int:
    from PIL import Image  # noqa: F401  (fail early if Pillow is broken)

    from .pipeline import Pipeline

    _check_flags(args)
    # Seeds drawn here, so that every file --out names is known and checked before the model loads.
    seeds = rules.check_seeds(args.seed, args.num_images)
    paths = out_paths(args.out, seeds)
    check_out(paths)
    image, mask = _inputs(args)
    extras = cli_extras.prepare(args)
    model = model_path(args.model)
    _check_size(args, model, image)
    pipe = Pipeline.from_pretrained(model, provider=args.provider, preset=args.preset)
    if args.max_pixels is not None:
        pipe.max_pixels = args.max_pixels
    more = cli_extras.apply(extras, pipe, args)
    progress, close = cli_extras.progress(args)
    try:
        out = pipe(
            prompt_2=args.prompt_2,
            negative_prompt_2=args.negative_prompt_2,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=args.height,
            width=args.width,
            sampler=args.sampler,
            seed=seeds,
            num_images_per_prompt=args.num_images,
            image=image,
            strength=args.strength,
            mask_image=mask,
            callback=progress,
            **more,
        )
    finally:
        close()
    return save_all(paths, out.images, cli_extras.parameters(extras, args, out.parameters))


def _info(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from .folder import load_folder
    from .pipeline import Pipeline
    from .sessions import installed_ort_wheels, resolve_providers

    model = model_path(args.model)
    folder = load_folder(model)
    pipe = Pipeline(folder, resolve_providers("cpu"))  # sessions on CPU: only their graphs matter here
    # Named by folder: a refiner has only text_encoder_2, SDXL both.
    sessions = {s.path.parent.name: s for s in pipe.prompt_encoder.sessions}
    sessions |= {"unet": pipe.unet, "vae_decoder": pipe.vae_decoder}
    if pipe.vae_encoder is not None:
        sessions["vae_encoder"] = pipe.vae_encoder
    print(f"model: {folder.path}")
    for comp, sess in sessions.items():
        files = sess.path.parent.iterdir()
        size = sum(f.stat().st_size for f in files if f.is_file() and f.name != "config.json")
        types = sorted({t.replace("tensor(", "").rstrip(")") for t in sess.output_types.values()})
        ins = ", ".join(
            f"{i.name}: {i.dtype.__name__}[{', '.join(map(str, i.shape))}]" for i in sess.inputs.values()
        )
        print(f"  {comp:<14} {size / 2**20:8.2f} MiB  {'/'.join(types):<8} inputs {ins}")
    print(
        f"  tokenizer     {folder.tokenizer_dir.name}/ (max length {pipe.tokenizer.model_max_length}, "
        f"pad {pipe.tokenizer.pad_token!r})"
    )
    print(
        f"  scheduler     {folder.scheduler_config.get('_class_name', '?')}, "
        f"prediction {folder.scheduler_config.get('prediction_type', 'epsilon')}"
    )
    print(
        f"default size: {pipe.default_size}x{pipe.default_size} (latent factor {pipe.vae_scale_factor}, "
        f"VAE scaling {folder.scaling_factor:g})"
    )
    print(f"fp32 VAE decoder fallback: {'yes' if folder.fp32_decoder else 'no'}")
    print(f"preset: {pipe.preset.describe()}")
    print(f"onnxruntime {ort.__version__}, providers available: {', '.join(ort.get_available_providers())}")
    wheels = installed_ort_wheels()
    if len(wheels) > 1:
        print(
            f"warning: several ONNX Runtime wheels are installed ({', '.join(wheels)}); they share one "
            "module and overwrite each other: uninstall all, then install the one you need"
        )
    return 0


def _samplers() -> int:
    from .samplers import SAMPLERS

    width = max(map(len, SAMPLERS))
    for name, desc in SAMPLERS.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def _export(argv: list[str]) -> int:
    try:
        from .export.cli import main as export_main
    except ImportError as err:
        print(
            f"sdlite: error: export needs the export extra: pip install 'sdlite[export]' ({err})",
            file=sys.stderr,
        )
        return 2
    return int(export_main(argv) or 0)


def _run(args: argparse.Namespace) -> int:
    if args.command == "generate":
        return _generate(args)
    if args.command == "info":
        return _info(args)
    if args.command == "batch":
        from . import batch

        return batch.run(args)
    if args.command == "serve":
        from .server import cli as serve

        return serve.run(args)
    return _samplers()


def _error(err: Exception) -> int:
    """A user's error as one line on stderr, and its exit status."""
    if isinstance(err, rules.RuleError):
        hint = " (--max-pixels sets this limit)" if err.field == "height x width" else ""
        print(f"sdlite: error: {_flag_error(err)}{hint}", file=sys.stderr)
        return 2
    if isinstance(err, (UsageError, ValueError, FileNotFoundError)):
        print(f"sdlite: error: {err}", file=sys.stderr)
        return 2
    # Anything else is a failure while running: one line and a way to see more, not a traceback.
    print(
        f"sdlite: error: {type(err).__name__}: {err} (set {DEBUG_ENV}=1 to see the traceback)",
        file=sys.stderr,
    )
    return 1


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "export":
        return _export(argv[1:])
    try:
        return _run(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("sdlite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # stdout closed by the reader: main() ends quietly
    except Exception as err:  # noqa: BLE001 - the one place where every error becomes a message
        if os.environ.get(DEBUG_ENV):
            raise
        return _error(err)


def _quiet_stdout() -> None:
    # Python's docs, "Note on SIGPIPE": stdout onto /dev/null, so that the interpreter's own
    # flush at exit finds nothing to complain about.
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a captured stdout): nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sdlite ARGV``; the exit status (see the module docstring)."""
    try:
        try:
            return _main(list(sys.argv[1:] if argv is None else argv))
        finally:
            sys.stdout.flush()  # a closed pipe shows here (also after --help), not as a warning at exit
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_SIGPIPE
