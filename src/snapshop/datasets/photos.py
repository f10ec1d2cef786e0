"""Real photos shipped by installed packages: scikit-image, mvtb-data and opencv-doc."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from snapshop.errors import DatasetError

log = logging.getLogger(__name__)

OPENCV_DOC_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
MIN_BACKGROUNDS = 10

# Scene photos used behind the simulated shopper's product, per source.
_BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "skimage": (
        "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png",
        "hubble_deep_field.jpg", "motorcycle_left.png", "rocket.jpg",
    ),
    "mvtb": (
        "58060.png", "building2-1.png", "castle.png", "church.png", "eiffel-1.png", "flowers1.png", "flowers4.png",
        "flowers6.png", "image3.jpg", "lab-scene.png", "notre-dame.png", "parks.png", "road.png", "rocks2-l.png",
        "roof.png", "street.png", "tags.png", "walls-l.png",
    ),
    "opencv": (
        "aero1.jpg", "board.jpg", "box_in_scene.png", "building.jpg", "fruits.jpg", "home.jpg", "left.jpg",
        "leuvenA.jpg", "messi5.jpg", "squirrel_cls.jpg", "stuff.jpg",
    ),
}


def _package_dir(module: str, sub: str) -> Path | None:
    """The folder `sub` inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if folder.is_dir() else None


def photo_sources() -> dict[str, Path]:
    """The installed photo folders by source name: skimage, mvtb, opencv (missing ones left out)."""
    found = {
        "skimage": _package_dir("skimage", "data"),
        "mvtb": _package_dir("mvtbdata", "images"),
        "opencv": OPENCV_DOC_DATA if OPENCV_DOC_DATA.is_dir() else None,
    }
    return {name: folder for name, folder in found.items() if folder is not None}


def find_photo(source: str, name: str) -> Path | None:
    """One named photo of a source, or None when the source or file is not installed."""
    folder = photo_sources().get(source)
    path = folder / name if folder else None
    return path if path and path.is_file() else None


def list_background_photos() -> list[Path]:
    """Installed real photos usable as shopper-photo backgrounds; DatasetError if fewer than 10."""
    sources = photo_sources()
    photos = [
        sources[source] / name
        for source, names in _BACKGROUNDS.items()
        if source in sources
        for name in names
        if (sources[source] / name).is_file()
    ]
    log.debug("%d background photos from %s", len(photos), sorted(sources))
    if len(photos) < MIN_BACKGROUNDS:
        raise DatasetError(
            f"only {len(photos)} background photos found (need {MIN_BACKGROUNDS}): "
            "install scikit-image and mvtb-data (pip), or opencv-doc (apt)"
        )
    return photos


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line, replacing the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file; DatasetError when it is missing or malformed."""
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
