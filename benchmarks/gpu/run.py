"""The state one invocation shares between its steps (in the parent), written out after each."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.common import atomic_write, write_json
from benchmarks.gpu import procs
from benchmarks.gpu.config import ORT_PROVIDERS, Config
from benchmarks.gpu.report import markdown
from benchmarks.models import REPO

SMALL_NOTE = "--small: the tiny model on the CPU, to check the plumbing; its figures compare nothing"


def device_slug(info: dict | None, small: bool) -> str:
    """``nvidia-h100-80gb-hbm3`` from the GPU's name; ``cpu`` without one (``-small`` for --small)."""
    slug = re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-") if info else "cpu"
    return slug + ("-small" if small else "")


def _machine(cfg: Config, info: dict | None, small: bool, before: dict) -> dict:
    m = machine.describe(REPO)
    m.update(info or {"gpu": None, "driver": None})
    m["mode"] = "gpu-small" if small else "gpu"
    # The ORT that runs, not the dist-info pip sees: gpu_run.sh puts onnxruntime-gpu first on
    # PYTHONPATH, over the machine's CPU build.
    import onnxruntime as ort

    m["onnxruntime_imported"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    m["config"] = {k: v for k, v in asdict(cfg).items() if k != "limits"}
    m["notes"] = before.get("notes", []) or ([SMALL_NOTE] if small else [])
    m["phases"] = before.get("phases", [])
    # When each step started and ended (seconds since its phase started): what ran beside what.
    m["timeline"] = before.get("timeline", [])
    return m


class Run:
    """One phase (or both), resumed from WORK's state file where the torch phase left it."""

    def __init__(
        self, cfg: Config, work: Path, out: Path, small: bool, deadline_s: float | None = None, log=print
    ) -> None:
        self.cfg, self.work, self.out, self.log = cfg, work, out, log
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s if deadline_s else None
        (work / "logs").mkdir(parents=True, exist_ok=True)
        info = procs.gpu_info() if cfg.device != "cpu" or cfg.provider != "cpu" else None
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
        empty = {"machine": {}, "results": [], "install_mb": {"sdlite": None, "diffusers": None}}
        self.doc = state.get("doc") or {**empty, "correctness": []}
        self.doc["machine"] = _machine(cfg, info, small, self.doc["machine"])

    # -- bookkeeping

    def note(self, text: str) -> None:
        self.log(f"[gpu] {text}")
        self.doc["machine"]["notes"].append(text)
        self.save()

    def save(self) -> None:
        write_json(self.state_path, {"doc": self.doc, "paths": {k: str(v) for k, v in self.paths.items()}})
        write_json(self.json_path, self.doc)
        atomic_write(self.json_path.with_suffix(".md"), markdown(self.doc))

    def limit(self, step: str) -> float:
        """The step's own limit, cut to what is left of the run's deadline (a few seconds kept)."""
        left = self.deadline - time.monotonic() - 5 if self.deadline else float("inf")
        return max(1.0, min(self.cfg.limit(step), left))

    # -- steps

    def start(self, args: list[str], step: str, name: str) -> procs.Child:
        return procs.start(args, self.limit(step), self.work, name)

    def mark(self, name: str, started: float, ok: bool, **extra) -> None:
        """A step on the timeline, in seconds since this invocation started."""
        span = {"start_s": round(started - self.t0, 1), "end_s": round(time.monotonic() - self.t0, 1)}
        phase = (self.doc["machine"]["phases"] or ["?"])[-1]
        self.doc["machine"]["timeline"].append({"phase": phase, "step": name, **span, "ok": ok, **extra})

    def finish(self, child: procs.Child) -> str | None:
        """Wait for ``child``; record it on the timeline; None when it succeeded, else why not."""
        err = child.wait()
        end = time.monotonic()
        self.mark(child.name, child.started, err is None)
        self.log(f"[gpu] {child.name}: {'ok' if err is None else 'FAILED'} in {end - child.started:.0f} s")
        return err

    def run(self, args: list[str], step: str, name: str) -> bool:
        err = self.finish(self.start(args, step, name))
        if err:
            self.note(f"FAILED: {name}: {err}")
        return err is None

    # -- timings (either phase)

    def time_system(self, system: str, model_dir: Path) -> None:
        cfg = self.cfg
        if not model_dir.is_dir():
            self.note(f"FAILED: {system}: no model at {model_dir} (an earlier step failed)")
            return
        out = self.work / f"time-{system}.json"
        out.unlink(missing_ok=True)
        spec = {
            k: getattr(cfg, k)
            for k in ("provider", "device", "dtype", "steps", "guidance", "repeats", "seed")
        }
        spec.update(system=system, model_dir=str(model_dir), factor=8 if cfg.bench_model == "sd15" else 4)
        spec.update(height=cfg.size, width=cfg.size, batches=list(cfg.batches), out=str(out))
        spec["images"] = str(self.work / f"image-{system}.npy")
        with procs.GpuMeter() as meter:
            ok = self.run(procs.task_cmd("time", spec), "time", f"time-{system}")
        if not out.exists():
            return
        if not ok:
            self.note(f"{system}: partial timings (the batches measured before it stopped)")
        res = json.loads(out.read_text())
        self.doc["results"] = [r for r in self.doc["results"] if r["system"] != system]
        self.doc["results"] += [
            self._entry(system, res, b, run, meter.peak) for b, run in res["runs"].items()
        ]
        self._compare_images()
        self.save()

    def _entry(self, system: str, res: dict, batch: str, run: dict, gpu_peak: float | None) -> dict:
        cfg, st = self.cfg, run["stages_s"]
        total, outside = st.get("total") or run["e2e_s"], st.get("outside_sessions")
        return {
            "model": "sd15-arch" if cfg.bench_model == "sd15" else "tiny-sd1",
            "system": system,
            "steps": cfg.steps,
            "batch": int(batch),
            "e2e_s": run["e2e_s"],
            # The process's load (import excluded) + warm-up image: on a GPU the warm-up holds
            # cuDNN's algorithm search, which users pay once per shape.
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
