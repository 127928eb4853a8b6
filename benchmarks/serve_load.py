"""Load on ``sdlite serve`` with the demo model: 16 clients at once vs the same 16 requests one after
the other, against the same server.  Writes benchmarks/results/serve_load.{json,md,png}.

    python -m benchmarks.serve_load [--quick] [--out DIR]

The command starts the server itself (a subprocess on a free loopback port), once per
``--max-batch`` setting, and stops it at the end.  Both modes hit the same server with the same
settings, so the only difference is whether requests are there together for the dynamic batcher
to merge: "sequential" is one client that sends the next request when the previous answer came
(every model call has one image, and each request also pays the batch window once);
"concurrent" is 16 clients sending at the same moment.  Each round sends the 16 requests (same
prompts and seeds in both modes, A1111 txt2img, 20 steps, the model's 64 px) in both modes,
alternating which goes first; throughput is the median over rounds, latency percentiles are over
every request of every round.  The answers of the two modes are compared byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import machine
from benchmarks.common import CHARTS_SKIPPED, atomic_write, pyplot, save_figure

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
CLIENTS = 16
STEPS = 20
TARGET_RATIO = 2.0
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``sdlite serve`` in a subprocess, for the length of a ``with`` block."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            sys.executable,
            "-m",
            "sdlite",
            "serve",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        self.cmd += list(args)

    def __enter__(self) -> Server:
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"sdlite serve exited with {self.proc.returncode}: {self.log.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("sdlite serve did not start within 120 s")

    def __exit__(self, *exc: Any) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def batches(self) -> tuple[float, float]:
        """(model calls, images) so far, from /metrics."""
        text = httpx.get(f"{self.url}/metrics").text
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            values[name] = value
        return float(values["sdlite_batch_size_images_count"]), float(values["sdlite_batch_size_images_sum"])


def _bodies(n: int, steps: int) -> list[dict[str, Any]]:
    shapes = ["circle", "square", "triangle", "star"]
    colours = ["red", "green", "blue", "yellow"]
    return [
        {
            "prompt": f"a {colours[i % 4]} {shapes[(i // 4) % 4]}",
            "seed": 500 + i,
            "steps": steps,
            "sampler_name": "DPM++ 2M",
            "cfg_scale": 7.5,
        }
        for i in range(n)
    ]


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = await client.post(f"{url}/sdapi/v1/txt2img", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()["images"][0]


async def _sequential(url: str, bodies: list[dict]) -> tuple[float, list[float], list[str]]:
    async with httpx.AsyncClient(timeout=300) as client:
        t0 = time.perf_counter()
        out = [await _one(client, url, b) for b in bodies]
        return time.perf_counter() - t0, [o[0] for o in out], [o[1] for o in out]


async def _concurrent(url: str, bodies: list[dict]) -> tuple[float, list[float], list[str]]:
    # One connection per client, as separate clients would have.
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=len(bodies))) as client:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(_one(client, url, b) for b in bodies))
        return time.perf_counter() - t0, [o[0] for o in out], [o[1] for o in out]


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure(max_batch: int, rounds: int, clients: int = CLIENTS, steps: int = STEPS) -> dict[str, Any]:
    """One server with ``--max-batch max_batch``; ``rounds`` of both modes; a row of the table."""
    bodies = _bodies(clients, steps)
    modes: dict[str, dict[str, list]] = {
        m: {"wall": [], "lat": [], "calls": []} for m in ("sequential", "concurrent")
    }
    identical = True
    with Server("--max-batch", str(max_batch)) as server:
        asyncio.run(_concurrent(server.url, bodies))  # warm-up: first-call allocations for each batch size
        asyncio.run(_sequential(server.url, bodies[:2]))
        for r in range(rounds):
            order = ("sequential", "concurrent") if r % 2 == 0 else ("concurrent", "sequential")
            images: dict[str, list[str]] = {}
            for mode in order:
                before = server.batches()
                run = _sequential if mode == "sequential" else _concurrent
                wall, lat, images[mode] = asyncio.run(run(server.url, bodies))
                after = server.batches()
                modes[mode]["wall"].append(wall)
                modes[mode]["lat"] += lat
                modes[mode]["calls"].append(after[0] - before[0])
            identical &= images["sequential"] == images["concurrent"]
    out: dict[str, Any] = {
        "max_batch": max_batch,
        "clients": clients,
        "steps": steps,
        "identical_images": identical,
    }
    for mode, m in modes.items():
        wall = statistics.median(m["wall"])
        out[mode] = {
            "wall_s": round(wall, 3),
            "images_per_s": round(clients / wall, 3),
            "latency_p50_s": round(_pct(m["lat"], 50), 3),
            "latency_p95_s": round(_pct(m["lat"], 95), 3),
            "mean_batch_images": round(clients * rounds / sum(m["calls"]), 2),
            "walls_s": [round(w, 3) for w in m["wall"]],
        }
    out["throughput_ratio"] = round(out["concurrent"]["images_per_s"] / out["sequential"]["images_per_s"], 2)
    out["meets_target"] = out["throughput_ratio"] >= TARGET_RATIO
    return out


def run(quick: bool = False, max_batches: tuple[int, ...] = (8, 16)) -> dict[str, Any]:
    rounds = 1 if quick else 3
    rows = []
    for mb in max_batches:
        row = measure(mb, rounds)
        rows.append(row)
        print(
            f"--max-batch {mb:2d}: sequential {row['sequential']['images_per_s']:.2f} img/s, concurrent "
            f"{row['concurrent']['images_per_s']:.2f} img/s, ratio {row['throughput_ratio']:.2f}x",
            flush=True,
        )
    return document(rows, rounds, quick)


def document(rows: list[dict[str, Any]], rounds: int, quick: bool) -> dict[str, Any]:
    """The results file: the machine, the settings and one row per ``--max-batch``."""
    return {
        "machine": machine.describe(REPO),
        "model": "demo (embedded, 64 px)",
        "endpoint": "POST /sdapi/v1/txt2img",
        "clients": rows[0]["clients"] if rows else CLIENTS,
        "steps": rows[0]["steps"] if rows else STEPS,
        "sampler": "DPM++ 2M",
        "batch_window_ms": 20,
        "rounds": rounds,
        "target_ratio": TARGET_RATIO,
        "quick": quick,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"`sdlite serve` with the {result['model']} model: {result['clients']} requests "
        f"({result['endpoint']}, {result['steps']} steps, {result['sampler']}, one image each) from "
        f"{result['clients']} clients at once vs one after the other, same server (--batch-window-ms "
        f"{result['batch_window_ms']}). Median of "
        f"{result['rounds']} round(s); latency percentiles over all requests. Target: >= "
        f"{result['target_ratio']:g}x throughput from batching.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_start'][0]:.2f} at the start "
        f"({m['date_utc']}).",
        "",
        "| --max-batch | mode | images/s | p50 latency (s) | p95 latency (s) | images per model call | ratio "
        "| target |",
        "|---:|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in result["rows"]:
        for mode in ("sequential", "concurrent"):
            r = row[mode]
            ratio = f"{row['throughput_ratio']:.2f}x" if mode == "concurrent" else ""
            ok = ("yes" if row["meets_target"] else "no") if mode == "concurrent" else ""
            lines.append(
                f"| {row['max_batch']} | {mode} | {r['images_per_s']:.2f} | {r['latency_p50_s']:.2f} | "
                f"{r['latency_p95_s']:.2f} | {r['mean_batch_images']:.1f} | {ratio} | {ok} |"
            )
    same = all(row["identical_images"] for row in result["rows"])
    lines += ["", f"Concurrent answers byte-identical to sequential ones: {'yes' if same else 'NO'}."]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path = RESULTS) -> dict[str, Path]:
    """JSON, markdown and (with matplotlib) the chart, each written whole or not at all."""
    paths = {"json": out / "serve_load.json", "md": out / "serve_load.md"}
    atomic_write(paths["json"], json.dumps(result, indent=1) + "\n")
    atomic_write(paths["md"], markdown(result))
    png = chart(result, out / "serve_load.png")
    if png is None:
        print(CHARTS_SKIPPED)
    else:
        paths["png"] = png
    return paths


def chart(result: dict[str, Any], path: Path) -> Path | None:
    """Throughput and latency bars per --max-batch; None (nothing written) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    rows = result["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    xs = range(len(rows))
    w = 0.38
    for k, (mode, colour) in enumerate((("sequential", "C7"), ("concurrent", "C0"))):
        ax1.bar(
            [x + (k - 0.5) * w for x in xs],
            [r[mode]["images_per_s"] for r in rows],
            w,
            label=mode,
            color=colour,
        )
        ax2.bar(
            [x + (k - 0.5) * w for x in xs],
            [r[mode]["latency_p50_s"] for r in rows],
            w,
            label=f"{mode} p50",
            color=colour,
        )
        ax2.scatter(
            [x + (k - 0.5) * w for x in xs],
            [r[mode]["latency_p95_s"] for r in rows],
            marker="_",
            s=300,
            color="k",
        )
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs), [f"--max-batch {r['max_batch']}" for r in rows])
    for x, r in zip(xs, rows, strict=True):
        ax1.annotate(
            f"{r['throughput_ratio']:.2f}x",
            (x + w / 2, r["concurrent"]["images_per_s"]),
            ha="center",
            va="bottom",
        )
    ax1.set_ylim(top=1.15 * max(r["concurrent"]["images_per_s"] for r in rows))  # room for the labels
    ax1.set_ylabel("images / s")
    ax1.set_title(f"throughput, {result['clients']} requests", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.set_ylabel("seconds")
    ax2.set_title("latency p50 (bars) and p95 (ticks)", fontsize=9)
    fig.tight_layout()
    return save_figure(plt, fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="one round per mode instead of three")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    result = run(args.quick)
    paths = write(result, args.out)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
