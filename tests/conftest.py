"""Shared fixtures: one tiny synthetic catalog and its index per session, fresh copies for writers.

Everything is drawn here with Pillow (coloured, patterned shapes on white), so the suite
needs no data set. The built-in model is exported to ONNX once into $SNAPSHOP_CACHE;
when the variable is unset we point it at the persistent default so the export (and the
generic-image descriptors) are reused across runs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw

if not os.environ.get("SNAPSHOP_CACHE"):
    os.environ["SNAPSHOP_CACHE"] = str(Path.home() / ".cache" / "snapshop")

from snapshop.settings import Settings, load_settings  # noqa: E402

SHAPES = ("circle", "square", "triangle")
COLOURS = ((210, 30, 40), (30, 90, 200), (30, 150, 60), (235, 170, 20))
PATTERNS = ("solid", "stripes", "dots", "checker")
SCALES = (0.62, 0.72, 0.56, 0.68)


# --- drawing -------------------------------------------------------------------------------


def product_image(shape: str, variant: int, *, size: int = 256, scale: float | None = None) -> Image.Image:
    """A catalog-style product shot: one patterned, coloured shape centred on white."""
    scale = SCALES[variant] if scale is None else scale
    colour, pattern = COLOURS[variant], PATTERNS[variant]
    image = Image.new("RGB", (size, size), "white")
    half, centre = size * scale / 2, size / 2
    mask = Image.new("L", (size, size), 0)
    outline = ImageDraw.Draw(mask)
    box = [centre - half, centre - half, centre + half, centre + half]
    if shape == "circle":
        outline.ellipse(box, fill=255)
    elif shape == "square":
        outline.rectangle(box, fill=255)
    else:
        outline.polygon([(centre, centre - half), (centre + half, centre + half), (centre - half, centre + half)], fill=255)
    texture = Image.new("RGB", (size, size), colour)
    paint = ImageDraw.Draw(texture)
    light = tuple(min(255, v + 90) for v in colour)
    dark = tuple(v // 3 for v in colour)
    if pattern == "stripes":
        for x in range(0, size, 16):
            paint.rectangle([x, 0, x + 7, size], fill=light)
    elif pattern == "dots":
        for y in range(8, size, 24):
            for x in range(8, size, 24):
                paint.ellipse([x - 5, y - 5, x + 5, y + 5], fill=dark)
    elif pattern == "checker":
        for y in range(0, size, 20):
            for x in range(0, size, 20):
                if (x // 20 + y // 20) % 2:
                    paint.rectangle([x, y, x + 19, y + 19], fill=light)
    image.paste(texture, (0, 0), mask)
    return image


def shopper_photo(image: Image.Image, *, side: int = 190, canvas: tuple[int, int] = (420, 320),
                  at: tuple[int, int] = (150, 70), background: tuple[int, int, int] = (225, 222, 215)) -> Image.Image:
    """A mild "real shot": the product resized and pasted off-centre onto a larger, non-white background."""
    photo = Image.new("RGB", canvas, background)
    photo.paste(image.resize((side, side), Image.BILINEAR), at)
    return photo



# --- the session catalog ---------------------------------------------------------------------


@dataclass
class CatalogFixture:
    """The synthetic catalog: 12 items in 3 categories, item `circle-0` with a second photo."""

    root: Path
    manifest: Path
    images: dict[str, list[Path]] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)

    @property
    def item_ids(self) -> list[str]:
        return list(self.images)

    def image(self, item_id: str) -> Path:
        return self.images[item_id][0]


def write_catalog(root: Path) -> CatalogFixture:
    (root / "img").mkdir(parents=True, exist_ok=True)
    catalog = CatalogFixture(root=root, manifest=root / "catalog.jsonl")
    rows = []
    for shape in SHAPES:
        for variant in range(len(COLOURS)):
            item_id = f"{shape}-{variant}"
            path = root / "img" / f"{item_id}.png"
            product_image(shape, variant).save(path)
            catalog.images[item_id] = [path]
            catalog.categories[item_id] = shape + "s"
            rows.append({"item_id": item_id, "image": f"img/{item_id}.png", "category": shape + "s",
                         "title": f"{PATTERNS[variant]} {shape}", "price": 10 + variant,
                         "url": f"https://shop.example/{item_id}"})
    # A second photo of circle-0: the same product, a little smaller.
    second = root / "img" / "circle-0-back.png"
    product_image("circle", 0, scale=0.5).save(second)
    catalog.images["circle-0"].append(second)
    rows.insert(1, {"item_id": "circle-0", "image": "img/circle-0-back.png", "category": "circles",
                    "title": "solid circle", "price": 10})
    catalog.manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return catalog


@pytest.fixture(scope="session")
def make_settings(tmp_path_factory) -> Callable[..., Settings]:
    """Defaults plus overrides, ignoring the caller's environment and any ./snapshop.toml."""
    empty = tmp_path_factory.mktemp("config") / "empty.toml"
    empty.write_text("")

    def make(**overrides) -> Settings:
        return load_settings(overrides, environ={}, config_file=empty)

    return make


