"""What the export's fusions buy on the CPU: the SD 1.5 U-Net (random weights) per call, fp32, batch 2.

Three engines on the same weights and inputs: PyTorch (eager), ONNX Runtime on optimum's plain
export, and ONNX Runtime on sdlite's export (the same optimum graph after `sdlite.export`'s CPU
fusions). PyTorch: one warm-up and one timed call per size. The two ONNX graphs are loaded
together and called in alternation, ROUNDS timed calls each after a warm-up, median: the machine
is shared (see `loadavg`), and alternation puts its drift on both graphs alike. Also the
export's wall time and peak RAM (the export runs in a child process so its peak resident set is
its own).

    python -m benchmarks.export_unet [--quick]

Writes benchmarks/results/export_unet.{json,md} (not in --quick mode, which shrinks the U-Net to
the tiny test architecture and 64 px as a smoke test).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.9  # fused <= 0.9x unfused at 512 px
BATCH = 2  # classifier-free guidance: unconditional + conditional
THREADS = 2
ROUNDS = 7  # alternating timed calls per ONNX graph and size
TINY_CONFIG: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "sample_size": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def _unet_config(quick: bool) -> dict[str, Any]:
    if quick:
        return TINY_CONFIG
    from benchmarks.sd15 import UNET_CONFIG

    return UNET_CONFIG


def _build_unet(config: dict[str, Any]):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval()


def export_stage(workdir: Path, quick: bool) -> dict[str, Any]:
    """Child process: build the U-Net, capture it with optimum (plain), fuse it with sdlite."""
    import torch
    from optimum.exporters.onnx import export
    from optimum.exporters.onnx.model_configs import UNetOnnxConfig
    from sdlite.export.optimize import optimize_component

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    unet = _build_unet(_unet_config(quick))
    t1 = time.perf_counter()
    plain = workdir / "plain" / "model.onnx"
    config = UNetOnnxConfig(unet.config, task="semantic-segmentation")
    with torch.no_grad():
        export(model=unet, config=config, output=plain)
    del unet
    gc.collect()
    t2 = time.perf_counter()
    info = optimize_component(plain, workdir / "fused" / "model.onnx", "unet", "cpu", float16=False)
    t3 = time.perf_counter()
    return {
        "build_s": round(t1 - t0, 1),
        "capture_s": round(t2 - t1, 1),
        "fuse_s": round(t3 - t2, 1),
        "fusions": info["fusions"],
        "external_data": info["external_data"],
    }


def _inputs(config: dict[str, Any], px: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    latent = px // 8
    return {
        "sample": rng.standard_normal((BATCH, 4, latent, latent), dtype=np.float32),
        "timestep": np.array(500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal(
            (BATCH, 77, config["cross_attention_dim"]), dtype=np.float32
        ),
    }


def _time(fn) -> float:
    fn()  # warm-up: allocator, first-call kernel selection
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _time_torch(config: dict[str, Any], sizes: tuple[int, ...]) -> dict[int, float]:
    import torch

    torch.set_num_threads(THREADS)
    unet = _build_unet(config)
    times = {}
    for px in sizes:
        t = {k: torch.from_numpy(v) for k, v in _inputs(config, px).items()}
        with torch.no_grad():
            times[px] = _time(lambda t=t: unet(t["sample"], t["timestep"], t["encoder_hidden_states"]))
    unet = None  # free the weights before the next engine loads its own copy
    gc.collect()
    return times


def _time_onnx_pair(
    paths: dict[str, Path], config: dict[str, Any], sizes: tuple[int, ...], rounds: int
) -> dict[str, dict[int, list[float]]]:
    """Per-call seconds of each graph, both loaded at once and called in alternation (one warm-up
    each, then ``rounds`` rounds of one call per graph), so that the shared machine's drift
    lands on both graphs alike."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    sessions = {
        k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()
    }
    times: dict[str, dict[int, list[float]]] = {k: {} for k in paths}
    for px in sizes:
        feed = _inputs(config, px)
        for sess in sessions.values():
            sess.run(None, feed)  # warm-up: allocator, first-call kernel selection
        for _ in range(rounds):
            for name, sess in sessions.items():
                start = time.perf_counter()
                sess.run(None, feed)
                times[name].setdefault(px, []).append(time.perf_counter() - start)
    sessions.clear()
    gc.collect()
    return times


