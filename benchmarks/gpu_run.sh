#!/usr/bin/env bash
# SD 1.5 on the GPU machine: sdlite vs optimum vs diffusers (benchmarks/gpu/), set up and run.
#
#   bash benchmarks/gpu_run.sh torch   # carry [".whl"]: build SD 1.5, diffusers timings, then the
#                                      #   exports and the correctness references
#   bash benchmarks/gpu_run.sh ort     # carry [".ortgpu"], right after: sdlite + optimum on the
#                                      #   CUDA EP, the correctness check, the final JSON/markdown
#   bash benchmarks/gpu_run.sh all     # both at once, where .whl and .ortgpu arrive together
#   bash benchmarks/gpu_run.sh small   # the CPU plumbing check (python -m benchmarks.gpu --small)
#
# Two calls because onnxruntime-gpu (.ortgpu, ~58 MiB) and the wheels (.whl, 29 MB) don't fit
# one 64 MiB transfer (../shared/gpu/README.md).  The first call leaves the models, the wheels
# and its results in $SDLITE_GPU_WORK (default /tmp/sdlite-gpu); the machine keeps /tmp only
# while it stays warm, so make the second call at once.
#
# .whl: what the machine (Python 3.12, x86-64, PyTorch and onnx installed) lacks, pinned to the
# versions the project tests with.  Fetch on your own machine, in the repo root:
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#     diffusers==0.39.0 transformers==4.57.6 optimum==2.1.0 optimum-onnx==0.1.0 \
#     huggingface-hub==0.36.2 tokenizers==0.22.2 safetensors==0.8.0 pillow==13.0.0 \
#     httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0
#   (transformers 4.57 because optimum-onnx 0.1.0 wants < 4.58, and with it huggingface-hub < 1.0
#   and tokenizers 0.22; diffusers 0.39 wants safetensors >= 0.8 and imports httpx.)
# .ortgpu: python3 ../shared/gpu/ort-gpu/pack.py .ortgpu && cp ../shared/gpu/ort-gpu/install.sh .ortgpu/
#
# Results go to $OUT (the device tool's folder; else benchmarks/results): gpu-<device>.json and
# gpu-<device>.md, rewritten after every step, plus gpu-logs/ (the tail of each step's log).
set -uo pipefail
phase=${1:-all}
case $phase in torch | ort | all | small) ;; *)
  echo "usage: $0 torch|ort|all|small" >&2
  exit 2
  ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${SDLITE_GPU_WORK:-/tmp/sdlite-gpu}
out=${OUT:-$repo/benchmarks/results}
py=${PYTHON:-python3}
mkdir -p "$work" "$out"
cd "$repo" || exit 1
t0=$(date +%s)

if [ "$phase" = small ]; then # the project's own environment: nothing to set up
  $py -m benchmarks.gpu --small --out "$out"
  exit $?
fi

# The pure-Python wheels, into a folder of their own (the machine has no index to resolve from).
if [ -d .whl ] && [ ! -f "$work/site/.done" ]; then
  if ! PIP_BREAK_SYSTEM_PACKAGES=1 $py -m pip install -q --no-index --no-deps --target "$work/site" .whl/*.whl; then
    echo "[gpu_run] pip failed; unpacking the wheels instead" >&2
    $py -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$work/site" .whl/*.whl || exit 1
  fi
  touch "$work/site/.done"
fi

# sdlite without installing it: its package-dir layout (runtime/ is `sdlite`, export/ is
# `sdlite.export`, models/ is `sdlite.models`) rebuilt as links.
shim="$work/shim"
rm -rf "$shim" && mkdir -p "$shim/sdlite"
for f in "$repo"/runtime/*; do ln -s "$f" "$shim/sdlite/"; done
ln -s "$repo/export" "$shim/sdlite/export"
ln -s "$repo/models" "$shim/sdlite/models"
export PYTHONPATH="$shim:$work/site${PYTHONPATH:+:$PYTHONPATH}"
# onnxruntime-gpu last, so that it comes first on PYTHONPATH (before the machine's CPU build).
if [ -f .ortgpu/install.sh ]; then
  eval "$(bash .ortgpu/install.sh .ortgpu)" || echo "[gpu_run] .ortgpu install failed" >&2
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

echo "[gpu_run] phase $phase; setup $(($(date +%s) - t0)) s"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | head -3
$py - <<'PY' 2>&1 | tee "$out/gpu-env-$phase.txt"
import importlib
for name in ("numpy", "torch", "diffusers", "transformers", "optimum.onnxruntime", "onnx",
             "onnxruntime", "tokenizers", "PIL", "sdlite", "sdlite.export"):
    try:
        m = importlib.import_module(name)
        print(f"{name:20} {getattr(m, '__version__', '')} {getattr(m, '__file__', '')}")
    except Exception as e:  # report every missing piece, not only the first
        print(f"MISSING {name}: {type(e).__name__}: {e}")
try:
    import onnxruntime as ort
    print("onnxruntime providers:", ort.get_available_providers())
    import torch
    print("torch cuda:", torch.cuda.is_available(), torch.version.cuda)
except Exception as e:
    print("MISSING:", e)
PY

# Every step is cut to end by SDLITE_GPU_DEADLINE seconds after this script started, so a slow
# step still leaves results behind.  Defaults: 560 s for torch (build, diffusers' timing, then
# the exports with their 420 s limit) and all, 420 s for ort; keep it ~30 s under the device
# call's timeout (at most 600 s).
case $phase in ort) default_deadline=420 ;; *) default_deadline=560 ;; esac
left=$((${SDLITE_GPU_DEADLINE:-$default_deadline} - ($(date +%s) - t0)))
$py -m benchmarks.gpu --phase "$phase" --out "$out" --work "$work" --deadline-s "$left"
rc=$?
mkdir -p "$out/gpu-logs"
for f in "$work"/logs/*.log; do
  [ -f "$f" ] && tail -n 80 "$f" >"$out/gpu-logs/$(basename "$f")"
done
echo "[gpu_run] phase $phase done in $(($(date +%s) - t0)) s, rc $rc"
exit $rc
