"""The GPU run's markdown: targets, the timings table, the correctness check, notes."""

from __future__ import annotations

from benchmarks import report
from benchmarks.gpu.config import SYSTEMS
from benchmarks.report import fmt


def targets(doc: dict) -> list[report.Target]:
    b1 = {s: report.find(doc["results"], system=s, batch=1) for s in SYSTEMS}
    dt = doc["machine"].get("config", {}).get("dtype", "fp16")
    return [
        report.ratio(f"e2e, batch 1: vs diffusers {dt}", 0.75, b1["sdlite"], b1["diffusers"], "e2e_s", "s"),
        report.ratio(f"e2e, batch 1: vs optimum {dt}", 0.7, b1["sdlite"], b1["optimum"], "e2e_s", "s"),
    ]


def _header(m: dict) -> list[str]:
    cfg, v = m.get("config", {}), m.get("versions", {})
    ort_version = m.get("onnxruntime_imported", {}).get("version") or v.get("onnxruntime")
    return [
        f"Measured {m.get('date_utc')} on {m.get('gpu') or m.get('cpu')} (driver {m.get('driver')}), "
        f"onnxruntime {ort_version}, torch {v.get('torch')}, diffusers {v.get('diffusers')}, "
        f"optimum-onnx {v.get('optimum-onnx')}, commit {m.get('commit')}; phases run: "
        f"{', '.join(m.get('phases', []))}.",
        "",
        f"{cfg.get('bench_model')} at {cfg.get('size')}², {cfg.get('steps')} UniPC steps, guidance "
        f"{cfg.get('guidance')}, {cfg.get('dtype')}, same initial latents; median of "
        f"{cfg.get('repeats')} runs after one warm-up per batch size.",
        "",
    ]


def _timings(res: list[dict]) -> list[str]:
    cols = ["system", "batch", "e2e s", "img/s", "U-Net ms/step", "text enc s", "VAE s"]
    cols += ["outside sessions", "peak GPU MB", "load+warm-up s", "max Δ vs diffusers /255"]
    lines = ["**End to end and per step**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res:
        st, frac = r.get("stages_s", {}), r.get("outside_sessions_frac")
        cells = [r["system"], r["batch"], fmt(r["e2e_s"]), fmt(r["images_per_s"]), fmt(r.get("unet_step_ms"))]
        cells += [fmt(st.get("text_encoder")), fmt(st.get("vae")), "–" if frac is None else f"{frac:.1%}"]
        cells += [fmt(r.get("peak_gpu_mb"), 4), fmt(r.get("cold_start_s")), fmt(r.get("max_abs_diff_255"), 2)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines + [""]


def _correctness(rows: list[dict]) -> list[str]:
    lines = ["**Correctness** (tiny test model through the provider vs diffusers fp32, same latents)", ""]
    lines += [
        "| dtype | provider | max Δ /255 | mean Δ /255 | bound /255 | ok |",
        "|---|---|---|---|---|---|",
    ]
    for c in rows:
        cells = [
            c["dtype"],
            c.get("provider"),
            fmt(c.get("max_abs_diff_255")),
            fmt(c.get("mean_abs_diff_255")),
        ]
        lines.append("| " + " | ".join(map(str, [*cells, fmt(c.get("limit_255")), c.get("ok")])) + " |")
    return lines + [""]


def _timeline(steps: list[dict]) -> list[str]:
    if not steps:
        return []
    lines = ["**Timeline** (seconds since the invocation's start; overlapping steps ran at once)", ""]
    lines += ["| phase | step | start | end | ok |", "|---|---|---:|---:|---|"]
    for s in steps:
        ok = "reused" if s.get("reused") else s["ok"]
        lines.append(f"| {s.get('phase')} | {s['step']} | {s['start_s']} | {s['end_s']} | {ok} |")
    return lines + [""]


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = _header(m) + ["**Targets** (from the issue)", "", "| target | limit | measured | figures |"]
    lines.append("|---|---|---|---|")
    for t in targets(doc):
        lines.append(f"| {t.label} | ≤ {t.limit}× | {report.status(t)} | {t.detail} |")
    lines += [""] + _timings(doc["results"]) + _correctness(doc.get("correctness", []))
    lines += _timeline(m.get("timeline", []))
    notes = m.get("notes") or []
    if notes:
        lines += ["**Notes**", ""] + [f"- {n[:600]}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"
