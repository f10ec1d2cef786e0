"""Object localization without box labels, from the backbone's own activations.

Selective Convolutional Descriptor Aggregation (Wei et al., 2017): summing a feature map
over channels gives an activation map whose above-mean region covers the objects. Each
connected region is a box; the one with the most activation is the main object.
The threshold sits half a standard deviation above SCDA's mean, which keeps the cells that
the object's edges light up out of its box.

Once an index has seen synthetic views of its catalog, a fitted model of P(product) per cell
replaces the channel sum (`CellObjectness`): a small convolutional net over each cell and its
neighbours (`ContextObjectness`), or Fisher's discriminant per cell (`ObjectnessModel`, what
clicks teach the box with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

UPSAMPLE = 4
MIN_AREA_FRACTION = 0.01
THRESHOLD_STD = 0.5  # SCDA keeps cells above the mean; half a deviation more stops edge spill-over
CANDIDATE_CUTOFFS = (0.3, 0.15)  # fainter regions that may hold the main product (`CellObjectness.boxes_and_candidates`)
PER_CUTOFF = 3
SAME_BOX_IOU = 0.9


@dataclass(frozen=True)
class Box:
    """A box in image pixels, `score` in 0-1 (peak activation relative to the image's peak)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)


def find_boxes(
    feature_map: np.ndarray, image_size: tuple[int, int], *, threshold: float = 0.5, max_boxes: int = 5
) -> list[Box]:
    """SCDA boxes of the objects in one image (main object first) from its C x h x w feature map.

    Always returns at least one box: the whole image when nothing stands out.
    """
    activation = upsample(feature_map.sum(axis=0))
    peak = activation.max()
    if peak <= 0 or np.ptp(activation) < 1e-6 * peak:
        return [Box(0, 0, *image_size, 0.0)]
    activation /= peak
    cutoff = activation.mean() + THRESHOLD_STD * activation.std()
    return boxes_from_map(activation, image_size, cutoff=cutoff, threshold=threshold, max_boxes=max_boxes)


def boxes_from_map(
    activation: np.ndarray, image_size: tuple[int, int], *, cutoff: float, threshold: float, max_boxes: int = 5
) -> list[Box]:
    """Boxes of the connected regions of a 0-1 map above `cutoff`; the one with most mass first.

    A box's score is its region's peak value; boxes other than the main one need `threshold`.
    """
    width, height = image_size
    regions, count = ndimage.label(activation > cutoff)
    index = np.arange(1, count + 1)
    masses = ndimage.sum_labels(activation, regions, index)
    peaks = ndimage.maximum(activation, regions, index)
    slices = ndimage.find_objects(regions)
    grid_h, grid_w = activation.shape
    boxes: list[tuple[float, Box]] = []
    for mass, region_peak, (rows, cols) in zip(masses, peaks, slices):
        if (rows.stop - rows.start) * (cols.stop - cols.start) < MIN_AREA_FRACTION * grid_h * grid_w:
            continue
        boxes.append((float(mass), _to_pixels(rows, cols, grid_h, grid_w, width, height, float(region_peak))))
    if not boxes:
        return [Box(0, 0, width, height, 0.0)]
    boxes.sort(key=lambda pair: pair[0], reverse=True)
    main, rest = boxes[0][1], [box for _, box in boxes[1:] if box.score >= threshold]
    return [main] + sorted(rest, key=lambda box: box.score, reverse=True)[: max_boxes - 1]


class CellObjectness:
    """A model of P(product) at each feature-map cell, and the boxes it finds."""

    kind = ""  # what `snapshop stats` calls it
    images_seen = 0  # how many images' maps and masks it was fitted on

    def probability(self, feature_map: np.ndarray) -> np.ndarray:
        """P(product) per cell of one C x h x w map."""
        raise NotImplementedError

    def boxes(self, feature_map: np.ndarray, image_size: tuple[int, int], *, threshold: float = 0.5,
              max_boxes: int = 5) -> list[Box]:
        """Boxes of the products in one image, main product first: the regions where a product
        is more likely than not. Where no cell is (a small or unusual product), the region of
        the cells at least half as likely as the likeliest one, scored below 0.5; a map that
        is flat (no product, or all of one) gives the whole photo. In a run by hand on 1,000
        SIMULATED shopper photos, context model: mean IoU 0.52 with the whole photo there, 0.56
        with the region."""
        return self._located(feature_map, image_size, threshold, max_boxes, with_candidates=False)[0]

    def boxes_and_candidates(self, feature_map: np.ndarray, image_size: tuple[int, int], *, threshold: float = 0.5,
                             max_boxes: int = 5) -> tuple[list[Box], list[Box]]:
        """`boxes`, and the candidate boxes for the main product, the main box first: the regions
        above `boxes`' cut-off and above each of CANDIDATE_CUTOFFS under the peak (a product the
        model is unsure of shows as a fainter region), PER_CUTOFF per cut-off, without
        near-duplicates. Something else must choose among them (`search.engine` asks the
        category network)."""
        return self._located(feature_map, image_size, threshold, max_boxes, with_candidates=True)

    def _located(self, feature_map: np.ndarray, image_size: tuple[int, int], threshold: float, max_boxes: int,
                 *, with_candidates: bool) -> tuple[list[Box], list[Box]]:
        """(boxes, candidates), the candidates only the main box unless `with_candidates`."""
        cells = self.probability(feature_map)
        peak = float(cells.max())
        if peak <= 0 or np.ptp(cells) < 1e-6:
            whole = Box(0, 0, *image_size, round(peak, 4))
            return [whole], [whole]
        probability = np.clip(upsample(cells), 0.0, 1.0)
        cutoff = min(0.5, peak / 2)
        boxes = boxes_from_map(probability, image_size, cutoff=cutoff, threshold=threshold, max_boxes=max_boxes)
        candidates = boxes[:1]
        levels = (cutoff, *(level for level in CANDIDATE_CUTOFFS if level < peak)) if with_candidates else ()
        for level in levels:
            for box in boxes_from_map(probability, image_size, cutoff=level, threshold=0.0, max_boxes=PER_CUTOFF):
                if all(box_iou(box.as_list(), kept.as_list()) < SAME_BOX_IOU for kept in candidates):
                    candidates.append(box)
        return boxes, candidates

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted model as named arrays (`objectness_from_arrays` reads them back)."""
        raise NotImplementedError


class ObjectnessModel(CellObjectness):
    """Product-vs-background at each feature-map cell: Fisher's linear discriminant.

    Fitted on product masks: of synthetic views (`models.fitting` fits it as views come in,
    to box the next ones) or of clicked photos (`learn.boxes`). Statistics are accumulated
    batch by batch (`partial_fit`), then solved (`solve`).
    """

    kind = "Fisher per cell"

    def __init__(self, *, shrinkage: float = 0.1) -> None:
        self.shrinkage = shrinkage
        self._sums: dict[bool, np.ndarray] = {}
        self._counts = {True: 0, False: 0}
        self._scatter: np.ndarray | None = None

    def partial_fit(self, feature_maps: np.ndarray, masks: Sequence[np.ndarray]) -> "ObjectnessModel":
        """Add cells of N x C x h x w maps: object where the mask covers > 60%, background under 5%."""
        self.images_seen += len(feature_maps)
        for feature_map, mask in zip(feature_maps, masks):
            cover = _cell_cover(mask, feature_map.shape[1:])
            cells = feature_map.reshape(feature_map.shape[0], -1).T.astype(np.float64)
            for is_object, chosen in ((True, cover.ravel() > 0.6), (False, cover.ravel() < 0.05)):
                if chosen.any():
                    picked = cells[chosen]
                    self._sums[is_object] = self._sums.get(is_object, 0) + picked.sum(axis=0)
                    self._counts[is_object] += len(picked)
                    self._scatter = (0 if self._scatter is None else self._scatter) + picked.T @ picked
        return self

    @property
    def can_solve(self) -> bool:
        """Whether both object and background cells have been seen."""
        return min(self._counts.values()) > 0

    def solve(self) -> "ObjectnessModel":
        if not self.can_solve:
            raise ValueError("objectness needs both object and background cells")
        means = {label: self._sums[label] / self._counts[label] for label in (True, False)}
        total = self._counts[True] + self._counts[False]
        covariance = self._scatter / total - sum(
            self._counts[label] / total * np.outer(means[label], means[label]) for label in (True, False))
        covariance += self.shrinkage * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        weights = np.linalg.solve(covariance, means[True] - means[False])
        self.coef_ = weights.astype(np.float32)
        self.intercept_ = float(-weights @ (means[True] + means[False]) / 2)
        return self

    def probability(self, feature_map: np.ndarray) -> np.ndarray:
        logits = np.tensordot(self.coef_, feature_map, axes=(0, 0)) + self.intercept_
        return _sigmoid(logits)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": np.array(self.intercept_)}


class ContextObjectness(CellObjectness):
    """Product-vs-background at each cell, read from the cell and its neighbours: a small
    convolutional net (a 1x1 layer, then two 3x3 layers) on the backbone's feature map,
    trained on the product masks of synthetic views.

    A cell alone often cannot tell a product's plain middle from a plain wall; its
    neighbours (an outline, the background around) can. Measured on 1,000 SIMULATED shopper
    photos against Fisher's discriminant fitted on the same 3,000 views: mean IoU 0.563
    against 0.502, misses (IoU < 0.1) 7.7% against 15% (`bench/localization.py`).

    Maps are collected (`partial_fit`) projected on their first PROJECTED principal axes,
    fitted on the first batch, to keep 50 KB a view; `solve` trains the net and folds the
    projection into its first layer.
    """

    kind = "context net"
    PROJECTED = 128
    HIDDEN = 64
    EPOCHS = 8
    MIN_STEPS = 100
    BATCH = 64
    LEARNING_RATE = 2e-3

    def __init__(self, *, max_views: int = 3000, seed: int = 0) -> None:
        self.max_views = max_views
        self.seed = seed
        self._maps: list[np.ndarray] = []
        self._covers: list[np.ndarray] = []
        self._mean: np.ndarray | None = None
        self._axes: np.ndarray | None = None
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []  # (weights out x in x k x k, bias) per layer

    def partial_fit(self, feature_maps: np.ndarray, masks: Sequence[np.ndarray]) -> "ContextObjectness":
        """Keep N x C x h x w maps (projected) and the share of each cell the masks cover, up to `max_views`."""
        room = self.max_views - self.images_seen
        feature_maps, masks = feature_maps[:room], list(masks)[:room]
        if not len(feature_maps):
            return self
        if self._axes is None:
            cells = feature_maps.transpose(0, 2, 3, 1).reshape(-1, feature_maps.shape[1]).astype(np.float64)
            self._mean = cells.mean(axis=0)
            axes = np.linalg.svd(cells - self._mean, full_matrices=False)[2]
            self._axes = axes[: self.PROJECTED].astype(np.float32)
        self._maps.append(self._project(feature_maps).astype(np.float16))
        self.images_seen += len(feature_maps)
        covers = [_cell_cover(mask, feature_maps.shape[2:]) for mask in masks]
        self._covers.append(np.stack(covers).astype(np.float32))
        return self

    @property
    def can_solve(self) -> bool:
        """Whether cells mostly product and cells without any have been seen."""
        covers = self._covers
        return any((c > 0.6).any() for c in covers) and any((c < 0.05).any() for c in covers)

    def solve(self, *, progress: bool = False) -> "ContextObjectness":
        """Train the net on the kept maps (binary cross-entropy on the covered share; mirrored
        maps for half the batches), then drop them."""
        import torch
        from tqdm import tqdm

        if not self.can_solve:
            raise ValueError("objectness needs both object and background cells")
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        maps, covers = np.concatenate(self._maps), torch.from_numpy(np.concatenate(self._covers))
        net = torch.nn.Sequential(torch.nn.Conv2d(maps.shape[1], self.HIDDEN, 1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(self.HIDDEN, self.HIDDEN, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(self.HIDDEN, 1, 3, padding=1))
        batches = -(-len(maps) // self.BATCH)
        steps = max(self.EPOCHS * batches, self.MIN_STEPS)
        optimiser = torch.optim.AdamW(net.parameters(), lr=self.LEARNING_RATE, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=self.LEARNING_RATE, total_steps=steps)
        for step in tqdm(range(steps), desc="objectness", unit="batch", disable=not progress):
            if step % batches == 0:
                order = rng.permutation(len(maps))
            picked = order[step % batches * self.BATCH : (step % batches + 1) * self.BATCH]
            inputs, targets = torch.from_numpy(maps[picked].astype(np.float32)), covers[picked]
            if rng.random() < 0.5:
                inputs, targets = inputs.flip(3), targets.flip(2)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(inputs)[:, 0], targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        convs = [layer for layer in net if isinstance(layer, torch.nn.Conv2d)]
        weights = [(conv.weight.detach().numpy().astype(np.float32), conv.bias.detach().numpy().astype(np.float32))
                   for conv in convs]
        first, bias = weights[0]  # on projected maps: fold the projection in, to read the backbone's maps
        folded = first[:, :, 0, 0] @ self._axes
        self.layers = [(folded[:, :, None, None], bias - folded @ self._mean.astype(np.float32))] + weights[1:]
        self._maps, self._covers = [], []
        return self

    def probability(self, feature_map: np.ndarray) -> np.ndarray:
        x = feature_map.astype(np.float32)
        for number, (weights, bias) in enumerate(self.layers):
            x = _convolve(x, weights) + bias[:, None, None]
            if number < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return _sigmoid(x[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"{kind}{number}": array for number, layer in enumerate(self.layers)
                for kind, array in zip(("weights", "bias"), layer)}

    def _project(self, feature_maps: np.ndarray) -> np.ndarray:
        centred = feature_maps.astype(np.float32) - self._mean.astype(np.float32)[None, :, None, None]
        return np.einsum("pc,nchw->nphw", self._axes, centred, optimize=True)  # through BLAS: 3x faster


def objectness_from_arrays(arrays: dict[str, np.ndarray]) -> CellObjectness:
    """The model `to_arrays` wrote: a context net or a Fisher discriminant."""
    if "weights0" in arrays:
        model = ContextObjectness()
        depth = sum(name.startswith("weights") for name in arrays)
        model.layers = [(arrays[f"weights{n}"], arrays[f"bias{n}"]) for n in range(depth)]
        return model
    fisher = ObjectnessModel()
    fisher.coef_, fisher.intercept_ = arrays["coef"], float(arrays["intercept"])
    return fisher


def _convolve(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A same-size 2-D convolution (cross-correlation, zero padding) of a C x h x w map with
    out x C x k x k weights: one matrix product per kernel offset."""
    k = weights.shape[2]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    height, width = x.shape[1:]
    return sum(np.tensordot(weights[:, :, dy, dx], padded[:, dy : dy + height, dx : dx + width], axes=(1, 0))
               for dy in range(k) for dx in range(k))


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))


