"""The joint localization and embedding head (Pailitao's model), trained from clicks.

On the backbone's feature map of a crop (C x h x w), a localization branch scores every
cell (a 1x1 convolution); the softmax of the scores is a distribution over where the
product is, and the product's box is its mean plus and minus `spread` standard deviations.
The top of the backbone is fine-tuned too: a residual bottleneck of 1x1 convolutions
(`CellRefiner`) re-describes every cell of the map. A soft, differentiable mask built from
the box (a product of four sigmoids) weights the refined cells in a masked GeM pooling; a
linear layer projects the pooled vector to the L2-normalised embedding. The loss on the
embedding is the only training signal: the box is learned through the mask, with no box
labels. Catalog shots (clean products on a backdrop) are embedded over their whole product
instead (`embed_product`), so a query's box is pulled towards what matches a whole product.

The head starts as the foundation's model: the linear layer is the fitted projection, the
refiner adds nothing (its last layer is zero) and the box covers the product's crop, so
training begins from the current search quality.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from snapshop.models.encoder import PRODUCT_MARGIN

GEM_P = 3.0
MASK_SHARPNESS = 0.04  # sigmoid temperature of the mask edges, in units of the crop's side
INITIAL_HALF_SIDE = 0.5 - PRODUCT_MARGIN  # the box of an untrained head: the crop without its margin


class CellRefiner(nn.Module):
    """`maps + expand(relu(reduce(maps)))` with 1x1 convolutions: every cell re-described by a
    small residual bottleneck, which starts as the identity (`expand` is zero)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps + self.expand(F.relu(self.reduce(maps)))


class ClickHead(nn.Module):
    """Feature map -> (L2-normalised embedding, box as [x0, y0, x1, y1] in 0-1 of the input).

    `refine`: hidden units of the `CellRefiner` (0: none, the pooled backbone map is projected)."""

    def __init__(self, channels: int, dim: int, refine: int = 0) -> None:
        super().__init__()
        self.cell_scores = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.cell_scores.weight)
        nn.init.zeros_(self.cell_scores.bias)
        uniform_std = np.sqrt((7**2 - 1) / 12) / 7  # a uniform distribution over 7 cells
        self.log_spread = nn.Parameter(torch.tensor(float(np.log(INITIAL_HALF_SIDE / uniform_std))))
        self.project = nn.Linear(channels, dim)
        self.refine = CellRefiner(channels, refine) if refine else None

    @classmethod
    def from_projection(cls, mean: np.ndarray, components: np.ndarray) -> "ClickHead":
        """A head that computes the foundation's projection `(x - mean) @ components`."""
        head = cls(components.shape[0], components.shape[1])
        with torch.no_grad():
            weight = torch.from_numpy(np.ascontiguousarray(components.T, np.float32))
            head.project.weight.copy_(weight)
            head.project.bias.copy_(-(weight @ torch.from_numpy(mean.astype(np.float32))))
        return head

    def box(self, maps: torch.Tensor) -> torch.Tensor:
        """N x 4 boxes (x0, y0, x1, y1 in 0-1) from N x C x h x w maps."""
        n, _, h, w = maps.shape
        weights = torch.softmax(self.cell_scores(maps).reshape(n, h * w), dim=1).reshape(n, h, w)
        xs = (torch.arange(w, dtype=maps.dtype) + 0.5) / w
        ys = (torch.arange(h, dtype=maps.dtype) + 0.5) / h
        px, py = weights.sum(dim=1), weights.sum(dim=2)  # marginals over columns and rows
        cx, cy = px @ xs, py @ ys
        sx = torch.sqrt((px * (xs - cx[:, None]) ** 2).sum(dim=1) + 1e-6)
        sy = torch.sqrt((py * (ys - cy[:, None]) ** 2).sum(dim=1) + 1e-6)
        spread = torch.exp(self.log_spread)
        return torch.stack([cx - spread * sx, cy - spread * sy, cx + spread * sx, cy + spread * sy], dim=1).clamp(0, 1)

    @property
    def refine_units(self) -> int:
        return self.refine.reduce.out_channels if self.refine is not None else 0

    def with_refiner(self, hidden: int) -> "ClickHead":
        """A copy of this head; with a new (identity) refiner of `hidden` units if it has none."""
        refine = self.refine_units or hidden
        head = ClickHead(self.project.in_features, self.project.out_features, refine)
        head.load_state_dict(self.state_dict(), strict=False)  # a new refiner keeps its initial weights
        return head

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding inside the learned box, the box, embedding of the whole product crop)."""
        box = self.box(maps)
        cells = self._cells(maps)
        return self._pooled(cells, box), box, self._pooled(cells, _product_box(len(maps), maps.dtype))

    def embed_product(self, maps: torch.Tensor) -> torch.Tensor:
        """The embedding of a catalog shot's crop: the product without the crop's margin.

        The catalog side keeps the whole product, so a query's box learns to cover what
        matches the whole product, not only its most distinctive part."""
        return self.embed(maps, _product_box(len(maps), maps.dtype))

    def embed(self, maps: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """Masked GeM of the refined cells inside `box` (N x 4, 0-1), projected and L2-normalised."""
        return self._pooled(self._cells(maps), box)

    def _cells(self, maps: torch.Tensor) -> torch.Tensor:
        return self.refine(maps) if self.refine is not None else maps

    def _pooled(self, maps: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        _, _, h, w = maps.shape
        xs = ((torch.arange(w, dtype=maps.dtype) + 0.5) / w)[None, :]
        ys = ((torch.arange(h, dtype=maps.dtype) + 0.5) / h)[None, :]
        edge = lambda v: torch.sigmoid(v / MASK_SHARPNESS)
        mask_x = edge(xs - box[:, 0:1]) * edge(box[:, 2:3] - xs)  # N x w
        mask_y = edge(ys - box[:, 1:2]) * edge(box[:, 3:4] - ys)  # N x h
        mask = (mask_y[:, :, None] * mask_x[:, None, :])[:, None]  # N x 1 x h x w
        pooled = ((maps.clamp(min=1e-6) ** GEM_P * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + 1e-6)) ** (1 / GEM_P)
        return F.normalize(self.project(F.normalize(pooled, dim=1)), dim=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: value.detach().numpy() for name, value in self.state_dict().items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ClickHead":
        channels, dim = arrays["project.weight"].shape[1], arrays["project.weight"].shape[0]
        refine = arrays["refine.reduce.weight"].shape[0] if "refine.reduce.weight" in arrays else 0
        head = cls(channels, dim, refine)
        head.load_state_dict({name: torch.from_numpy(np.asarray(value)) for name, value in arrays.items()})
        return head


def _product_box(count: int, dtype: torch.dtype) -> torch.Tensor:
    """The box of a catalog shot's product in its crop, for `count` crops."""
    inner = torch.tensor([[PRODUCT_MARGIN, PRODUCT_MARGIN, 1 - PRODUCT_MARGIN, 1 - PRODUCT_MARGIN]], dtype=dtype)
    return inner.expand(count, 4)


def save_head(head: ClickHead, path: Path) -> None:
    """The head's weights as an .npz file (what the package ships for `fashion-clicks`)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **head.to_arrays())
    path.write_bytes(buffer.getvalue())


def load_head(source: Path | BinaryIO) -> ClickHead:
    with np.load(source) as arrays:
        return ClickHead.from_arrays({name: arrays[name] for name in arrays.files})
