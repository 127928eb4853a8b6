"""The results as a markdown table (ratios vs each peer, targets met or missed) and a bar chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks import common


@dataclass(frozen=True)
class Target:
    label: str
    limit: float  # measured <= limit is met
    value: float | None  # None: not measured in this run
    detail: str = ""  # the figures the value comes from
    ratio: bool = True  # a ratio sdlite/peer (charted) rather than an absolute fraction


def find(results: list[dict], **match) -> dict | None:
    for r in results:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def ratio(label: str, limit: float, ours: dict | None, peer: dict | None, key: str, unit: str) -> Target:
    if ours is None or peer is None or not peer.get(key):
        return Target(label, limit, None)
    detail = f"{ours[key]:.3g} {unit} vs {peer[key]:.3g} {unit}"
    return Target(label, limit, ours[key] / peer[key], detail)


def _tiny_rows(res: list[dict]) -> dict[str, dict | None]:
    rows = {s: find(res, model="tiny-sd1", system=s, batch=1) for s in ("sdlite", "optimum", "diffusers")}
    rows["same-onnx"] = find(res, model="tiny-sd1@optimum-onnx", system="sdlite", batch=1)
    return rows


def _install_target(inst: dict) -> Target:
    if not (inst.get("sdlite") and inst.get("diffusers")):
        return Target("install vs diffusers + torch CPU", 0.2, None)
    detail = f"{inst['sdlite']:.0f} MB vs {inst['diffusers']:.0f} MB"
    return Target("install vs diffusers + torch CPU", 0.2, inst["sdlite"] / inst["diffusers"], detail)


def _outside_target(res: list[dict]) -> Target:
    label = "time outside ONNX sessions (sdlite)"
    fracs = [(r["outside_sessions_frac"], r) for r in res if r["system"] == "sdlite"]
    fracs = [(f, r) for f, r in fracs if f is not None]
    if not fracs:
        return Target(label, 0.02, None, ratio=False)
    worst, r = max(fracs, key=lambda f: f[0])
    return Target(
        label, 0.02, worst, f"worst row: {r['model']} {r['height']}² batch {r['batch']}", ratio=False
    )


def targets(doc: dict) -> list[Target]:
    """The issue's targets, evaluated on this run's figures (None where not measured)."""
    res = doc["results"]
    tiny = _tiny_rows(res)
    sd = {
        (s, h): find(res, model="sd15-arch", system=s, batch=1, height=h)
        for s in ("sdlite", "optimum", "diffusers")
        for h in (256, 512)
    }
    ref = tiny["sdlite"] or tiny["optimum"] or tiny["diffusers"] or {"height": 64, "steps": 20}
    what = f"tiny {ref['height']}², {ref['steps']} UniPC steps"
    ours, sd15 = tiny["sdlite"], "SD 1.5 arch"
    return [
        ratio("cold start vs diffusers (tiny)", 0.15, ours, tiny["diffusers"], "cold_start_s", "s"),
        ratio(f"{what}: e2e vs optimum", 0.6, ours, tiny["optimum"], "e2e_s", "s"),
        ratio(f"{what}: e2e vs diffusers", 0.4, ours, tiny["diffusers"], "e2e_s", "s"),
        ratio("tiny, same ONNX files: e2e vs optimum", 0.9, tiny["same-onnx"], tiny["optimum"], "e2e_s", "s"),
        ratio(
            f"{sd15} 256², 10 steps, g7.5: e2e vs diffusers",
            0.5,
            sd["sdlite", 256],
            sd["diffusers", 256],
            "e2e_s",
            "s",
        ),
        ratio(
            f"{sd15} 512², 10 steps, g7.5: e2e vs optimum",
            0.95,
            sd["sdlite", 512],
            sd["optimum", 512],
            "e2e_s",
            "s",
        ),
        ratio("peak RSS vs diffusers (tiny)", 0.7, ours, tiny["diffusers"], "peak_rss_mb", "MB"),
        ratio(
            f"peak RSS vs diffusers ({sd15} 256²)",
            0.7,
            sd["sdlite", 256],
            sd["diffusers", 256],
            "peak_rss_mb",
            "MB",
        ),
        _install_target(doc.get("install_mb") or {}),
        _outside_target(res),
    ]


def fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def _mb(v: float | None) -> str:
    return "not measured" if v is None else f"{v:.0f} MB"


def status(t: Target) -> str:
    if t.value is None:
        return "not measured"
    shown = f"{t.value:.1%}" if not t.ratio else f"{t.value:.2f}×"
    return f"**met** ({shown})" if t.value <= t.limit else f"**missed** ({shown})"


def _e2e_table(res: list[dict]) -> list[str]:
    cols = ["model", "size", "steps", "batch", "sdlite s", "optimum s", "diffusers s"]
    cols += ["÷ optimum", "÷ diffusers", "sdlite img/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    seen = []
    for r in res:
        key = (r["model"], r["height"], r["steps"], r["batch"])
        if key not in seen:
            seen.append(key)
    for model, size, steps, batch in seen:
        row = {
            r["system"]: r
            for r in res
            if (r["model"], r["height"], r["steps"], r["batch"]) == (model, size, steps, batch)
        }
        peers = {
            r["system"]: r
            for r in res
            if (r["model"].split("@")[0], r["height"], r["batch"]) == (model.split("@")[0], size, batch)
        }
        ours, opt, dif = row.get("sdlite"), peers.get("optimum"), peers.get("diffusers")
        e2e = {
            s: (x["e2e_s"] if x else None)
            for s, x in (("sdlite", ours), ("optimum", opt), ("diffusers", dif))
        }
        if model.endswith("@optimum-onnx"):  # this row is sdlite only; the peers are shown above
            e2e["optimum"] = e2e["diffusers"] = None
        r_opt = ours["e2e_s"] / opt["e2e_s"] if ours and opt else None
        r_dif = ours["e2e_s"] / dif["e2e_s"] if ours and dif else None
        ips = ours["batch"] / ours["e2e_s"] if ours else None
        lines.append(
            f"| {model} | {size}² | {steps} | {batch} | {fmt(e2e['sdlite'])} | {fmt(e2e['optimum'])} "
            f"| {fmt(e2e['diffusers'])} | {fmt(r_opt, 2)} | {fmt(r_dif, 2)} | {fmt(ips)} |"
        )
    return lines


def _stage_table(res: list[dict]) -> list[str]:
    cols = ["model", "size", "batch", "system", "text encoder s", "U-Net s", "VAE s", "outside sessions"]
    cols += ["cold start s", "peak RSS MB", "max Δ vs ref /255"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res:
        st = r.get("stages_s", {})
        frac = r["outside_sessions_frac"]
        lines.append(
            f"| {r['model']} | {r.get('height')}² | {r['batch']} | {r['system']} "
            f"| {fmt(st.get('text_encoder'))} | {fmt(st.get('unet'))} | {fmt(st.get('vae'))} "
            f"| {'–' if frac is None else f'{frac:.1%}'} "
            f"| {fmt(r['cold_start_s'])} | {r['peak_rss_mb']:.0f} | {fmt(r.get('max_abs_diff_255'), 2)} |"
        )
    return lines


def _table(title: str, rows: list[dict]) -> list[str]:
    cols = list(dict.fromkeys(k for v in rows for k in v))
    lines = ["", f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for v in rows:
        cells = [fmt(v.get(c)) if isinstance(v.get(c), float) else str(v.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def study_section(name: str, data) -> list[str]:
    """A study's dict: its own ``markdown`` if it gives one, else a table per list of rows."""
    lines = [f"### {name}", ""]
    if isinstance(data, dict) and isinstance(data.get("markdown"), str):
        return lines + [data["markdown"].rstrip(), ""]
    items = data.items() if isinstance(data, dict) else [("rows", data)]
    for key, value in items:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines += _table(key, value)
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            lines += _table(key, [{"": k, **v} for k, v in value.items()])
        elif not isinstance(value, (dict, list)):
            lines.append(f"- {key}: {fmt(value) if isinstance(value, float) else value}")
    return lines + [""]


