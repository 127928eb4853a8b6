"""SD 1.5 on a GPU: sdlite (fused fp16, CUDA EP) vs optimum's plain fp16 export vs diffusers fp16.

``python -m benchmarks.gpu [--small] [--phase all|torch|ort] [--out DIR] [--work DIR]``;
``benchmarks/gpu_run.sh`` sets up the GPU machine and calls it.  Two phases, because
onnxruntime-gpu and the pure-Python wheels don't fit one 64 MiB transfer together
(``shared/gpu/README.md``); ``all`` runs both in one go where everything is installed:

- ``torch``: build the models with PyTorch (random weights, the real SD 1.5 architecture,
  on the GPU), export them (``sdlite export --dtype fp16 --target cuda``, optimum's plain
  ``--dtype fp16 --device cuda``), diffusers' reference images for the correctness check, and
  the diffusers fp16 (SDPA) timings.
- ``ort``: sdlite and optimum's ``ORTStableDiffusionPipeline`` on the CUDA execution provider,
  then the tiny models through the CUDA provider against diffusers' references.

Every heavy step runs in a child process with a time limit (a hang or crash costs that step
only), and the results file is rewritten after each step, so a run cut short still returns
figures.  Each system is timed in its own process: its GPU memory is then the device's
``nvidia-smi`` memory.used over the baseline before it started -- one meter for all three
systems (ORT's arena has no public peak counter; torch's ``max_memory_allocated`` is recorded
for diffusers besides).  ``--small`` runs the same plumbing on the tests' tiny model on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks import machine, report
from benchmarks.models import REPO, tiny_models
from benchmarks.systems import SYSTEMS, Runner
from benchmarks.worker import initial_latents

# The project's parity bounds (tests/export/test_export_pipeline.py): fp32 2/255; fp16 4/255.
FP32_TOL, FP16_TOL = 2 / 255, 4 / 255
PROMPT = "a photo of an astronaut riding a horse on mars"
ORT_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


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
    # Seconds per step; the sum of a phase stays inside one ~10 min device call.
    limits: tuple[tuple[str, int], ...] = (
        ("build", 120),
        ("export", 270),
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


# ---------------------------------------------------------------- child processes


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(_pythonpath())}


def _pythonpath() -> list[str]:
    # The repo for `benchmarks`, then whatever the caller set up (gpu_run.sh: ORT-GPU, wheels, sdlite).
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [str(REPO), *rest]


def _child(args: list[str], limit: float, work: Path, log_name: str) -> subprocess.Popen:
    log = open(work / "logs" / f"{log_name}.log", "w")  # noqa: SIM115 - closed by _wait
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log  # type: ignore[attr-defined]
    proc.limit_at = time.monotonic() + limit  # type: ignore[attr-defined]
    proc.log_name = log_name  # type: ignore[attr-defined]
    return proc


def _wait(proc: subprocess.Popen, work: Path) -> str | None:
    """None when the child succeeded, else why not (with the tail of its log)."""
    try:
        proc.wait(timeout=max(1.0, proc.limit_at - time.monotonic()))  # type: ignore[attr-defined]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        why = "timed out"
    else:
        why = None if proc.returncode == 0 else f"rc {proc.returncode}"
    proc.log_file.close()  # type: ignore[attr-defined]
    if why is None:
        return None
    tail = (work / "logs" / f"{proc.log_name}.log").read_text(errors="replace")[-1500:]  # type: ignore[attr-defined]
    return f"{why}: {tail.strip()}"


def _task(name: str, spec: dict) -> list[str]:
    return [sys.executable, "-m", "benchmarks.gpu", "--task", name, json.dumps(spec)]


# ---------------------------------------------------------------- GPU memory meter


def gpu_info() -> dict | None:
    """Name, driver and memory of GPU 0 from nvidia-smi; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    q = "name,driver_version,memory.total"
    try:
        line = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        name, driver, total = (x.strip() for x in line.split(","))
        return {"gpu": name, "driver": driver, "gpu_memory_mb": float(total)}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _gpu_used_mb() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return float(out.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class GpuMeter:
    """Peak device memory.used while a child runs, over the baseline before it started."""

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


# ---------------------------------------------------------------- tasks (in the child)


def task_build(spec: dict) -> None:
    """The benchmark model (SD 1.5 arch, built on ``device``) or the tiny test model."""
    import torch

    torch.set_num_threads(min(8, os.cpu_count() or 1))
    path = Path(spec["path"])
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if spec["kind"] == "sd15":
        from benchmarks.sd15 import build_sd15_arch

        # Default initialisation on the GPU takes seconds where the CPU takes a minute.
        with torch.device(spec["device"]):
            build_sd15_arch(tmp, lambda d: tiny_models().make_clip_tokenizer("sd1", d))
    else:
        tiny_models().build_tiny_sd(tmp, kind="sd1", seed=0)
    os.replace(tmp, path)


def export_sdlite_cmd(src: Path, out: Path, dtype: str, target: str) -> list[str]:
    # No validation here: the correctness check below runs the tiny model through the provider,
    # and validating SD 1.5 would cost minutes of the device budget.
    cmd = [sys.executable, "-m", "sdlite.export", str(src), str(out), "--dtype", dtype]
    return cmd + ["--target", target, "--no-validate", "--overwrite"]


def export_optimum_cmd(src: Path, out: Path, dtype: str, device: str) -> list[str]:
    # optimum exports fp16 only on a CUDA device (its --device cuda); its plain graphs, no --optimize.
    cli = "import sys; from optimum.commands.optimum_cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", cli, "export", "onnx", "--model", str(src), "--task", "text-to-image"]
    return cmd + ["--dtype", dtype, "--device", device, str(out)]


