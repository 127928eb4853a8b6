"""The ``sdlite`` command line: generate, info, samplers, export forwarding."""

from __future__ import annotations

import subprocess
import sys
import types

from PIL import Image
from sdlite import cli


def test_generate_writes_pngs_with_parameters(tmp_path, tiny_sd1_onnx, capsys):
    code = cli.main(
        [
            "generate",
            "a red circle",
            "--model",
            str(tiny_sd1_onnx),
            "--steps",
            "2",
            "--seed",
            "9",
            "-n",
            "2",
            "--sampler",
            "DPM++ 2M",
            "--negative-prompt",
            "blurry",
            "--out",
            str(tmp_path / "img-{seed}.png"),
            "--quiet",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img-10.png", "img-9.png"]
    assert out.out.split() == [str(tmp_path / "img-9.png"), str(tmp_path / "img-10.png")]
    with Image.open(tmp_path / "img-10.png") as im:
        text = im.text["parameters"]
    assert text.startswith(
        "a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, CFG scale: 7.5"
    )
    assert "Seed: 10, Size: 64x64, Model: " in text


def test_generate_img2img_and_progress_bar(tmp_path, tiny_sd1_onnx, capsys):
    Image.new("RGB", (64, 64), "green").save(tmp_path / "in.png")
    code = cli.main(
        [
            "generate",
            "a cat",
            "--model",
            str(tiny_sd1_onnx),
            "--steps",
            "4",
            "--image",
            str(tmp_path / "in.png"),
            "--strength",
            "0.5",
            "--out",
            str(tmp_path / "out.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "out.png").is_file()
    assert "2/2" in err  # tqdm on stderr: 4 steps x strength 0.5


def test_info(tiny_sd2_onnx, capsys):
    assert cli.main(["info", str(tiny_sd2_onnx)]) == 0
    out = capsys.readouterr().out
    for needle in (
        "text_encoder",
        "unet",
        "vae_decoder",
        "vae_encoder",
        "latent factor 4",
        "pad '!'",
        "MiB",
        "CPUExecutionProvider",
        "v_prediction",
    ):
        assert needle in out, needle


def test_samplers_lists_names(capsys):
    assert cli.main(["samplers"]) == 0
    out = capsys.readouterr().out
    assert "unipc" in out and "Euler a" in out and "DPM++ 2M" in out


def test_export_is_forwarded(monkeypatch):
    seen = []
    fake = types.ModuleType("sdlite.export.cli")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "sdlite.export.cli", fake)
    assert cli.main(["export", "--model", "x", "--out", "y"]) == 0
    assert seen == [["--model", "x", "--out", "y"]]


def test_export_without_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sdlite.export.cli", None)  # import raises ImportError
    assert cli.main(["export", "--help"]) == 2
    assert "pip install 'sdlite[export]'" in capsys.readouterr().err


def test_missing_demo_model_is_a_clear_error(monkeypatch, capsys, tmp_path):
    # An install without the demo model: sdlite.models has no demo_path().
    monkeypatch.setitem(sys.modules, "sdlite.models", types.ModuleType("sdlite.models"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "a cat"]) == 2
    assert "no --model given" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sdlite", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "generate" in proc.stdout and "info" in proc.stdout
