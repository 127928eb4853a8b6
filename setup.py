"""Chooses the ONNX Runtime wheel at build time; everything else is in pyproject.toml.

onnxruntime, onnxruntime-gpu and onnxruntime-directml install the same ``onnxruntime`` module
and break each other when two are installed.  An extra cannot remove a base dependency: pip
resolves ``sdlite[gpu]`` as ``sdlite`` (whose requirements it evaluates with no extra, so any
``extra != "gpu"`` marker is true there) plus the extra's requirements, and would install both
wheels.  So the runtime dependency is chosen when the package is built:

    pip install .                                   # CPU: onnxruntime
    SDLITE_ONNXRUNTIME=gpu pip install .            # CUDA: onnxruntime-gpu only
    SDLITE_ONNXRUNTIME=directml pip install .       # Windows DirectML: onnxruntime-directml only
    SDLITE_ONNXRUNTIME=none pip install .           # bring your own build (ROCm, OpenVINO, ...)
"""

import os

from setuptools import setup

BASE = ["numpy>=1.24", "tokenizers>=0.15", "pillow>=10", "tqdm>=4.60"]
ONNXRUNTIME = {
    "cpu": ["onnxruntime>=1.17"],
    "gpu": ["onnxruntime-gpu>=1.17"],
    "cuda": ["onnxruntime-gpu>=1.17"],
    "directml": ["onnxruntime-directml>=1.17"],
    "none": [],
}

choice = (os.environ.get("SDLITE_ONNXRUNTIME") or "cpu").strip().lower()
if choice not in ONNXRUNTIME:
    raise SystemExit(f"SDLITE_ONNXRUNTIME={choice!r}: allowed values are {', '.join(ONNXRUNTIME)}")

setup(install_requires=BASE + ONNXRUNTIME[choice])
