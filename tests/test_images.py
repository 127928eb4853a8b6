"""PNG output with AUTOMATIC1111's parameters chunk, atomic writes, image conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sdlite import images


def test_a1111_parameters_format():
    text = images.a1111_parameters("a cat", "blurry", 20, "DPM++ 2M", 7.5, 1234, 512, 768, "demo")
    assert text == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1234, Size: 512x768, Model: demo"
    )
    assert "Negative prompt" not in images.a1111_parameters("a", None, 1, "Euler", 1, 0, 64, 64)


@pytest.mark.parametrize("prompt", ["a red circle", "café ✨ 日本の猫"])
def test_png_round_trip_and_no_temp_files(tmp_path, prompt):
    params = images.a1111_parameters(prompt, None, 4, "Euler a", 1.0, 7, 64, 64, "m")
    img = Image.new("RGB", (64, 64), "blue")
    path = images.save_png(img, tmp_path / "x.png", params)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    with Image.open(path) as back:
        assert back.text["parameters"] == params
        assert back.size == (64, 64)


def test_failed_write_leaves_nothing(tmp_path):
    class Broken:
        def save(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        images.save_png(Broken(), tmp_path / "x.png", "p")
    assert list(tmp_path.iterdir()) == []


def test_postprocess_matches_diffusers_rounding():
    decoded = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0], np.float32).reshape(1, 1, 1, 6).repeat(3, 1)
    arr = images.to_numpy(decoded)
    assert arr.shape == (1, 1, 6, 3)
    np.testing.assert_allclose(arr[0, 0, :, 0], [0, 0.25, 0.5, 0.75, 1, 1])
    pil = images.to_pil(arr)[0]
    assert np.asarray(pil)[0, :, 0].tolist() == [0, 64, 128, 191, 255, 255]


def test_load_image_variants(tmp_path):
    Image.new("RGBA", (8, 6), (255, 0, 0, 128)).save(tmp_path / "a.png")
    assert images.load_image(tmp_path / "a.png").mode == "RGB"
    assert images.load_image(np.zeros((6, 8), np.uint8)).size == (8, 6)
    assert images.load_image(np.ones((6, 8, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    x = images.image_to_model(Image.new("RGB", (8, 6), (255, 0, 0)), 8, 8)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32 and x[0, 0].max() == 1.0
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="image"):
        images.load_image(tmp_path / "b.png")


def _header_only_png(width: int, height: int) -> bytes:
    """A 1-bit PNG that claims ``width`` x ``height`` and holds no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 12000])  # 12000^2 passes Pillow's own bomb check
def test_decompression_bombs_are_refused_by_their_header_before_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)  # ~10-20 KB on disk, 81-144 M pixels decoded
    with pytest.raises(ValueError, match=f"at most {64 * 64} pixels, got {side}x{side}"):
        images.load_image(path, "--image", max_pixels=64 * 64)
    with pytest.raises(ValueError, match=f"at most {images.DEFAULT_MAX_PIXELS} pixels"):
        images.load_image(path, "--image")
    # No pixel data at all: a size error (not "truncated") shows that nothing was decoded.
    with pytest.raises(ValueError, match="at most .* pixels") as err:
        images.read_image(_header_only_png(side, side), "init_images[0]")
    assert "truncated" not in str(err.value)


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "EPS"])
def test_only_png_jpeg_and_webp_are_read(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    if fmt == "EPS":  # what Pillow would hand to Ghostscript
        path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n")
    else:
        Image.new("RGB", (8, 8), "red").save(path, format=fmt)
    with pytest.raises(
        ValueError, match="--image: .* is not a readable image file: it must be a PNG, JPEG or WebP"
    ):
        images.load_image(path, "--image")
    for ok in ("PNG", "JPEG", "WEBP"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / "ok", format=ok)
        assert images.load_image(tmp_path / "ok").size == (8, 8)


def test_decoder_errors_name_the_field_and_show_no_object_reprs():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    for data in (b"GIF89a junk", buf.getvalue()[:60], b""):
        with pytest.raises(ValueError) as err:
            images.read_image(data, "init_images[2]")
        text = str(err.value)
        assert text.startswith("init_images[2] is not a readable image") and "PNG, JPEG or WebP" in text
        assert "0x" not in text and "BytesIO" not in text


def test_keeping_the_mode_for_masks():
    buf = io.BytesIO()
    Image.new("L", (8, 4), 200).save(buf, format="PNG")
    im = images.read_image(buf.getvalue(), "mask_image", mode=None)
    assert im.mode == "L" and im.size == (8, 4) and im.getpixel((0, 0)) == 200
