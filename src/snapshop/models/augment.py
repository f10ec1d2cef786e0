"""Synthetic views of catalog images: the product cut out of its clean shot and placed in a scene.

A catalog photo shows a product on a plain light background; a shopper's photo shows it
somewhere else. Pasting the product, resized, rotated and re-lit, onto a crop of a real
photo from the shipped generic set gives a view whose object box and mask are known. These
views teach the objectness model where products are, and pair each catalog image with a
view of itself for the category classifier and the learned whitening. No human label is
involved: the mask comes from the plain background.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

VIEW_SIDE = 448
WHITE_TOLERANCE = 24
PLAIN_TOLERANCE = 6  # a plain backdrop: border pixels within this many levels of its median colour ...
PLAIN_BORDER = 0.5  # ... make up at least this share of the border (the product may touch the edges)
FILLS_FRAME = 0.98  # share of the rows and of the columns a product on a backdrop cannot both reach
MAX_BACKDROPS = 3  # plain backdrops peeled off one inside the other
EDGE_WIDTH = 0.02  # soft outline of a product in a clean shot, as a fraction of the photo's side
# How far views stray from the catalog shot: broad ranges of what phone photos of products show.
SCALE_RANGE = (0.15, 0.9)  # product's longer side, as a fraction of the photo's shorter side
MAX_ROTATION = 20.0  # degrees
MAX_TILT = 0.1  # perspective: corners move inwards by up to this fraction of the side
COLOUR_CAST = 0.1  # per-channel gain of a white-balance error
UNEVEN_LIGHT = 0.6  # brightness change across the photo
MAX_NOISE = 6.0  # sensor noise, standard deviation in 0-255 levels
JPEG_QUALITY = (50, 95)


@dataclass(frozen=True)
class SyntheticView:
    """A composed photo, the pasted product's box and its mask (H x W, bool)."""

    image: Image.Image
    box: list[int]
    mask: np.ndarray


@lru_cache(maxsize=1)
def generic_photos() -> tuple[Image.Image, ...]:
    """The shipped generic photos (real scenes, none of them a product), decoded once."""
    photos = []
    for entry in sorted(resources.files("snapshop.models").joinpath("generic_images").iterdir()):
        if entry.name.endswith(".jpg"):
            with Image.open(io.BytesIO(entry.read_bytes())) as opened:
                photos.append(opened.convert("RGB"))
    return tuple(photos)


def object_alpha(image: Image.Image) -> np.ndarray:
    """Opacity 0-1 of the product in a clean shot: how far each pixel is from the plain background.

    A photo that is not a clean shot (see `is_clean_shot`) counts as one opaque rectangle.
    """
    pixels = np.asarray(image, np.float32)
    if not is_clean_shot(pixels):
        return np.ones(pixels.shape[:2], np.float32)
    distance = np.abs(pixels - _border_colour(pixels)).max(axis=2)
    return np.clip((distance - WHITE_TOLERANCE / 2) / WHITE_TOLERANCE, 0.0, 1.0)


def is_clean_shot(image: Image.Image | np.ndarray) -> bool:
    """A product on a plain backdrop: most of the photo's border is one flat colour (a studio
    background, not a scene), and the product covers some but not all of the photo, with
    backdrop beyond it on some side. What stands out of a flat border all across the frame
    is a scene's texture (stars on a night sky, mortar lines between bricks): 7% of 1,000
    SIMULATED shopper photos were taken for clean shots, boxed as a whole, before this."""
    pixels = np.asarray(image, np.float32)
    border = _border(pixels)
    if (np.abs(border - np.median(border, axis=0)).max(axis=1) <= PLAIN_TOLERANCE).mean() < PLAIN_BORDER:
        return False
    covered = np.abs(pixels - _border_colour(pixels)).max(axis=2) > WHITE_TOLERANCE
    spans_frame = covered.any(axis=1).mean() >= FILLS_FRAME and covered.any(axis=0).mean() >= FILLS_FRAME
    return 0.02 < covered.mean() < 0.9 and not spans_frame


def product_box(image: Image.Image) -> list[int] | None:
    """The product's box in a clean shot [x0, y0, x1, y1]; None when the photo is not one.

    A backdrop inside a backdrop (a catalog print lying on a table) is peeled off too.
    """
    box = None
    for _ in range(MAX_BACKDROPS):
        opaque = object_alpha(image) > 0.5
        if opaque.all():
            break
        rows, cols = np.flatnonzero(opaque.any(axis=1)), np.flatnonzero(opaque.any(axis=0))
        inner = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        box = inner if box is None else [box[0] + inner[0], box[1] + inner[1], box[0] + inner[2], box[1] + inner[3]]
        image = image.crop(inner)
    return box


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])


def _border_colour(pixels: np.ndarray) -> np.ndarray:
    return np.median(_border(pixels), axis=0)


