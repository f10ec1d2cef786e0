"""The one image loader: orientation, colour modes, size limits and every way a file can be bad."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from snapshop.catalog.images import load_image
from snapshop.errors import ImageError, SnapshopError


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def two_halves(width: int = 200, height: int = 100) -> Image.Image:
    """Left half red, right half blue: which side ends up where shows the orientation."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def noisy(width: int = 200, height: int = 160, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


# --- orientation -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True])
def test_exif_orientation_6_is_applied(tmp_path, as_bytes):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = rotate 90 degrees clockwise
    data = encode(two_halves(200, 100), "JPEG", quality=95, exif=exif.tobytes())
    path = tmp_path / "sideways.jpg"
    path.write_bytes(data)

    image = load_image(data if as_bytes else path)

    assert image.mode == "RGB"
    assert image.size == (100, 200)
    pixels = np.asarray(image).astype(int)
    # Rotating clockwise puts the stored left (red) half on top.
    assert pixels[20, 50, 0] > 200 and pixels[20, 50, 2] < 60
    assert pixels[180, 50, 2] > 200 and pixels[180, 50, 0] < 60


def test_image_without_exif_keeps_its_size(tmp_path):
    path = tmp_path / "plain.jpg"
    two_halves(200, 100).save(path, quality=95)
    assert load_image(str(path)).size == (200, 100)


# --- colour modes --------------------------------------------------------------------------------


def test_grey_becomes_rgb():
    grey = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1)), "L")
    image = load_image(encode(grey))
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (10, 64, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 252


def test_rgba_transparent_areas_become_white():
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)  # opaque red
    rgba[:, 20:] = (0, 0, 0, 0)  # fully transparent (black underneath)
    image = load_image(encode(Image.fromarray(rgba, "RGBA")))
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert tuple(pixels[10, 5]) == (255, 0, 0)
    assert tuple(pixels[10, 30]) == (255, 255, 255)


def test_half_transparent_pixels_are_blended_with_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (0, 0, 0, 128)
    pixels = np.asarray(load_image(encode(Image.fromarray(rgba, "RGBA"))))
    assert 120 <= pixels[0, 0, 0] <= 135


def test_grey_with_alpha_becomes_rgb_on_white():
    la = Image.new("LA", (10, 10), (0, 0))
    image = load_image(encode(la))
    assert image.mode == "RGB" and tuple(np.asarray(image)[5, 5]) == (255, 255, 255)


def test_palette_image_becomes_rgb():
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 128, 0] + [0, 0, 0] * 255)
    image = load_image(encode(palette))
    assert image.mode == "RGB" and tuple(np.asarray(image)[3, 3]) == (0, 128, 0)


def test_palette_transparency_becomes_white():
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 128, 0, 10, 20, 30] + [0, 0, 0] * 254)
    data = encode(palette, transparency=1)  # GIF-style: palette entry 1 is transparent
    image = load_image(data)
    assert image.mode == "RGB" and tuple(np.asarray(image)[3, 3]) == (255, 255, 255)


def test_gif_becomes_rgb():
    gif = Image.new("RGB", (12, 8), (0, 0, 255)).convert("P")
    image = load_image(encode(gif, "GIF"))
    assert image.mode == "RGB" and image.size == (12, 8)
    assert tuple(np.asarray(image)[4, 4]) == (0, 0, 255)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # full magenta + yellow = red
    image = load_image(encode(cmyk, "JPEG", quality=95))
    red, green, blue = (int(v) for v in np.asarray(image)[5, 10])
    assert image.mode == "RGB"
    assert red > 220 and green < 40 and blue < 40


def test_16_bit_grey_is_scaled_to_8_bit_rgb():
    values = np.array([[0, 32768, 65535]], np.uint16).repeat(4, axis=0)
    sixteen = Image.fromarray(values)
    assert sixteen.mode.startswith("I;16")
    pixels = np.asarray(load_image(encode(sixteen)))
    assert pixels.shape == (4, 3, 3)
    assert pixels[0, 0, 0] == 0
    assert 126 <= pixels[0, 1, 0] <= 129
    assert pixels[0, 2, 0] == 255


def test_one_bit_image_becomes_rgb():
    image = load_image(encode(Image.new("1", (8, 8), 1)))
    assert image.mode == "RGB" and tuple(np.asarray(image)[0, 0]) == (255, 255, 255)


def test_returned_image_outlives_the_file(tmp_path):
    path = tmp_path / "gone.png"
    noisy().save(path)
    image = load_image(path)
    path.unlink()
    assert np.asarray(image).shape == (160, 200, 3)


# --- size limits ---------------------------------------------------------------------------------


def test_image_over_max_pixels_is_refused():
    data = encode(noisy(300, 300))
    with pytest.raises(ImageError, match="limit"):
        load_image(data, max_pixels=10_000)
    assert load_image(data, max_pixels=90_000).size == (300, 300)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


@pytest.mark.parametrize("side", [8_000, 100_000])
def test_decompression_bomb_header_is_refused_before_decoding(side):
    # A few hundred bytes that claim side x side pixels.
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    assert len(data) < 1000
    with pytest.raises(ImageError):
        load_image(data)


def test_bytes_over_max_bytes_are_refused():
    data = encode(noisy())
    with pytest.raises(ImageError, match="over the limit"):
        load_image(data, max_bytes=len(data) - 1)
    assert load_image(data, max_bytes=len(data)).size == (200, 160)


def test_file_over_max_bytes_is_refused(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(noisy()))
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, max_bytes=100)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file_is_an_error_not_a_grey_image(tmp_path, fmt, keep):
    data = encode(noisy(256, 256), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match=str(path.name)):
        load_image(path)
    with pytest.raises(ImageError):
        load_image(data[: int(len(data) * keep)])


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)


def test_empty_bytes():
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(path)


def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nowhere.jpg")


def test_directory_is_not_an_image(tmp_path):
    folder = tmp_path / "photos.jpg"
    folder.mkdir()
    with pytest.raises(ImageError):
        load_image(folder)


def test_image_errors_are_user_errors():
    # The CLI turns SnapshopError into exit code 1 with one line; ImageError must be one.
    assert issubclass(ImageError, SnapshopError)
    with pytest.raises(SnapshopError):
        load_image(b"GIF89a garbage")
