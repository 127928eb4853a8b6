"""The models the suite measures, built once into the git-ignored ``.cache/benchmarks/``.

Every folder is built under a temporary name and renamed when complete (``cached_build`` from
``tests/tiny_models.py``), and keyed by a hash of the code and library versions that produce
it, so an interrupted or outdated build is never trusted.  Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / ".cache" / "benchmarks"
_PRODUCERS = ("torch", "diffusers", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")


@cache
def tiny_models() -> ModuleType:
    """``tests/tiny_models.py``, loaded by path: the same tiny model the tests use."""
    spec = importlib.util.spec_from_file_location(
        "sdlite_bench_tiny_models", REPO / "tests" / "tiny_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def source_key(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        for p in sorted(f.rglob("*.py")) if f.is_dir() else [f]:
            h.update(p.read_bytes())
    for dist in _PRODUCERS:
        try:
            h.update(f"{dist}={version(dist)};".encode())
        except PackageNotFoundError:
            h.update(f"{dist}=none;".encode())
    return h.hexdigest()[:12]


@dataclass
class Model:
    """One model as the three systems see it."""

    name: str
    diffusers_dir: Path  # diffusers folder (PyTorch weights)
    optimum_dir: Path  # optimum's plain export
    sdlite_dir: Path  # our fused export, or optimum's when ours could not be made
    sdlite_export: str  # "sdlite" or "optimum": which exporter produced sdlite_dir
    note: str | None = None  # why sdlite_export is "optimum", when it is
    latent_factor: int = 8


def _latent_factor(diffusers_dir: Path) -> int:
    import json

    cfg = json.loads((diffusers_dir / "vae" / "config.json").read_text())
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def export_sdlite(src: Path, out: Path) -> Path:
    """Our exporter through its documented CLI (fp32, CPU fusions), in a child process.

    A child process so that the export's peak memory (large for SD 1.5) is returned to the OS
    before anything is timed.
    """
    cmd = [sys.executable, "-m", "sdlite.export", str(src), str(out), "--dtype", "fp32", "--target", "cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"sdlite export failed (rc {proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}"
        )
    return out


def prepare(name: str, cache_dir: Path, build, key_files: tuple[Path, ...], log=print) -> Model:
    """Build (or reuse) the diffusers folder ``name`` and both exports of it."""
    tm = tiny_models()
    root = cache_dir / f"{name}-{source_key(REPO / 'tests' / 'tiny_models.py', *key_files)}"
    log(f"[models] {name}: diffusers folder")
    src = tm.cached_build(root, "diffusers", build)
    log(f"[models] {name}: optimum export")
    opt = tm.cached_build(root, "optimum-onnx", lambda p: tm.export_optimum(src, p))
    # Our export is keyed by the exporter's own sources too: a change there re-exports.
    ours_root = root / f"sdlite-{source_key(REPO / 'export')}"
    log(f"[models] {name}: sdlite export")
    try:
        ours = tm.cached_build(ours_root, "onnx", lambda p: export_sdlite(src, p))
        which, note = "sdlite", None
    except Exception as e:  # any failure of our exporter falls back, and the output says so
        ours, which = opt, "optimum"
        note = f"sdlite export unavailable, sdlite row runs on optimum's export: {str(e).strip()[-400:]}"
        log(f"[models] {note}")
    return Model(name, src, opt, ours, which, note, _latent_factor(src))


def tiny(cache_dir: Path = DEFAULT_CACHE, log=print) -> Model:
    """The tests' tiny SD-1-style model (random weights, real CLIP tokenizer, VAE factor 4)."""
    return prepare(
        "tiny-sd1", cache_dir, lambda p: tiny_models().build_tiny_sd(p, kind="sd1", seed=0), (), log
    )


def sd15_arch(cache_dir: Path = DEFAULT_CACHE, log=print) -> Model:
    """SD 1.5's architecture with random weights (860M-parameter U-Net, fp32)."""
    from benchmarks.sd15 import build_sd15_arch

    def build(path: Path) -> Path:
        return build_sd15_arch(path, lambda d: tiny_models().make_clip_tokenizer("sd1", d))

    return prepare("sd15-arch", cache_dir, build, (Path(__file__).with_name("sd15.py"),), log)