@pytest.fixture(scope="session")
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def catalog(tmp_path_factory) -> CatalogFixture:
    return write_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="session")
def index_template(tmp_path_factory, catalog, settings) -> Path:
    """The session catalog indexed once; never opened again (writers get copies)."""
    from snapshop.catalog.manifest import read_catalog
    from snapshop.search.engine import Engine

    path = tmp_path_factory.mktemp("template") / "index"
    engine = Engine.open_or_create(path, settings)
    report = engine.add(read_catalog(catalog.manifest))
    engine.close()
    assert report.errors == [] and report.items_added == 12 and report.images == 13
    return path


@pytest.fixture(scope="session")
def shared_index(tmp_path_factory, index_template) -> Path:
    """A copy of the session index for read-only tests (engine and CLI)."""
    path = tmp_path_factory.mktemp("shared") / "index"
    shutil.copytree(index_template, path)
    return path


@pytest.fixture(scope="session")
def engine(shared_index, settings):
    """One open engine on the shared index; tests must not write through it."""
    from snapshop.search.engine import Engine

    opened = Engine.open(shared_index, settings)
    yield opened
    opened.close()


@pytest.fixture
def fresh_index(tmp_path, index_template) -> Path:
    """A private, writable copy of the session index."""
    path = tmp_path / "index"
    shutil.copytree(index_template, path)
    return path


# --- a tiny ONNX model -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """An 8-channel "backbone": a 4x4 stride-4 convolution that averages the normalised input."""
    return write_tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="session")
def make_tiny_onnx() -> Callable[..., Path]:
    return write_tiny_onnx


def write_tiny_onnx(path: Path, *, channels: int = 8, flatten: bool = False) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.full((channels, 3, 4, 4), 1.0 / 48, np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["maps"], kernel_shape=[4, 4], strides=[4, 4])]
    if flatten:
        nodes += [helper.make_node("GlobalAveragePool", ["maps"], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["features"])]
        output = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", channels])
    else:
        nodes += [helper.make_node("Identity", ["maps"], ["features"])]
        output = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", channels, "fh", "fw"])
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])], [output],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# --- isolation ---------------------------------------------------------------------------------


TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _isolated(request, monkeypatch, tmp_path):
    """Each test runs in its own folder with no SNAPSHOP_* variable but the model cache.

    tests/datasets/ has its own owner and conventions; it is left alone.
    """
    if Path(request.node.path).resolve().is_relative_to(TESTS / "datasets"):
        return
    for name in list(os.environ):
        if name.startswith("SNAPSHOP_") and name != "SNAPSHOP_CACHE":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# Drawing helpers as fixtures, so test modules in sub-folders need no import path tricks.


@pytest.fixture(scope="session")
def draw_product() -> Callable[..., Image.Image]:
    return product_image


@pytest.fixture(scope="session")
def draw_shopper_photo() -> Callable[..., Image.Image]:
    return shopper_photo


@pytest.fixture(scope="session")
def backbone():
    """The built-in EfficientNet-Lite0 backbone (exported to ONNX once into $SNAPSHOP_CACHE)."""
    from snapshop.models.backbone import Backbone, resolve_model

    return Backbone(resolve_model("efficientnet-lite0"), batch_size=8)


# --- xdist workers ---------------------------------------------------------------------------------

# Modules that must share a worker: two Milvus servers on one machine clash over the fixed
# peer port of their embedded etcd (2380), and the second is skipped as "not healthy".
SHARED_WORKER = {"cluster/test_milvus.py": "milvus server", "cluster/test_milvus_failure.py": "milvus server"}


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: `make test` runs `-n 2 --dist loadscope`
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scheduling by module (a module's tests on one worker, its fixtures built once),
    with the SHARED_WORKER modules taken as one."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = (config.rootpath / nodeid.split("::", 1)[0]).resolve()
            module = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else str(path)
            return SHARED_WORKER.get(module, module)

    return ByModule(config, log)
