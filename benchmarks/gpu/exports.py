"""The two exporters' commands, and when an export folder counts as done."""

from __future__ import annotations

import sys
from pathlib import Path

# optimum validates its own export against PyTorch at atol 1e-5 by default, which fp16 cannot
# meet (the first H200 run: U-Net max diff 3.2e-3); it then fails, and its logger crashes on the
# report, although the model was saved.  1e-2 is fp16's scale; our correctness check has its own.
OPTIMUM_ATOL = {"fp16": 1e-2, "fp32": 1e-4}
# What a pipeline needs to load; optimum writes model_index.json before the models themselves.
PARTS = ("text_encoder", "unet", "vae_decoder")


def export_sdlite_cmd(src: Path, out: Path, dtype: str, target: str) -> list[str]:
    # No validation here: the correctness check runs the tiny model through the provider, and
    # validating SD 1.5 would cost minutes of the device budget.
    cmd = [sys.executable, "-m", "sdlite.export", str(src), str(out), "--dtype", dtype]
    return cmd + ["--target", target, "--no-validate", "--overwrite"]


def export_optimum_cmd(src: Path, out: Path, dtype: str, device: str) -> list[str]:
    # optimum exports fp16 only on a CUDA device (its --device cuda); its plain graphs, no --optimize.
    cli = "import sys; from optimum.commands.optimum_cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", cli, "export", "onnx", "--model", str(src), "--task", "text-to-image"]
    return cmd + ["--dtype", dtype, "--device", device, "--atol", str(OPTIMUM_ATOL[dtype]), str(out)]


def out_dir(key: str, cmd: list[str]) -> Path:
    """Where ``cmd`` writes: optimum takes it last, ``sdlite.export`` second after its source."""
    return Path(cmd[-1] if key == "optimum" else cmd[4])


def complete(folder: Path) -> bool:
    """model_index.json and every part's model.onnx: a folder a pipeline can load."""
    return (folder / "model_index.json").is_file() and all(
        (folder / part / "model.onnx").is_file() for part in PARTS
    )


def outcome(key: str, err: str | None, folder: Path) -> tuple[bool, str | None]:
    """(usable, note) for an export that ended with ``err`` (None: exit 0).

    optimum exits non-zero when its own validation fails, after saving the model: a complete
    folder is then used, and the note keeps why it failed.  A timed-out export is never used
    (it may have been cut between two files)."""
    if err is None:
        return True, None
    if key == "optimum" and not err.startswith("timed out") and complete(folder):
        return True, f"export {key}: exited with an error but saved a complete folder, used: {err[-400:]}"
    return False, f"FAILED: export {key}: {err}"
