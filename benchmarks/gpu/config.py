"""What the GPU script measures and how long each step may take."""

from __future__ import annotations

from dataclasses import dataclass

# The project's parity bounds (tests/export/test_export_pipeline.py): fp32 2/255; fp16 4/255.
FP32_TOL, FP16_TOL = 2 / 255, 4 / 255
PROMPT = "a photo of an astronaut riding a horse on mars"
ORT_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
SYSTEMS = ("sdlite", "optimum", "diffusers")


@dataclass(frozen=True)
class Config:
    """What one run measures and where; ``FULL`` is the issue's setting."""

    bench_model: str  # "sd15" (SD 1.5 architecture) or "tiny"
    size: int
    steps: int
    batches: tuple[int, ...]
    repeats: int
    guidance: float = 7.5
    device: str = "cuda"  # torch device for building, exporting (optimum) and diffusers
    provider: str = "cuda"  # ORT provider alias for sdlite and optimum
    target: str = "cuda"  # sdlite export --target
    dtype: str = "fp16"  # every system's precision in the timings
    check_steps: int = 10  # the correctness check (tiny model)
    seed: int = 0
    # Seconds per step.  The torch phase runs build, then diffusers' timing alone, then the
    # exports: its sum must fit gpu_run.sh's torch deadline (560 s), itself one 10-minute device
    # call.  The export limit: the first H200 run's sdlite export needed load 22 s + capture
    # 108 s + fusion ~100 s + fp16 and save, over the 270 s it had (16 cores, two exports at once).
    limits: tuple[tuple[str, int], ...] = (
        ("build", 120),
        ("export", 420),
        ("refs", 90),
        ("time", 150),
        ("check", 90),
    )

    def limit(self, step: str) -> int:
        return dict(self.limits)[step]


FULL = Config("sd15", 512, 20, (1, 4), repeats=5)
# The tiny model on the CPU: every step of the full run, in well under a minute of CPU.
SMALL = Config(
    "tiny",
    64,
    2,
    (1, 2),
    repeats=1,
    device="cpu",
    provider="cpu",
    target="cpu",
    dtype="fp32",
    check_steps=2,
    limits=(("build", 300), ("export", 300), ("refs", 180), ("time", 180), ("check", 120)),
)
