"""A Fashion-MNIST catalog with planted duplicates, colour variants and low-quality twins.

Built on `build_fashion_catalog`, then every planted item is a new row of the manifest:

* **duplicates** (`<id>_dup`): the same product from another seller, its photo re-encoded as a
  poor JPEG, resized, cropped or re-balanced in colour;
* **low-quality twins** (`<id>_lq`): the same product in a poor photo: blurred, dark, tiny, with a
  big text overlay, or on a cluttered background;
* **colour variants** (`<id>_var`): the same model in another colour: *not* a duplicate.

Every row carries `product`, the id of the product it shows (the original's id for duplicates and
twins, its own for variants and originals), and planted rows say what was done in `planted`.
The SIMULATED shopper photos are of original items only, so a query has one true product.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont
from tqdm import tqdm

from snapshop.datasets.fashion import PALETTE, build_fashion_catalog, catalog_photo, load_fashion_mnist, parse_item_id
from snapshop.datasets.photos import list_background_photos, read_jsonl, write_jsonl
from snapshop.datasets.shopper import build_shopper_queries

DUPLICATE_KINDS = ("jpeg", "resized", "cropped", "recoloured")
LOW_QUALITY_KINDS = ("blurred", "dark", "tiny", "text", "cluttered")


def build_planted_catalog(
    out_dir: Path | str, n_items: int = 1000, *, duplicates: float = 0.15, low_quality: float = 0.1,
    variants: float = 0.05, n_queries: int = 200, seed: int = 0,
) -> tuple[Path, Path]:
    """Write the catalog (manifest.jsonl) and simulated shopper queries of its originals; return both paths."""
    out_dir = Path(out_dir)
    manifest = build_fashion_catalog(out_dir, n_items=n_items, seed=seed)
    queries = build_shopper_queries(out_dir, out_dir / "queries", n_queries=n_queries, seed=seed + 1)
    originals = read_jsonl(manifest)
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(originals))
    cuts = np.cumsum([round(duplicates * len(originals)), round(low_quality * len(originals)),
                      round(variants * len(originals))])
    plans = ([("dup", DUPLICATE_KINDS, i) for i in order[: cuts[0]]]
             + [("lq", LOW_QUALITY_KINDS, i) for i in order[cuts[0] : cuts[1]]]
             + [("var", ("variant",), i) for i in order[cuts[1] : cuts[2]]])
    backgrounds = list_background_photos()
    rows = [{**row, "product": row["item_id"]} for row in originals]
    for number, (suffix, kinds, index) in enumerate(tqdm(plans, desc="planting", unit="item")):
        original = originals[int(index)]
        kind = kinds[number % len(kinds)]
        title = original["title"]
        with Image.open(out_dir / original["image"]) as image:
            if kind == "variant":
                colour, planted = _variant(original, rng, image.width)
                title = f"{colour} {original['category']}"
            else:
                planted = _plant(image.convert("RGB"), kind, rng, backgrounds)
        item_id = f"{original['item_id']}_{suffix}"
        name = f"images/{item_id}.{'jpg' if kind == 'jpeg' else 'png'}"
        if kind == "jpeg":
            planted.save(out_dir / name, quality=25)
        else:
            planted.save(out_dir / name)
        rows.append({**original, "item_id": item_id, "image": name, "title": title,
                     "price": round(float(original["price"]) * rng.uniform(0.8, 1.2), 2),
                     "product": item_id if suffix == "var" else original["item_id"], "planted": kind})
    return write_jsonl(manifest, rows), queries


def _plant(image: Image.Image, kind: str, rng: np.random.Generator, backgrounds: list[Path]) -> Image.Image:
    """One planted copy of a catalog photo."""
    side = image.width
    if kind == "jpeg":
        return image
    if kind == "resized":
        scale = rng.choice([0.6, 1.5])
        return image.resize((round(side * scale),) * 2, Image.Resampling.BICUBIC)
    if kind == "cropped":
        margin = int(side * rng.uniform(0.03, 0.08))
        return image.crop((margin, margin, side - margin, side - margin))
    if kind == "recoloured":  # another seller's white balance and saturation
        gains = 1 + rng.uniform(-0.08, 0.08, size=3)
        tinted = np.clip(np.asarray(image, np.float32) * gains, 0, 255).astype(np.uint8)
        return ImageEnhance.Color(Image.fromarray(tinted)).enhance(float(rng.uniform(0.85, 1.15)))
    if kind == "blurred":
        return image.filter(ImageFilter.GaussianBlur(side / 45))
    if kind == "dark":
        return ImageEnhance.Brightness(image).enhance(0.3)
    if kind == "tiny":
        return image.resize((56, 56), Image.Resampling.BILINEAR)
    if kind == "text":
        return _text_overlay(image, rng)
    if kind == "cluttered":
        return _on_background(image, Image.open(backgrounds[int(rng.integers(len(backgrounds)))]).convert("RGB"))
    raise ValueError(f"unknown planted kind {kind!r}")


def _text_overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Big sale text and a watermark line across the photo."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(12, image.width // 7))
    small = ImageFont.load_default(size=max(8, image.width // 14))
    colour = tuple(int(v) for v in rng.integers(0, 80, size=3))
    draw.text((image.width * 0.05, image.height * 0.05), "SALE -50%", fill=colour, font=font)
    draw.text((image.width * 0.05, image.height * 0.8), "www.best-deals.example", fill=(200, 30, 30), font=small)
    return out


def _on_background(image: Image.Image, background: Image.Image) -> Image.Image:
    """The product (everything not near-white) pasted on a photo."""
    pixels = np.asarray(image, np.int16)
    mask = Image.fromarray(((255 - pixels.min(axis=2)) > 12).astype(np.uint8) * 255)
    scene = background.resize(image.size, Image.Resampling.BICUBIC)
    scene.paste(image, (0, 0), mask)
    return scene


def _variant(original: dict, rng: np.random.Generator, side: int) -> tuple[str, Image.Image]:
    """The same Fashion-MNIST model rendered in another palette colour: (colour name, photo)."""
    split, index = parse_item_id(original["item_id"])
    choices = [(name, rgb) for name, rgb in PALETTE if not original["title"].startswith(name)]
    name, rgb = choices[int(rng.integers(len(choices)))]
    return name, Image.fromarray(catalog_photo(load_fashion_mnist(split)[0][index], rgb, side))