def markdown(doc: dict, studies: dict | None = None, chart: str | None = None) -> str:
    m = doc["machine"]
    v = m.get("versions", {})
    res = doc["results"]
    reps = sorted({r.get("repeats") for r in res if r.get("repeats")})
    lines = [
        f"Measured {m.get('date_utc')} ({m.get('mode')} run) on {m.get('cpu')}, {m.get('cores')} cores, "
        f"{m.get('memory_gb')} GB; load average {fmt((m.get('loadavg_start') or [None])[0], 2)} at start "
        f"(a shared machine: ratios from one run are what count). onnxruntime {v.get('onnxruntime')}, "
        f"torch {v.get('torch')}, diffusers {v.get('diffusers')}, optimum-onnx {v.get('optimum-onnx')}, "
        f"commit {m.get('commit')}.",
        "",
        "Same model, prompt, UniPC sampler, steps, guidance 7.5 and initial latents for every system; "
        f"median end-to-end seconds over {'/'.join(map(str, reps))} warm runs.",
        "",
        "**Targets** (from the issue; no test asserts them)",
        "",
        "| target | limit | measured | figures |",
        "|---|---|---|---|",
    ]
    for t in targets(doc):
        limit = f"≤ {t.limit:.0%}" if not t.ratio else f"≤ {t.limit}×"
        lines.append(f"| {t.label} | {limit} | {status(t)} | {t.detail} |")
    lines += ["", "**End to end** (÷ peer = sdlite's time over the peer's: below 1 is faster)", ""]
    lines += _e2e_table(res)
    lines += [
        "",
        "**Stages, cold start, memory** (cold start: fresh process, import + load + first image)",
        "",
    ]
    lines += _stage_table(res)
    inst = doc.get("install_mb") or {}
    lines += [
        "",
        f"**Install footprint** (site-packages added to a fresh venv): sdlite {_mb(inst.get('sdlite'))}, "
        f"diffusers + transformers + torch CPU {_mb(inst.get('diffusers'))}.",
        "",
    ]
    if chart:
        lines += [f"![sdlite's time, memory and size over its peers']({chart})", ""]
    notes = m.get("notes") or []
    if notes:
        lines += ["**Notes**", ""] + [f"- {n}" for n in notes] + [""]
    for name, data in (studies or {}).items():
        lines += study_section(name, data)
    return "\n".join(lines).rstrip() + "\n"


