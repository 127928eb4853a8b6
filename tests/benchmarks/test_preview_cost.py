"""The preview-cost benchmark's plumbing: a two-round run of its command on a copy of the demo
model, its report's shape and verdict, the map's fitting and cache, and the error figure.  No
timing is asserted (the machine is shared)."""

from __future__ import annotations

import json
import statistics

import pytest
from sdlite import preview

from benchmarks import docs, preview_cost

ROUNDS = 2


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("preview_cost")
    assert preview_cost.main(["--rounds", str(ROUNDS), "--out", str(out)]) == 0
    return json.loads((out / "preview_cost.json").read_text()), (out / "preview_cost.md").read_text()


def test_report_has_its_shape(measured):
    doc, _ = measured
    for key in ("machine", "model", "sampler", "steps", "threads", "goal", "goal_met", "fitting", "error"):
        assert key in doc
    assert doc["rounds"] == ROUNDS and doc["steps"] == 20
    assert doc["previews_per_call"] == [20]  # preview_every=1: one a step
    for key in ("overheads", "outside_overheads"):
        assert len(doc[key]) == ROUNDS
    assert doc["overhead"] == pytest.approx(statistics.median(doc["overheads"]))
    assert doc["outside_overhead"] == pytest.approx(statistics.median(doc["outside_overheads"]))
    for key in ("with_previews_s", "without_previews_s"):
        s = doc[key]
        assert 0 < s["min"] <= s["median"] <= s["max"]
    assert doc["preview_alone_s"] > 0 and doc["alone_share"] > 0


def test_verdict_follows_the_median_ratio(measured):
    doc, md = measured
    assert doc["goal"] == 0.03
    assert doc["goal_met"] == (doc["overhead"] <= doc["goal"])
    verdict = "met" if doc["goal_met"] else "MISSED"
    assert f"of generation time): {verdict}**" in md
    q1, q3 = doc["overhead_quartiles"]
    assert min(doc["overheads"]) <= q1 <= doc["overhead"] <= q3 <= max(doc["overheads"])
    assert ("not settled by this run" in md) == (q3 - q1 > doc["goal"])


def test_the_map_was_fitted_then_loaded_from_its_cache(measured):
    doc, md = measured
    f = doc["fitting"]
    assert f["cached"] and f["cache_matches"]
    assert f["fit_s"] > 0 and f["cached_load_s"] > 0
    assert "DIFFERS" not in md


def test_error_covers_every_prompt_and_seed(measured):
    doc, md = measured
    e = doc["error"]
    pairs = {(r["prompt"], r["seed"]) for r in e["images"]}
    assert pairs == {(p, s) for p in preview_cost.ERROR_PROMPTS for s in preview_cost.ERROR_SEEDS}
    means = [r["mean"] for r in e["images"]]
    assert e["mean"] == pytest.approx(statistics.mean(means)) and e["worst_image_mean"] == max(means)
    for r in e["images"]:
        assert 0 < r["mean"] <= r["max"] <= e["max_pixel"] <= 1
        assert f"| {r['prompt']} | {r['seed']} | {r['mean']:.3f} |" in md
    # The preview module's own bound on the demo model (tests/test_preview.py): better than mid-grey.
    assert e["mean"] < 0.75 * e["grey_mean"]


def test_demo_copy_leaves_no_cached_map(tmp_path):
    copy = preview_cost.demo_copy(tmp_path)
    assert (copy / "unet" / "model.onnx").is_file() and not (copy / preview.PREVIEW_FILE).exists()


def test_bad_rounds_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        preview_cost.main(["--rounds", "1001", "--out", str(tmp_path)])
    assert err.value.code == 2 and "--rounds" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_docs_carry_the_section():
    assert any(s.results == "preview_cost.md" for s in docs.SECTIONS)
