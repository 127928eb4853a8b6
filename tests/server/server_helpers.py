"""Start and stop real ``sdlite serve`` processes on free loopback ports; read their answers."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO

import httpx
from PIL import Image

API_KEY = "test-key-123"
# httpx must not route loopback requests through a proxy from the environment.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log: IO[str]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str, timeout: float = 90.0) -> Served:
    port = _free_port()
    cmd = [sys.executable, "-m", "sdlite", "serve", "--port", str(port), "--log-level", "warning", *args]
    # Output to a file, not a pipe: nobody reads a pipe while the tests run, and a full one blocks.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    served = Served(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sdlite serve exited with {proc.returncode}: {served.output()}")
        try:
            if httpx.get(f"{served.url}/health", timeout=2).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(served)
    raise RuntimeError(f"sdlite serve did not answer /health within {timeout} s: {served.output()}")


def stop_server(served: Served) -> None:
    served.proc.send_signal(signal.SIGINT)
    try:
        served.proc.wait(20)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait()
    served.log.close()


def decode_png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def metric(text: str, name: str) -> float:
    """One sample's value from Prometheus text (``name`` includes labels, as written)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)
