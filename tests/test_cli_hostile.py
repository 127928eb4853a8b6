"""``sdlite generate`` and friends under odd and hostile input (issue #18, item 11).

Each test names what it guards: a clear one-line message and the documented exit status (2: bad
input, nothing written; 1: a failure while running or writing; 141: stdout closed early), never a
traceback, and never a file written anywhere but a regular file that --out names.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image
from sdlite import cli, images
from sdlite.pipeline import Pipeline


def _bomb_png(path: Path, width: int = 9000, height: int = 9000) -> Path:
    """A small PNG whose header claims ``width`` x ``height``: decoding it would take ~240 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 10_000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _generate(model: Path, out: str | Path, *extra: str) -> list[str]:
    return [
        "generate",
        "a red circle",
        "--model",
        str(model),
        "--steps",
        "1",
        "-q",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def no_model_load(monkeypatch):
    """Pipeline.from_pretrained made to fail loudly: a test using this proves a check comes first."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Pipeline, "from_pretrained", refuse)
    return calls


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdlite: error: "), err
    return lines[0]


def test_bomb_image_is_refused_before_decoding(tmp_path, tiny_sd1_onnx, no_model_load, capsys):
    bomb = _bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 20_000
    assert cli.main([*_generate(tiny_sd1_onnx, tmp_path / "o.png"), "--image", str(bomb)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--image" in line and "9000x9000" in line and "pixels" in line
    assert not no_model_load and not (tmp_path / "o.png").exists()


def test_non_utf8_prompt_bytes_are_named_not_a_traceback(tmp_path, tiny_sd1_onnx):
    # Bytes that are not UTF-8 reach Python as surrogate escapes (PEP 383); a real process shows it.
    argv = [sys.executable, "-m", "sdlite", *_generate(tiny_sd1_onnx, tmp_path / "o.png")]
    argv[4] = b"a \xff cat"
    proc = subprocess.run(argv, capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    line = _one_line_error(err)
    assert line.startswith("sdlite: error: prompt is not valid UTF-8 text (byte 0xff)")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(("flag", "label"), [("--negative-prompt", "--negative-prompt"), ("--out", "--out")])
def test_non_utf8_option_is_named(flag, label, tmp_path, tiny_sd1_onnx, no_model_load, capsys):
    argv = _generate(tiny_sd1_onnx, tmp_path / "o.png")
    assert cli.main([*argv, flag, str(tmp_path / "x\udcfe.png")]) == 2
    assert _one_line_error(capsys.readouterr().err).startswith(f"sdlite: error: {label} is not valid UTF-8")


@pytest.mark.parametrize("command", [["samplers"], ["--help"], ["generate", "--help"], ["info"]])
def test_closed_stdout_ends_quietly(command, tiny_sd1_onnx):
    # `sdlite samplers | head -1` with the reader gone before anything is written: every write fails.
    if command == ["info"]:
        command = ["info", str(tiny_sd1_onnx)]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sdlite", *command], stdout=write_end, stderr=subprocess.PIPE, timeout=120
        )
    finally:
        os.close(write_end)
    assert proc.stderr == b""
    # argparse's help ignores write errors itself (exit 0); the rest end as a SIGPIPE'd tool does.
    assert proc.returncode == (0 if "--help" in command else cli.EXIT_SIGPIPE)


def test_huge_width_is_refused_before_the_model_loads(tmp_path, tiny_sd1_onnx, no_model_load, capsys):
    assert cli.main([*_generate(tiny_sd1_onnx, tmp_path / "o.png"), "--width", "100000"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "height x width must be at most" in line and "64x100000" in line and "--max-pixels" in line
    assert not no_model_load


def test_width_off_the_size_multiple_is_refused_before_the_model_loads(
    tmp_path, tiny_sd1_onnx, no_model_load, capsys
):
    assert cli.main([*_generate(tiny_sd1_onnx, tmp_path / "o.png"), "--width", "65"]) == 2
    assert _one_line_error(capsys.readouterr().err).startswith(
        "sdlite: error: --width must be a positive multiple"
    )
    assert not no_model_load


def test_max_pixels_lowers_the_budget_before_the_model_loads(tmp_path, tiny_sd1_onnx, no_model_load, capsys):
    argv = [*_generate(tiny_sd1_onnx, tmp_path / "o.png"), "--width", "128", "--max-pixels", "4096"]
    assert cli.main(argv) == 2
    assert "at most 4096 pixels" in _one_line_error(capsys.readouterr().err)
    assert not no_model_load


def test_max_pixels_is_the_pipelines_budget(tmp_path, tiny_sd1_onnx, monkeypatch, capsys):
    loaded = []
    real = Pipeline.from_pretrained

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(Pipeline, "from_pretrained", spy)
    assert cli.main([*_generate(tiny_sd1_onnx, tmp_path / "o.png"), "--max-pixels", "4096"]) == 0
    assert loaded[0].max_pixels == 4096 and (tmp_path / "o.png").is_file()


@pytest.mark.parametrize("value", ["0", "63", "-5", "lots", str(2**40)])
def test_bad_max_pixels_is_a_usage_error_naming_the_flag(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "a cat", "--max-pixels", value, "--out", str(tmp_path / "o.png")])
    assert exit_.value.code == 2
    assert "argument --max-pixels:" in capsys.readouterr().err


# --- a broken model folder: the file named, and what is wrong with it ---------------------------


def _deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def _not_json(path: Path) -> None:
    path.write_text('{"broken')


def _bad_merge(path: Path) -> None:
    path.write_text("#version: 0.2\nl o w\n")


def _no_start_token(path: Path) -> None:
    path.write_text(json.dumps({"a</w>": 0}))


def _not_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe{}")


BROKEN = [
    ("tokenizer/vocab.json", _not_json, "is not valid JSON"),
    ("tokenizer/vocab.json", _no_start_token, "lacks the bos_token"),
    ("tokenizer/merges.txt", _bad_merge, "line 2: a merge is two tokens"),
    ("tokenizer/merges.txt", _not_utf8, "is not UTF-8 text"),
    ("tokenizer/tokenizer_config.json", _deep, "is not valid JSON"),
    ("tokenizer/special_tokens_map.json", _not_json, "is not valid JSON"),
    ("tokenizer/tokenizer.json", _not_json, "is not a valid tokenizers file"),
    ("unet/config.json", _not_utf8, "is not UTF-8 text"),
    ("model_index.json", _deep, "is not valid JSON"),
    ("scheduler/scheduler_config.json", _not_json, "is not valid JSON"),
]


@pytest.fixture(scope="module")
def model_copy_root(tmp_path_factory):
    return tmp_path_factory.mktemp("broken-models")


@pytest.mark.parametrize(("name", "breaks", "what"), BROKEN, ids=[f"{n}-{b.__name__}" for n, b, _ in BROKEN])
def test_broken_model_file_is_named(name, breaks, what, tiny_sd1_onnx, model_copy_root, tmp_path, capsys):
    model = model_copy_root / f"{name.replace('/', '-')}-{breaks.__name__}"
    shutil.copytree(tiny_sd1_onnx, model)
    if name == "tokenizer/tokenizer.json":  # read only when vocab.json + merges.txt are absent
        (model / "tokenizer" / "vocab.json").unlink()
    breaks(model / name)
    assert cli.main(_generate(model, tmp_path / "o.png")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"{str(model / name)!r} {what}" in line, line
    assert not (tmp_path / "o.png").exists()


# --- --out: only regular files, literal names, folders, full disks ------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the node stays


def _device(path: Path) -> None:
    # A /dev/full of our own: a rename onto /dev/full as root replaced the machine's device node.
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))


def _folder(path: Path) -> None:
    path.mkdir()  # --out names a folder's insides instead (see below); save_png itself refuses one


@pytest.mark.parametrize("make", [_fifo, _socket, _device])
def test_out_never_replaces_a_non_regular_file(make, tmp_path, tiny_sd1_onnx, no_model_load, capsys):
    target = tmp_path / "target.png"
    make(target)
    before = os.lstat(target)
    assert cli.main(_generate(tiny_sd1_onnx, target)) == 2
    assert "sdlite writes only regular files" in _one_line_error(capsys.readouterr().err)
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino) and not no_model_load


@pytest.mark.parametrize("make", [_fifo, _socket, _device, _folder])
def test_save_png_refuses_a_non_regular_target_and_leaves_no_temp_file(make, tmp_path):
    target = tmp_path / "target.png"
    make(target)
    mode = os.lstat(target).st_mode
    with pytest.raises(ValueError, match="sdlite writes only regular files"):
        images.save_png(Image.new("RGB", (8, 8)), target, "a cat")
    assert os.lstat(target).st_mode == mode and [p.name for p in tmp_path.iterdir()] == ["target.png"]


def test_out_folder_gets_the_default_name_inside(tmp_path, tiny_sd1_onnx, capsys):
    folder = tmp_path / "renders"
    folder.mkdir()
    assert cli.main(_generate(tiny_sd1_onnx, folder, "--seed", "7")) == 0
    assert capsys.readouterr().out.split() == [str(folder / "sdlite-7.png")]
    assert [p.name for p in folder.iterdir()] == ["sdlite-7.png"]


def test_out_ending_in_a_slash_must_be_an_existing_folder(tmp_path, tiny_sd1_onnx, no_model_load, capsys):
    assert cli.main(_generate(tiny_sd1_onnx, f"{tmp_path}/missing/")) == 2
    assert "does not exist" in _one_line_error(capsys.readouterr().err)


def test_out_is_literal_apart_from_seed_and_i(tmp_path, tiny_sd1_onnx, capsys):
    out = tmp_path / "100%d {} {{x}} {seed}-{i}.png"
    assert cli.main(_generate(tiny_sd1_onnx, out, "--seed", "3", "-n", "2")) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["100%d {} {{x}} 3-1.png", "100%d {} {{x}} 4-2.png"]


def test_n_images_with_one_file_name_are_numbered(tmp_path, tiny_sd1_onnx, capsys):
    assert cli.main(_generate(tiny_sd1_onnx, tmp_path / "cat.png", "-n", "2")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-1.png", "cat-2.png"]


def test_empty_out_is_refused(tmp_path, tiny_sd1_onnx, no_model_load, capsys):
    assert cli.main(_generate(tiny_sd1_onnx, "")) == 2
    assert "--out must name a file or a folder" in _one_line_error(capsys.readouterr().err)


def test_full_disk_is_one_line_exit_1_and_no_temp_file(tmp_path, tiny_sd1_onnx, monkeypatch, capsys):
    def full_disk(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "cat.png"
    assert cli.main(_generate(tiny_sd1_onnx, out)) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert line == f"sdlite: error: no space left on device writing {str(out)!r}"
    assert list(tmp_path.iterdir()) == []


def test_unexpected_failure_is_one_line_with_a_debug_hint(tmp_path, tiny_sd1_onnx, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.delenv("SDLITE_DEBUG", raising=False)
    monkeypatch.setattr(Pipeline, "from_pretrained", broken)
    assert cli.main(_generate(tiny_sd1_onnx, tmp_path / "o.png")) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert line == (
        "sdlite: error: RuntimeError: the accelerator fell over (set SDLITE_DEBUG=1 to see the traceback)"
    )
    monkeypatch.setenv("SDLITE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="fell over"):
        cli.main(_generate(tiny_sd1_onnx, tmp_path / "o.png"))


# --- sdlite serve --max-pixels -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "lots"])
def test_serve_bad_max_pixels_is_a_usage_error_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--max-pixels", value, "--port", "0"])
    assert exit_.value.code == 2
    assert "argument --max-pixels:" in capsys.readouterr().err


def test_serve_max_pixels_is_the_pipelines_budget(tiny_sd1_onnx, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    from sdlite.server import app

    served = []

    def create_app(pipe, settings):
        served.append(pipe)
        raise KeyboardInterrupt  # stop before uvicorn starts: the pipeline is what this test reads

    monkeypatch.setattr(app, "create_app", create_app)
    argv = ["serve", "--model", str(tiny_sd1_onnx), "--port", "0", "--max-pixels", "16384"]
    assert cli.main(argv) == 130
    assert served[0].max_pixels == 16384


def test_long_out_name_is_written_through_a_short_temp_name(tmp_path, monkeypatch):
    # A 60-character non-ASCII name is 240 bytes: its temp name must still fit the 255-byte limit.
    target = tmp_path / ("é" * 60 + ".png")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    images.save_png(Image.new("RGB", (8, 8)), target, "a cat")
    assert target.is_file() and [p.name for p in tmp_path.iterdir()] == [target.name]
    assert len(seen[0].encode()) <= 255 and seen[0].startswith(".") and seen[0].endswith(".tmp")
    assert ".png." in seen[0]  # the batch job's clean-up finds left-over temp files by this
