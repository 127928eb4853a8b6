"""Property tests over untrusted image inputs (img2img init images, mask files, base64 bodies).

Whatever the bytes, ``sdlite.images`` answers with a decoded RGB image or a ValueError that names
the argument and says what is allowed; never another exception, never an object's repr.
Needs ``hypothesis`` (in the dev extra)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sdlite import images

# No deadline: a timed test would fail on a loaded machine; no database: nothing written to the tree.
PROPERTY = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
BUDGET = 256 * 256


def _encoded(fmt: str, size: tuple[int, int] = (24, 16), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP")}


def _png_header(width: int, height: int, bit_depth: int = 1, color: int = 0) -> bytes:
    """A PNG with only a header (IHDR) and an end: the size it claims, and no pixels at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _clear(err: ValueError, argument: str = "init") -> None:
    text = str(err)
    assert text.startswith(argument), text
    assert "PNG, JPEG or WebP" in text or "at most" in text, text
    assert " at 0x" not in text and "<" not in text, text  # no object reprs / memory addresses


def _read(data: bytes, max_pixels: int = BUDGET) -> Image.Image | None:
    try:
        im = images.read_image(data, "init", max_pixels)
    except ValueError as err:
        _clear(err)
        return None
    assert im.mode == "RGB" and im.width * im.height <= max_pixels
    return im


@PROPERTY
@given(st.binary(max_size=4096))
def test_random_bytes_give_an_image_or_a_clear_error(data):
    _read(data)


@PROPERTY
@given(st.sampled_from(sorted(VALID)), st.data())
def test_truncated_images_give_an_image_or_a_clear_error(fmt, data):
    raw = VALID[fmt]
    cut = data.draw(st.integers(0, len(raw) - 1))
    _read(raw[:cut])


@PROPERTY
@given(st.sampled_from(sorted(VALID)), st.data())
def test_corrupted_images_give_an_image_or_a_clear_error(fmt, data):
    raw = bytearray(VALID[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _read(bytes(raw))


@PROPERTY
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.sampled_from([(1, 0), (8, 2), (16, 6)]))
def test_huge_headers_are_refused_before_decoding(width, height, depth_color):
    # The file holds no pixel data at all: an error about its size (not about missing data) proves
    # the size was judged from the header, before any decoding.
    data = _png_header(width, height, *depth_color)
    if width * height <= BUDGET:
        assert _read(data) is None  # small: read, then found to have no pixels
        return
    with pytest.raises(ValueError, match=f"at most {BUDGET} pixels") as err:
        images.read_image(data, "init", BUDGET)
    _clear(err.value)


@PROPERTY
@given(st.integers(1, 65535), st.integers(1, 65535))
def test_huge_jpeg_frame_headers_are_refused_before_decoding(width, height):
    raw = bytearray(VALID["JPEG"])
    sof = raw.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    im = _read(bytes(raw))
    if width * height > BUDGET:
        assert im is None
        with pytest.raises(ValueError, match="at most"):
            images.read_image(bytes(raw), "init", BUDGET)


@PROPERTY
@given(st.sampled_from(["TIFF", "BMP", "GIF", "ICO", "PPM", "TGA", "PCX"]), st.integers(1, 64))
def test_other_formats_are_refused_by_name(fmt, side):
    data = _encoded(fmt, (side, side))
    with pytest.raises(ValueError, match="must be a PNG, JPEG or WebP image") as err:
        images.read_image(data, "init", BUDGET)
    _clear(err.value)


@PROPERTY
@given(st.text(max_size=200) | st.from_regex(r"data:image/png;base64,[A-Za-z0-9+/=]{0,80}", fullmatch=True))
def test_base64_text_gives_images_or_an_error_with_its_index(text):
    try:
        out = images.read_base64_images([text], "init_images", BUDGET)
    except images.ImageInputError as err:
        assert err.index == 0
        _clear(err, "init_images[0]")
        return
    assert len(out) == 1 and out[0].mode == "RGB"


@PROPERTY
@given(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=6), st.integers(1, 3000))
def test_a_set_of_images_fits_the_budget_together(formats, budget):
    texts = [base64.b64encode(VALID[f]).decode() for f in formats]
    each = 24 * 16
    try:
        out = images.read_base64_images(texts, "init_images", budget)
    except images.ImageInputError as err:
        assert budget < each * len(formats)
        _clear(err, "init_images")
        return
    assert budget >= each * len(formats) and [im.size for im in out] == [(24, 16)] * len(formats)
