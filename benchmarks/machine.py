"""What the figures were measured on: CPU, cores, memory, load, library versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_DISTS = (
    "sdlite",
    "numpy",
    "onnxruntime",
    "tokenizers",
    "pillow",
    "torch",
    "diffusers",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _git(repo: Path) -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True
        )
    except OSError:
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe(repo: Path) -> dict:
    """The ``machine`` block of the results file."""
    versions = {}
    for dist in _DISTS:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    mem = _mem_gb()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(mem, 1) if mem else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "commit": _git(repo),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # The machine is shared: the load average says how noisy the figures are.
        "loadavg_start": list(os.getloadavg()),
    }
