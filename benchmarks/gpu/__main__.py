"""``python -m benchmarks.gpu``: the phases (see the package's docstring), or one child's task."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.models import REPO


def _parser() -> argparse.ArgumentParser:
    from benchmarks.gpu.config import ORT_PROVIDERS

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description="SD 1.5 on a GPU: sdlite vs optimum vs diffusers."
    )
    p.add_argument("--small", action="store_true", help="tiny model on the CPU: the plumbing only")
    p.add_argument("--phase", choices=("all", "torch", "ort"), default="all")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    p.add_argument("--work", type=Path, default=None, help="models and state (default .cache/gpu[-small])")
    p.add_argument("--provider", choices=tuple(ORT_PROVIDERS), default=None, help="override the ORT provider")
    p.add_argument("--target", choices=("cpu", "cuda"), default=None, help="override sdlite export --target")
    p.add_argument("--deadline-s", type=float, default=None, help="cut every step to end by then")
    p.add_argument("--fresh", action="store_true", help="forget earlier results in WORK (models are reused)")
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("spec", nargs="?", default=None, help=argparse.SUPPRESS)
    return p


def _phases(args: argparse.Namespace) -> int:
    from benchmarks.gpu.config import FULL, SMALL
    from benchmarks.gpu.phases import ort_phase, torch_phase
    from benchmarks.gpu.report import markdown
    from benchmarks.gpu.run import Run

    cfg = SMALL if args.small else FULL
    if args.provider:
        cfg = replace(cfg, provider=args.provider)
    if args.target:
        cfg = replace(cfg, target=args.target)
    work = args.work or REPO / ".cache" / ("gpu-small" if args.small else "gpu")
    work.mkdir(parents=True, exist_ok=True)
    if args.fresh or args.phase in ("all", "torch"):
        (work / "state.json").unlink(missing_ok=True)
    run = Run(cfg, work.resolve(), args.out.resolve(), args.small, args.deadline_s)
    run.save()
    if args.phase in ("all", "torch"):
        torch_phase(run)
    if args.phase in ("all", "ort"):
        ort_phase(run)
    print(markdown(run.doc))
    print(f"[gpu] wrote {run.json_path} and {run.json_path.with_suffix('.md')}")
    return 1 if [n for n in run.doc["machine"]["notes"] if n.startswith("FAILED")] else 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.task is None:
        return _phases(args)
    from benchmarks.gpu.tasks import TASKS  # a child: only its task's imports

    if args.task not in TASKS or args.spec is None:
        parser.error(f"--task must be one of {', '.join(TASKS)} with a JSON spec")
    TASKS[args.task](json.loads(args.spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
