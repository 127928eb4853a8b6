"""Shared fixtures: tiny SD-1/SD-2 models as diffusers folders and as optimum ONNX exports.

Building and exporting takes ~10 s per model, so the results are cached across test sessions
under the git-ignored ``.cache/tiny-models/<key>`` (override with ``SDLITE_TEST_CACHE``); the key
hashes ``tests/tiny_models.py`` and the versions of the libraries that produce the files, so a
change to either builds afresh.  Folders are built under a temporary name and renamed, so an
interrupted build never leaves a half-written model that a later session would trust.
"""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import tiny_models

REPO = Path(__file__).resolve().parent.parent


def _cache_root() -> Path:
    h = hashlib.sha256(Path(tiny_models.__file__).read_bytes())
    for dist in ("torch", "diffusers", "transformers", "optimum", "optimum-onnx", "onnx"):
        try:
            h.update(f"{dist}={version(dist)};".encode())
        except PackageNotFoundError:
            h.update(f"{dist}=none;".encode())
    base = Path(os.environ.get("SDLITE_TEST_CACHE", REPO / ".cache" / "tiny-models"))
    return base / h.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_cache() -> Path:
    return _cache_root()


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tiny_cache: Path) -> Path:
    """A folder with the real CLIP ``vocab.json`` + ``merges.txt``."""
    return tiny_models.cached_build(tiny_cache, "clip", tiny_models.clip_tokenizer_files)


def _diffusers(tiny_cache: Path, kind: str) -> Path:
    return tiny_models.cached_build(
        tiny_cache, f"{kind}-diffusers", lambda p: tiny_models.build_tiny_sd(p, kind=kind, seed=0)
    )


def _onnx(tiny_cache: Path, kind: str) -> Path:
    src = _diffusers(tiny_cache, kind)
    return tiny_models.cached_build(tiny_cache, f"{kind}-onnx", lambda p: tiny_models.export_optimum(src, p))


@pytest.fixture(scope="session")
def tiny_sd1_diffusers(tiny_cache: Path) -> Path:
    return _diffusers(tiny_cache, "sd1")


@pytest.fixture(scope="session")
def tiny_sd2_diffusers(tiny_cache: Path) -> Path:
    return _diffusers(tiny_cache, "sd2")


@pytest.fixture(scope="session")
def tiny_sd1_onnx(tiny_cache: Path) -> Path:
    return _onnx(tiny_cache, "sd1")


@pytest.fixture(scope="session")
def tiny_sd2_onnx(tiny_cache: Path) -> Path:
    return _onnx(tiny_cache, "sd2")


def _sdxl_diffusers(tiny_cache: Path, kind: str) -> Path:
    return tiny_models.cached_build(
        tiny_cache, f"sdxl-{kind}-diffusers", lambda p: tiny_models.build_tiny_sdxl(p, kind=kind, seed=0)
    )


def _sdxl_export(tiny_cache: Path, kind: str) -> Path:
    """``sdlite export --dtype fp32 --target cpu`` of the tiny SDXL model (cached like the rest)."""

    def build(out: Path) -> None:
        from sdlite.export import export_model

        export_model(_sdxl_diffusers(tiny_cache, kind), out, dtype="fp32", target="cpu", progress=False)

    return tiny_models.cached_build(tiny_cache, f"sdxl-{kind}-sdlite", build)


def _sdxl_plain_export(tiny_cache: Path, kind: str) -> Path:
    """``sdlite export --dtype fp32 --target cpu --no-optimize``: the fused graphs are covered by
    the base and refiner exports; this one's fusion pass would add a minute."""

    def build(out: Path) -> None:
        from sdlite.export import export_model

        export_model(
            _sdxl_diffusers(tiny_cache, kind), out, dtype="fp32", target="cpu", optimize=False, progress=False
        )

    return tiny_models.cached_build(tiny_cache, f"sdxl-{kind}-sdlite-plain", build)


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint_diffusers(tiny_cache: Path) -> Path:
    return _sdxl_diffusers(tiny_cache, "inpaint")


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint_onnx(tiny_cache: Path) -> Path:
    return _sdxl_plain_export(tiny_cache, "inpaint")


@pytest.fixture(scope="session")
def tiny_sdxl_diffusers(tiny_cache: Path) -> Path:
    return _sdxl_diffusers(tiny_cache, "base")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_diffusers(tiny_cache: Path) -> Path:
    return _sdxl_diffusers(tiny_cache, "refiner")


@pytest.fixture(scope="session")
def tiny_sdxl_onnx(tiny_cache: Path) -> Path:
    """The tiny SDXL base exported by ``sdlite export`` (fp32, CPU fusions)."""
    return _sdxl_export(tiny_cache, "base")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_onnx(tiny_cache: Path) -> Path:
    """The tiny SDXL refiner exported by ``sdlite export`` (fp32, CPU fusions)."""
    return _sdxl_export(tiny_cache, "refiner")


@pytest.fixture(scope="session")
def tiny_sdxl_optimum(tiny_cache: Path) -> Path:
    """The tiny SDXL base exported by ``optimum-cli export onnx --task text-to-image``."""
    src = _sdxl_diffusers(tiny_cache, "base")
    return tiny_models.cached_build(
        tiny_cache, "sdxl-base-optimum", lambda p: tiny_models.export_optimum(src, p)
    )


def _fewstep_diffusers(tiny_cache: Path, kind: str) -> Path:
    return tiny_models.cached_build(
        tiny_cache, f"{kind}-diffusers", lambda p: tiny_models.build_tiny_fewstep(p, kind=kind, seed=0)
    )


def _fewstep_export(tiny_cache: Path, kind: str) -> Path:
    """``sdlite export --dtype fp32 --target cpu`` (the command line) of a tiny LCM / inpainting model."""
    src = _fewstep_diffusers(tiny_cache, kind)

    def build(out: Path) -> None:
        from sdlite.cli import main

        code = main(["export", str(src), str(out), "--dtype", "fp32", "--target", "cpu", "--quiet"])
        assert code == 0, f"sdlite export of the tiny {kind} model failed ({code})"

    return tiny_models.cached_build(tiny_cache, f"{kind}-sdlite", build)


@pytest.fixture(scope="session")
def tiny_lcm_diffusers(tiny_cache: Path) -> Path:
    """A tiny ``LatentConsistencyModelPipeline`` (U-Net with ``time_cond_proj_dim``)."""
    return _fewstep_diffusers(tiny_cache, "lcm")


@pytest.fixture(scope="session")
def tiny_lcm_onnx(tiny_cache: Path) -> Path:
    return _fewstep_export(tiny_cache, "lcm")


@pytest.fixture(scope="session")
def tiny_inpaint_diffusers(tiny_cache: Path) -> Path:
    """A tiny ``StableDiffusionInpaintPipeline`` with a 9-channel U-Net."""
    return _fewstep_diffusers(tiny_cache, "inpaint")


@pytest.fixture(scope="session")
def tiny_inpaint_onnx(tiny_cache: Path) -> Path:
    return _fewstep_export(tiny_cache, "inpaint")
