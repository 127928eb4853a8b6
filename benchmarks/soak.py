"""Soak: 2,000 mixed good, hostile and cancelled requests against ``sdlite serve`` with the demo model.
Writes benchmarks/results/soak.{json,md}.

    python -m benchmarks.soak [--requests 2000] [--clients 8] [--warmup 200] [--out DIR]

The command starts the server itself (``benchmarks.serve_load.Server``, on a free loopback port),
warms it up with ``--warmup`` requests of the same mix, reads its resident memory (VmRSS in
/proc/<pid>/status), then sends the requests from ``--clients`` clients at once in an order shuffled
with a fixed seed, while a thread samples the server's memory.  Good requests (A1111 txt2img and
img2img, OpenAI images, few steps at 64 px) must answer 200; bad ones (lone surrogates, NaN, huge
sizes, unknown samplers, an image bomb, wrong content type, oversize, malformed or nested bodies)
4xx; cancelled ones (the client goes away mid-request, or interrupts its task by id) anything but
5xx.  Answers breaking these rules are listed, with a body.  The goal judged: the server's memory
at the end within 10% of where it stood after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import statistics
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from benchmarks import machine
from benchmarks.common import atomic_write, write_json
from benchmarks.serve_load import REPO, RESULTS, Server

MAX_BODY = 2**20  # the server's --max-body-bytes here: an oversize body costs a megabyte, not 20
SERVER_ARGS = ("--max-body-bytes", str(MAX_BODY))
STEPS = 4
SLOW_STEPS = 200  # a request long enough to be cancelled while it runs
DISCONNECT_AFTER_S = 0.3
INTERRUPT_AFTER_S = 0.2
RSS_GOAL = 0.10  # end within 10% of start
SEED = 18


@dataclass(frozen=True)
class Probe:
    """One kind of request: its class (good, bad, cancel), how many per cycle and its body."""

    kind: str
    cls: str
    weight: int
    path: str
    content: bytes
    content_type: str = "application/json"


def _json(body: Any) -> bytes:
    # ensure_ascii sends a lone surrogate as the \\ud800 escape a JSON client would; NaN as NaN
    return json.dumps(body).encode("ascii")


def _png_b64(size: int = 64) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 80, 40)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bomb_png_b64(side: int = 60_000) -> str:
    """A valid PNG whose header claims side x side pixels (about 10 GB decoded) in a few hundred bytes."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" + b"\x00" * (side // 8 + 1)
    idat = zlib.compress(row * 16, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode("ascii")


def _txt(**extra: Any) -> dict[str, Any]:
    return {"prompt": "a red circle", "steps": STEPS, "sampler_name": "Euler", "seed": 7} | extra


def probes() -> tuple[Probe, ...]:
    """Every kind, with its weight in a cycle of 24 requests: 9 good, 13 bad, 2 cancelled."""
    t2i, i2i, oai = "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations"
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    good_oai = {"prompt": "a blue square", "steps": STEPS, "seed": 3}
    long_negative = _json(good_oai | {"negative_prompt": "y" * 2**19})
    return (
        Probe("txt2img", "good", 4, t2i, _json(_txt())),
        Probe("img2img", "good", 3, i2i, _json(_txt(init_images=[_png_b64()], denoising_strength=0.6))),
        Probe("openai", "good", 2, oai, _json(good_oai)),
        Probe("surrogate prompt", "bad", 1, t2i, _json(_txt(prompt="a \ud800 circle"))),
        Probe("surrogate sampler", "bad", 1, t2i, _json(_txt(sampler_name="Euler\udfff"))),
        Probe("NaN cfg_scale", "bad", 1, t2i, _json(_txt(cfg_scale=float("nan")))),
        Probe("width 8192", "bad", 1, t2i, _json(_txt(width=8192, height=8192))),
        Probe("unknown sampler", "bad", 1, t2i, _json(_txt(sampler_name="no such sampler"))),
        Probe("bomb init image", "bad", 1, i2i, _json(_txt(init_images=[_bomb_png_b64()]))),
        Probe("not an image", "bad", 1, i2i, _json(_txt(init_images=["bm90IGFuIGltYWdl"]))),
        Probe("text/plain body", "bad", 1, t2i, _json(_txt()), "text/plain"),
        Probe("oversize body", "bad", 1, t2i, _json(_txt(negative_prompt="x" * (MAX_BODY + 1)))),
        Probe("malformed JSON", "bad", 1, t2i, b'{"prompt": "a red circle", "steps": '),
        Probe("nested JSON", "bad", 1, t2i, nested),
        Probe("512 KiB OpenAI negative_prompt", "bad", 1, oai, long_negative),
        Probe("batch_size 1000", "bad", 1, t2i, _json(_txt(batch_size=1000))),
        Probe("disconnect", "cancel", 1, t2i, _json(_txt(steps=SLOW_STEPS))),
        Probe("interrupt", "cancel", 1, t2i, _json(_txt(steps=SLOW_STEPS))),
    )


def schedule(kinds: tuple[Probe, ...], n: int, seed: int = SEED) -> list[Probe]:
    """``n`` requests in the kinds' proportions (whole cycles, then the start of one), shuffled."""
    cycle = [p for p in kinds for _ in range(p.weight)]
    order = (cycle * (n // len(cycle) + 1))[:n]
    random.Random(seed).shuffle(order)
    return order


class RssSampler:
    """The server's resident memory, sampled in a thread while requests run."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self.trace: list[tuple[float, int]] = []  # (seconds since the start, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self, field: str = "VmRSS") -> int:
        """A /proc/<pid>/status figure in bytes (VmRSS: now; VmHWM: the peak since the start)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def _loop(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.trace.append((time.monotonic() - t0, self.read()))
            self.peak = max(self.peak, self.trace[-1][1])
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self.peak = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


COUNTERS = ("images_generated", "requests_cancelled", "requests_failed", "requests_rejected")


def counters(url: str) -> dict[str, float]:
    """The server's own counts so far (/metrics): images made, requests cancelled, failed, refused."""
    values = dict(line.partition(" ")[::2] for line in httpx.get(f"{url}/metrics").text.splitlines())
    return {name: float(values.get(f"sdlite_{name}_total", "nan")) for name in COUNTERS}


async def _post(client: httpx.AsyncClient, url: str, p: Probe, **kw: Any) -> httpx.Response:
    return await client.post(url + p.path, content=p.content, headers={"content-type": p.content_type}, **kw)


async def _interrupted(client: httpx.AsyncClient, url: str, p: Probe, i: int) -> httpx.Response:
    task = f"soak-{i}"
    body = json.loads(p.content) | {"force_task_id": task}
    sent = asyncio.ensure_future(_post(client, url, Probe(p.kind, p.cls, 1, p.path, _json(body))))
    await asyncio.sleep(INTERRUPT_AFTER_S)
    stop = await client.post(f"{url}/sdapi/v1/interrupt", params={"id_task": task})
    if stop.status_code != 200:
        sent.cancel()
        return stop  # the interrupt route itself failed: that is the answer to judge
    return await sent


async def send(client: httpx.AsyncClient, url: str, p: Probe, i: int) -> dict[str, Any]:
    """One request's outcome: its kind, class, status (None: no answer) and latency."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"kind": p.kind, "cls": p.cls, "status": None, "body": ""}
    try:
        if p.kind == "disconnect":
            r = await asyncio.wait_for(_post(client, url, p), DISCONNECT_AFTER_S)
        elif p.kind == "interrupt":
            r = await _interrupted(client, url, p, i)
        else:
            r = await _post(client, url, p)
        out["status"], out["body"] = r.status_code, r.text[:300]
    except asyncio.TimeoutError:
        out["body"] = "client went away"
    except httpx.HTTPError as err:
        out["body"] = f"{type(err).__name__}: {err}"[:300]
    out["latency_s"] = time.perf_counter() - t0
    return out


async def drive(url: str, order: list[Probe], clients: int) -> list[dict[str, Any]]:
    """``order`` sent by ``clients`` clients at once, each taking the next request when it is free."""
    queue: asyncio.Queue[tuple[int, Probe]] = asyncio.Queue()
    for item in enumerate(order):
        queue.put_nowait(item)
    results: list[dict[str, Any]] = [{}] * len(order)

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=300) as client:
            after_5xx = None  # the kind of the last request on this connection when it got a 5xx
            while not queue.empty():
                i, p = queue.get_nowait()
                r = await send(client, url, p, i)
                results[i] = r | {"after_5xx": after_5xx if r["status"] is None else None}
                after_5xx = p.kind if (r["status"] or 0) >= 500 else None

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return results


def failure(r: dict[str, Any]) -> str | None:
    """Why an outcome breaks the rules, or None: good must be 200, bad 4xx, nothing ever 5xx."""
    status, cls = r["status"], r["cls"]
    if status is None and r["kind"] != "disconnect":
        return "no answer"
    if status is not None and status >= 500:
        return f"{status} (a server error)"
    if cls == "good" and status != 200:
        return f"{status}, not 200"
    if cls == "bad" and not 400 <= status < 500:
        return f"{status}, not 4xx"
    return None


def _pct(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return round(values[0], 3) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def summarise(results: list[dict[str, Any]], kinds: tuple[Probe, ...]) -> dict[str, Any]:
    """Counts of statuses per kind, the good requests' latency and the failures, grouped by kind,
    reason and (for a dropped connection) the 5xx before it, with one body each."""
    per_kind = {p.kind: {"class": p.cls, "count": 0, "statuses": Counter()} for p in kinds}
    groups: dict[tuple, dict[str, Any]] = {}
    for r in results:
        k = per_kind[r["kind"]]
        k["count"] += 1
        k["statuses"][str(r["status"] or "no answer")] += 1
        why = failure(r)
        if why is not None:
            key = (r["kind"], why, r["after_5xx"])
            first = {k: r[k] for k in ("kind", "status", "after_5xx", "body")} | {"why": why, "count": 0}
            groups.setdefault(key, first)["count"] += 1
    good = sorted(r["latency_s"] for r in results if r["cls"] == "good" and r["status"] == 200)
    failures = sorted(groups.values(), key=lambda g: -g["count"])
    failed = sum(g["count"] for g in failures)
    for k in per_kind.values():
        k["statuses"] = dict(sorted(k["statuses"].items()))
    return {
        "kinds": per_kind,
        "latency_good_s": {"n": len(good), "p50": _pct(good, 50), "p99": _pct(good, 99)},
        "failed": failed,
        "failures": failures,
    }


def run(requests: int = 2000, clients: int = 8, warmup_requests: int = 200) -> dict[str, Any]:
    """Start a server, warm it up with ``warmup_requests`` of the same mix, then soak it."""
    kinds = probes()
    warmup = schedule(kinds, warmup_requests, seed=SEED + 1)
    order = schedule(kinds, requests)
    with Server(*SERVER_ARGS) as server:
        asyncio.run(drive(server.url, warmup, clients))
        before = counters(server.url)
        with RssSampler(server.proc.pid) as rss:
            start = rss.read()
            t0 = time.perf_counter()
            results = asyncio.run(drive(server.url, order, clients))
            wall = time.perf_counter() - t0
            time.sleep(1.0)  # cancelled jobs finish leaving the batcher before the last reading
        end, hwm = rss.read(), rss.read("VmHWM")
        after = counters(server.url)
        server.log.seek(0)
        tracebacks = server.log.read().count("Traceback")
    mib = 2**20
    return {
        "machine": machine.describe(REPO),
        "model": "demo (embedded, 64 px)",
        "server_args": list(SERVER_ARGS),
        "requests": requests,
        "clients": clients,
        "warmup_requests": len(warmup),
        "steps": STEPS,
        "wall_s": round(wall, 1),
        "rss_mib": {
            "start": round(start / mib, 1),
            "end": round(end / mib, 1),
            "peak": round(rss.peak / mib, 1),
            "peak_since_launch": round(max(hwm, rss.peak) / mib, 1),  # VmHWM lags a little
        },
        "rss_change": round(end / start - 1, 4),
        "rss_goal": RSS_GOAL,
        "rss_goal_met": abs(end / start - 1) <= RSS_GOAL,
        "server_tracebacks": tracebacks,
        "server_counts": {k: after[k] - before[k] for k in COUNTERS},
        "rss_trace_mib": [
            [round(t, 1), round(b / mib, 1)] for t, b in rss.trace[:: max(len(rss.trace) // 20, 1)]
        ],
    } | summarise(results, kinds)


def markdown(doc: dict[str, Any]) -> str:
    m, rss, lat = doc["machine"], doc["rss_mib"], doc["latency_good_s"]
    met = "met" if doc["rss_goal_met"] else "MISSED"
    lines = [
        f"`sdlite serve` with the {doc['model']} model ({' '.join(doc['server_args'])}): {doc['requests']} "
        f"requests from {doc['clients']} clients at once, after a warm-up of {doc['warmup_requests']} of the "
        f"same mix; good ones at {doc['steps']} steps. {doc['wall_s']:g} s in all.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_start'][0]:.2f} at the start "
        f"({m['date_utc']}).",
        "",
        f"**Memory goal (end within {doc['rss_goal']:.0%} of start): {met}.** Server RSS "
        f"{rss['start']:.1f} MiB after warm-up, {rss['end']:.1f} MiB at the end ({doc['rss_change']:+.1%}), "
        f"peak {rss['peak']:.1f} MiB during the soak ({rss['peak_since_launch']:.1f} MiB since launch); "
        f"through the soak: {', '.join(f'{mb:g}' for _, mb in doc['rss_trace_mib'])} MiB.",
        "",
        f"Good requests answered 200: latency p50 {_secs(lat['p50'])}, p99 {_secs(lat['p99'])} "
        f"(over {lat['n']}, queueing behind the rest included).",
        "",
        "| kind | class | requests | answers |",
        "|---|---|---:|---|",
    ]
    for kind, k in doc["kinds"].items():
        answers = ", ".join(f"{s} x{n}" for s, n in k["statuses"].items())
        lines.append(f"| {kind} | {k['class']} | {k['count']} | {answers} |")
    c = doc["server_counts"]
    lines += [
        "",
        f"The server's own counts over the soak (/metrics): {c['images_generated']:.0f} images, "
        f"{c['requests_cancelled']:.0f} requests cancelled, {c['requests_failed']:.0f} failed in the model, "
        f"{c['requests_rejected']:.0f} refused for a full queue.",
        "",
        _verdict(doc),
    ]
    for f in doc["failures"]:
        body = f["body"].replace("|", "\\|").replace("\n", " ")[:160]
        dropped = " (its connection dropped" if f["status"] is None else ""
        if dropped and f["after_5xx"]:
            dropped += f" after a 5xx answer to a {f['after_5xx']!r} request on it"
        lines.append(f"- {f['count']} x {f['kind']}: {f['why']}{dropped + ')' if dropped else ''}: `{body}`")
    return "\n".join(lines) + "\n"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def _verdict(doc: dict[str, Any]) -> str:
    bad = sum(k["count"] for k in doc["kinds"].values() if k["class"] == "bad")
    tb = f"; tracebacks in the server's log: {doc['server_tracebacks']}"
    if not doc["failed"]:
        return f"Every bad request ({bad}) answered 4xx, every good one 200, no 5xx{tb}."
    return f"**{doc['failed']} answer(s) broke the rules** (good: 200, bad: 4xx, none 5xx){tb}:"


def write(doc: dict[str, Any], out: Path = RESULTS) -> dict[str, Path]:
    """soak.json and soak.md, each written whole or not at all."""
    return {"json": write_json(out / "soak.json", doc), "md": atomic_write(out / "soak.md", markdown(doc))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests after warm-up (default 2000)")
    parser.add_argument("--clients", type=int, default=8, help="clients at once (default 8)")
    parser.add_argument(
        "--warmup", type=int, default=200, help="requests of the same mix first (default 200)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.clients <= 64 or not 0 <= args.warmup <= 100_000:
        parser.error("--requests must be in [1, 100000], --clients in [1, 64], --warmup in [0, 100000]")
    doc = run(args.requests, args.clients, args.warmup)
    paths = write(doc, args.out)
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if doc["failed"] or not doc["rss_goal_met"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
