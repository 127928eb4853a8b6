"""Install footprint: site-packages of a fresh virtualenv with ``pip install .`` (no extras) vs
one with diffusers + transformers + torch (CPU).

The venvs are kept under the cache, keyed by what they install, so reruns only measure.  The
figure is the site-packages size minus that of an empty venv (pip itself), i.e. what the user's
install adds.  torch is pinned to the installed version: an unpinned ``torch`` resolves to a
multi-GB CUDA build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def du_mb(path: Path) -> float:
    """Apparent size of the files under ``path`` in MB (what ``du -sb`` reports)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root, f)
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 1e6


def _venv(path: Path, requirements: list[str], log) -> float:
    """Create the venv (once), install ``requirements``; return site-packages MB added."""
    done = path / ".complete"
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        (path / ".empty_mb").write_text(str(du_mb(_site_packages(path))))
        log(f"[install] pip install {' '.join(requirements)} into {path}")
        proc = subprocess.run(
            [str(path / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip install {requirements} failed: {proc.stderr[-1500:]}")
        done.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return du_mb(_site_packages(path)) - float((path / ".empty_mb").read_text())


def _repo_key(repo: Path) -> str:
    # What decides sdlite's install: its metadata and the files it ships.
    h = hashlib.sha256((repo / "pyproject.toml").read_bytes())
    for top in ("runtime", "models"):
        for p in sorted((repo / top).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(f"{p.relative_to(repo)}:{p.stat().st_size};".encode())
    return h.hexdigest()[:12]


def measure(repo: Path, cache_dir: Path, build: bool, log=print) -> tuple[dict, str | None]:
    """``({"sdlite": MB, "diffusers": MB}, note)``; with ``build=False`` only a cached figure."""
    torch_req = f"torch=={version('torch').split('+')[0]}"
    peers = [torch_req, f"diffusers=={version('diffusers')}", f"transformers=={version('transformers')}"]
    figure = cache_dir / "install_mb.json"
    key = {"sdlite": _repo_key(repo), "diffusers": " ".join(peers)}
    cached = json.loads(figure.read_text()) if figure.exists() else None
    if not build:
        if cached is None:
            return {
                "sdlite": None,
                "diffusers": None,
            }, "install footprint not measured (quick run, no cached figure)"
        stale = "" if cached["key"] == key else ", from an older tree"
        return cached["install_mb"], f"install footprint reused from {cached['date_utc']}{stale}"
    venvs = cache_dir / "venvs"
    for old in venvs.glob("sdlite-*"):  # one sdlite venv at a time: the tree changes often
        if old.name != f"sdlite-{key['sdlite']}":
            shutil.rmtree(old, ignore_errors=True)
    sd = _venv(venvs / f"sdlite-{key['sdlite']}", [str(repo)], log)
    peer_hash = hashlib.sha256(key["diffusers"].encode()).hexdigest()[:12]
    df = _venv(venvs / f"diffusers-{peer_hash}", peers, log)
    result = {"sdlite": round(sd, 1), "diffusers": round(df, 1)}
    figure.parent.mkdir(parents=True, exist_ok=True)
    tmp = figure.with_suffix(".tmp")
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp.write_text(json.dumps({"key": key, "install_mb": result, "date_utc": date}))
    os.replace(tmp, figure)
    return result, f"install footprint: site-packages added to a fresh venv; peers = {' + '.join(peers)}"