def _profile_ops(paths: dict[str, Path], config: dict[str, Any], px: int) -> dict[str, dict[str, float]]:
    """Seconds per operator type in one call of each graph, from ONNX Runtime's profiler (fresh
    sessions, one warm-up, then one profiled call each, taken one right after the other).  It says
    where the two graphs differ: the convolutions and the projection MatMuls are the same nodes in
    both."""
    import onnxruntime as ort

    feed = _inputs(config, px)
    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"sdlite-export-unet-{name}")
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        sessions[name].run(None, feed)
    out: dict[str, dict[str, float]] = {}
    for name, sess in sessions.items():
        sess.run(None, feed)
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()
        runs = [e for e in events if e.get("name") == "model_run"]
        last = runs[-1]["ts"]
        by_op: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last:
                op = e["args"].get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e6
        out[name] = {op: round(t, 3) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])}
    sessions.clear()
    gc.collect()
    return out


def _run_export_stage(workdir: Path, quick: bool) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "benchmarks.export_unet", "--export-stage", str(workdir)]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    proc = subprocess.run(
        cmd + (["--quick"] if quick else []), cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"export stage failed:\n{proc.stderr[-4000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    export = json.loads((workdir / "export.json").read_text())
    export.update(wall_s=round(wall, 1), peak_rss_gb=round(max(peak_kb, before) / 2**20, 2))
    (workdir / "export.json").write_text(json.dumps(export))
    return export


def _workdir(quick: bool, workdir: Path | None) -> tuple[Path, bool]:
    """Where the graphs go, and whether they are kept after the run."""
    keep = workdir is not None or not quick
    if workdir is None and not quick:
        # The SD 1.5 export takes minutes and ~17 GB of RAM: kept, keyed by what makes it (the
        # exporter's sources, the architecture, the exporting packages' versions), and reused.
        from benchmarks.models import source_key

        key = source_key(REPO / "export", REPO / "benchmarks" / "sd15.py")
        workdir = REPO / ".cache" / "benchmarks" / f"export_unet-sd15-{key}"
    elif workdir is None:
        root = REPO / ".cache" / "benchmarks"
        root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="export_unet-", dir=root))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, keep


def _exported(workdir: Path, quick: bool) -> dict[str, Any]:
    if (workdir / "export.json").is_file() and (workdir / "fused" / "model.onnx").is_file():
        return {**json.loads((workdir / "export.json").read_text()), "reused": True}
    return _run_export_stage(workdir, quick)


def _time_calls(workdir: Path, config: dict[str, Any], sizes: tuple[int, ...]) -> tuple[dict, dict, dict]:
    """(median per call by size and engine, every ONNX call by size and engine, the profile)."""
    per_call: dict[str, dict[str, float]] = {str(px): {} for px in sizes}
    calls: dict[str, dict[str, list[float]]] = {str(px): {} for px in sizes}
    for px, seconds in _time_torch(config, sizes).items():
        per_call[str(px)]["pytorch"] = round(seconds, 3)
        print(f"{px} px pytorch: {seconds:.3f} s", flush=True)
    graphs = {"onnx_plain": workdir / "plain" / "model.onnx", "onnx_fused": workdir / "fused" / "model.onnx"}
    for engine, by_size in _time_onnx_pair(graphs, config, sizes, ROUNDS).items():
        for px, seconds in by_size.items():
            per_call[str(px)][engine] = round(statistics.median(seconds), 3)
            calls[str(px)][engine] = [round(x, 3) for x in seconds]
            print(f"{px} px {engine}: {', '.join(f'{x:.3f}' for x in seconds)} s", flush=True)
    return per_call, calls, _profile_ops(graphs, config, max(sizes))


