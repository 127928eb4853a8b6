"""The suite's core: build the models, run each system in its own process, assemble the results.

Each (system, model, size) runs in a fresh worker process (``benchmarks.worker``), which gives
the cold start and its peak RSS for free and keeps the systems from sharing a process: sdlite
is measured without torch loaded, as its users run it.  All systems get the same prompt,
sampler (UniPC from the model's scheduler config), steps, guidance and initial latents.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmarks import footprint, machine, models

REPO = models.REPO
STUDIES = ("samplers_accuracy", "samplers_speed", "export_unet", "demo_sampler_study")


@dataclass(frozen=True)
class Row:
    """One model at one size, measured on some systems."""

    model: str  # "tiny" or "sd15"
    size: int
    steps: int
    systems: tuple[str, ...]
    batches: tuple[int, ...]
    repeats: int
    guidance: float = 7.5
    # Each system's runs are split into this many worker processes, taken in turn (A B C, B C A,
    # C A B): drift on a shared machine (another job, CPU boost) then lands on every system
    # instead of on whichever ran during it.  Measured here before: three back-to-back runs of
    # the tiny row gave sdlite/optimum 0.50, 0.93 and 0.94 on the same ONNX files.
    rounds: int = 1


@dataclass(frozen=True)
class Settings:
    mode: str
    rows: tuple[Row, ...]
    install: bool  # build the venvs (else: reuse a cached figure or null)
    studies: bool
    cache_dir: Path = models.DEFAULT_CACHE
    seed: int = 0
    prompt: str = "a photo of an astronaut riding a horse on mars"
    same_onnx: bool = True  # also run sdlite's runtime on optimum's export (issue 3's comparison)


_TINY = Row("tiny", 64, 20, ("sdlite", "optimum", "diffusers"), (1, 4), repeats=9, rounds=3)
# SD 1.5 in fp32 on 2 cores takes seconds per U-Net call, a minute per 512² image: a warm-up
# (the cold-start image) plus 3 runs at 256² and 2 at 512², and only the peer each target names.
_SD15 = (
    Row("sd15", 256, 10, ("sdlite", "diffusers"), (1,), repeats=3),
    Row("sd15", 512, 10, ("sdlite", "optimum"), (1,), repeats=2),
)
PRESETS = {
    "quick": Settings("quick", (replace(_TINY, repeats=5, rounds=1),), install=False, studies=True),
    "default": Settings("default", (_TINY,), install=True, studies=True),
    "full": Settings("full", (_TINY, *_SD15), install=True, studies=True),
}


@dataclass
class Outcome:
    machine: dict
    results: list[dict]
    install_mb: dict
    notes: list[str] = field(default_factory=list)
    studies: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # also in notes; the CLI exits non-zero

    def document(self) -> dict:
        """The results file, in the fixed shape outside checks read (notes ride in ``machine``)."""
        return {
            "machine": {**self.machine, "notes": self.notes},
            "results": self.results,
            "install_mb": self.install_mb,
        }


def _worker(spec: dict, workdir: Path) -> dict:
    out = workdir / f"{spec['system']}-{spec['tag']}.json"
    spec = {**spec, "out": str(out), "t0": time.time()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"rc {proc.returncode}: {proc.stderr.strip()[-1200:]}")
    return json.loads(out.read_text())


def _entries(model_name: str, system: str, row: Row, res: dict, extra: dict) -> list[dict]:
    entries = []
    for batch in row.batches:
        run = res["runs"][str(batch)]
        stages = run["stages_s"]
        outside = stages.get("outside_sessions")
        total = stages.get("total") or run["e2e_s"]
        entries.append(
            {
                "model": model_name,
                "system": system,
                "steps": row.steps,
                "batch": batch,
                "e2e_s": run["e2e_s"],
                "cold_start_s": res["cold_start_s"],
                "peak_rss_mb": res["peak_rss_mb"],
                "outside_sessions_frac": (outside / total) if outside is not None else None,
                "height": row.size,
                "width": row.size,
                "guidance": row.guidance,
                "sampler": "unipc",
                "images_per_s": batch / run["e2e_s"],
                "e2e_runs_s": run["e2e_runs_s"],
                "stages_s": stages,
                "cold_start_parts_s": {k: res[k] for k in ("import_s", "load_s", "first_image_s")},
                "peak_rss_all_batches_mb": res["peak_rss_all_mb"],
                **extra,
            }
        )
    return entries


def merge_rounds(parts: list[dict]) -> dict:
    """One worker result from several rounds: every warm run counts once (median over all of
    them), each round's fresh process is one cold start (their median), peak RSS the largest."""
    if len(parts) == 1:
        return parts[0]
    merged = dict(parts[0])
    for key in ("cold_start_s", "import_s", "load_s", "first_image_s"):
        merged[key] = statistics.median(p[key] for p in parts)
    for key in ("peak_rss_mb", "peak_rss_all_mb"):
        merged[key] = max(p[key] for p in parts)
    merged["runs"] = {}
    for batch in parts[0]["runs"]:
        runs = [p["runs"][batch] for p in parts]
        e2e = [t for r in runs for t in r["e2e_runs_s"]]
        keys = sorted(set().union(*(r["stages_s"] for r in runs)))
        merged["runs"][batch] = {
            "e2e_s": statistics.median(e2e),
            "e2e_runs_s": e2e,
            # each round reports its median stages; weight them by the round's run count
            "stages_s": {
                k: statistics.median([r["stages_s"].get(k, 0.0) for r in runs for _ in r["e2e_runs_s"]])
                for k in keys
            },
        }
    return merged


