"""``sdlite batch --engine ray``: the same job on a local 2-CPU Ray instance, same PNG pixels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sdlite import batch_manifest, cli
from test_batch import STEPS, THREADS, _expected_ids, _write_job


def _processes_of(ray_tmp: str) -> list[str]:
    """Processes of the Ray instance using ``ray_tmp``: its path is in their command line or,
    for workers (whose title Ray rewrites to "ray::..."), in the RAY_TMPDIR they inherit."""
    found = []
    needle = ray_tmp.encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if needle in cmdline or needle in environ:
                title = cmdline.replace(b"\0", b" ")[:120].decode(errors="replace")
                found.append(f"{proc.name}: {title}")
    return found


def _records(out: Path) -> dict[tuple, dict]:
    recs = [json.loads(line) for line in (out / batch_manifest.MANIFEST).read_text().splitlines()]
    return {(r["id"], r["line"]): {k: r[k] for k in ("status", "parameters", "seed", "png")} for r in recs}


def test_ray_engine_gives_the_local_engines_pixels(tmp_path, capsys):
    job = _write_job(tmp_path / "job.jsonl")
    common = ["--batch-size", "3", "--steps", str(STEPS), "--provider", "cpu", "--threads", THREADS, "-q"]
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert cli.main(["batch", str(job), "--out", str(local), *common]) == 1  # the malformed line
    capsys.readouterr()

    # A short private temp dir: Ray's socket paths must fit in 107 bytes, and it tells which
    # processes are this instance's.
    ray_tmp = tempfile.mkdtemp(prefix="sdray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    try:
        cmd = [sys.executable, "-m", "sdlite", "batch", str(job), "--out", str(on_ray), "--engine", "ray"]
        proc = subprocess.run(
            [*cmd, "--ray-workers", "2", *common],
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
        )
        assert proc.returncode == 1, proc.stderr[-4000:]
        # ray.shutdown() stops the instance; its workers notice within seconds.
        deadline = time.monotonic() + 30
        while (left := _processes_of(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"Ray left processes behind: {left}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert _records(on_ray) == _records(local)
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in on_ray.iterdir())
    assert names == sorted([f"{i}.png" for i in _expected_ids()] + [batch_manifest.MANIFEST])
    for name in (n for n in names if n.endswith(".png")):
        with Image.open(local / name) as a, Image.open(on_ray / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
            assert a.text["parameters"] == b.text["parameters"]


def test_ray_engine_without_the_extra_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    job = _write_job(tmp_path / "job.jsonl")
    assert cli.main(["batch", str(job), "--out", str(tmp_path / "o"), "--engine", "ray"]) == 2
    assert "pip install 'sdlite[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("provider", "flag", "gpus"),
    [
        (None, None, 0.0),
        ("cpu", None, 0.0),
        ("cuda", None, 1.0),
        ("CUDAExecutionProvider", None, 1.0),
        ("cuda", 0.5, 0.5),
        ("cpu", 2, 2.0),
    ],
)
def test_gpus_per_worker(provider, flag, gpus):
    from argparse import Namespace

    from sdlite.batch_ray import gpus_per_worker

    assert gpus_per_worker(Namespace(provider=provider, ray_gpus_per_worker=flag)) == gpus