def chart(doc: dict, path: Path) -> Path | None:
    """Horizontal bars of sdlite/peer ratios, each with its target; green met, red missed.
    None (nothing written) without matplotlib."""
    plt = common.pyplot()
    if plt is None:
        return None
    ts = [t for t in targets(doc) if t.ratio and t.value is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(ts), 1) + 1.2), dpi=100)
    ys = range(len(ts))
    ax.barh(ys, [t.value for t in ts], color=["#2e7d32" if t.value <= t.limit else "#c62828" for t in ts])
    for y, t in zip(ys, ts, strict=True):
        ax.plot([t.limit, t.limit], [y - 0.4, y + 0.4], color="black", lw=2)
        ax.text(max(t.value, t.limit), y, f"  {t.value:.2f}×", va="center", fontsize=8)
    ax.set_yticks(list(ys), [t.label for t in ts], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("sdlite ÷ peer (lower is better; black tick = target)")
    m = doc.get("machine", {})
    ax.set_title(
        f"sdlite vs optimum and diffusers, {m.get('cpu', '?')} ({m.get('mode', '?')} run)", fontsize=9
    )
    if not ts:
        ax.text(0.5, 0.5, "no ratio measured in this run", transform=ax.transAxes, ha="center")
    ax.set_xlim(0, max([1.1] + [t.value * 1.15 for t in ts] + [t.limit * 1.1 for t in ts]))
    fig.tight_layout()
    return common.save_figure(plt, fig, path)


def write(doc: dict, studies: dict, json_path: Path) -> dict[str, Path]:
    """JSON, studies JSON, PNG and markdown beside each other, each written then renamed.
    Without matplotlib there is no PNG (no "png" key) and the notes say so."""
    paths = {
        "json": json_path,
        "studies": json_path.with_name(json_path.stem + ".studies.json"),
        "md": json_path.with_suffix(".md"),
    }
    png = chart(doc, json_path.with_suffix(".png"))
    if png is None:
        doc["machine"].setdefault("notes", []).append(common.CHARTS_SKIPPED)
    else:
        paths["png"] = png
    common.write_json(paths["json"], doc)
    common.write_json(paths["studies"], studies)
    common.atomic_write(paths["md"], markdown(doc, studies, png.name if png else None))
    return paths
