"""The benchmark suite: its core on the tiny model into a tmp dir, the fixed JSON shape, and the
report/docs plumbing.  Figures are never asserted (the machine is shared); shapes and the
like-for-like check (same latents => same image across systems) are."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import __main__ as cli
from benchmarks import common, docs, footprint, report, suite
from benchmarks.systems import SYSTEMS
from benchmarks.worker import initial_latents

STEPS = 2  # the quick suite runs 20; two exercise the same code in a tenth of the time

ENTRY_TYPES = {
    "model": str,
    "system": str,
    "steps": int,
    "batch": int,
    "e2e_s": float,
    "cold_start_s": float,
    "peak_rss_mb": float,
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    # The quick suite's core with fewer steps and runs: every system, two batch sizes.
    row = suite.Row("tiny", 64, STEPS, SYSTEMS, (1, 2), repeats=1)
    settings = suite.Settings("test", (row,), install=False, studies=False)
    outcome = suite.run_suite(settings, log=lambda _: None)
    paths = report.write(outcome.document(), outcome.studies, tmp_path_factory.mktemp("bench") / "t.json")
    return json.loads(paths["json"].read_text()), paths


def test_json_has_the_fixed_shape(quick_run):
    doc, _ = quick_run
    assert set(doc) == {"machine", "results", "install_mb"}
    assert {"cpu", "cores", "versions"} <= set(doc["machine"])
    assert set(doc["install_mb"]) == {"sdlite", "diffusers"}
    for v in doc["install_mb"].values():
        assert v is None or isinstance(v, float)
    for entry in doc["results"]:
        for key, typ in ENTRY_TYPES.items():
            assert isinstance(entry[key], typ), (key, entry[key])
        assert entry["system"] in SYSTEMS
        assert entry["e2e_s"] > 0 and entry["cold_start_s"] > 0 and entry["peak_rss_mb"] > 10
        frac = entry["outside_sessions_frac"]
        if entry["system"] == "diffusers":
            assert frac is None
        else:
            assert isinstance(frac, float) and 0.0 <= frac <= 1.0
        assert math.isclose(entry["images_per_s"], entry["batch"] / entry["e2e_s"])
        assert set(entry["stages_s"]) >= {"text_encoder", "unet", "vae"}


def test_every_system_and_batch_is_measured(quick_run):
    doc, _ = quick_run
    notes = doc["machine"]["notes"]
    got = {(r["system"], r["batch"]) for r in doc["results"] if r["model"] == "tiny-sd1"}
    assert got == {(s, b) for s in SYSTEMS for b in (1, 2)}, notes


def test_systems_draw_the_same_image(quick_run):
    # Same latents, sampler and steps: if the images differ the timings compare different work.
    doc, _ = quick_run
    diffs = {(r["model"], r["system"]): r["max_abs_diff_255"] for r in doc["results"] if r["batch"] == 1}
    assert diffs[("tiny-sd1", "diffusers")] == 0.0
    assert max(diffs.values()) <= 2.0, diffs


def test_markdown_and_chart_are_written(quick_run):
    _, paths = quick_run
    md = paths["md"].read_text()
    assert "| cold start vs diffusers (tiny) | ≤ 0.15× |" in md
    assert f"tiny 64², {STEPS} UniPC steps: e2e vs optimum" in md
    assert f"![sdlite's time, memory and size over its peers']({paths['png'].name})" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["studies"].read_text()) == {}


def _doc(**overrides) -> dict:
    base = dict(model="tiny-sd1", steps=20, batch=1, height=64, width=64, outside_sessions_frac=None)
    rows = [
        {**base, "system": "sdlite", "e2e_s": 0.2, "cold_start_s": 0.5, "peak_rss_mb": 100.0},
        {**base, "system": "optimum", "e2e_s": 0.4, "cold_start_s": 6.0, "peak_rss_mb": 450.0},
        {**base, "system": "diffusers", "e2e_s": 0.6, "cold_start_s": 5.0, "peak_rss_mb": 400.0},
    ]
    rows[0].update(overrides)
    return {"machine": {}, "results": rows, "install_mb": {"sdlite": 150.0, "diffusers": 900.0}}


def test_targets_met_and_missed():
    by_label = {t.label: t for t in report.targets(_doc(outside_sessions_frac=0.05))}
    e2e = by_label["tiny 64², 20 UniPC steps: e2e vs optimum"]
    assert e2e.value == pytest.approx(0.5) and e2e.value <= e2e.limit
    dif = by_label["tiny 64², 20 UniPC steps: e2e vs diffusers"]
    assert dif.value == pytest.approx(1 / 3)
    cold = by_label["cold start vs diffusers (tiny)"]
    assert cold.value == pytest.approx(0.1)
    assert by_label["install vs diffusers + torch CPU"].value == pytest.approx(1 / 6)
    outside = by_label["time outside ONNX sessions (sdlite)"]
    assert outside.value == pytest.approx(0.05) and report.status(outside).startswith("**missed**")
    assert by_label["SD 1.5 arch 512², 10 steps, g7.5: e2e vs optimum"].value is None
    md = report.markdown(_doc(outside_sessions_frac=0.05))
    assert "**missed** (5.0%)" in md and "not measured" in md


def test_charts_are_skipped_without_matplotlib(tmp_path, monkeypatch):
    # The `bench` extra missing: the tables are still written, and the notes say why there is no chart.
    monkeypatch.setattr(common, "pyplot", lambda: None)
    paths = report.write(_doc(), {}, tmp_path / "t.json")
    assert "png" not in paths and not (tmp_path / "t.png").exists()
    md = paths["md"].read_text()
    assert "| cold start vs diffusers (tiny) | ≤ 0.15× |" in md and "![" not in md
    assert common.CHARTS_SKIPPED in json.loads(paths["json"].read_text())["machine"]["notes"]


def _results(tmp_path: Path) -> Path:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "cpu-full.md").write_text(
        "| a | b |\n\n![chart](cpu-full.png)\n\n### samplers_speed\n\nold copy\n"
    )
    (results / "cpu-full.json").write_text(json.dumps(_doc()))
    (results / "sampler_speed.md").write_text("new study table\n")
    (results / "sampler_accuracy.md").write_text("accuracy table\n")
    (results / "sampler_accuracy.png").write_bytes(b"png")
    (results / "gpu-nvidia-h200.md").write_text("gpu table\n")
    (results / "gpu-cpu-small.md").write_text("plumbing only\n")
    return results


def test_docs_page_quotes_every_results_file(tmp_path):
    results = _results(tmp_path)
    page, readme = tmp_path / "docs" / "benchmarks.md", tmp_path / "README.md"
    page.parent.mkdir()
    readme.write_text("# x\n<!-- headline:start -->\nOLD-TABLE\n<!-- headline:end -->\ntail\n")
    docs.write(docs=page, readme=readme, results=results)
    text = page.read_text()
    assert "| a | b |" in text and "![chart](../benchmarks/results/cpu-full.png)" in text
    assert "old copy" not in text and "new study table" in text  # studies come from their own files
    assert (
        "accuracy table" in text and "![sampler_accuracy](../benchmarks/results/sampler_accuracy.png)" in text
    )
    assert "gpu table" in text and "plumbing only" not in text
    assert "## Export: what int8 costs" in text and "Not measured yet." in text  # no int8 results here
    head = readme.read_text()
    assert "OLD-TABLE" not in head and head.endswith("<!-- headline:end -->\ntail\n")
    assert "| tiny 64², 20 UniPC steps: e2e vs optimum | 0.50× | 0.2 s vs 0.4 s |" in head
    docs.write(docs=page, readme=readme, results=results)  # idempotent
    assert (page.read_text(), readme.read_text()) == (text, head)


def test_docs_refuse_a_readme_without_markers(tmp_path):
    results = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="headline:start"):
        docs.write(docs=tmp_path / "b.md", readme=readme, results=results)
    assert readme.read_text() == "# no markers\n"


def test_the_repository_docs_are_the_generated_ones():
    # docs/benchmarks.md and README's headline are what the generator makes of the results files.
    assert docs.DOCS.read_text() == docs.render(docs.suite_results())
    table = docs.headline(docs.suite_results().with_suffix(".json"))
    assert table in docs.README.read_text()


def test_quick_install_figure_is_null_without_cache(tmp_path):
    figures, note = footprint.measure(suite.REPO, tmp_path, build=False)
    assert figures == {"sdlite": None, "diffusers": None} and "not measured" in note
    assert not any(tmp_path.iterdir())


def test_initial_noise_depends_only_on_each_images_seed():
    four = initial_latents(4, seed=7, channels=4, height=8, width=8)
    assert four.dtype == np.float32 and four.shape == (4, 4, 8, 8)
    np.testing.assert_array_equal(four[2], initial_latents(1, seed=9, channels=4, height=8, width=8)[0])
    assert not np.array_equal(four[0], four[1])


def test_cli_rejects_a_results_path_that_is_not_json(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--quick", "--json", "out.txt"])
    assert "--json must name a .json file" in capsys.readouterr().err


def test_studies_render_their_own_markdown_or_a_table():
    own = report.study_section("samplers_speed", {"markdown": "| a |\n|---|\n| 1 |\n", "x": 1})
    assert own == ["### samplers_speed", "", "| a |\n|---|\n| 1 |", ""]
    generic = "\n".join(report.study_section("s", {"n": 3, "samplers": {"euler": {"ms": 1.5}}}))
    assert "- n: 3" in generic and "| euler | 1.5 |" in generic


def test_rounds_merge_every_run_once():
    def part(cold, rss, runs, stage):
        return {
            "cold_start_s": cold,
            "import_s": 0.1,
            "load_s": 0.2,
            "first_image_s": cold - 0.3,
            "peak_rss_mb": rss,
            "peak_rss_all_mb": rss + 1,
            "runs": {"1": {"e2e_s": 0.0, "e2e_runs_s": runs, "stages_s": {"unet": stage}}},
        }

    merged = suite.merge_rounds([part(1.0, 100, [1.0, 2.0, 3.0], 0.5), part(3.0, 120, [10.0], 0.9)])
    run = merged["runs"]["1"]
    assert run["e2e_runs_s"] == [1.0, 2.0, 3.0, 10.0] and run["e2e_s"] == 2.5
    assert run["stages_s"] == {"unet": 0.5}  # weighted by runs: 0.5 x3, 0.9 x1
    assert merged["cold_start_s"] == 2.0 and merged["peak_rss_mb"] == 120 and merged["peak_rss_all_mb"] == 121
