"""The one image loader used for every path in: catalog files, query files and uploads.

Whatever way an image arrives, it is decoded the same way, so a search result never
depends on how the photo reached snapshop.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from snapshop.errors import ImageError

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

# Pillow names an in-memory file by its repr ("<_io.BytesIO object at 0x7f...>"): noise in a message.
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")

# A truncated file is an error, never a silently half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Decode a file path or raw bytes into an upright RGB image.

    EXIF orientation is applied; grey, RGBA, palette, CMYK and 16-bit images become RGB
    (transparent areas composited on white). Raises ImageError for missing, empty,
    truncated, non-image or oversized input (the pixel limit stops decompression bombs
    before any pixel is decoded).
    """
    data = _read_bytes(source, max_bytes)
    name = source if isinstance(source, (str, Path)) else "upload"
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,}"
                    )
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: not a readable image ({_reason(exc)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged or truncated image ({_reason(exc)})") from None


def _read_bytes(source: str | Path | bytes, max_bytes: int) -> bytes:
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise ImageError(f"upload: {len(source):,} bytes is over the limit of {max_bytes:,}")
        return source
    path = Path(source)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageError(f"{path}: not a file")
        if size > max_bytes:
            raise ImageError(f"{path}: {size:,} bytes is over the limit of {max_bytes:,}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _reason(exc: BaseException) -> str:
    text = _OBJECT_REPR.sub("", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
