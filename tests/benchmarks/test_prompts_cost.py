"""The prompt-cost benchmark's plumbing: a two-round run of its command on the demo model, its
report's shape and verdict, the prompts it measures and the alternation.  No timing is asserted
(the machine is shared)."""

from __future__ import annotations

import json
import statistics

import pytest
from sdlite import Pipeline
from sdlite.conditioning import SDXLOptions
from sdlite.models import demo_path
from sdlite.prompt_encoding import chunk_tokens

from benchmarks import docs, prompts_cost

ROUNDS = 2


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("prompts_cost")
    assert prompts_cost.main(["--rounds", str(ROUNDS), "--out", str(out)]) == 0
    return json.loads((out / "prompts_cost.json").read_text()), (out / "prompts_cost.md").read_text()


def test_report_has_its_shape(measured):
    doc, _ = measured
    for key in ("machine", "model", "sampler", "steps", "guidance", "threads", "goal", "goal_met", "cases"):
        assert key in doc
    assert doc["rounds"] == ROUNDS and doc["steps"] == 20 and set(doc["cases"]) == {"weighted", "plain"}
    for case in doc["cases"].values():
        assert len(case["ratios"]) == ROUNDS
        assert case["ratio"] == pytest.approx(statistics.median(case["ratios"]))
        for key in ("conditioning_s", "generation_s"):
            s = case[key]
            assert 0 < s["min"] <= s["median"] <= s["max"]
        assert case["plan_s"] > 0 and case["encode_s"] > 0 and case["generation_text_encoder_s"] > 0
        assert all(r > 0 for r in case["ratios"])


def test_the_cases_are_the_prompts_asked_for(measured):
    doc, _ = measured
    weighted, plain = doc["cases"]["weighted"], doc["cases"]["plain"]
    assert 280 <= weighted["tokens"] <= 320 and weighted["chunks"] > 1
    assert weighted["negative_prompt"] and weighted["negative_tokens"] > 0
    assert plain["tokens"] == 10 and plain["chunks"] == 1 and plain["negative_prompt"] is None
    # The demo model's encoder holds 14 tokens a chunk: 300 tokens need at least 22 chunks.
    assert weighted["chunks"] >= weighted["tokens"] / doc["chunk_tokens"]


def test_verdict_follows_the_weighted_ratio(measured):
    doc, md = measured
    assert doc["goal"] == 0.05
    assert doc["goal_met"] == (doc["cases"]["weighted"]["ratio"] <= doc["goal"])
    verdict = "met" if doc["goal_met"] else "MISSED"
    assert f"of one generation): {verdict}**" in md
    for name, case in doc["cases"].items():
        assert f"| {name} | {case['tokens']} | {case['chunks']} |" in md


def test_the_weighted_prompt_uses_weights_and_break():
    pipe = Pipeline.from_pretrained(demo_path(), "cpu", num_threads=1)
    plan = pipe.prompt_encoder.plan([prompts_cost.WEIGHTED], [""], False, False, SDXLOptions(), 20)
    (chunks,) = plan.chunks[0].values()
    weights = {w for c in chunks for w in c.weights}
    assert {1.3, 1.1, 0.8} <= {round(w, 4) for w in weights}
    assert any(round(w, 4) == round(1 / 1.1**2, 4) for w in weights)  # [[green]]
    # Each BREAK closes a chunk right after "center", short of the chunk's 14 tokens.
    eos, (center,) = pipe.tokenizer.eos_token_id, pipe.tokenizer.tokens(["center"])[0]
    ends = [c.ids.index(eos, 1) - 1 for c in chunks]
    broken = [n for c, n in zip(chunks, ends, strict=True) if c.ids[n] == center]
    assert len(broken) == prompts_cost.WEIGHTED.count(" BREAK") > 0
    assert all(n < chunk_tokens(pipe.tokenizer) for n in broken)


def test_alternate_swaps_the_order_every_round():
    calls = []

    def first():
        calls.append("a")
        return {"n": len(calls)}

    def second():
        calls.append("b")
        return {"n": len(calls)}

    pairs = prompts_cost.alternate(first, second, 4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [(a["n"], b["n"]) for a, b in pairs] == [(1, 2), (4, 3), (5, 6), (8, 7)]


def test_bad_rounds_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        prompts_cost.main(["--rounds", "0", "--out", str(tmp_path)])
    assert err.value.code == 2 and "--rounds" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_docs_carry_the_section():
    assert any(s.results == "prompts_cost.md" for s in docs.SECTIONS)
