"""Catalog ingest across a Ray cluster: `snapshop add CATALOG --ray ADDRESS`.

Ray Data reads the catalog rows, and a pool of actors (one per CPU asked for) decodes,
localizes and describes their images in batches: each actor builds one ONNX Runtime
session (one intra-op thread) when it starts and reuses it for every batch, never one
per image. The model travels through Ray's object store, so workers on other machines
need no index folder, only the images (paths they can read: a shared file system).
Each row comes back as an embedded image or the reason it failed; the driver gathers
them with a progress bar, then writes them to the index (and its backend) in the
engine's usual chunks, so errors, merging of near-identical photos and the refit work
exactly as in a local `add`.

Needs the `cluster` extra (`pip install snapshop[cluster]`).
"""

from __future__ import annotations

import pickle
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from snapshop.catalog.images import load_image
from snapshop.catalog.manifest import Catalog, CatalogRow
from snapshop.errors import BackendError
from snapshop.index.store import NewImage
from snapshop.search.engine import Embedder, Engine, embed_rows

try:
    import ray
except ImportError:  # pragma: no cover - the message is the point
    raise BackendError("--ray needs the cluster extra: pip install 'snapshop[cluster]'") from None

RAY_BATCH = 32  # images per batch an actor embeds


class RowEmbedder:
    """A Ray actor's embedder: the index's model and fitted objectness, loaded once."""

    def __init__(self, model: bytes, spec: dict[str, Any], options: dict[str, Any],
                 objectness: dict[str, np.ndarray] | None) -> None:
        from snapshop.models.backbone import Backbone, ModelSpec, Preprocessing
        from snapshop.models.encoder import ImageEncoder
        from snapshop.models.localize import objectness_from_arrays

        self._folder = tempfile.TemporaryDirectory(prefix="snapshop-ray-")
        path = Path(self._folder.name) / "model.onnx"
        path.write_bytes(model)
        backbone = Backbone(ModelSpec(spec["name"], path, Preprocessing(**spec["preprocessing"])),
                            batch_size=options["batch_size"], threads=1)
        self.encoder = ImageEncoder(backbone, pooling=options["pooling"], detect_size=options["detect_size"],
                                    box_threshold=options["box_threshold"], localize=options["localize"])
        if objectness is not None:
            self.encoder.objectness = objectness_from_arrays(objectness)
        self.limits = {"max_pixels": options["max_pixels"], "max_bytes": options["max_image_bytes"]}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [CatalogRow(int(line), str(item_id), Path(image), None, {})
                for line, item_id, image in zip(batch["line"], batch["item_id"], batch["image"])]
        outcomes = embed_rows(self.encoder, lambda source: load_image(source, **self.limits), rows)
        return {"line": batch["line"], "outcome": np.array([pickle.dumps(o) for o in outcomes], dtype=object)}


def ray_embedder(engine: Engine, catalog: Catalog, address: str, *, cpus: int | None = None,
                 progress: bool = False) -> Embedder:
    """Embed every catalog row on the Ray cluster at `address` ("local": start one here);
    returns an `Engine.add` embedder that hands out the results."""
    try:
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BackendError(f"cannot join the Ray cluster at {address} ({' '.join(str(exc).split())})") from None
    workers = cpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
    settings = engine.settings
    manifest = engine.manifest
    objectness = engine.encoder.objectness
    options = {name: getattr(settings, name) for name in
               ("batch_size", "detect_size", "box_threshold", "localize", "max_pixels", "max_image_bytes")}
    options["pooling"] = manifest.pooling
    spec = {"name": manifest.model_name, "preprocessing": asdict(manifest.preprocessing)}
    rows = [{"line": row.line, "item_id": row.item_id, "image": str(row.image)} for row in catalog.rows]
    dataset = ray.data.from_items(rows).map_batches(
        RowEmbedder, batch_size=RAY_BATCH, concurrency=workers, num_cpus=1, batch_format="numpy",
        fn_constructor_args=(engine.folder.model_path.read_bytes(), spec, options,
                             objectness.to_arrays() if objectness is not None else None))
    outcomes: dict[int, NewImage | str] = {}
    with tqdm(total=len(rows), desc=f"embedding on Ray ({workers} workers)", unit="img", disable=not progress) as bar:
        for batch in dataset.iter_batches(batch_size=RAY_BATCH, batch_format="numpy"):
            outcomes.update((int(line), pickle.loads(blob)) for line, blob in zip(batch["line"], batch["outcome"]))
            bar.update(len(batch["line"]))

    def embed(chunk: Sequence[CatalogRow]) -> list[NewImage | str]:
        return [outcomes[row.line] for row in chunk]

    return embed
