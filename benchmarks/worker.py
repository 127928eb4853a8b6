"""One system on one model in a fresh process: cold start first, then the warm runs.

``python -m benchmarks.worker JSON_SPEC`` (the suite writes the spec).  The process's first
image is the cold start: from the parent's spawn time (``t0``, wall clock) through the import,
the load and one batch-1 image; its peak RSS at that moment is the cold-start RSS.  The same
image is the warm-up for batch 1; each other batch gets one warm-up call of its own.  Results
go to the spec's ``out`` file as JSON (stdout belongs to the libraries' chatter).
"""

from __future__ import annotations

import time

_T_START = time.time()  # before any import worth measuring

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def rss_mb() -> float:
    """This process's peak RSS in MB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork + exec, so a worker
    spawned by a parent that holds torch would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def initial_latents(batch: int, seed: int, channels: int, height: int, width: int) -> np.ndarray:
    """Image i's noise depends on seed + i only, as the runtime promises; shared by all systems."""
    return np.stack(
        [np.random.default_rng(seed + i).standard_normal((channels, height, width)) for i in range(batch)]
    ).astype(np.float32)


def run(spec: dict) -> dict:
    from benchmarks.systems import Runner

    t_import = time.time()
    lat = dict(channels=4, height=spec["height"] // spec["factor"], width=spec["width"] // spec["factor"])
    gen = dict(steps=spec["steps"], guidance=spec["guidance"], height=spec["height"], width=spec["width"])
    runner = Runner(spec["system"], Path(spec["model_dir"]))
    t_load = time.time()
    first, _, _ = runner.generate(spec["prompt"], initial_latents(1, spec["seed"], **lat), **gen)
    t_first = time.time()
    result = {
        "cold_start_s": t_first - spec["t0"],
        "import_s": t_import - _T_START,
        "load_s": t_load - t_import,
        "first_image_s": t_first - t_load,
        "peak_rss_mb": rss_mb(),
        "runs": {},
    }
    if spec.get("images"):
        np.save(spec["images"], first)
    # BENCH_PROFILE_DIR=... profiles the warm runs (cProfile), to find time outside the sessions.
    profile_dir = os.environ.get("BENCH_PROFILE_DIR")
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    for batch in spec["batches"]:
        latents = initial_latents(batch, spec["seed"], **lat)
        if batch != 1:
            runner.generate(spec["prompt"], latents, **gen)  # warm-up
        runs = [runner.generate(spec["prompt"], latents, **gen)[1:] for _ in range(spec["repeats"])]
        e2e = [r[0] for r in runs]
        keys = sorted(set().union(*(r[1] for r in runs)))
        result["runs"][str(batch)] = {
            "e2e_s": statistics.median(e2e),
            "e2e_runs_s": e2e,
            "stages_s": {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in keys},
        }
    if profile_dir:
        profiler.disable()
        profiler.dump_stats(str(Path(profile_dir) / f"{spec['tag']}.prof"))
    result["peak_rss_all_mb"] = rss_mb()
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    out = Path(spec["out"])
    result = run(spec)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