def measure_row(row: Row, model: models.Model, settings: Settings, workdir: Path, log) -> tuple[list, list]:
    """Run every system of ``row``; return (result entries, notes)."""
    results, notes = [], []
    exports = {"sdlite": model.sdlite_export, "optimum": "optimum", "diffusers": None}
    # (system, tag, folder, model name, which export it runs on)
    runs = [(s, s, getattr(model, f"{s}_dir"), model.name, exports[s]) for s in row.systems]
    if settings.same_onnx and "optimum" in row.systems and model.sdlite_export == "sdlite":
        same = ("sdlite", "sdlite-on-optimum", model.optimum_dir, f"{model.name}@optimum-onnx", "optimum")
        runs.insert(1, same)
    images, tags = {}, []
    rounds = max(1, min(row.rounds, row.repeats))
    per_round = [row.repeats // rounds + (k < row.repeats % rounds) for k in range(rounds)]
    parts: dict[str, list[dict]] = {}
    for k in range(rounds):
        for system, tag, folder, model_name, _onnx in runs[k % len(runs) :] + runs[: k % len(runs)]:
            if tag in parts and parts[tag] is None:
                continue  # failed in an earlier round
            log(f"[run] {model_name} {row.size}x{row.size} {row.steps} steps: {system} ({k + 1}/{rounds})")
            spec = {
                "system": system,
                "tag": f"{tag}-{row.size}",
                "model_dir": str(folder),
                "factor": model.latent_factor,
                "height": row.size,
                "width": row.size,
                "steps": row.steps,
                "guidance": row.guidance,
                "batches": list(row.batches),
                "repeats": per_round[k],
                "seed": settings.seed,
                "prompt": settings.prompt,
                "images": str(workdir / f"{tag}-{row.size}.npy"),
            }
            try:
                parts.setdefault(tag, []).append(_worker(spec, workdir))
            except RuntimeError as e:
                notes.append(f"FAILED: {system} on {model_name} {row.size}x{row.size}: {e}")
                log(f"[run] FAILED: {e}")
                parts[tag] = None  # type: ignore[assignment]
                continue
            images[tag] = np.load(spec["images"])
    for system, tag, _folder, model_name, onnx in runs:
        if not parts.get(tag):
            continue
        res = merge_rounds(parts[tag])
        entries = _entries(model_name, system, row, res, {"onnx_export": onnx, "repeats": row.repeats})
        results += entries
        tags += [tag] * len(entries)
    # Same latents, same sampler: the images must agree, or the systems did different work.
    ref = images.get("diffusers", images.get("optimum"))
    if ref is not None:
        for entry, tag in zip(results, tags, strict=True):
            if images[tag].shape == ref.shape:
                entry["max_abs_diff_255"] = float(np.abs(images[tag] - ref).max() * 255)
    return results, notes


def run_studies(quick: bool, names: tuple[str, ...] = STUDIES, log=print) -> tuple[dict, list[str]]:
    """Other owners' modules (``run(quick) -> dict``); a missing or failing one is a note."""
    studies, notes = {}, []
    for name in names:
        if not (REPO / "benchmarks" / f"{name}.py").exists():
            notes.append(f"study {name}: module not present")
            continue
        log(f"[study] {name}")
        t = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            studies[name] = module.run(quick)
            # A full study also refreshes its own results files, which docs/benchmarks.md quotes.
            if not quick and callable(getattr(module, "write", None)):
                module.write(studies[name])
            # A study that renders itself (a `markdown(result)` function) is shown its own way.
            if isinstance(studies[name], dict) and "markdown" not in studies[name]:
                if callable(getattr(module, "markdown", None)):
                    studies[name]["markdown"] = module.markdown(studies[name])
        except Exception as e:  # one broken study must not lose the others' figures
            notes.append(f"FAILED: study {name}: {type(e).__name__}: {str(e)[-400:]}")
            continue
        notes.append(f"study {name}: {time.perf_counter() - t:.0f} s")
    return studies, notes


def run_suite(settings: Settings, log: Callable[[str], None] = print) -> Outcome:
    """Everything but the writing of files."""
    outcome = Outcome(machine.describe(REPO), [], {"sdlite": None, "diffusers": None})
    outcome.machine["mode"] = settings.mode
    built: dict[str, models.Model] = {}
    with tempfile.TemporaryDirectory(prefix="sdlite-bench-") as tmp:
        for row in settings.rows:
            if row.model not in built:
                build = models.tiny if row.model == "tiny" else models.sd15_arch
                built[row.model] = build(settings.cache_dir, log=log)
                if built[row.model].note:
                    outcome.notes.append(built[row.model].note)
            results, notes = measure_row(row, built[row.model], settings, Path(tmp), log)
            outcome.results += results
            outcome.notes += notes
    try:
        outcome.install_mb, note = footprint.measure(REPO, settings.cache_dir, settings.install, log)
        outcome.notes.append(note)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        outcome.notes.append(f"FAILED: install footprint: {str(e)[-400:]}")
    if settings.studies:
        outcome.studies, notes = run_studies(settings.mode == "quick", log=log)
        outcome.notes += notes
    outcome.machine["loadavg_end"] = list(os.getloadavg())
    outcome.failures = [n for n in outcome.notes if n.startswith("FAILED")]
    return outcome