def task_refs(spec: dict) -> None:
    """diffusers' images on the correctness latents: fp32 (the reference) and, on a GPU, fp16."""
    import torch
    from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler

    _cpu_threads(spec["device"])
    lat = np.load(spec["latents"])
    out = {}
    dtypes = ("fp32", "fp16") if spec["device"] != "cpu" else ("fp32",)
    for dt in dtypes:
        torch_dtype = torch.float16 if dt == "fp16" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(
            spec["model_dir"], safety_checker=None, requires_safety_checker=False, torch_dtype=torch_dtype
        ).to(spec["device"])
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            img = pipe(
                [PROMPT] * lat.shape[0],
                num_inference_steps=spec["steps"],
                guidance_scale=spec["guidance"],
                height=spec["height"],
                width=spec["width"],
                latents=torch.from_numpy(lat).to(spec["device"], torch_dtype),
                output_type="np",
            ).images
        out[dt] = np.asarray(img, dtype=np.float32)
    np.savez(spec["out"], **out)


class GpuRunner(Runner):
    """``benchmarks.systems.Runner`` on a chosen provider/device/dtype, with GPU-synced stage timers."""

    def __init__(self, system: str, model_dir: Path, provider: str, device: str, dtype: str) -> None:
        self.provider, self.device, self.dtype = provider, device, dtype
        super().__init__(system, model_dir)

    def _load_sdlite(self, path: Path):
        from sdlite import Pipeline

        return Pipeline.from_pretrained(path, provider=self.provider)

    def _load_optimum(self, path: Path):
        from diffusers import UniPCMultistepScheduler
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        pipe = ORTStableDiffusionPipeline.from_pretrained(path, provider=ORT_PROVIDERS[self.provider])
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.text_encoder.forward = self._synced(pipe.text_encoder.forward, "text_encoder")
        pipe.unet.forward = self._synced(pipe.unet.forward, "unet")
        pipe.vae.decode = self._synced(pipe.vae.decode, "vae")
        for part in (pipe.text_encoder, pipe.unet, pipe.vae_decoder):
            sess = part.session
            sess.run = self.timers.wrap(sess.run, "in_sessions")
            sess.run_with_iobinding = self.timers.wrap(sess.run_with_iobinding, "in_sessions")
        return pipe

    def _load_diffusers(self, path: Path):
        import torch
        from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler

        torch_dtype = torch.float16 if self.dtype == "fp16" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(
            path, safety_checker=None, requires_safety_checker=False, torch_dtype=torch_dtype
        ).to(self.device)
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        # diffusers' default on torch 2 is SDPA (AttnProcessor2_0); recorded to prove it.
        self.attention = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
        pipe.text_encoder.forward = self._synced(pipe.text_encoder.forward, "text_encoder")
        pipe.unet.forward = self._synced(pipe.unet.forward, "unet")
        pipe.vae.decode = self._synced(pipe.vae.decode, "vae")
        return pipe

    def _synced(self, fn, key: str):
        """A stage timer that waits for the GPU: kernel launches return before the work is done."""
        if self.device == "cpu":
            return self.timers.wrap(fn, key)
        import torch

        def synced(*args, **kwargs):
            torch.cuda.synchronize()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.synchronize()
                self.timers.s[key] += time.perf_counter() - t

        return synced

    def generate(self, prompt, latents, steps, guidance, height, width):
        if self.system != "diffusers":
            return super().generate(prompt, latents, steps, guidance, height, width)
        import torch

        # diffusers moves given latents to the device but keeps their dtype: fp16 weights need fp16.
        dt = torch.float16 if self.dtype == "fp16" else torch.float32
        self.timers.reset()
        t = time.perf_counter()
        with torch.no_grad():
            out = self.pipe(
                [prompt] * latents.shape[0],
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                latents=torch.from_numpy(latents).to(self.device, dt),
                output_type="np",
            )
        e2e = time.perf_counter() - t
        stages = dict(self.timers.s)
        stages.setdefault("total", e2e)
        return np.asarray(out.images, dtype=np.float32), e2e, stages


