"""``sdlite batch``: a mixed job killed with SIGKILL and resumed equals a one-by-one run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sdlite import batch_items, batch_manifest, cli
from sdlite.models import demo_path
from sdlite.pipeline import Pipeline

# Mixed settings: 3 sizes, 3 step counts, 3 samplers (one stochastic: its per-step noise must
# follow each image's seed too), 2 guidance scales, with and without negative prompt, id, seed.
JOB = [
    {"id": "cat-1", "prompt": "a red circle", "seed": 11},
    {"id": "cat-2", "prompt": "a blue square", "seed": 12, "negative_prompt": "red"},
    {"prompt": "a green triangle"},
    {"id": "cat-4", "prompt": "a yellow circle", "seed": 14, "negative_prompt": "blurry"},
    {"id": "cat-5", "prompt": "a purple square on white", "seed": 2**40 + 3},
    {
        "id": "small-1",
        "prompt": "a yellow circle",
        "width": 32,
        "height": 32,
        "sampler": "euler_a",
        "seed": 5,
    },
    {
        "prompt": "a purple square",
        "width": 32,
        "height": 32,
        "sampler": "euler_a",
        "negative_prompt": "green",
    },
    {"id": "small-3", "prompt": "two circles", "width": 32, "height": 32, "sampler": "euler_a", "seed": 99},
    {"id": "wide-1", "prompt": "a red square", "width": 64, "height": 48, "sampler": "ddim", "steps": 8},
    {"id": "wide-2", "prompt": "a blue triangle", "width": 64, "height": 48, "sampler": "ddim", "steps": 8},
    {"id": "wide-3", "prompt": "a white circle", "width": 64, "height": 48, "sampler": "ddim", "steps": 8},
    {"id": "g1-1", "prompt": "a blue circle", "guidance": 1, "steps": 16, "seed": 3},
    {"id": "g1-2", "prompt": "a red triangle", "guidance": 1, "steps": 16, "negative_prompt": "x"},
    {"id": "g3", "prompt": "a green square", "guidance": 3.5, "seed": 21},
]
MALFORMED = '{"id": "broken", "prompt": "a red'
MALFORMED_LINE = 4
STEPS = 12  # --steps: the default for lines without "steps"
# Every run here uses one ORT thread: ORT does not promise bit-identical results from its
# multithreaded CPU kernels (once in ~10 runs on a loaded machine, one batch came out 1/255 off
# in a few pixels), and these tests compare pixels exactly.
THREADS = "1"


def _write_job(path: Path) -> Path:
    lines = [json.dumps(item) for item in JOB]
    lines.insert(MALFORMED_LINE - 1, MALFORMED)
    path.write_text("\n".join(lines) + "\n")
    return path


def _expected_ids() -> list[str]:
    ids = []
    for n, item in enumerate(JOB, start=1):
        line = n if n < MALFORMED_LINE else n + 1
        ids.append(item.get("id", batch_items.line_id(line)))
    return ids


def _manifest(out: Path) -> list[dict]:
    path = out / batch_manifest.MANIFEST
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ok_count(out: Path) -> int:
    """Images recorded so far, read while the job writes (its last line may be half-written)."""
    path = out / batch_manifest.MANIFEST
    text = path.read_text() if path.exists() else ""
    return sum('"status": "ok"' in line for line in text.split("\n")[:-1])


def _cmd(job: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "sdlite", "batch", str(job), "--out", str(out)),
        *("--batch-size", "3", "--steps", str(STEPS), "--provider", "cpu", "--threads", THREADS, *extra),
    ]


@pytest.fixture(scope="module")
def demo_pipe() -> Pipeline:
    return Pipeline.from_pretrained(demo_path(), provider="cpu", num_threads=int(THREADS))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> tuple[Path, Path, int, int]:
    """The job killed with SIGKILL once >= 3 images are recorded, then rerun to completion."""
    tmp = tmp_path_factory.mktemp("batch")
    job, out = _write_job(tmp / "job.jsonl"), tmp / "out"
    proc = subprocess.Popen(_cmd(job, out, "--quiet"), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _ok_count(out) < 3:
            assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no 3 images within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    done_before = _ok_count(out)
    assert done_before < len(JOB), "killed too late to test resuming"
    # kill -9 in the middle of a manifest write leaves a line without its end.
    with open(out / batch_manifest.MANIFEST, "ab") as f:
        f.write(b'{"id": "cat-1", "line": 1, "status": "o')
    (out / ".cat-1.png.0badc0de.tmp").write_bytes(b"\x89PNG")  # ... or in the middle of a PNG write
    rerun = subprocess.run(_cmd(job, out), capture_output=True, text=True, timeout=300)
    print(f"images recorded when killed: {done_before} of {len(JOB)}")
    assert "img/s" in rerun.stderr  # the progress bar
    return job, out, rerun.returncode, done_before


def test_killed_job_resumes_without_loss_or_duplicates(killed_and_resumed):
    _job, out, code, done_before = killed_and_resumed
    assert code == 1  # the malformed line
    records = _manifest(out)  # every line parses: the torn fragment was cut off
    ids = _expected_ids()
    ok = [r for r in records if r["status"] == "ok"]
    assert sorted(r["id"] for r in ok) == sorted(ids)  # each valid id: exactly one ok line
    errors = [r for r in records if r["status"] == "error"]
    assert len(errors) == 1 and errors[0]["line"] == MALFORMED_LINE and "not JSON" in errors[0]["error"]
    expected = [f"{i}.png" for i in ids] + [batch_manifest.MANIFEST]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for r in ok:
        assert r["png"] == f"{r['id']}.png" and r["seed"] == r["parameters"]["seed"]
        assert 1 <= r["timings"]["batch_images"] <= 3 and r["timings"]["unet"] > 0
    assert 3 <= done_before < len(ids)


def test_resumed_images_equal_one_by_one_run(killed_and_resumed, demo_pipe):
    _job, out, _code, _ = killed_and_resumed
    by_id = {r["id"]: r for r in _manifest(out) if r["status"] == "ok"}
    for item_id, item in zip(_expected_ids(), JOB, strict=True):
        rec = by_id[item_id]
        seed = item.get("seed", batch_items.derived_seed(item_id))
        assert rec["seed"] == seed
        alone = demo_pipe(
            item["prompt"],
            negative_prompt=item.get("negative_prompt"),
            num_inference_steps=item.get("steps", STEPS),
            guidance_scale=item.get("guidance", 7.5),
            height=item.get("height", 64),
            width=item.get("width", 64),
            sampler=item.get("sampler", "unipc"),
            seed=seed,
        )
        with Image.open(out / rec["png"]) as im:
            pixels, text = np.asarray(im.convert("RGB")), im.text["parameters"]
        assert np.array_equal(pixels, np.asarray(alone.images[0])), item_id
        assert text == alone.parameters[0]


def test_resuming_a_finished_job_does_nothing(killed_and_resumed):
    job, out, _code, _ = killed_and_resumed
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    rerun = subprocess.run(_cmd(job, out), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 1, rerun.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
    assert "0 generated" in rerun.stderr and f"{len(JOB)} already done" in rerun.stderr


def test_exit_status_counts_failures_and_edited_lines_rerun(tmp_path, capsys):
    job, out = tmp_path / "job.jsonl", tmp_path / "out"
    lines = [
        {"id": "a", "prompt": "a red circle", "seed": 1},
        {"id": "a", "prompt": "the same id again"},
        {"id": "../escape", "prompt": "x"},
        {"id": "b", "prompt": "x", "colour": "red", "steps": 2},
        {"id": "c", "prompt": "x", "sampler": "lcm", "steps": 60},  # lcm allows 50: fails when run
        {"id": "d", "prompt": "x", "sampler": "no-such-sampler"},
        "[1, 2]",
    ]
    job.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n")
    args = ["batch", str(job), "--out", str(out), "--steps", "2", "-q"]
    assert cli.main(args) == 6
    err = capsys.readouterr().err
    assert "1 of 7 lines ok" in err and "6 failed" in err
    records = _manifest(out)
    errors = {r["line"]: r["error"] for r in records if r["status"] == "error"}
    assert set(errors) == {2, 3, 4, 5, 6, 7}
    assert "duplicate id 'a'" in errors[2] and "path separators" in errors[3]
    assert "'colour'" in errors[4] and "prompt" in errors[4]  # the unknown key and the allowed ones
    assert "'no-such-sampler'" in errors[6] and "JSON object" in errors[7]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", batch_manifest.MANIFEST]
    assert not (tmp_path / "escape.png").exists()

    # Rerun: input errors are not recorded again, the generation failure is retried.
    assert cli.main(args) == 6
    again = _manifest(out)[len(records) :]
    assert [(r["id"], r["status"]) for r in again] == [("c", "error")]

    # Fixing lines makes them run; the exit status follows the whole job.
    lines[3] = {"id": "b", "prompt": "x", "steps": 2}
    lines[4] = {"id": "c", "prompt": "x", "sampler": "lcm", "steps": 2}
    job.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    assert cli.main(args) == 4
    assert {"a.png", "b.png", "c.png"} <= {p.name for p in out.iterdir()}


def test_bad_arguments_fail_before_loading_a_model(tmp_path, monkeypatch, capsys):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Pipeline, "from_pretrained", no_loading)
    out = tmp_path / "out"
    assert cli.main(["batch", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "job file" in err and "missing.jsonl" in err and "does not exist" in err
    job = _write_job(tmp_path / "job.jsonl")
    with pytest.raises(SystemExit) as exc:
        cli.main(["batch", str(job), "--out", str(out), "--batch-size", "0"])
    assert exc.value.code == 2 and "--batch-size: must be an integer >= 1" in capsys.readouterr().err
    for bad, word in (
        (["--sampler", "nope"], "--sampler"),
        (["--width", "30"], "--width"),
        (["--steps", "20000"], "--steps"),
    ):
        assert cli.main(["batch", str(job), "--out", str(out), *bad]) == 2
        assert word in capsys.readouterr().err
    assert not out.exists()


def test_missing_file_via_subprocess_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sdlite", "batch", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "job file" in proc.stderr and "does not exist" in proc.stderr


def test_parse_job_resolves_defaults_and_seeds(tmp_path):
    job = tmp_path / "j.jsonl"
    job.write_text('{"prompt": "a"}\n\n{"id": "x", "prompt": "b", "seed": 7, "guidance": 2}\n')
    d = batch_items.Defaults(steps=5, guidance=4.0, sampler="ddim", width=64, height=48, size_multiple=16)
    items, errors = batch_items.parse_job(job, d)
    assert errors == [] and [it.id for it in items] == ["line-0001", "x"]
    assert items[0].params == {
        "prompt": "a",
        "negative_prompt": None,
        "seed": batch_items.derived_seed("line-0001"),
        "steps": 5,
        "guidance": 4.0,
        "sampler": "ddim",
        "width": 64,
        "height": 48,
    }
    assert items[1].params["seed"] == 7 and items[1].params["guidance"] == 2.0
    assert batch_items.derived_seed("x") == batch_items.derived_seed("x") != batch_items.derived_seed("y")
    for bad in ("", ".hidden", "a/b", "a\\b", "a\nb", "x" * 201, 5):
        with pytest.raises(ValueError, match="id"):
            batch_items.check_id(bad)


def test_grouping_keeps_compatible_items_together():
    def it(i: int, **p) -> batch_items.Item:
        base = {"width": 64, "height": 64, "steps": 4, "sampler": "unipc", "guidance": 7.5}
        return batch_items.Item(str(i), i, {**base, **p})

    groups = batch_items.group([it(1), it(2, steps=5), it(3), it(4), it(5, negative_prompt="x")], 2)
    assert [[x.id for x in g] for g in groups] == [["1", "3"], ["4", "5"], ["2"]]


def test_second_job_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = batch_manifest.Manifest(out)
    try:
        with pytest.raises(ValueError, match="another sdlite batch"):
            batch_manifest.Manifest(out)
    finally:
        first.close()


def test_missing_settings_come_from_the_model_preset(tmp_path):
    # A folder named like an SD-Turbo export: 1 euler_a step, trailing spacing, no guidance.
    turbo = tmp_path / "demo-turbo"
    turbo.mkdir()
    for child in Path(demo_path()).iterdir():
        (turbo / child.name).symlink_to(child)
    job, out = tmp_path / "job.jsonl", tmp_path / "out"
    job.write_text(json.dumps({"id": "t", "prompt": "a red circle", "seed": 7}) + "\n")
    assert (
        cli.main(["batch", str(job), "--out", str(out), "--model", str(turbo), "-q", "--threads", THREADS])
        == 0
    )
    (record,) = _manifest(out)
    params = record["parameters"]
    assert (params["steps"], params["sampler"], params["guidance"]) == (1, "euler_a", 0.0)
    # Equal to the Pipeline's own preset run, whose trailing spacing the batch must pass on too.
    pipe = Pipeline.from_pretrained(turbo, provider="cpu", num_threads=int(THREADS))
    alone = np.asarray(pipe("a red circle", seed=7).images[0])
    assert np.array_equal(np.asarray(Image.open(out / "t.png").convert("RGB")), alone)
