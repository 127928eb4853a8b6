"""The GPU benchmark script (benchmarks/gpu.py) in its --small mode on the CPU: both phases as
separate processes hand over through WORK, as on the GPU machine; every system is timed, the
images agree, the correctness check runs, and a failing step leaves a results file that says so.
Figures are never asserted (the machine is shared); shapes and parity are."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu
from benchmarks.models import REPO


def _main(*args: str) -> int:
    # A child process, as gpu_run.sh calls it (the script's children inherit its environment).
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", *args], cwd=REPO).returncode


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[dict, Path]:
    work, out = tmp_path_factory.mktemp("gpu-work"), tmp_path_factory.mktemp("gpu-out")
    common = ("--small", "--work", str(work), "--out", str(out))
    assert _main(*common, "--phase", "torch") == 0
    assert _main(*common, "--phase", "ort") == 0
    return json.loads((out / "gpu-cpu-small.json").read_text()), out


def test_document_shape_and_phase_handover(small_run):
    doc, out = small_run
    assert set(doc) >= {"machine", "results", "install_mb", "correctness"}
    m = doc["machine"]
    assert m["mode"] == "gpu-small" and m["phases"] == ["torch", "ort"]
    assert "gpu" in m and "driver" in m and m["versions"]["onnxruntime"]
    assert not [n for n in m["notes"] if n.startswith("FAILED")]
    md = (out / "gpu-cpu-small.md").read_text()
    assert "U-Net ms/step" in md and "vs diffusers" in md and "**Correctness**" in md


def test_every_system_and_batch_timed(small_run):
    doc, _ = small_run
    cfg = gpu.SMALL
    rows = {(r["system"], r["batch"]): r for r in doc["results"]}
    assert set(rows) == {(s, b) for s in gpu.SYSTEMS for b in cfg.batches}
    for r in rows.values():
        assert r["steps"] == cfg.steps and r["height"] == cfg.size
        assert len(r["e2e_runs_s"]) == cfg.repeats and r["e2e_s"] > 0
        assert r["stages_s"]["unet"] > 0 and r["unet_step_ms"] > 0
        assert r["cold_start_s"] > 0 and r["peak_rss_mb"] > 0
    assert rows[("sdlite", 1)]["providers"][0] == "CPUExecutionProvider"
    assert rows[("optimum", 1)]["outside_sessions_frac"] is not None


def test_same_latents_same_image(small_run):
    # fp32 on the CPU: sdlite and optimum must reproduce diffusers' batch-1 image (the 2/255 bound).
    doc, _ = small_run
    for r in doc["results"]:
        if r["batch"] == 1:
            assert r["max_abs_diff_255"] <= 2.0, r["system"]


def test_correctness_check_rows(small_run):
    doc, _ = small_run
    rows = {c["dtype"]: c for c in doc["correctness"]}
    assert set(rows) == {"fp32", "fp16"}
    for dt, limit in (("fp32", gpu.FP32_TOL), ("fp16", gpu.FP16_TOL)):
        assert rows[dt]["ok"] is True, rows[dt]
        assert rows[dt]["max_abs_diff_255"] <= limit * 255


def test_missing_models_fail_loudly_but_write(tmp_path):
    # The ort phase without the torch phase's models: non-zero exit, and a results file naming why.
    rc = _main("--small", "--phase", "ort", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"))
    assert rc == 1
    doc = json.loads((tmp_path / "o" / "gpu-cpu-small.json").read_text())
    failed = [n for n in doc["machine"]["notes"] if n.startswith("FAILED")]
    assert any("no model at" in n for n in failed) and any("correctness" in n for n in failed)
    assert doc["results"] == []


def test_export_commands_parse_with_the_real_clis(tmp_path):
    from optimum.commands.export.onnx import parse_args_onnx
    from sdlite.export.cli import build_parser

    src, out = tmp_path / "src", tmp_path / "out"
    ours = build_parser().parse_args(gpu.export_sdlite_cmd(src, out, "fp16", "cuda")[3:])
    assert (ours.dtype, ours.target, ours.source, ours.out) == ("fp16", "cuda", str(src), str(out))
    cmd = gpu.export_optimum_cmd(src, out, "fp16", "cuda")
    parser = argparse.ArgumentParser()
    parse_args_onnx(parser)
    theirs = parser.parse_args(cmd[cmd.index("export") + 2 :])
    assert (theirs.dtype, theirs.device, theirs.model, str(theirs.output)) == (
        "fp16",
        "cuda",
        str(src),
        str(out),
    )
    assert theirs.optimize is None  # optimum's plain export: none of its own graph optimizations


def test_device_slug():
    assert gpu.device_slug({"gpu": "NVIDIA H100 80GB HBM3"}, False) == "nvidia-h100-80gb-hbm3"
    assert gpu.device_slug(None, True) == "cpu-small"
