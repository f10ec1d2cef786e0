"""A small real multi-view set: installed photos of the same object or scene from different views."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageOps
from tqdm import tqdm

from snapshop.datasets.photos import find_photo, write_jsonl
from snapshop.errors import DatasetError

log = logging.getLogger(__name__)

MAX_SIDE = 640
MIN_GROUPS = 8

# group name -> (title, [(source, file), ...]); the first photo is the catalog image, the rest are queries.
MULTIVIEW_GROUPS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "box": ("Cookie box", [("opencv", "box.png"), ("opencv", "box_in_scene.png")]),
    "suzanne": ("Blender Suzanne figure", [("opencv", "Blender_Suzanne1.jpg"), ("opencv", "Blender_Suzanne2.jpg")]),
    "graffiti": ("Graffiti wall", [("opencv", "graf1.png"), ("opencv", "graf3.png")]),
    "aloe": ("Aloe plant in a pot", [("opencv", "aloeL.jpg"), ("opencv", "aloeR.jpg")]),
    "leuven": ("Leuven street", [("opencv", "leuvenA.jpg"), ("opencv", "leuvenB.jpg")]),
    "aerial": ("Aerial view of a town", [("opencv", "aero1.jpg"), ("opencv", "aero3.jpg")]),
    "basketball": ("Basketball players", [("opencv", "basketball1.png"), ("opencv", "basketball2.png")]),
    "rubberwhale": ("Rubber whale toys", [("opencv", "rubberwhale1.png"), ("opencv", "rubberwhale2.png")]),
    "books": ("Electronics books", [("opencv", "left.jpg"), ("opencv", "right.jpg")]),
    "motorcycle": ("Red motorcycle", [("skimage", "motorcycle_left.png"), ("skimage", "motorcycle_right.png")]),
    "building2": ("Apartment building", [("mvtb", "building2-1.png"), ("mvtb", "building2-2.png"),
                                          ("mvtb", "building2-3.png")]),
    "eiffel": ("Eiffel tower", [("mvtb", "eiffel-1.png"), ("mvtb", "eiffel-2.png")]),
    "rocks": ("Pile of rocks", [("mvtb", "rocks2-l.png"), ("mvtb", "rocks2-r.png")]),
    "walls": ("Brick house corner", [("mvtb", "walls-l.png"), ("mvtb", "walls-r.png")]),
    "castle_sign": ("Castle information sign", [("mvtb", "castle.png"), ("mvtb", "castle2.png")]),
}

# Single photos of other things, added to the catalog as distractors: item id -> (title, source, file).
DISTRACTORS: dict[str, tuple[str, str, str]] = {
    "astronaut": ("Astronaut portrait", "skimage", "astronaut.png"),
    "cat": ("Tabby cat", "skimage", "chelsea.png"),
    "coffee": ("Cup of coffee", "skimage", "coffee.png"),
    "rocket": ("Rocket on the launch pad", "skimage", "rocket.jpg"),
    "cameraman": ("Cameraman", "skimage", "camera.png"),
    "galaxies": ("Deep field galaxies", "skimage", "hubble_deep_field.jpg"),
    "apple": ("Red apple", "opencv", "apple.jpg"),
    "orange": ("Orange", "opencv", "orange.jpg"),
    "fruits": ("Sliced fruits", "opencv", "fruits.jpg"),
    "baboon": ("Mandrill face", "opencv", "baboon.jpg"),
    "football": ("Football player", "opencv", "messi5.jpg"),
    "palace": ("Palace tower", "opencv", "home.jpg"),
    "hotel": ("Hotel building", "opencv", "building.jpg"),
    "squirrel": ("Squirrel on a branch", "opencv", "squirrel_cls.jpg"),
    "butterfly": ("Butterfly on a leaf", "opencv", "butterfly.jpg"),
    "street": ("City street", "mvtb", "street.png"),
    "road": ("Empty country road", "mvtb", "road.png"),
    "park": ("Park path", "mvtb", "parks.png"),
    "lab": ("Robot lab", "mvtb", "lab-scene.png"),
    "notre_dame": ("Notre-Dame facade", "mvtb", "notre-dame.png"),
    "church": ("White church", "mvtb", "church.png"),
    "market": ("Market street", "mvtb", "image3.jpg"),
    "grain": ("Basket of grain", "mvtb", "58060.png"),
}


def _copy(src: Path, dst: Path) -> None:
    """Save `src` as an RGB JPEG at `dst`, longest side at most 640."""
    try:
        with Image.open(src) as image:
            photo = ImageOps.exif_transpose(image).convert("RGB")
    except OSError as exc:
        raise DatasetError(f"cannot read {src}: {exc}") from exc
    photo.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    photo.save(dst, quality=90)


def build_real_multiview(out_dir: Path | str) -> tuple[Path, Path]:
    """Build a real multi-view catalog and query set in out_dir; return (catalog manifest, queries.jsonl).

    Layout: catalog/manifest.jsonl + catalog/images/*.jpg, queries.jsonl + queries/images/*.jpg.
    """
    out_dir = Path(out_dir)
    groups = {}
    for name, (title, members) in MULTIVIEW_GROUPS.items():
        paths = [find_photo(source, file) for source, file in members]
        if any(path is None for path in paths):
            log.warning("multiview group %s skipped: %s not installed", name,
                        ", ".join(file for (_, file), path in zip(members, paths) if path is None))
            continue
        groups[name] = (title, paths)
    if len(groups) < MIN_GROUPS:
        raise DatasetError(
            f"only {len(groups)} multi-view groups found (need {MIN_GROUPS}): "
            "install scikit-image and mvtb-data (pip) and opencv-doc (apt)"
        )
    jobs = [(name, title, paths[0]) for name, (title, paths) in groups.items()]
    jobs += [(name, title, find_photo(source, file)) for name, (title, source, file) in DISTRACTORS.items()]
    jobs = [job for job in jobs if job[2] is not None]
    catalog, queries = [], []
    for name, title, path in tqdm(jobs, desc="multiview catalog", unit="photo"):
        _copy(path, out_dir / "catalog" / "images" / f"{name}.jpg")
        catalog.append({"item_id": name, "image": f"images/{name}.jpg", "title": title})
    for name, (_, paths) in tqdm(groups.items(), desc="multiview queries", unit="group"):
        for view, path in enumerate(paths[1:], start=1):
            image = f"queries/images/{name}_{view}.jpg"
            _copy(path, out_dir / image)
            queries.append({"image": image, "item_id": name})
    log.info("multiview: %d groups, %d catalog photos, %d queries", len(groups), len(catalog), len(queries))
    manifest = write_jsonl(out_dir / "catalog" / "manifest.jsonl", catalog)
    return manifest, write_jsonl(out_dir / "queries.jsonl", queries)
