"""Child processes with a time limit each, and the device's memory meter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from benchmarks.models import REPO


def task_cmd(name: str, spec: dict) -> list[str]:
    """The command that runs one task of ``benchmarks.gpu.tasks`` in a fresh process."""
    return [sys.executable, "-m", "benchmarks.gpu", "--task", name, json.dumps(spec)]


def _env() -> dict[str, str]:
    # The repo for `benchmarks`, then whatever the caller set up (gpu_run.sh: ORT-GPU, wheels, sdlite).
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(REPO), *rest])}


@dataclass
class Child:
    """A started child: its process, its log, and when it must have ended."""

    name: str
    args: list[str]
    proc: subprocess.Popen
    log_path: Path
    log_file: IO[str]
    limit_at: float
    started: float = field(default_factory=time.monotonic)

    def wait(self) -> str | None:
        """None when the child succeeded, else why not (with the tail of its log)."""
        try:
            self.proc.wait(timeout=max(1.0, self.limit_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            why = "timed out"
        else:
            why = None if self.proc.returncode == 0 else f"rc {self.proc.returncode}"
        self.log_file.close()
        if why is None:
            return None
        return f"{why}: {self.log_path.read_text(errors='replace')[-1500:].strip()}"


def start(args: list[str], limit: float, work: Path, name: str) -> Child:
    log_path = work / "logs" / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by Child.wait
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    return Child(name, args, proc, log_path, log, time.monotonic() + limit)


def _smi(query: str, timeout: float) -> str | None:
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=timeout,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info() -> dict | None:
    """Name, driver and memory of GPU 0 from nvidia-smi; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        name, driver, total = (
            x.strip() for x in (_smi("name,driver_version,memory.total", 20) or "").split(",")
        )
        return {"gpu": name, "driver": driver, "gpu_memory_mb": float(total)}
    except ValueError:
        return None


def _gpu_used_mb() -> float | None:
    try:
        return float(_smi("memory.used", 10) or "")
    except ValueError:
        return None


class GpuMeter:
    """Peak device memory.used while a child runs, over the baseline before it started: one meter
    for all three systems (ORT's arena has no public peak counter)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.enabled = shutil.which("nvidia-smi") is not None
        self.interval = interval
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuMeter:
        if self.enabled:
            self.base = _gpu_used_mb() or 0.0
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = _gpu_used_mb()
            if used is not None:
                self.peak = max(self.peak or 0.0, used - self.base)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