def synthetic_view(image: Image.Image, background: Image.Image, rng: np.random.Generator, *,
                   cutout: tuple[Image.Image, Image.Image] | None = None) -> SyntheticView:
    """One view: the product cut out, re-lit, turned, tilted, scaled and pasted on a random crop of
    `background`, then photographed (uneven light, sensor noise, blur, JPEG). `cutout`:
    `cut_out(image)` made once for several views of the image."""
    colour, alpha = cutout if cutout is not None else cut_out(image)
    layer = Image.merge("RGBA", (*_relight(colour, rng).split(), alpha)).convert("RGBa")  # premultiplied
    layer = layer.rotate(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), Image.BILINEAR, expand=True)
    layer = _tilt(layer, rng)
    width, height = (VIEW_SIDE, int(VIEW_SIDE * 0.75)) if rng.random() < 0.5 else (int(VIEW_SIDE * 0.75), VIEW_SIDE)
    scale = rng.uniform(*SCALE_RANGE) * min(width, height) / max(layer.size)
    size = (max(8, int(layer.width * scale)), max(8, int(layer.height * scale)))
    layer = layer.resize(size, Image.BILINEAR).convert("RGBA")
    alpha = layer.getchannel("A")
    scene = _scene_crop(background, (width, height), rng)
    left, top = int(rng.integers(0, width - size[0] + 1)), int(rng.integers(0, height - size[1] + 1))
    if rng.random() < 0.5:  # a soft shadow under the product
        shadow = alpha.filter(ImageFilter.GaussianBlur(max(1.0, size[0] / 20))).point(lambda v: int(v * 0.4))
        shift = [int(rng.integers(-side // 16, side // 16 + 1)) for side in size]
        scene.paste((0, 0, 0), (left + shift[0], top + shift[1]), shadow)
    scene.paste(layer, (left, top), alpha)
    mask = np.zeros((height, width), bool)
    mask[top : top + size[1], left : left + size[0]] = np.asarray(alpha) > 127
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1] if len(rows) else [0, 0, width, height]
    return SyntheticView(_photograph(scene, rng), box, mask)


def cut_out(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The product's own colour (the plain background taken out of its soft edges) and its alpha.

    A clean shot is `alpha * product + (1 - alpha) * background`. Near the product's outline
    alpha is how far a pixel is from the background relative to the product pixels next to
    it (a fringe pixel halfway to the product is half opaque); solving for the product's
    colour then keeps a halo of the old background from travelling into the new scene.
    """
    pixels = np.asarray(image, np.float32)
    alpha = object_alpha(image)
    if alpha.min() == 1.0:
        return image, Image.new("L", image.size, 255)
    background = _border_colour(pixels)
    distance = np.abs(pixels - background).max(axis=2)
    reach = max(2, round(EDGE_WIDTH * max(image.size)))
    inside = ndimage.binary_erosion(alpha > 0.5, iterations=reach)
    relative = distance / np.maximum(ndimage.maximum_filter(distance, size=2 * reach + 1), 1.0)
    alpha = np.where(inside, 1.0, np.minimum(alpha, relative))
    weight = np.maximum(alpha, 0.05)[..., None]
    colour = np.clip((pixels - (1 - weight) * background) / weight, 0, 255)
    return Image.fromarray(colour.astype(np.uint8)), Image.fromarray((alpha * 255).astype(np.uint8))


def jitter_box(box: list[int], size: tuple[int, int], rng: np.random.Generator, amount: float = 0.1) -> list[int]:
    """The box with each side moved by up to `amount` of its width / height, inside the image."""
    x0, y0, x1, y1 = box
    dx, dy = amount * (x1 - x0), amount * (y1 - y0)
    moved = np.array([x0, y0, x1, y1]) + rng.uniform(-1, 1, 4) * [dx, dy, dx, dy]
    x0, x1 = np.clip(sorted(moved[[0, 2]]), 0, size[0])
    y0, y1 = np.clip(sorted(moved[[1, 3]]), 0, size[1])
    return [int(x0), int(y0), int(max(x1, x0 + 4)), int(max(y1, y0 + 4))]


def _relight(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation and a colour cast (white balance) of another light."""
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.25)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.75, 1.25)))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.7, 1.3)))
    cast = rng.uniform(1 - COLOUR_CAST, 1 + COLOUR_CAST, 3)
    return Image.fromarray(np.clip(np.asarray(image, np.float32) * cast, 0, 255).astype(np.uint8))


def _tilt(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A mild keystone, as from a camera not square to the product: the frame's corners reach
    out by up to `MAX_TILT` of the side, so the product's corners move in by about as much."""
    width, height = layer.size
    out = rng.uniform(0, MAX_TILT, (4, 2)) * [width, height]
    quad = [-out[0, 0], -out[0, 1], -out[1, 0], height + out[1, 1],  # upper left, lower left,
            width + out[2, 0], height + out[2, 1], width + out[3, 0], -out[3, 1]]  # lower right, upper right
    layer = layer.transform(layer.size, Image.QUAD, [float(v) for v in quad], Image.BILINEAR)
    return layer.crop(layer.getchannel(3).getbbox() or (0, 0, width, height))


def _photograph(scene: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What a phone camera adds: uneven light, sensor noise, sometimes blur, JPEG compression."""
    pixels = np.asarray(scene, np.float32)
    height, width = pixels.shape[:2]
    direction = rng.uniform(0, 2 * np.pi)
    ramp = ((np.arange(width) - width / 2) * np.cos(direction))[None, :] + \
        ((np.arange(height) - height / 2) * np.sin(direction))[:, None]
    pixels = pixels * (1 + rng.uniform(0, UNEVEN_LIGHT) * ramp / np.hypot(width, height))[..., None]
    pixels += rng.normal(0, rng.uniform(0, MAX_NOISE), pixels.shape)
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        photo = photo.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    encoded = io.BytesIO()
    photo.save(encoded, "JPEG", quality=int(rng.integers(*JPEG_QUALITY)))
    with Image.open(encoded) as decoded:
        return decoded.convert("RGB")


def _scene_crop(photo: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    width, height = size
    scale = min(photo.width / width, photo.height / height) * float(rng.uniform(0.5, 1.0))
    crop_w, crop_h = int(width * scale), int(height * scale)
    left = int(rng.integers(0, photo.width - crop_w + 1))
    top = int(rng.integers(0, photo.height - crop_h + 1))
    scene = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.BILINEAR)
    return scene.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else scene
