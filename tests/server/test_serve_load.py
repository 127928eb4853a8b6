"""The load benchmark's machinery on a small load: its row shape, its files, identical answers.
Figures are not asserted (the machine is shared); ``python -m benchmarks.serve_load`` measures."""

from __future__ import annotations

import json

from benchmarks import serve_load


def test_serve_load_measures_both_modes_and_writes_its_files(tmp_path):
    row = serve_load.measure(max_batch=4, rounds=1, clients=4, steps=2)
    assert row["identical_images"] is True  # batched answers equal the one-at-a-time answers
    for mode in ("sequential", "concurrent"):
        r = row[mode]
        assert r["images_per_s"] > 0 and 0 < r["latency_p50_s"] <= r["latency_p95_s"]
    assert row["sequential"]["mean_batch_images"] == 1.0  # one request at a time: nothing to merge
    assert row["throughput_ratio"] > 0

    paths = serve_load.write(serve_load.document([row], rounds=1, quick=True), tmp_path)
    assert json.loads(paths["json"].read_text())["rows"][0]["max_batch"] == 4
    assert "| 4 | concurrent |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