def run(quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    """Export (child process) then per-call times; returns the result dict.

    `workdir`: keep the exported graphs there, and reuse them (skipping the export) when a
    previous run left them, to retime on a quieter machine.  Default: a folder under
    ``.cache/benchmarks`` keyed by the exporter's sources and versions (a temporary one with
    ``quick``).
    """
    from benchmarks import machine

    described = machine.describe(REPO)  # at the start: its load average is the starting one
    config = _unet_config(quick)
    sizes = (64,) if quick else (256, 512)
    workdir, keep = _workdir(quick, workdir)
    try:
        export = _exported(workdir, quick)
        print(f"export: {export}", flush=True)
        per_call, calls, profile = _time_calls(workdir, config, sizes)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    # Each round's fused call ran right after its plain one: the ratio within a round is free of
    # the drift between rounds (the host's memory traffic moves the memory-bound plain attention
    # more than anything else), and its median over rounds is the figure judged.
    rounds = {
        px: [round(f / p, 3) for p, f in zip(row["onnx_plain"], row["onnx_fused"], strict=True)]
        for px, row in calls.items()
    }
    ratios = {px: round(statistics.median(r), 3) for px, r in rounds.items()}
    largest = str(max(sizes))
    return {
        "model": "tiny test U-Net" if quick else "SD 1.5 U-Net (random weights, 860M parameters)",
        "dtype": "float32",
        "batch": BATCH,
        "threads": THREADS,
        "protocol": f"PyTorch: 1 warm-up + 1 timed call; ONNX Runtime: both graphs loaded, 1 warm-up "
        f"each, then {ROUNDS} rounds of one plain and one fused call; per-call medians, and the "
        "median of the per-round fused/plain ratios",
        "quick": quick,
        "machine": described,
        "loadavg_end": list(os.getloadavg()),
        "export": export,
        "per_call_s": per_call,
        "onnx_calls_s": calls,
        "fused_vs_plain": ratios,
        "fused_vs_plain_rounds": rounds,
        "profile_s": profile,
        "target_ratio": TARGET_RATIO,
        "target_size": int(largest),
        "meets_target": ratios[largest] <= TARGET_RATIO,
    }


def _load(avg: list[float] | None) -> str:
    return "n/a" if not avg else f"{avg[0]:.1f}"


def markdown(result: dict[str, Any]) -> str:
    exp = result["export"]
    fusions = ", ".join(f"{op} {n}" for op, n in exp["fusions"].items())
    lines = [
        f"{result['model']}, {result['dtype']}, batch {result['batch']}, {result['threads']} threads; "
        f"{result['protocol']}. Target: fused <= {result['target_ratio']}x plain "
        f"at {result['target_size']} px.",
        "",
        "| size | PyTorch (s) | ORT, optimum plain (s) | ORT, sdlite fused (s) | fused / plain | per round |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for px, row in result["per_call_s"].items():
        per_round = ", ".join(f"{r:.2f}" for r in result.get("fused_vs_plain_rounds", {}).get(px, []))
        lines.append(
            f"| {px}² | {row['pytorch']:.2f} | {row['onnx_plain']:.2f} | {row['onnx_fused']:.2f} "
            f"| {result['fused_vs_plain'][px]:.2f} | {per_round} |"
        )
    lines += [
        "",
        f"Export{' (the run that made these graphs; timed again here)' if exp.get('reused') else ''}: "
        f"{exp['wall_s']:.0f} s wall (build {exp['build_s']:.0f} s, optimum capture "
        f"{exp['capture_s']:.0f} s, fusion {exp['fuse_s']:.0f} s), peak RAM {exp['peak_rss_gb']:.1f} GB. "
        f"Fusions: {fusions}. Target met: {'yes' if result['meets_target'] else '**no**'}. "
        f"Load average at start/end: {_load(result['machine']['loadavg_start'])} / "
        f"{_load(result['loadavg_end'])} on {result['machine']['cores']} cores (shared machine).",
    ]
    profile = result.get("profile_s")
    if profile:
        plain, fused = profile["onnx_plain"], profile["onnx_fused"]
        timed = result["per_call_s"][str(result["target_size"])]
        ops = [op for op in {**plain, **fused} if max(plain.get(op, 0), fused.get(op, 0)) >= 0.1]
        lines += [
            "",
            f"Where the time goes, {result['target_size']} px: ONNX Runtime's profiler, seconds per "
            "operator type in one call of each graph (operators over 0.1 s in either; the calls "
            "ran one right after the other).",
            "",
            "| operator | plain (s) | fused (s) |",
            "|---|---:|---:|",
            *(f"| {op} | {plain.get(op, 0):.2f} | {fused.get(op, 0):.2f} |" for op in ops),
            f"| all | {sum(plain.values()):.2f} | {sum(fused.values()):.2f} |",
            "",
            "Each profiled call is a single call and swings as any call does here (its kernel time "
            f"against the timed median above: plain {sum(plain.values()):.2f} vs "
            f"{timed['onnx_plain']:.2f} s, fused {sum(fused.values()):.2f} vs "
            f"{timed['onnx_fused']:.2f} s): the table shows where the "
            "graphs differ; the timed medians are what the target is judged on.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny U-Net at 64 px (smoke test, nothing written)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the exported graphs here; reuse them if present")
    parser.add_argument("--export-stage", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.export_stage is not None:
        info = export_stage(args.export_stage, args.quick)
        atomic_write(args.export_stage / "export.json", json.dumps(info))
        return
    result = run(quick=args.quick, workdir=args.workdir)
    print(markdown(result))
    if not args.quick:
        write(result)


def write(result: dict[str, Any]) -> None:
    """benchmarks/results/export_unet.{json,md} (also called by the suite)."""
    atomic_write(RESULTS / "export_unet.json", json.dumps(result, indent=2) + "\n")
    atomic_write(RESULTS / "export_unet.md", markdown(result))


if __name__ == "__main__":
    main()
