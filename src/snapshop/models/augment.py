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

VIEW_SIDE = 320
WHITE_TOLERANCE = 24


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
    """Opacity 0-1 of the product in a clean shot: how far each pixel is from the light background.

    A photo that is not a clean shot (almost nothing or almost everything differs from
    the background) counts as one opaque rectangle.
    """
    pixels = np.asarray(image, np.float32)
    background = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0)
    distance = np.abs(pixels - background).max(axis=2)
    alpha = np.clip((distance - WHITE_TOLERANCE / 2) / WHITE_TOLERANCE, 0.0, 1.0)
    covered = (alpha > 0.5).mean()
    return alpha if 0.02 < covered < 0.9 else np.ones_like(alpha)


def synthetic_view(image: Image.Image, background: Image.Image, rng: np.random.Generator) -> SyntheticView:
    """One view: the product re-lit, scaled, rotated and pasted on a random crop of `background`."""
    alpha = Image.fromarray((object_alpha(image) * 255).astype(np.uint8))
    product = _relight(image, rng)
    angle = float(rng.uniform(-20, 20))
    product = product.rotate(angle, Image.BILINEAR, expand=True, fillcolor=(255, 255, 255))
    alpha = alpha.rotate(angle, Image.BILINEAR, expand=True)
    width, height = (VIEW_SIDE, int(VIEW_SIDE * 0.75)) if rng.random() < 0.5 else (int(VIEW_SIDE * 0.75), VIEW_SIDE)
    scale = rng.uniform(0.3, 0.85) * min(width, height) / max(product.size)
    size = (max(8, int(product.width * scale)), max(8, int(product.height * scale)))
    product, alpha = product.resize(size, Image.BILINEAR), alpha.resize(size, Image.BILINEAR)
    scene = _scene_crop(background, (width, height), rng)
    left, top = int(rng.integers(0, width - size[0] + 1)), int(rng.integers(0, height - size[1] + 1))
    scene.paste(product, (left, top), alpha)
    if rng.random() < 0.5:
        scene = scene.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    mask = np.zeros((height, width), bool)
    mask[top : top + size[1], left : left + size[0]] = np.asarray(alpha) > 127
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1] if len(rows) else [0, 0, width, height]
    return SyntheticView(scene, box, mask)


def jitter_box(box: list[int], size: tuple[int, int], rng: np.random.Generator, amount: float = 0.1) -> list[int]:
    """The box with each side moved by up to `amount` of its width / height, inside the image."""
    x0, y0, x1, y1 = box
    dx, dy = amount * (x1 - x0), amount * (y1 - y0)
    moved = np.array([x0, y0, x1, y1]) + rng.uniform(-1, 1, 4) * [dx, dy, dx, dy]
    x0, x1 = np.clip(sorted(moved[[0, 2]]), 0, size[0])
    y0, y1 = np.clip(sorted(moved[[1, 3]]), 0, size[1])
    return [int(x0), int(y0), int(max(x1, x0 + 4)), int(max(y1, y0 + 4))]


def _relight(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.25)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.75, 1.25)))
    return ImageEnhance.Color(image).enhance(float(rng.uniform(0.7, 1.3)))


def _scene_crop(photo: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    width, height = size
    scale = min(photo.width / width, photo.height / height) * float(rng.uniform(0.5, 1.0))
    crop_w, crop_h = int(width * scale), int(height * scale)
    left = int(rng.integers(0, photo.width - crop_w + 1))
    top = int(rng.integers(0, photo.height - crop_h + 1))
    scene = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.BILINEAR)
    return scene.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else scene
