"""``python -m benchmarks [--quick | --full] [--json PATH] [--docs | --no-docs]``.

--quick   the CI smoke test: tiny model, 5 runs per figure, no venv building (a cached install
          figure or null), the studies in their quick mode.  A few minutes.
(default) tiny model, 7 runs, install footprint measured (venvs cached under .cache/benchmarks).
--full    adds the SD 1.5 architecture (random weights): 10 steps, guidance 7.5, 256² vs
          diffusers and 512² vs optimum, 3 and 2 runs (a 512² image takes about a minute here).

A default or full run then regenerates docs/benchmarks.md and the README's headline table
(``python -m benchmarks.docs`` does that alone, from the results files); a quick run leaves
them alone unless --docs.  Without matplotlib (the `bench` extra) the tables are written and
the charts are skipped, with a note saying so.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import docs, report, suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="sdlite vs optimum (ONNX Runtime) vs diffusers (PyTorch), same model, sampler and seeds.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI smoke test: tiny model, cached install figure")
    mode.add_argument("--full", action="store_true", help="add the SD 1.5 architecture rows (slow)")
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/cpu-<mode>.json)")
    parser.add_argument("--cache", type=Path, default=suite.models.DEFAULT_CACHE, help="build cache folder")
    parser.add_argument("--no-studies", action="store_true", help="skip the sampler/export/demo studies")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regenerate docs/benchmarks.md and README's headline (default: yes, except --quick)",
    )
    args = parser.parse_args(argv)
    if args.json is not None and args.json.suffix != ".json":
        parser.error(f"--json must name a .json file, got {str(args.json)!r}")

    name = "quick" if args.quick else "full" if args.full else "default"
    settings = replace(suite.PRESETS[name], cache_dir=args.cache.resolve(), studies=not args.no_studies)
    json_path = (args.json or suite.REPO / "benchmarks" / "results" / f"cpu-{name}.json").resolve()

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    outcome = suite.run_suite(settings, log=log)
    paths = report.write(outcome.document(), outcome.studies, json_path)
    log(f"done in {time.perf_counter() - t:.0f} s: " + ", ".join(str(p) for p in paths.values()))
    print(paths["md"].read_text())
    if args.docs if args.docs is not None else not args.quick:
        quoted = paths["md"] if paths["md"].parent == docs.RESULTS else None
        log(f"wrote {docs.write(quoted)} and README.md's headline")
    for failure in outcome.failures:
        log(failure)
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
