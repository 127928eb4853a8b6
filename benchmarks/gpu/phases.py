"""The two phases: ``torch`` (build, diffusers, exports, references) and ``ort`` (the ONNX systems,
the correctness check).  They hand over through WORK: models, images and state.json."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np

from benchmarks.gpu import exports, procs
from benchmarks.gpu.run import Run
from benchmarks.worker import initial_latents


def torch_phase(run: Run) -> None:
    """Build, then diffusers' timing with the machine to itself, then every export at once (they
    are CPU-bound: capture, fusions) with diffusers' reference images beside them.  diffusers is
    timed first because timed beside the exports it would share their cores, and timed after them
    it got what the deadline left (nothing, on the first H200 run)."""
    cfg = run.cfg
    run.doc["machine"]["phases"].append("torch")
    if cfg.bench_model == "tiny":
        _suite_tiny(run)
    builds = [("tiny", run.paths["tiny"])]
    if cfg.bench_model != "tiny":
        builds.append((cfg.bench_model, run.paths["src"]))
    for kind, path in builds:
        if not path.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            spec = {"kind": kind, "path": str(path), "device": cfg.device}
            run.run(procs.task_cmd("build", spec), "build", f"build-{kind}")
    run.time_system("diffusers", run.paths["src"])
    children = _start_exports(run)
    _refs(run)
    for key, child in children.items():
        usable, note = exports.outcome(key, run.finish(child), exports.out_dir(key, child.args))
        if note:
            run.note(note)
        run.log(f"[gpu] export {key}: {'ok' if usable else 'FAILED'}")
    run.save()


def _start_exports(run: Run) -> dict[str, procs.Child]:
    cfg, paths = run.cfg, run.paths
    src, tiny = paths["src"], paths["tiny"]
    commands = {
        "sdlite": exports.export_sdlite_cmd(src, paths["sdlite"], cfg.dtype, cfg.target),
        "optimum": exports.export_optimum_cmd(src, paths["optimum"], cfg.dtype, cfg.device),
        "check-fp32": exports.export_sdlite_cmd(tiny, paths["check-fp32"], "fp32", cfg.target),
        "check-fp16": exports.export_sdlite_cmd(tiny, paths["check-fp16"], "fp16", cfg.target),
    }
    return {
        key: run.start(cmd, "export", f"export-{key}")
        for key, cmd in commands.items()
        if needs_export(run, key, cmd)
    }


def needs_export(run: Run, key: str, cmd: list[str]) -> bool:
    out = exports.out_dir(key, cmd)
    if exports.complete(out):
        run.log(f"[gpu] export {key}: reusing {out}")
        run.mark(f"export-{key}", time.monotonic(), True, reused=True)
        return False
    if run.work in out.parents:  # never outside WORK (the suite's cache is only read)
        shutil.rmtree(out, ignore_errors=True)  # an export cut short leaves a partial folder
    return True


def _suite_tiny(run: Run) -> None:
    """--small: the suite's cached tiny model and its exports (fp32, CPU) stand in for SD 1.5."""
    from benchmarks import models

    m = models.tiny(log=run.log)
    run.paths.update(src=m.diffusers_dir, tiny=m.diffusers_dir, optimum=m.optimum_dir)
    if m.sdlite_export == "sdlite" and run.cfg.dtype == "fp32" and run.cfg.target == "cpu":
        run.paths.update({"sdlite": m.sdlite_dir, "check-fp32": m.sdlite_dir})
        # Beside the suite's export, in its folder keyed by the exporter's sources (reused until
        # they change; the exporter writes it whole or not at all).
        run.paths["check-fp16"] = m.sdlite_dir.with_name("onnx-fp16-cpu")
    run.save()


def _check_spec(run: Run) -> dict:
    # The tiny model: 64², VAE factor 4.
    return {
        "steps": run.cfg.check_steps,
        "guidance": run.cfg.guidance,
        "height": 64,
        "width": 64,
        "latents": str(run.work / "check-latents.npy"),
    }


def _refs(run: Run) -> None:
    np.save(run.work / "check-latents.npy", initial_latents(1, run.cfg.seed, 4, 64 // 4, 64 // 4))
    spec = {**_check_spec(run), "model_dir": str(run.paths["tiny"]), "device": run.cfg.device}
    spec["out"] = str(run.work / "check-refs.npz")
    run.run(procs.task_cmd("refs", spec), "refs", "refs")


def ort_phase(run: Run) -> None:
    run.doc["machine"]["phases"].append("ort")
    run.time_system("sdlite", run.paths["sdlite"])
    run.time_system("optimum", run.paths["optimum"])
    refs = run.work / "check-refs.npz"
    if not refs.exists():
        run.note("FAILED: correctness: no diffusers reference images (the torch phase's refs step)")
        return
    out = run.work / "check.json"
    spec = {**_check_spec(run), "provider": run.cfg.provider, "refs": str(refs), "out": str(out)}
    spec["variants"] = [{"dtype": dt, "dir": str(run.paths[f"check-{dt}"])} for dt in ("fp32", "fp16")]
    if run.run(procs.task_cmd("check", spec), "check", "check") and out.exists():
        run.doc["correctness"] = json.loads(out.read_text())["rows"]
        for row in run.doc["correctness"]:
            if not row.get("ok"):
                run.note(f"FAILED: correctness {row['dtype']}: {row.get('error') or row}")
    run.save()