def _cpu_threads(device: str) -> None:
    # On the shared CPU (--small), torch's two OpenMP threads spin against the other processes:
    # measured 7 s vs 0.14 s per tiny 2-step image with one thread.  A GPU run is left alone.
    if device == "cpu":
        import torch

        torch.set_num_threads(1)


def task_time(spec: dict) -> None:
    """One system: load, warm up, then ``repeats`` timed runs per batch (the suite's worker, on a GPU)."""
    if spec["system"] == "diffusers":
        _cpu_threads(spec["device"])
    t0 = time.perf_counter()
    runner = GpuRunner(
        spec["system"], Path(spec["model_dir"]), spec["provider"], spec["device"], spec["dtype"]
    )
    gen = dict(steps=spec["steps"], guidance=spec["guidance"], height=spec["height"], width=spec["width"])
    lat = dict(channels=4, height=spec["height"] // spec["factor"], width=spec["width"] // spec["factor"])
    result: dict = {"load_s": time.perf_counter() - t0, "runs": {}}
    if getattr(runner, "attention", None):
        result["attention"] = runner.attention
    if spec["system"] == "sdlite":
        result["providers"] = runner.pipe.providers
    for batch in spec["batches"]:
        latents = initial_latents(batch, spec["seed"], **lat)
        t = time.perf_counter()
        images, _, _ = runner.generate(PROMPT, latents, **gen)  # warm-up (cuDNN algorithm search)
        warm = time.perf_counter() - t
        if batch == spec["batches"][0]:
            np.save(spec["images"], images[:1])
        runs = [runner.generate(PROMPT, latents, **gen)[1:] for _ in range(spec["repeats"])]
        keys = sorted(set().union(*(r[1] for r in runs)))
        result["runs"][str(batch)] = {
            "warmup_s": warm,
            "e2e_s": statistics.median(r[0] for r in runs),
            "e2e_runs_s": [r[0] for r in runs],
            "stages_s": {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in keys},
        }
        _write_json(Path(spec["out"]), result)  # batch by batch: a timeout keeps what was measured
    if spec["system"] == "diffusers" and spec["device"] != "cpu":
        import torch

        result["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    from benchmarks.worker import _rss_mb

    result["peak_rss_mb"] = _rss_mb()
    _write_json(Path(spec["out"]), result)


def task_check(spec: dict) -> None:
    """sdlite on the tiny exports through the provider, against diffusers' fp32 image."""
    from sdlite import Pipeline

    lat = np.load(spec["latents"])
    refs = np.load(spec["refs"])
    rows = []
    for variant in spec["variants"]:
        row = {"model": "tiny-sd1", "dtype": variant["dtype"], "provider": spec["provider"]}
        try:
            pipe = Pipeline.from_pretrained(variant["dir"], provider=spec["provider"])
            out = pipe(
                [PROMPT] * lat.shape[0],
                num_inference_steps=spec["steps"],
                guidance_scale=spec["guidance"],
                height=spec["height"],
                width=spec["width"],
                sampler="unipc",
                latents=lat,
                output_type="np",
            )
            img = np.asarray(out.images, dtype=np.float32)
            diff = np.abs(img - refs["fp32"])
            tol = FP16_TOL if variant["dtype"] == "fp16" else FP32_TOL
            row.update(
                providers=pipe.providers,
                max_abs_diff_255=float(diff.max() * 255),
                mean_abs_diff_255=float(diff.mean() * 255),
                limit_255=tol * 255,
                ok=bool(diff.max() <= tol),
            )
            if variant["dtype"] == "fp16" and "fp16" in refs.files:
                # How far diffusers' own fp16 lands from its fp32: the scale of fp16 rounding here.
                row["diffusers_fp16_max_abs_diff_255"] = float(
                    np.abs(refs["fp16"] - refs["fp32"]).max() * 255
                )
        except Exception as e:  # one variant failing must not hide the other's figure
            row.update(ok=False, error=f"{type(e).__name__}: {str(e)[-600:]}")
        rows.append(row)
    _write_json(Path(spec["out"]), {"rows": rows})


TASKS = {"build": task_build, "refs": task_refs, "time": task_time, "check": task_check}


# ---------------------------------------------------------------- the run (in the parent)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def device_slug(info: dict | None, small: bool) -> str:
    """``nvidia-h100-80gb-hbm3`` from the GPU's name; ``cpu`` without one (``-small`` for --small)."""
    slug = re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-") if info else "cpu"
    return slug + ("-small" if small else "")


class Run:
    """One phase (or both): the state shared by the steps, written out after each."""

    def __init__(
        self, cfg: Config, work: Path, out: Path, small: bool, deadline_s: float | None = None, log=print
    ) -> None:
        self.cfg, self.work, self.out, self.log = cfg, work, out, log
        self.deadline = time.monotonic() + deadline_s if deadline_s else None
        (work / "logs").mkdir(parents=True, exist_ok=True)
        info = gpu_info() if cfg.device != "cpu" or cfg.provider != "cpu" else None
        self.json_path = out / f"gpu-{device_slug(info, small)}.json"
        self.state_path = work / "state.json"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        # Where each model lives; the torch phase may point them at the suite's cached tiny model.
        bench = work / f"bench-{cfg.bench_model}"
        self.paths = {
            "src": bench / "diffusers",
            "sdlite": bench / "sdlite",
            "optimum": bench / "optimum",
            "tiny": work / "tiny-sd1" / "diffusers",
            "check-fp32": work / "tiny-sd1" / "fp32",
            "check-fp16": work / "tiny-sd1" / "fp16",
        }
        self.paths.update({k: Path(v) for k, v in state.get("paths", {}).items()})
        self.doc = state.get("doc") or {
            "machine": {},
            "results": [],
            "install_mb": {"sdlite": None, "diffusers": None},
            "correctness": [],
        }
        m = machine.describe(REPO)
        m.update(info or {"gpu": None, "driver": None})
        m["mode"] = "gpu-small" if small else "gpu"
        # The ORT that runs, not the dist-info pip sees: gpu_run.sh puts onnxruntime-gpu first on
        # PYTHONPATH, over the machine's CPU build.
        import onnxruntime as ort

        m["onnxruntime_imported"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
        m["config"] = {k: v for k, v in asdict(cfg).items() if k != "limits"}
        m["notes"] = self.doc["machine"].get("notes", []) or (
            ["--small: the tiny model on the CPU, to check the plumbing; its figures compare nothing"]
            if small
            else []
        )
        m["phases"] = self.doc["machine"].get("phases", [])
        self.doc["machine"] = m

    # -- bookkeeping

    def note(self, text: str) -> None:
        self.log(f"[gpu] {text}")
        self.doc["machine"]["notes"].append(text)
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(self.state_path, {"doc": self.doc, "paths": {k: str(v) for k, v in self.paths.items()}})
        _write_json(self.json_path, self.doc)
        report._atomic(self.json_path.with_suffix(".md"), markdown(self.doc))

    def limit(self, step: str) -> float:
        """The step's own limit, cut to what is left of the run's deadline (a few seconds kept)."""
        left = self.deadline - time.monotonic() - 5 if self.deadline else float("inf")
        return max(1.0, min(self.cfg.limit(step), left))

    def _run(self, args: list[str], step: str, name: str) -> bool:
        t = time.perf_counter()
        err = _wait(_child(args, self.limit(step), self.work, name), self.work)
        if err:
            self.note(f"FAILED: {name}: {err}")
            return False
        self.log(f"[gpu] {name}: {time.perf_counter() - t:.0f} s")
        return True

    # -- phase torch

    def phase_torch(self) -> None:
        cfg = self.cfg
        self.doc["machine"]["phases"].append("torch")
        if cfg.bench_model == "tiny":
            self._suite_tiny()
        builds = [("tiny", self.paths["tiny"])]
        if cfg.bench_model != "tiny":
            builds.append((cfg.bench_model, self.paths["src"]))
        for kind, path in builds:
            if path.is_dir():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            spec = {"kind": kind, "path": str(path), "device": cfg.device}
            self._run(_task("build", spec), "build", f"build-{kind}")
        src, tiny, paths = self.paths["src"], self.paths["tiny"], self.paths
        # All exports at once: they are CPU-bound (capture, fusions) and the machine has cores.
        exports = {
            "sdlite": export_sdlite_cmd(src, paths["sdlite"], cfg.dtype, cfg.target),
            "optimum": export_optimum_cmd(src, paths["optimum"], cfg.dtype, cfg.device),
            "check-fp32": export_sdlite_cmd(tiny, paths["check-fp32"], "fp32", cfg.target),
            "check-fp16": export_sdlite_cmd(tiny, paths["check-fp16"], "fp16", cfg.target),
        }
        procs = {
            k: _child(cmd, self.limit("export"), self.work, f"export-{k}")
            for k, cmd in exports.items()
            if self._needs(cmd, k)
        }
        self._refs()
        for k, proc in procs.items():
            err = _wait(proc, self.work)
            self.log(f"[gpu] export {k}: {'ok' if err is None else 'FAILED'}")
            if err:
                self.note(f"FAILED: export {k}: {err}")
        self.save()
        self._time("diffusers", src)

    def _suite_tiny(self) -> None:
        """--small: the suite's cached tiny model and its exports (fp32, CPU) stand in for SD 1.5."""
        from benchmarks import models

        m = models.tiny(log=self.log)
        self.paths.update(src=m.diffusers_dir, tiny=m.diffusers_dir, optimum=m.optimum_dir)
        if m.sdlite_export == "sdlite" and self.cfg.dtype == "fp32" and self.cfg.target == "cpu":
            self.paths.update({"sdlite": m.sdlite_dir, "check-fp32": m.sdlite_dir})
            # Beside the suite's export, in its folder keyed by the exporter's sources (reused
            # until they change; the exporter writes it whole or not at all).
            self.paths["check-fp16"] = m.sdlite_dir.with_name("onnx-fp16-cpu")
        self.save()

    def _needs(self, cmd: list[str], key: str) -> bool:
        out = Path(cmd[-1] if key == "optimum" else cmd[4])
        if (out / "model_index.json").is_file():
            self.log(f"[gpu] export {key}: reusing {out}")
            return False
        if self.work in out.parents:  # never outside WORK (the suite's cache is only read)
            shutil.rmtree(out, ignore_errors=True)  # an optimum export cut short leaves a partial folder
        return True

    def _refs(self) -> None:
        cfg = self.cfg
        lat = initial_latents(1, cfg.seed, 4, 64 // 4, 64 // 4)  # tiny model: 64², VAE factor 4
        np.save(self.work / "check-latents.npy", lat)
        spec = {
            "model_dir": str(self.paths["tiny"]),
            "device": cfg.device,
            "latents": str(self.work / "check-latents.npy"),
            "out": str(self.work / "check-refs.npz"),
            "steps": cfg.check_steps,
            "guidance": cfg.guidance,
            "height": 64,
            "width": 64,
        }
        self._run(_task("refs", spec), "refs", "refs")

    # -- timings (either phase)

    def _time(self, system: str, model_dir: Path) -> None:
        cfg = self.cfg
        if not model_dir.is_dir():
            self.note(f"FAILED: {system}: no model at {model_dir} (an earlier step failed)")
            return
        out = self.work / f"time-{system}.json"
        out.unlink(missing_ok=True)
        factor = 8 if cfg.bench_model == "sd15" else 4
        dtype = cfg.dtype
        spec = {
            "system": system,
            "model_dir": str(model_dir),
            "provider": cfg.provider,
            "device": cfg.device,
            "dtype": dtype,
            "factor": factor,
            "height": cfg.size,
            "width": cfg.size,
            "steps": cfg.steps,
            "guidance": cfg.guidance,
            "batches": list(cfg.batches),
            "repeats": cfg.repeats,
            "seed": cfg.seed,
            "images": str(self.work / f"image-{system}.npy"),
            "out": str(out),
        }
        self.log(f"[gpu] timing {system}")
        with GpuMeter() as meter:
            ok = self._run(_task("time", spec), "time", f"time-{system}")
        if not out.exists():
            return
        if not ok:
            self.note(f"{system}: partial timings (the batches measured before it stopped)")
        res = json.loads(out.read_text())
        self.doc["results"] = [r for r in self.doc["results"] if r["system"] != system]
        self.doc["results"] += self._entries(system, res, meter.peak)
        self._compare_images()
        self.save()

    def _entries(self, system: str, res: dict, gpu_peak: float | None) -> list[dict]:
        cfg = self.cfg
        rows = []
        for batch, run in res["runs"].items():
            st = run["stages_s"]
            total = st.get("total") or run["e2e_s"]
            outside = st.get("outside_sessions")
            rows.append(
                {
                    "model": "sd15-arch" if cfg.bench_model == "sd15" else "tiny-sd1",
                    "system": system,
                    "steps": cfg.steps,
                    "batch": int(batch),
                    "e2e_s": run["e2e_s"],
                    # The process's load (import excluded) + warm-up image: on a GPU the warm-up
                    # holds cuDNN's algorithm search, which users pay once per shape.
                    "cold_start_s": res["load_s"] + run["warmup_s"],
                    "peak_rss_mb": res.get("peak_rss_mb", 0.0),
                    "outside_sessions_frac": outside / total if outside is not None else None,
                    "height": cfg.size,
                    "width": cfg.size,
                    "guidance": cfg.guidance,
                    "sampler": "unipc",
                    "images_per_s": int(batch) / run["e2e_s"],
                    "e2e_runs_s": run["e2e_runs_s"],
                    "stages_s": st,
                    "unet_step_ms": 1000 * st["unet"] / cfg.steps if st.get("unet") else None,
                    "peak_gpu_mb": gpu_peak,
                    "torch_max_allocated_mb": res.get("torch_max_allocated_mb"),
                    "attention": res.get("attention"),
                    "providers": res.get("providers"),
                    "dtype": cfg.dtype,
                    "provider": None if system == "diffusers" else ORT_PROVIDERS[cfg.provider],
                    "onnx_export": {"sdlite": "sdlite", "optimum": "optimum"}.get(system),
                    "repeats": cfg.repeats,
                }
            )
        return rows

    def _compare_images(self) -> None:
        # Same latents and sampler: how far each system's batch-1 image lies from diffusers'.
        ref_path = self.work / "image-diffusers.npy"
        if not ref_path.exists():
            return
        ref = np.load(ref_path)
        for r in self.doc["results"]:
            path = self.work / f"image-{r['system']}.npy"
            if r["batch"] == self.cfg.batches[0] and path.exists():
                img = np.load(path)
                if img.shape == ref.shape:
                    r["max_abs_diff_255"] = float(np.abs(img - ref).max() * 255)

    # -- phase ort

    def phase_ort(self) -> None:
        cfg = self.cfg
        self.doc["machine"]["phases"].append("ort")
        self._time("sdlite", self.paths["sdlite"])
        self._time("optimum", self.paths["optimum"])
        refs = self.work / "check-refs.npz"
        if not refs.exists():
            self.note("FAILED: correctness: no diffusers reference images (the torch phase's refs step)")
            return
        variants = [{"dtype": dt, "dir": str(self.paths[f"check-{dt}"])} for dt in ("fp32", "fp16")]
        out = self.work / "check.json"
        spec = {
            "provider": cfg.provider,
            "latents": str(self.work / "check-latents.npy"),
            "refs": str(refs),
            "variants": variants,
            "steps": cfg.check_steps,
            "guidance": cfg.guidance,
            "height": 64,
            "width": 64,
            "out": str(out),
        }
        if self._run(_task("check", spec), "check", "check") and out.exists():
            self.doc["correctness"] = json.loads(out.read_text())["rows"]
            for row in self.doc["correctness"]:
                if not row.get("ok"):
                    self.note(f"FAILED: correctness {row['dtype']}: {row.get('error') or row}")
        self.save()


# ---------------------------------------------------------------- the report


def targets(doc: dict) -> list[report.Target]:
    res = doc["results"]
    b1 = {s: report._find(res, system=s, batch=1) for s in SYSTEMS}
    dt = doc["machine"].get("config", {}).get("dtype", "fp16")
    return [
        report._ratio(f"e2e, batch 1: vs diffusers {dt}", 0.75, b1["sdlite"], b1["diffusers"], "e2e_s", "s"),
        report._ratio(f"e2e, batch 1: vs optimum {dt}", 0.7, b1["sdlite"], b1["optimum"], "e2e_s", "s"),
    ]


def markdown(doc: dict) -> str:
    m = doc["machine"]
    cfg = m.get("config", {})
    v = m.get("versions", {})
    res = doc["results"]
    ort_version = m.get("onnxruntime_imported", {}).get("version") or v.get("onnxruntime")
    lines = [
        f"Measured {m.get('date_utc')} on {m.get('gpu') or m.get('cpu')} (driver {m.get('driver')}), "
        f"onnxruntime {ort_version}, torch {v.get('torch')}, diffusers {v.get('diffusers')}, "
        f"optimum-onnx {v.get('optimum-onnx')}, commit {m.get('commit')}; phases run: "
        f"{', '.join(m.get('phases', []))}.",
        "",
        f"{cfg.get('bench_model')} at {cfg.get('size')}², {cfg.get('steps')} UniPC steps, guidance "
        f"{cfg.get('guidance')}, {cfg.get('dtype')}, same initial latents; median of "
        f"{cfg.get('repeats')} runs after one warm-up per batch size.",
        "",
        "**Targets** (from the issue)",
        "",
        "| target | limit | measured | figures |",
        "|---|---|---|---|",
    ]
    for t in targets(doc):
        lines.append(f"| {t.label} | ≤ {t.limit}× | {report._status(t)} | {t.detail} |")
    lines += ["", "**End to end and per step**", ""]
    cols = ["system", "batch", "e2e s", "img/s", "U-Net ms/step", "text enc s", "VAE s"]
    cols += ["outside sessions", "peak GPU MB", "load+warm-up s", "max Δ vs diffusers /255"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res:
        st = r.get("stages_s", {})
        frac = r.get("outside_sessions_frac")
        lines.append(
            f"| {r['system']} | {r['batch']} | {report._fmt(r['e2e_s'])} | {report._fmt(r['images_per_s'])} "
            f"| {report._fmt(r.get('unet_step_ms'))} | {report._fmt(st.get('text_encoder'))} "
            f"| {report._fmt(st.get('vae'))} | {'–' if frac is None else f'{frac:.1%}'} "
            f"| {report._fmt(r.get('peak_gpu_mb'), 4)} | {report._fmt(r.get('cold_start_s'))} "
            f"| {report._fmt(r.get('max_abs_diff_255'), 2)} |"
        )
    lines += [
        "",
        "**Correctness** (tiny test model through the provider vs diffusers fp32, same latents)",
        "",
    ]
    lines += [
        "| dtype | provider | max Δ /255 | mean Δ /255 | bound /255 | ok |",
        "|---|---|---|---|---|---|",
    ]
    for c in doc.get("correctness", []):
        lines.append(
            f"| {c['dtype']} | {c.get('provider')} | {report._fmt(c.get('max_abs_diff_255'))} "
            f"| {report._fmt(c.get('mean_abs_diff_255'))} | {report._fmt(c.get('limit_255'))} "
            f"| {c.get('ok')} |"
        )
    notes = m.get("notes") or []
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n[:600]}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny model on the CPU: the plumbing only")
    p.add_argument("--phase", choices=("all", "torch", "ort"), default="all")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    p.add_argument("--work", type=Path, default=None, help="models and state (default .cache/gpu[-small])")
    p.add_argument("--provider", choices=tuple(ORT_PROVIDERS), default=None, help="override the ORT provider")
    p.add_argument("--target", choices=("cpu", "cuda"), default=None, help="override sdlite export --target")
    p.add_argument("--deadline-s", type=float, default=None, help="cut every step to end by then")
    p.add_argument("--fresh", action="store_true", help="forget earlier results in WORK (models are reused)")
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("spec", nargs="?", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.task:
        if args.task not in TASKS or args.spec is None:
            p.error(f"--task must be one of {', '.join(TASKS)} with a JSON spec")
        TASKS[args.task](json.loads(args.spec))
        return 0
    cfg = SMALL if args.small else FULL
    if args.provider:
        cfg = replace(cfg, provider=args.provider)
    if args.target:
        cfg = replace(cfg, target=args.target)
    work = args.work or REPO / ".cache" / ("gpu-small" if args.small else "gpu")
    work.mkdir(parents=True, exist_ok=True)
    if args.fresh or args.phase in ("all", "torch"):
        (work / "state.json").unlink(missing_ok=True)
    run = Run(cfg, work.resolve(), args.out.resolve(), args.small, args.deadline_s)
    run.save()
    if args.phase in ("all", "torch"):
        run.phase_torch()
    if args.phase in ("all", "ort"):
        run.phase_ort()
    print(markdown(run.doc))
    print(f"[gpu] wrote {run.json_path} and {run.json_path.with_suffix('.md')}")
    failed = [n for n in run.doc["machine"]["notes"] if n.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
