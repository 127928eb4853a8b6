"""The LoRA benchmark's plumbing: a one-round quick run of its command on the tests' tiny model,
its report's shape and verdicts, and the rotation of its rounds.  No timing is asserted (the
machine is shared)."""

from __future__ import annotations

import json
import statistics

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from benchmarks import lora  # noqa: E402

ROUNDS, STEPS = 1, 2


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("lora_bench")
    args = ["--quick", "--rounds", str(ROUNDS), "--steps", str(STEPS), "--out", str(out)]
    assert lora.main(args) == 0
    return json.loads((out / "lora.json").read_text()), (out / "lora.md").read_text()


def test_report_has_its_shape(measured):
    doc, _ = measured
    assert doc["quick"] and doc["size"] == 64 and doc["steps"] == STEPS and doc["rounds"] == ROUNDS
    assert (
        set(doc["goals"])
        == set(doc["figures"])
        == set(doc["met"])
        == {"switch", "no_lora", "one_lora", "memory"}
    )
    ours, theirs = doc["sdlite"], doc["diffusers"]
    assert set(ours["steps"]["step_s"]) == {"never_loaded", "registered_none_active", "one_active"}
    assert all(v > 0 for v in ours["steps"]["step_s"].values())
    assert len(ours["steps"]["no_lora_ratios"]) == len(ours["steps"]["one_lora_ratios"]) == ROUNDS
    assert len(ours["switch"]["switches"]) == 2 * ROUNDS  # a -> b and b -> a each round
    assert set(theirs["step_s"]) == {"lora_disabled", "one_active"} and set(theirs["loads"]) == {"a", "b"}
    assert theirs["switch_s"] > 0 and theirs["never_loaded_step_s"] > 0


def test_figures_follow_the_measurements(measured):
    doc, _ = measured
    ours, f = doc["sdlite"], doc["figures"]
    step = ours["steps"]
    gen20 = step["text_encoder_s"] + 20 * step["step_s"]["never_loaded"] + ours["vae_decode_s"]
    assert ours["generation_20_s"] == pytest.approx(gen20)
    assert f["switch"] == pytest.approx(ours["switch"]["switch_s"] / gen20)
    assert f["no_lora"] == pytest.approx(statistics.median(step["no_lora_ratios"]))
    assert f["one_lora"] == pytest.approx(statistics.median(step["one_lora_ratios"]))
    reg = ours["memory"]["registered"]
    assert set(reg) == {"a", "b"} and all(
        r["file_bytes"] == doc["lora"]["file_bytes"][n] for n, r in reg.items()
    )
    assert f["memory"] == pytest.approx(
        max(max(r["rss_bytes"], r["traced_bytes"]) / r["file_bytes"] for r in reg.values())
    )
    assert doc["met"] == {k: f[k] <= doc["goals"][k] for k in f}


def test_markdown_states_every_verdict(measured):
    doc, md = measured
    assert "One 20-step 64² generation is not run" in md
    rows = {
        "switch": "| switching LoRA set,",
        "no_lora": "| step, no LoRA active (two registered),",
        "one_lora": "| step, one LoRA active, over no LoRA active",
        "memory": "| memory per registered LoRA (",
    }
    for key, start in rows.items():
        (line,) = [x for x in md.splitlines() if x.startswith(start)]
        assert line.endswith("| met |" if doc["met"][key] else "| MISSED |")
    assert "`set_adapters`" in md and "| sdlite | diffusers |" in md


def test_rotate_runs_every_case_each_round_in_turn():
    calls = []
    cases = {n: (lambda n=n: calls.append(n) or {"step": 1.0}) for n in "xyz"}
    rows = lora.rotate(cases, 4)
    assert len(rows) == 4 and all(set(r) == {"x", "y", "z"} for r in rows)
    assert calls == list("xyzyzxzxyxyz")


@pytest.mark.parametrize("bad", [["--steps", "1"], ["--rounds", "0"], ["--size", "100"]])
def test_bad_arguments_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as e:
        lora.main(bad)
    assert e.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_the_docs_quote_the_results():
    from benchmarks import docs

    assert any(s.results == "lora.md" for s in docs.SECTIONS)
