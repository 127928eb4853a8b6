"""``sdlite batch`` with hostile lines (issue #18 items 4 and 12): a bad line fails alone.

Every test runs a real job on the demo model (32x32, 2 steps, one ORT thread so that pixels
compare exactly) and reads the manifest back as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sdlite import batch_items, batch_manifest, cli, rules
from sdlite.models import demo_path
from sdlite.pipeline import Pipeline

BASE = ("--steps", "2", "--width", "32", "--height", "32", "--batch-size", "4", "--threads", "1", "-q")
NESTED = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
# (line, the field its error must name): one of each kind of hostile line from issue #18.
HOSTILE = [
    (r'{"id": "h-sur", "prompt": "a cat \ud800"}', "prompt"),
    (r'{"id": "\ud800", "prompt": "a cat"}', "id"),
    (json.dumps({"id": "é" * 150, "prompt": "a cat"}), "id"),
    (NESTED, "nested too deeply"),
    ('{"prompt": "a cat", "guidance": NaN}', "guidance"),
    ('{"prompt": "a cat", "sampler": "no-such-sampler"}', "sampler"),
    ('{"prompt": "a cat", "width": 30}', "width"),
    ("{this is not json", "not JSON"),
]


@pytest.fixture(scope="module")
def demo_pipe() -> Pipeline:
    return Pipeline.from_pretrained(demo_path(), provider="cpu", num_threads=1)


def _run(job: Path, out: Path, *extra: str) -> int:
    return cli.main(["batch", str(job), "--out", str(out), *BASE, *extra])


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / batch_manifest.MANIFEST).read_bytes().splitlines()]


def _good(i: int) -> str:
    return json.dumps({"id": f"good-{i}", "prompt": f"a shape number {i}", "seed": i})


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


def test_one_in_eight_hostile_lines_leave_good_images_byte_identical(tmp_path):
    good = [_good(i) for i in range(7 * len(HOSTILE))]
    mixed = []
    for k, (line, _field) in enumerate(HOSTILE):
        mixed += good[7 * k : 7 * k + 3] + [line] + good[7 * k + 3 : 7 * k + 7]
    clean_out, mixed_out = tmp_path / "clean", tmp_path / "mixed"
    assert _run(_write(tmp_path / "clean.jsonl", good), clean_out) == 0
    assert _run(_write(tmp_path / "mixed.jsonl", mixed), mixed_out) == len(HOSTILE)
    assert _pngs(mixed_out) == _pngs(clean_out) and len(_pngs(clean_out)) == len(good)
    errors = {r["line"]: r["error"] for r in _records(mixed_out) if r["status"] == "error"}
    assert sorted(errors) == [8 * k + 4 for k in range(len(HOSTILE))]
    for (line_no, error), (_line, field) in zip(sorted(errors.items()), HOSTILE, strict=True):
        assert field in error and len(error) <= batch_items.MAX_ERROR_CHARS, (line_no, error)
    # Rerun: nothing crashes, nothing is generated again, the same lines are counted as failed.
    before = _pngs(mixed_out)
    assert _run(tmp_path / "mixed.jsonl", mixed_out) == len(HOSTILE)
    assert _pngs(mixed_out) == before


def test_surrogate_in_a_prompt_fails_only_its_line_and_the_manifest_stays_readable(tmp_path):
    job = _write(tmp_path / "j.jsonl", [_good(1), r'{"id": "bad", "prompt": "\ud800"}', _good(2)])
    out = tmp_path / "out"
    assert _run(job, out) == 1
    records = _records(out)
    assert {r["id"]: r["status"] for r in records} == {"good-1": "ok", "bad": "error", "good-2": "ok"}
    (error,) = [r["error"] for r in records if r["id"] == "bad"]
    assert "prompt must be text without lone surrogates" in error
    assert (out / batch_manifest.MANIFEST).read_bytes().isascii()
    assert _run(job, out) == 1  # the rerun reads the manifest back


def test_surrogate_in_an_id_fails_only_its_line(tmp_path):
    lines = [_good(1), r'{"id": "\ud800", "prompt": "a"}', r'{"id": "x\udcff", "prompt": "a", "steps": 0}']
    out = tmp_path / "out"
    assert _run(_write(tmp_path / "j.jsonl", [*lines, _good(2)]), out) == 2
    records = _records(out)
    errors = [r for r in records if r["status"] == "error"]
    assert [r["line"] for r in errors] == [2, 3] and all(r["id"] is None for r in errors)
    assert "id must be text without lone surrogates" in errors[0]["error"]
    assert "id must be text without lone surrogates" in errors[1]["error"]
    assert sorted(_pngs(out)) == ["good-1.png", "good-2.png"]


def test_long_non_ascii_id_is_refused_by_its_utf8_bytes(tmp_path):
    too_long, fits = "é" * 101, "é" * 100  # 202 and 200 bytes, both far under 200 characters
    lines = [json.dumps({"id": too_long, "prompt": "a"}), json.dumps({"id": fits, "prompt": "a"}), _good(1)]
    out = tmp_path / "out"
    assert _run(_write(tmp_path / "j.jsonl", lines), out) == 1
    (error,) = [r for r in _records(out) if r["status"] == "error"]
    assert error["line"] == 1 and f"id must be at most {rules.MAX_NAME_BYTES} bytes" in error["error"]
    assert "202 bytes" in error["error"]
    assert sorted(_pngs(out)) == sorted([f"{fits}.png", "good-1.png"])


def test_deeply_nested_json_line_fails_alone(tmp_path):
    deep_value = '{"id": "v", "prompt": ' + "[" * 500 + "]" * 500 + "}"  # parses; a bad value
    out = tmp_path / "out"
    assert _run(_write(tmp_path / "j.jsonl", [NESTED, _good(1), deep_value]), out) == 2
    errors = {r["line"]: r["error"] for r in _records(out) if r["status"] == "error"}
    assert "nested too deeply" in errors[1] and "prompt" in errors[3]
    assert sorted(_pngs(out)) == ["good-1.png"]


def test_truncated_png_is_generated_again_on_resume(tmp_path):
    job, out = _write(tmp_path / "j.jsonl", [_good(1), _good(2)]), tmp_path / "out"
    assert _run(job, out) == 0
    png = out / "good-1.png"
    whole = png.read_bytes()
    png.write_bytes(whole[: len(whole) // 2])  # a copy cut short, a disk full mid-sync ...
    untouched = (out / "good-2.png").stat().st_mtime_ns
    assert _run(job, out) == 0
    assert png.read_bytes() == whole
    assert (out / "good-2.png").stat().st_mtime_ns == untouched
    assert [r["id"] for r in _records(out) if r["status"] == "ok"] == ["good-1", "good-2", "good-1"]


def test_truncated_png_without_a_recorded_hash_is_generated_again(tmp_path):
    # Manifests written before png_sha256 existed: the PNG must decode to its end.
    job, out = _write(tmp_path / "j.jsonl", [_good(1)]), tmp_path / "out"
    assert _run(job, out) == 0
    (rec,) = _records(out)
    del rec["png_sha256"]
    (out / batch_manifest.MANIFEST).write_text(json.dumps(rec) + "\n")
    whole = (out / "good-1.png").read_bytes()
    (out / "good-1.png").write_bytes(whole[:-40])
    assert _run(job, out) == 0
    assert (out / "good-1.png").read_bytes() == whole
    assert _run(job, out) == 0 and len(_records(out)) == 2  # complete now: not generated again


def test_max_pixels_sets_the_budget_of_lines_and_pipeline(tmp_path, demo_pipe):
    lines = [_good(1), json.dumps({"id": "big", "prompt": "a", "width": 64, "height": 64})]
    job, out = _write(tmp_path / "j.jsonl", lines), tmp_path / "out"
    with mock.patch.object(Pipeline, "from_pretrained", return_value=demo_pipe):
        assert _run(job, out, "--max-pixels", str(32 * 48)) == 1
        assert demo_pipe.max_pixels == 32 * 48
        demo_pipe.max_pixels = rules.max_pixels("sd")
    (error,) = [r for r in _records(out) if r["status"] == "error"]
    assert error["id"] == "big" and "height x width must be at most 1536 pixels" in error["error"]
    # Without the flag the family's budget applies: the same line is fine.
    assert _run(job, tmp_path / "out2") == 0
    with pytest.raises(SystemExit) as exc:
        _run(job, tmp_path / "out3", "--max-pixels", "0")
    assert exc.value.code == 2


class _FailsOn:
    """The demo Pipeline, except that a call holding one given prompt fails (a model error)."""

    def __init__(self, pipe: Pipeline, prompt: str) -> None:
        self.pipe, self.prompt, self.preset, self.max_pixels = pipe, prompt, pipe.preset, pipe.max_pixels

    def __call__(self, prompts: list[str], **kw):
        if self.prompt in prompts:
            raise RuntimeError("the model failed on this prompt")
        return self.pipe(prompts, **kw)


def test_failing_item_does_not_fail_its_group_mates(tmp_path, demo_pipe):
    lines = [_good(i) for i in range(4)]
    clean = tmp_path / "clean"
    assert _run(_write(tmp_path / "j.jsonl", lines), clean) == 0
    out = tmp_path / "out"
    with mock.patch.object(Pipeline, "from_pretrained", return_value=_FailsOn(demo_pipe, "a shape number 2")):
        assert _run(tmp_path / "j.jsonl", out) == 1
    status = {r["id"]: (r["status"], r["error"]) for r in _records(out)}
    assert status["good-2"] == ("error", "RuntimeError: the model failed on this prompt")
    expected = _pngs(clean)
    del expected["good-2.png"]
    assert _pngs(out) == expected  # the group-mates' images, as in the clean run


def test_unwritable_png_fails_its_item_not_the_job(tmp_path):
    job, out = _write(tmp_path / "j.jsonl", [_good(1), _good(2)]), tmp_path / "out"
    (out / "good-1.png").mkdir(parents=True)  # a folder in the way of the rename
    assert _run(job, out) == 1
    status = {r["id"]: r for r in _records(out)}
    assert status["good-1"]["status"] == "error" and "good-1.png" in status["good-1"]["error"]
    assert status["good-2"]["status"] == "ok"


# --- property: whatever the lines hold, the job ends and every line is ok or error -------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_PRINTABLE = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40)
# Per key: a value it takes, or a hostile one (wrong type, out of range, lone surrogate, nesting).
_VALUES = {
    "id": st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)
    | st.sampled_from(["..", "a/b", "é" * 101, "\ud800", "", ".x"])
    | _JSON,
    "prompt": _PRINTABLE | st.sampled_from(["a \ud800", "\x00", "x" * 32001]) | _JSON,
    "negative_prompt": _PRINTABLE | _JSON,
    "seed": st.integers(0, 2**32) | st.integers(-5, 2**64 + 5) | _JSON,
    "steps": st.integers(1, 3) | st.sampled_from([0, -1, 1001, 2.0, "2"]) | _JSON,
    "guidance": st.floats(0, 20) | st.floats(allow_nan=True, allow_infinity=True) | _JSON,
    "sampler": st.sampled_from(["euler", "ddim", "euler_a", "unipc", "lcm", "nope", ""]) | _JSON,
    "width": st.sampled_from([32, 48, 64, 0, -32, 30, 8192, 10**30, "32"]) | _JSON,
    "height": st.sampled_from([32, 64, 16, 31, 100000]) | _JSON,
}
_OPTIONAL = {k: v for k, v in _VALUES.items() if k != "prompt"}
_LINE = st.fixed_dictionaries({"prompt": _VALUES["prompt"]}, optional=_OPTIONAL) | st.dictionaries(
    st.text(max_size=8), _JSON, max_size=3
)


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=True)  # ASCII escapes carry lone surrogates too


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINE.map(_dump) | st.text(max_size=30).filter(lambda t: "\n" not in t), max_size=6))
def test_any_job_lines_end_ok_or_error_and_never_abort(demo_pipe, tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("prop")
    raw = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    (tmp / "j.jsonl").write_bytes(raw)
    numbered = [n for n, line in enumerate(raw.split(b"\n"), start=1) if line.rstrip(b"\r").strip()]
    with mock.patch.object(Pipeline, "from_pretrained", return_value=demo_pipe):
        code = _run(tmp / "j.jsonl", tmp / "out", "--max-pixels", str(64 * 64))
    demo_pipe.max_pixels = rules.max_pixels("sd")
    records = _records(tmp / "out")
    assert {r["status"] for r in records} <= {"ok", "error"}
    assert sorted(r["line"] for r in records) == numbered  # every line once, nothing else
    assert code == min(sum(r["status"] == "error" for r in records), 100)
    for r in records:
        if r["status"] == "ok":
            with Image.open(tmp / "out" / r["png"]) as im:
                assert np.asarray(im).shape == (r["parameters"]["height"], r["parameters"]["width"], 3)
