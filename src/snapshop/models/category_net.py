"""A category classifier that fine-tunes the top of EfficientNet-Lite0 on the catalog's crops.

The linear classifier (`models.category`) reads frozen ImageNet features, which confuse a
shirt with a T-shirt or a coat in a shopper's photo. Fine-tuning the network's last blocks
for the catalog's categories, on its product crops and their synthetic views, lifts the
category accuracy on SIMULATED shopper photos (docs/benchmarks.md). The blocks before
`FIRST_TUNED_BLOCK` stay frozen: `front_backbone` computes their output once per training crop
(with ONNX Runtime); only the top is trained, in PyTorch. The trained network is exported as
one ONNX model, crop pixels in, class probabilities out, and stored with the index.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from snapshop.models.backbone import (Backbone, ModelSpec, Preprocessing, export_onnx, onnx_session,
                                      pretrained_efficientnet_lite, to_input)

FIRST_TUNED_BLOCK = 11  # of Lite0's 16: tunes the 7x7 stage (blocks 11-15) and the head convolution
PREPROCESSING = Preprocessing(input_size=224)
BATCH = 64
LEARNING_RATE = 2e-4  # of the pretrained blocks; the new linear layer learns 10x faster
LABEL_SMOOTHING = 0.1


def front_backbone(cache_dir: Path, *, threads: int = 0) -> Backbone:
    """The frozen blocks as a backbone: crops in, the input of the tuned blocks out (N x 112 x 14 x 14)."""
    onnx_path = cache_dir / "models" / f"efficientnet-lite0-front{FIRST_TUNED_BLOCK}.onnx"
    if not onnx_path.is_file():
        export_onnx(_front(pretrained_efficientnet_lite(0)), onnx_path, PREPROCESSING.input_size,
                    output_names=["features"], spatial_output=True)
    spec = ModelSpec(name=f"efficientnet-lite0-front{FIRST_TUNED_BLOCK}", onnx_path=onnx_path,
                     preprocessing=PREPROCESSING)
    return Backbone(spec, batch_size=32, threads=threads)


def fit_category_network(fronts: np.ndarray, labels: np.ndarray, classes: int, *, epochs: int, seed: int = 0,
                         progress: bool = False) -> "torch.nn.Module":
    """Train the top on the frozen blocks' outputs (float16, N x 112 x 14 x 14) labelled 0..classes-1.

    AdamW with a one-cycle schedule, cross-entropy with label smoothing, and the block input
    mirrored left-right for half the batches (a mirrored photo of a product is one of the same
    category)."""
    import torch

    torch.manual_seed(seed)
    top = _tuned_top(pretrained_efficientnet_lite(0), classes)
    steps_per_epoch = max(1, len(labels) // BATCH)
    optimiser = torch.optim.AdamW([{"params": top.pretrained_parameters(), "lr": LEARNING_RATE},
                                   {"params": top.fc.parameters(), "lr": 10 * LEARNING_RATE}], weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[LEARNING_RATE, 10 * LEARNING_RATE],
                                                   total_steps=epochs * steps_per_epoch, pct_start=0.15)
    rng = np.random.default_rng(seed)
    targets = torch.from_numpy(np.asarray(labels, np.int64))
    top.train()
    with tqdm(total=epochs * steps_per_epoch, desc="category network", unit="batch", disable=not progress) as bar:
        for _ in range(epochs):
            order = rng.permutation(len(labels))
            for step in range(steps_per_epoch):
                picked = order[step * BATCH : (step + 1) * BATCH]
                batch = torch.from_numpy(fronts[picked].astype(np.float32))
                if rng.random() < 0.5:
                    batch = batch.flip(3)
                loss = torch.nn.functional.cross_entropy(top(batch), targets[picked], label_smoothing=LABEL_SMOOTHING)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update()
    return top.eval()


class CategoryNetwork:
    """The fine-tuned classifier as one ONNX model, run with ONNX Runtime: crops in, probabilities out."""

    def __init__(self, onnx_model: bytes, *, threads: int = 0) -> None:
        self._session = onnx_session(onnx_model, threads, described_as="the index's category network is")

    def probabilities(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """N x classes, each row summing to 1."""
        parts = [self._session.run(None, {"image": to_input(crops[start : start + 32], PREPROCESSING)})[0]
                 for start in range(0, len(crops), 32)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def export_category_network(top: "torch.nn.Module") -> bytes:
    """The frozen blocks and the tuned top as one ONNX model (`image` in, `probabilities` out)."""
    import torch

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.front, self.top = _front(pretrained_efficientnet_lite(0)), top

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.top(self.front(images)), dim=1)

    buffer = io.BytesIO()
    export_onnx(Network().eval(), buffer, PREPROCESSING.input_size, output_names=["probabilities"])
    return buffer.getvalue()


def top_probabilities(top: "torch.nn.Module", fronts: np.ndarray) -> np.ndarray:
    """Class probabilities of the trained top on cached block inputs (the held-out views')."""
    import torch

    with torch.no_grad():
        parts = [torch.softmax(top(torch.from_numpy(fronts[start : start + 256].astype(np.float32))), dim=1).numpy()
                 for start in range(0, len(fronts), 256)]
    return np.concatenate(parts) if parts else np.zeros((0, top.fc.out_features), np.float32)


def _front(net: "torch.nn.Module") -> "torch.nn.Module":
    import torch

    class Front(torch.nn.Module):
        """EfficientNet-Lite's stem and its blocks before FIRST_TUNED_BLOCK."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = self.net._swish(self.net._bn0(self.net._conv_stem(images)))
            for block in self.net._blocks[:FIRST_TUNED_BLOCK]:
                x = block(x)
            return x

    return Front().eval()


def _tuned_top(net: "torch.nn.Module", classes: int) -> "torch.nn.Module":
    import torch

    class TunedTop(torch.nn.Module):
        """Blocks from FIRST_TUNED_BLOCK on, the head convolution, average pooling, dropout and a linear layer."""

        def __init__(self, net: torch.nn.Module, classes: int) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(net._blocks[FIRST_TUNED_BLOCK:])
            self.head, self.norm, self.act = net._conv_head, net._bn1, net._swish
            self.drop = torch.nn.Dropout(0.3)
            self.fc = torch.nn.Linear(net._conv_head.out_channels, classes)

        def pretrained_parameters(self) -> list[torch.nn.Parameter]:
            return [p for name, p in self.named_parameters() if not name.startswith("fc.")]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.fc(self.drop(self.act(self.norm(self.head(x))).mean((2, 3))))

    return TunedTop(net, classes)
