"""The soak benchmark's plumbing: a short soak (48 requests: two of every kind) against a real
``sdlite serve`` with the demo model, its report's shape, and the verdicts it draws.  No timing
is asserted (the machine is shared); statuses are, since they are the server's behaviour."""

from __future__ import annotations

import json

import pytest

from benchmarks import docs, soak

REQUESTS = 48  # two cycles of the mix: every kind twice

@pytest.fixture(scope="module")
def soaked(tmp_path_factory) -> tuple[dict, dict]:
    doc = soak.run(REQUESTS, clients=4, warmup_requests=24)
    paths = soak.write(doc, tmp_path_factory.mktemp("soak"))
    return doc, paths


def test_report_has_its_shape_and_files(soaked):
    doc, paths = soaked
    assert json.loads(paths["json"].read_text()) == doc
    for key in ("machine", "requests", "clients", "rss_mib", "rss_change", "rss_goal_met", "latency_good_s"):
        assert key in doc
    assert set(doc["rss_mib"]) == {"start", "end", "peak", "peak_since_launch"}
    assert doc["warmup_requests"] == 24 and doc["rss_trace_mib"]
    assert 0 < doc["rss_mib"]["start"] <= doc["rss_mib"]["peak"] <= doc["rss_mib"]["peak_since_launch"]
    assert doc["rss_goal_met"] == (abs(doc["rss_change"]) <= doc["rss_goal"])
    md = paths["md"].read_text()
    assert "Memory goal" in md and ("met." in md or "MISSED." in md)
    for kind in doc["kinds"]:
        assert f"| {kind} |" in md


def test_every_request_is_counted_once_by_kind(soaked):
    doc, _ = soaked
    kinds = doc["kinds"]
    assert set(kinds) == {p.kind for p in soak.probes()}
    assert sum(k["count"] for k in kinds.values()) == REQUESTS
    weights = {p.kind: p.weight for p in soak.probes()}
    assert REQUESTS == 2 * sum(weights.values())
    for kind, k in kinds.items():
        assert k["count"] == 2 * weights[kind]
        assert sum(k["statuses"].values()) == k["count"]


def test_bad_requests_get_4xx(soaked):
    # Every hostile kind is answered, with a 4xx: no 5xx, and no dropped connection (a 413 is sent
    # after the refused body was read and dropped, so the client does not see a reset instead).
    doc, _ = soaked
    bad = {kind: k for kind, k in doc["kinds"].items() if k["class"] == "bad"}
    for kind, k in bad.items():
        assert all(s != "no answer" and 400 <= int(s) < 500 for s in k["statuses"]), f"{kind}: {k}"


def test_good_requests_get_images_and_a_latency(soaked):
    doc, _ = soaked
    good = {kind: k for kind, k in doc["kinds"].items() if k["class"] == "good"}
    assert {"txt2img", "img2img", "openai"} <= set(good)
    for kind, k in good.items():
        assert set(k["statuses"]) == {"200"}, f"{kind}: {k['statuses']}"
    lat = doc["latency_good_s"]
    assert lat["n"] == sum(k["statuses"].get("200", 0) for k in good.values())
    assert lat["n"] >= sum(k["count"] for k in good.values()) // 2
    assert 0 < lat["p50"] <= lat["p99"]


def test_every_answer_breaking_the_rules_is_listed(soaked):
    doc, paths = soaked
    broken = 0
    for kind, k in doc["kinds"].items():
        for status, n in k["statuses"].items():
            code = None if status == "no answer" else int(status)
            r = {"kind": kind, "cls": k["class"], "status": code}
            broken += n * (soak.failure(r) is not None)
    assert doc["failed"] == broken == sum(f["count"] for f in doc["failures"])
    assert all(f["why"] and f["count"] >= 1 and "body" in f for f in doc["failures"])
    md = paths["md"].read_text()
    for f in doc["failures"]:
        assert f"- {f['count']} x {f['kind']}: {f['why']}" in md


def test_failure_rules():
    assert soak.failure({"kind": "txt2img", "cls": "good", "status": 200}) is None
    assert soak.failure({"kind": "txt2img", "cls": "good", "status": 422}) == "422, not 200"
    assert soak.failure({"kind": "nested JSON", "cls": "bad", "status": 400}) is None
    assert soak.failure({"kind": "nested JSON", "cls": "bad", "status": 200}) == "200, not 4xx"
    assert "server error" in soak.failure({"kind": "interrupt", "cls": "cancel", "status": 500})
    assert soak.failure({"kind": "disconnect", "cls": "cancel", "status": None}) is None
    assert soak.failure({"kind": "interrupt", "cls": "cancel", "status": None}) == "no answer"


def test_schedule_keeps_the_proportions_and_is_fixed():
    kinds = soak.probes()
    cycle = sum(p.weight for p in kinds)
    order = soak.schedule(kinds, 3 * cycle)
    assert order == soak.schedule(kinds, 3 * cycle)
    for p in kinds:
        assert sum(o.kind == p.kind for o in order) == 3 * p.weight


def test_docs_carry_the_soak_section():
    assert any(s.results == "soak.md" for s in docs.SECTIONS)