def upsample(grid: np.ndarray) -> np.ndarray:
    """A cell map at UPSAMPLE times its resolution (bilinear), for smoother region outlines."""
    return ndimage.zoom(grid.astype(np.float64), UPSAMPLE, order=1, grid_mode=True, mode="nearest")


def _cell_cover(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each feature-map cell that the pixel mask covers."""
    row_starts, row_sizes = _split(mask.shape[0], grid[0])
    col_starts, col_sizes = _split(mask.shape[1], grid[1])
    covered = np.add.reduceat(np.add.reduceat(np.asarray(mask, np.float64), row_starts, axis=0), col_starts, axis=1)
    return covered / np.outer(row_sizes, col_sizes)


def _split(length: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `parts` near-equal runs of `length` starts, and its size (as `np.array_split`)."""
    sizes = np.full(parts, length // parts)
    sizes[: length % parts] += 1
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes


def _to_pixels(rows: slice, cols: slice, grid_h: int, grid_w: int, width: int, height: int, score: float) -> Box:
    x0, x1 = cols.start / grid_w * width, cols.stop / grid_w * width
    y0, y1 = rows.start / grid_h * height, rows.stop / grid_h * height
    return Box(x0=int(x0), y0=int(y0), x1=int(min(width, np.ceil(x1))), y1=int(min(height, np.ceil(y1))),
               score=round(score, 4))


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
