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
import numpy as np
from PIL import Image
from safetensors.numpy import save_file

API_KEY = "test-key-123"
TO_Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"  # 48 x 48 in the demo U-Net
CONV = "unet.down_blocks.0.resnets.0.conv1"  # 32 x 32 x 3 x 3
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


def write_lora(path, seed: int, conv: bool = False) -> None:
    """A diffusers/PEFT LoRA file with random weights: a visible change to the demo model's image."""
    rng = np.random.default_rng(seed)
    if conv:
        tensors = {
            f"{CONV}.lora_A.weight": rng.standard_normal((4, 32, 3, 3)).astype(np.float32) * 0.2,
            f"{CONV}.lora_B.weight": rng.standard_normal((32, 4, 1, 1)).astype(np.float32) * 0.2,
        }
    else:
        tensors = {
            f"{TO_Q}.lora_A.weight": rng.standard_normal((4, 48)).astype(np.float32),
            f"{TO_Q}.lora_B.weight": rng.standard_normal((48, 4)).astype(np.float32),
        }
    save_file(tensors, str(path), metadata={"ss_output_name": f"{path.stem}-alias"})
