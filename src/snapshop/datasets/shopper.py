"""Simulated shopper photos: catalog products re-shot in a real scene, with the camera's flaws."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from snapshop.datasets.fashion import load_fashion_mnist, object_alpha, parse_item_id
from snapshop.datasets.photos import list_background_photos, read_jsonl, write_jsonl
from snapshop.errors import DatasetError

log = logging.getLogger(__name__)

BACKGROUND_MAX_SIDE = 1280  # backgrounds are shrunk to this once, when first used
ALPHA_BOX_THRESHOLD = 64  # alpha (0-255) above which a pixel counts for the object's box

_MOTION_KERNELS = {
    "horizontal": np.pad(np.ones((1, 5)), ((2, 2), (0, 0))),
    "vertical": np.pad(np.ones((5, 1)), ((0, 0), (2, 2))),
    "diagonal": np.eye(5),
    "antidiagonal": np.fliplr(np.eye(5)),
}


class _Backgrounds:
    """Background photos, decoded and shrunk on first use."""

    def __init__(self, paths: Sequence[Path]) -> None:
        if not paths:
            raise DatasetError("no background photos given")
        self.paths = [Path(p) for p in paths]
        self._cache: dict[int, Image.Image] = {}

    def get(self, number: int) -> Image.Image:
        if number not in self._cache:
            try:
                with Image.open(self.paths[number]) as image:
                    image.draft("RGB", (BACKGROUND_MAX_SIDE, BACKGROUND_MAX_SIDE))
                    photo = image.convert("RGB")
            except OSError as exc:
                raise DatasetError(f"cannot read background photo {self.paths[number]}: {exc}") from exc
            photo.thumbnail((BACKGROUND_MAX_SIDE, BACKGROUND_MAX_SIDE), Image.Resampling.BILINEAR)
            self._cache[number] = photo
        return self._cache[number]


def _background(photo: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random crop of `photo` with the output's aspect ratio, resized to `size`, maybe mirrored."""
    width, height = photo.size
    aspect = size[0] / size[1]
    full_w, full_h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
    scale = rng.uniform(0.45, 1.0)
    crop_w, crop_h = full_w * scale, full_h * scale
    x0, y0 = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
    crop = photo.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def _object_layer(photo: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The product cut out of its white catalog photo, colour-jittered, as a premultiplied RGBa image."""
    ys, xs = np.nonzero(alpha > 0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = alpha[y0:y1, x0:x1, None]
    # The catalog photo is alpha*object + (1-alpha)*white: undo the white to get the object's own colour.
    obj = np.where(a > 0.05, (photo[y0:y1, x0:x1].astype(np.float32) - (1.0 - a) * 255.0) / np.maximum(a, 0.05), 0)
    hsv = np.asarray(Image.fromarray(np.clip(obj, 0, 255).astype(np.uint8)).convert("HSV"), dtype=np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 256
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    hsv_image = Image.frombytes("HSV", (hsv.shape[1], hsv.shape[0]), np.clip(hsv, 0, 255).astype(np.uint8).tobytes())
    jittered = np.asarray(hsv_image.convert("RGB"), dtype=np.float32)
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-30, 30)
    jittered = (jittered - 128.0) * contrast + 128.0 + brightness
    rgba = np.concatenate([np.clip(jittered, 0, 255) * a, a * 255.0], axis=2)
    layer = np.rint(rgba).astype(np.uint8)
    return Image.frombytes("RGBa", (layer.shape[1], layer.shape[0]), layer.tobytes())


def _perspective_coeffs(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """Pillow PERSPECTIVE coefficients mapping output points `dst` back to input points `src` (4×2 each)."""
    rows = np.zeros((8, 8))
    rows[0::2, 0:2], rows[0::2, 2] = dst, 1
    rows[1::2, 3:5], rows[1::2, 5] = dst, 1
    rows[0::2, 6:8] = -dst * src[:, :1]
    rows[1::2, 6:8] = -dst * src[:, 1:]
    return tuple(np.linalg.solve(rows, src.reshape(-1)).tolist())


def _warp(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by up to ±25° and tilt with a mild perspective warp, cropped to the object."""
    layer = layer.rotate(rng.uniform(-25, 25), Image.Resampling.BICUBIC, expand=True)
    w, h = layer.size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * rng.uniform(0, 0.12, size=(4, 2)) * [w, h]
    coeffs = _perspective_coeffs(corners, corners + inward)
    layer = layer.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    return layer.crop(layer.getchannel(3).getbbox())


@lru_cache(maxsize=2)
def _noise_field(side: int) -> np.ndarray:
    """A fixed side×side×3 field of unit Gaussian sensor noise; photos use random crops of it."""
    return np.random.default_rng(0).standard_normal((side, side, 3), dtype=np.float32)


def _camera(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Uneven light (a brightness gradient in a random direction), sensor noise, then defocus or motion blur."""
    pixels = np.asarray(photo, dtype=np.float32)
    h, w = pixels.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    xs, ys = np.arange(w, dtype=np.float32) - w / 2, np.arange(h, dtype=np.float32)[:, None] - h / 2
    ramp = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
    gain = rng.uniform(0.85, 1.1) + rng.uniform(0.1, 0.45) * ramp / np.hypot(w, h)
    pixels -= 128.0
    pixels *= rng.uniform(0.8, 1.1)
    pixels += 128.0
    pixels *= gain[..., None]
    noise = _noise_field(max(h, w) + 64)
    y, x = (int(v) for v in rng.integers(0, 65, size=2))
    pixels += noise[y : y + h, x : x + w] * np.float32(rng.uniform(1.0, 7.0))
    image = Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))
    if rng.random() < 0.25:
        kernel = _MOTION_KERNELS[str(rng.choice(list(_MOTION_KERNELS)))]
        return image.filter(ImageFilter.Kernel((5, 5), kernel.ravel().tolist(), scale=float(kernel.sum())))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.6)))


def shopper_photo(
    catalog_photo: np.ndarray, alpha: np.ndarray, background: Image.Image, rng: np.random.Generator,
    size: tuple[int, int] = (640, 480),
) -> tuple[Image.Image, list[int]]:
    """One simulated shopper photo of a product (catalog photo + object mask) and the product's box.

    `size` is the landscape (width, height); half the photos are portrait. The photo is returned before
    JPEG encoding; the box is [x0, y0, x1, y1] in its pixels.
    """
    size = size if rng.random() < 0.5 else (size[1], size[0])
    scene = _background(background, size, rng)
    layer = _warp(_object_layer(catalog_photo, alpha, rng), rng)
    target = rng.uniform(0.2, 0.7) * min(size) / max(layer.size)
    layer = layer.resize((max(1, round(layer.width * target)), max(1, round(layer.height * target))),
                         Image.Resampling.BICUBIC).convert("RGBA")
    x, y = int(rng.integers(0, size[0] - layer.width + 1)), int(rng.integers(0, size[1] - layer.height + 1))
    if rng.random() < 0.6:  # soft contact shadow
        shadow = layer.getchannel("A").filter(ImageFilter.GaussianBlur(max(2.0, layer.width / 25)))
        shadow = shadow.point(lambda v: int(v * 0.45))
        dx, dy = (int(v) for v in rng.integers(-layer.width // 20, layer.width // 20 + 1, size=2))
        scene.paste((0, 0, 0), (x + dx, y + dy), shadow)
    scene.paste(layer, (x, y), layer)
    solid = layer.getchannel("A").point(lambda v: 255 if v > ALPHA_BOX_THRESHOLD else 0)
    left, top, right, bottom = solid.getbbox()
    return _camera(scene, rng), [x + left, y + top, x + right, y + bottom]


def _catalog_items(catalog_dir: Path) -> list[dict]:
    rows = read_jsonl(catalog_dir / "manifest.jsonl")
    if not rows:
        raise DatasetError(f"{catalog_dir / 'manifest.jsonl'}: no items")
    return rows


def build_shopper_queries(
    catalog_dir: Path | str, out_dir: Path | str, n_queries: int = 500, seed: int = 1,
    size: tuple[int, int] = (640, 480), backgrounds: Sequence[Path] | None = None,
) -> Path:
    """Simulated shopper photos of items of a Fashion-MNIST catalog; return out_dir/queries.jsonl.

    Query n (item, scene, distortions) depends only on (seed, n), so a longer run extends a shorter one.
    `size` is the landscape (width, height); about half the photos are portrait (height, width).
    `backgrounds` replaces the installed background photos (see list_background_photos).
    """
    catalog_dir, out_dir = Path(catalog_dir), Path(out_dir)
    items = _catalog_items(catalog_dir)
    scenes = _Backgrounds(list_background_photos() if backgrounds is None else backgrounds)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for number in tqdm(range(1, n_queries + 1), desc="shopper photos", unit="photo"):
        rng = np.random.default_rng([seed, number])
        item = items[int(rng.integers(len(items)))]
        split, index = parse_item_id(item["item_id"])
        try:
            with Image.open(catalog_dir / item["image"]) as image:
                photo = np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise DatasetError(f"cannot read catalog image {catalog_dir / item['image']}: {exc}") from exc
        alpha = object_alpha(load_fashion_mnist(split)[0][index], photo.shape[0])
        shot, box = shopper_photo(photo, alpha, scenes.get(int(rng.integers(len(scenes.paths)))), rng, size)
        name = f"images/q_{number:05d}.jpg"
        shot.save(out_dir / name, quality=int(rng.integers(40, 91)))
        rows.append({"image": name, "item_id": item["item_id"], "category": item.get("category"),
                     "box": box, "simulated": True})
    log.info("wrote %d simulated shopper photos to %s", len(rows), out_dir)
    return write_jsonl(out_dir / "queries.jsonl", rows)
