"""Dominant colours of the product: inside its box, without the backdrop.

Pixels of the box that match the photo's backdrop (the median colour of its border, when the
border is plain) are left out; in a scene, the outer ring of the box is left out instead. The rest
is clustered (k-means in CIELAB) and each cluster is named after the nearest basic colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.optimize import linprog
from skimage.color import lab2rgb, rgb2lab

from snapshop.errors import SnapshopError

BASIC_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "grey": (128, 128, 128), "white": (245, 245, 245), "red": (200, 30, 35),
    "orange": (235, 125, 30), "yellow": (235, 205, 45), "green": (45, 135, 60), "teal": (25, 130, 130),
    "blue": (45, 95, 195), "navy": (30, 40, 90), "purple": (115, 55, 155), "pink": (235, 125, 165),
    "brown": (115, 70, 35), "beige": (215, 195, 160), "light blue": (115, 170, 225), "olive": (110, 115, 45),
}
CLUSTERS = 3
SAMPLE_SIDE = 64
BACKDROP_DISTANCE = 12.0  # CIELAB distance within which a pixel is taken for the backdrop
PLAIN_BORDER_SPREAD = 6.0  # a border whose colours vary less than this (CIELAB) is a plain backdrop
MIN_SHARE = 0.1
_NAMES = list(BASIC_COLOURS)
_NAMED_LAB = rgb2lab(np.array([list(BASIC_COLOURS.values())], np.float64) / 255.0)[0]


@dataclass(frozen=True)
class Colour:
    """One dominant colour: basic-colour name, mean RGB of its pixels, share of the product."""

    name: str
    rgb: tuple[int, int, int]
    share: float

    def to_json(self) -> dict:
        return {"name": self.name, "hex": "#%02x%02x%02x" % self.rgb, "share": round(self.share, 3)}


def check_colour(name: str) -> str:
    """A basic colour name, lower-cased; an unknown one is a SnapshopError listing the known."""
    if name.lower() not in BASIC_COLOURS:
        raise SnapshopError(f"unknown colour {name!r}; known colours: {', '.join(_NAMES)}")
    return name.lower()


def dominant_colours(image: Image.Image, box: list[int] | None = None) -> list[Colour]:
    """The product's dominant colours, largest share first (same-named clusters merged)."""
    x0, y0, x1, y1 = box or [0, 0, image.width, image.height]
    lab = _lab(image.crop((x0, y0, x1, y1)))
    backdrop = _backdrop(_lab(image))
    if backdrop is not None:
        product = lab[np.linalg.norm(lab - backdrop, axis=2) > BACKDROP_DISTANCE]
    else:  # a scene: keep the middle of the box, where the product is
        h, w = lab.shape[:2]
        product = lab[h // 6 : h - h // 6, w // 6 : w - w // 6].reshape(-1, 3)
    if len(product) < CLUSTERS:
        product = lab.reshape(-1, 3)
    centres, labels = _kmeans(product, CLUSTERS)
    shares = np.bincount(labels, minlength=CLUSTERS) / len(product)
    merged: dict[str, list] = {}
    for centre, share in zip(centres, shares):
        if share == 0:
            continue
        name = _NAMES[int(np.argmin(np.linalg.norm(_NAMED_LAB - centre, axis=1)))]
        entry = merged.setdefault(name, [np.zeros(3), 0.0])
        entry[0] += centre * share
        entry[1] += share
    colours = [Colour(name, _rgb(centre / share), float(share)) for name, (centre, share) in merged.items()
               if share >= MIN_SHARE]
    return sorted(colours, key=lambda c: -c.share)


def colour_overlap(a: list[dict], b: list[dict]) -> float:
    """0-1: the share of colour two products have in common (intersection of their named shares)."""
    shares_b = {c["name"]: c["share"] for c in b}
    return float(sum(min(c["share"], shares_b.get(c["name"], 0.0)) for c in a))


def colour_distance(a: list[dict], b: list[dict]) -> float:
    """How far apart two products' colours are: the earth mover's distance between their
    dominant colours (CIELAB, shares as mass), i.e. the average colour difference (CIE76 ΔE)
    of the cheapest way to repaint one into the other. A re-encoded or re-balanced copy moves
    its colours by a few units; the same model in another colour, by 20 and more."""
    if not a or not b:
        return float("inf")
    lab_a, lab_b = _signature_lab(a), _signature_lab(b)
    mass_a = np.array([c["share"] for c in a], np.float64)
    mass_b = np.array([c["share"] for c in b], np.float64)
    mass_a, mass_b = mass_a / mass_a.sum(), mass_b / mass_b.sum()
    cost = np.linalg.norm(lab_a[:, None] - lab_b[None], axis=2)
    rows, columns = cost.shape
    moved_from = np.kron(np.eye(rows), np.ones(columns))  # mass leaving each colour of a
    moved_to = np.kron(np.ones(rows), np.eye(columns))  # mass reaching each colour of b
    plan = linprog(cost.ravel(), A_eq=np.vstack([moved_from, moved_to]), b_eq=np.concatenate([mass_a, mass_b]),
                   bounds=(0, None), method="highs")
    return float(plan.fun)


def _signature_lab(colours: list[dict]) -> np.ndarray:
    rgb = np.array([[int(c["hex"][i : i + 2], 16) for i in (1, 3, 5)] for c in colours], np.float64) / 255.0
    return rgb2lab(rgb[None])[0]


def has_colour(colours: list[dict], name: str, *, min_share: float = 0.25) -> bool:
    return any(c["name"] == name and c["share"] >= min_share for c in colours)


def _kmeans(points: np.ndarray, k: int, iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means started from the lightness quantiles (deterministic, no restarts)."""
    order = np.argsort(points[:, 0])
    centres = points[order[((np.arange(k) + 0.5) / k * len(points)).astype(int)]].copy()
    for _ in range(iterations):
        labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        for cluster in range(k):
            members = points[labels == cluster]
            if len(members):
                centres[cluster] = members.mean(axis=0)
    return centres, labels


def _lab(image: Image.Image) -> np.ndarray:
    scale = min(1.0, SAMPLE_SIDE / max(image.size))
    small = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                        Image.Resampling.BILINEAR)
    return rgb2lab(np.asarray(small, np.float64) / 255.0)


def _backdrop(lab: np.ndarray) -> np.ndarray | None:
    """The backdrop colour when the photo's border is plain, else None."""
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    centre = np.median(border, axis=0)
    spread = np.median(np.linalg.norm(border - centre, axis=1))
    return centre if spread <= PLAIN_BORDER_SPREAD else None


def _rgb(lab: np.ndarray) -> tuple[int, int, int]:
    rgb = np.clip(lab2rgb(lab[None, None, :])[0, 0] * 255.0, 0, 255)
    return tuple(int(round(v)) for v in rgb)
