"""The engine: one object that owns the model, the fitted maps and the index.

The CLI (and the HTTP API) are thin adapters over `Engine`. It delegates each pipeline
stage to its component: decoding (`catalog.images`), localization and description
(`models.encoder`), category prediction (`models.category`, `models.category_net`), the
partitioned, sharded binary index with float re-rank (an `index.backend`: embedded faiss
segments, `index.live`, or a Milvus collection, `index.milvus`), metadata and the change log
(`index.store`).

Writes are serialized: one thread of one process at a time holds the write lock. Every
write commits to SQLite before it returns and reaches the in-memory index through the
change log, which is also how other processes' writes reach this one before each search.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from snapshop.catalog.images import load_image
from snapshop.catalog.manifest import Catalog, CatalogRow, RowError
from snapshop.errors import IndexError_, SnapshopError
from snapshop.index.folder import IndexFolder, IndexManifest
from snapshop.index.backend import IndexBackend, open_backend
from snapshop.index.live import IndexParams
from snapshop.index.store import ImageInfo, MetadataStore, NewImage, NewItem
from snapshop.curate.colour import check_colour, dominant_colours
from snapshop.curate.duplicates import DuplicateRules, DuplicateVerifier, ImageRef
from snapshop.curate.quality import image_quality
from snapshop.curate.rerank import Candidate, CurationOptions, curate, other_colours
from snapshop.models.backbone import Backbone, default_cache_dir, resolve_model
from snapshop.models.category import CategoryClassifier, choose_alpha, fuse, knn_vote
from snapshop.models.category_net import (CategoryNetwork, export_category_network, fit_category_network,
                                          front_backbone, top_probabilities)
from snapshop.models.augment import is_clean_shot
from snapshop.models.encoder import Codec, Descriptions, ImageEncoder, crop, generic_descriptors
from snapshop.models.fitting import CatalogViews, describe_views
from snapshop.models.localize import Box, CellObjectness, ObjectnessModel, objectness_from_arrays
from snapshop.models.projection import LearnedWhitening, load_arrays, save_arrays
from snapshop.search.results import CategoryScore, Hit, Query, SearchResult
from snapshop.settings import Settings

log = logging.getLogger(__name__)

INGEST_CHUNK = 128
HELD_OUT_FRACTION = 0.2
MAX_HELD_OUT = 2000
MIN_IMAGES_PER_CATEGORY = 3
MAX_VIEWS = 3000  # catalog images given synthetic views
VIEWS_PER_IMAGE = 3  # measured: 1 -> 2 -> 3 views per image lift the classifier on simulated shopper photos
MIN_VIEWS = 20
KNN_SHORTLIST_PER_VOTE = 40  # code-shortlist candidates per kNN vote, re-ranked for the category vote
SAME_IMAGE_COSINE = 0.99  # two images of one item this close are stored once
DUPLICATE_NEIGHBOURS = 3  # nearest images of each new image checked for being identical items
CURATION_POOL = 5  # candidate items curated per result asked for
NO_MATCH_EVIDENCE = 4  # a no-match threshold is used when strangers fall under it 4x as often as true matches
MATCH_FOLDS = 5  # the no-match calibration scores each view with a projection fitted without it
MIN_MATCH_EXAMPLES = 20  # true and false first results needed to fit the no-match threshold
SIMILARITY_BLOCK = 1 << 24  # view x catalog cosines computed at once


@dataclass
class AddReport:
    """What an `add` did: items written, images embedded, rows skipped with reasons."""

    items_added: int = 0
    items_updated: int = 0
    images: int = 0
    images_merged: int = 0  # near-identical images of one item stored once
    errors: list[RowError] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


@dataclass
class RemoveReport:
    removed: list[str]
    missing: list[str]


@dataclass
class CategoryModel:
    """The fitted category predictor: classes, a linear classifier or a fine-tuned network (or
    neither), fusion weight alpha."""

    classes: np.ndarray
    classifier: CategoryClassifier | None
    alpha: float
    network: CategoryNetwork | None = None

    def predict(self, crops: Sequence[Image.Image], descriptors: Descriptions, neighbour_labels: np.ndarray,
                neighbour_scores: np.ndarray, network_says: np.ndarray | None = None) -> np.ndarray:
        """Fused probabilities per crop; `network_says`: the network's, where already computed."""
        p_search = knn_vote(neighbour_labels, neighbour_scores, self.classes)
        if network_says is not None:
            p_model = network_says
        elif self.network is not None:
            p_model = self.network.probabilities(crops)
        elif self.classifier is not None:
            p_model = self.classifier.predict_proba(_classifier_input(self.classifier, descriptors))
        else:
            p_model = None
        return fuse(p_model, p_search, self.alpha)


class Engine:
    """Search and maintain one index folder."""

    def __init__(self, folder: IndexFolder, settings: Settings, manifest: IndexManifest) -> None:
        self.folder = folder
        self.settings = settings
        self.manifest = manifest
        self.store = MetadataStore(folder.database)
        backbone = Backbone(folder.model_spec(manifest), batch_size=settings.batch_size, threads=settings.threads)
        self.encoder = ImageEncoder(backbone, pooling=manifest.pooling, detect_size=settings.detect_size,
                                    box_threshold=settings.box_threshold, localize=settings.localize)
        self.codec: Codec | None = None
        self.category_model: CategoryModel | None = None
        self.boxes_from_clicks = False  # the objectness model was learned from clicks: its main box is kept
        self.no_match: dict = {"threshold": None, "used": False}  # the calibration's operating point
        self.index: IndexBackend | None = None
        self._write_mutex = threading.Lock()
        self._reload_lock = threading.Lock()
        self._compaction: threading.Thread | None = None
        self._active_stamp = folder.active_stamp()
        self._reload()

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, settings: Settings) -> "Engine":
        """Open an existing index; a missing or damaged one is a clear IndexError_."""
        folder = IndexFolder(Path(path)).active()
        return cls(folder, settings, folder.read_manifest())

    @classmethod
    def open_versions(cls, path: str | Path, settings: Settings, which: str = "active") -> Iterator["Engine"]:
        """Engines of the model versions named in `which`: active, all, or a comma-separated list."""
        root = IndexFolder(Path(path))
        if which == "active":
            folders = [root.active()]
        elif which == "all":
            folders = [folder for _, folder in root.versions()]
        else:
            folders = [root.version(version.strip()) for version in which.split(",") if version.strip()]
        for folder in folders:
            yield cls(folder, settings, folder.read_manifest())

    @classmethod
    def open_or_create(cls, path: str | Path, settings: Settings, *, model: str | None = None) -> "Engine":
        """Open an index for writing, creating it with `model` (or the `model` setting) if absent."""
        folder = IndexFolder(Path(path))
        if folder.exists():
            folder = folder.active()
            manifest = folder.read_manifest()
            if model is not None:
                wanted = resolve_model(model)
                if (wanted.name, wanted.version) != (manifest.model_name, manifest.model_version):
                    raise IndexError_(
                        f"{folder.path}: this index was built with {manifest.model_name} ({manifest.model_version}); "
                        f"it cannot take vectors from {wanted.name} ({wanted.version}). Use another --index."
                    )
            return cls(folder, settings, manifest)
        if settings.bits > settings.dim or settings.bits % 8:
            raise SnapshopError(f"bits must be a multiple of 8 and at most dim ({settings.dim}), got {settings.bits}")
        spec = resolve_model(model or settings.model)
        channels = Backbone(spec).channels
        if channels is not None and channels < settings.dim:
            raise SnapshopError(f"{spec.name} gives {channels} features per image; dim ({settings.dim}) must be at most that")
        with folder.write_lock():
            manifest = folder.create(spec, dim=settings.dim, bits=settings.bits, pooling=settings.pooling)
        return cls(folder, settings, manifest)

    def close(self) -> None:
        """Wait for a background compaction, then release files and connections."""
        if self._compaction is not None:
            self._compaction.join()
        self.index.close()
        self.store.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The write lock: one thread here, one process on the folder."""
        with self._write_mutex, self.folder.write_lock():
            yield

    # --- writes --------------------------------------------------------------------------

    def add(self, catalog: Catalog, *, progress: bool = False, embed: "Embedder | None" = None,
            identical: Sequence[tuple[str, str, dict]] | None = None) -> AddReport:
        """Upsert every item of a catalog. Bad rows are reported and skipped; nothing indexed is lost.
        `embed` computes the rows' images (default: `embed_rows` here; `catalog.distributed` on Ray).
        `identical`: identical-item links already verified on these images (another model version
        of this index holds them), stored as they are instead of checking the images again."""
        report = AddReport(errors=list(catalog.errors))
        rows_by_item: dict[str, list[CatalogRow]] = defaultdict(list)
        for row in catalog.rows:
            rows_by_item[row.item_id].append(row)
        with self._writing():
            formerly_linked = self.store.linked_items(rows_by_item)
            with tqdm(total=len(catalog.rows), desc="embedding", unit="img", disable=not progress) as bar:
                for chunk in _chunks(list(rows_by_item.values()), INGEST_CHUNK):
                    self._add_items(chunk, report, embed or self.embed_rows)
                    self._refresh()
                    bar.update(sum(len(rows) for rows in chunk))
            if identical is not None:  # before the refit: its no-match calibration counts a group as one product
                self._save_links(list(identical), report.written, formerly_linked)
            self._refit_if_due(progress=progress)
            if identical is None:
                self._group_duplicates(report.written, formerly_linked, progress=progress)
        self._compact_when_due()
        return report

    def remove(self, item_ids: Sequence[str]) -> RemoveReport:
        """Delete items; they never appear in results again."""
        with self._writing():
            with self.store.transaction():
                linked = self.store.linked_items(item_ids)
                removed = self.store.delete_items(dict.fromkeys(item_ids))
                self.store.regroup(linked - set(removed))
            self._refresh()
        self._compact_when_due()
        gone = set(removed)
        return RemoveReport(removed=removed, missing=[i for i in dict.fromkeys(item_ids) if i not in gone])

    def compact(self, *, everything: bool = True) -> list[dict]:
        """Fold deltas and tombstones into new base segments (all partitions, or only those due)."""
        with self._writing():
            self._refresh()
            keys = None if everything else self.index.due_for_compaction()
            return self.index.compact(keys) if keys is None or keys else []

    def _compact_when_due(self) -> None:
        """Start a background compaction of the partitions that outgrew their delta or tombstones."""
        if self._compaction is not None and self._compaction.is_alive():
            return
        if self.index.due_for_compaction():
            self._compaction = threading.Thread(target=self._compact_in_background, name="snapshop-compaction")
            self._compaction.start()

    def _compact_in_background(self) -> None:
        try:
            self.compact(everything=False)
        except IndexError_ as exc:  # another process holds the write lock: it will compact later
            log.info("compaction skipped: %s", exc)

    def embed_rows(self, rows: Sequence[CatalogRow]) -> list[NewImage | str]:
        """Decode, localize and describe catalog rows: a NewImage each, or why it failed."""
        return embed_rows(self.encoder, self.load, rows)

    def _add_items(self, items: list[list[CatalogRow]], report: AddReport, embed: Embedder) -> None:
        failed: dict[str, list[RowError]] = defaultdict(list)
        new_images: dict[str, list[NewImage]] = defaultdict(list)
        positions: dict[str, list[int]] = defaultdict(list)  # rows of `descriptors`, per item
        embedded: list[NewImage] = []
        rows = [row for item_rows in items for row in item_rows]
        for row, outcome in zip(rows, embed(rows)):
            if isinstance(outcome, str):
                failed[row.item_id].append(RowError(row.line, outcome, row.item_id))
                continue
            new_images[row.item_id].append(outcome)
            positions[row.item_id].append(len(embedded))
            embedded.append(outcome)
        descriptors = (np.stack([image.descriptor for image in embedded]).astype(np.float32) if embedded
                       else np.zeros((0, 0), np.float32))
        for item_id in new_images:
            kept = _distinct_images(new_images[item_id], descriptors[positions[item_id]])
            report.images_merged += len(new_images[item_id]) - len(kept)
            new_images[item_id] = [new_images[item_id][i] for i in kept]
            positions[item_id] = [positions[item_id][i] for i in kept]
        existing = self.store.existing_items(rows[0].item_id for rows in items)
        written: list[NewItem] = []
        stored_rows: list[int] = []
        for rows in items:
            item_id = rows[0].item_id
            report.errors.extend(failed.get(item_id, []))
            if item_id in failed and item_id in existing:
                report.errors.append(RowError(rows[0].line, "kept the indexed version of this item", item_id))
                continue
            if not new_images.get(item_id):
                continue
            fields = {key: value for row in rows for key, value in row.fields.items()}
            written.append(NewItem(item_id, rows[0].category, fields, new_images[item_id]))
            stored_rows += positions[item_id]
            report.images += len(new_images[item_id])
            report.written.append(item_id)
            if item_id in existing:
                report.items_updated += 1
            else:
                report.items_added += 1
        with self.store.transaction():
            stored_ids = [image_id for ids in self.store.upsert_items(written) for image_id in ids]
            if self.codec is not None and stored_ids:  # searchable in the same transaction that stores it
                self.store.set_vectors(np.array(stored_ids), *self.codec.encode(descriptors[stored_rows]))

    def _refit_if_due(self, *, progress: bool) -> None:
        """Refit the fitted models when due (every code changes: the index is rebuilt), else
        encode any image an interrupted `add` left without a code."""
        counts = self.store.counts()
        if counts["images"] == 0:
            return
        codec_info, category_info = self.store.fitted("codec"), self.store.fitted("category")
        fitted_classes = set(load_arrays(category_info[0])["classes"]) if category_info else set()
        refit = (
            codec_info is None or category_info is None
            or _grown(codec_info[1], counts["images"], self.settings.min_fit_images)
            or bool(set(self.store.category_counts()) - {""} - fitted_classes)
        )
        if refit:
            with self.store.transaction():
                self._refit(progress=progress)
            self._reload()
            self.index.compact()
        elif counts["pending"]:
            with self.store.transaction():
                ids, descriptors, _ = self.store.descriptors(pending_only=True)
                self.store.set_vectors(ids, *self.codec.encode(descriptors))
            self._refresh()

    def _refit(self, *, progress: bool) -> None:
        """Fit objectness, codec and category model on the whole catalog; re-encode every image."""
        ids, descriptors, categories = self.store.descriptors()
        first_objectness = self.encoder.objectness is None
        views = self._catalog_views(ids, progress=progress)
        if views is not None and views.objectness is not None:
            objectness = views.objectness
            self.store.save_fitted("objectness", _objectness_blob(objectness), {"fitted_on": objectness.images_seen})
            self.encoder.objectness = _objectness_model(self.store.fitted("click_objectness")) or objectness
            renamed = self._relocate_scenes(progress=progress) if first_objectness else {}
            if renamed:
                earlier = ids[views.rows]
                ids, descriptors, categories = self.store.descriptors()
                row_of = {int(image_id): row for row, image_id in enumerate(ids)}
                views.rows = np.array([row_of[renamed.get(int(image_id), int(image_id))] for image_id in earlier])
        self.codec = self._fit_codec(descriptors, views)
        self.store.save_fitted("codec", self.codec.to_blob(), {"source": self.codec.source, "fitted_on": len(ids)})
        self.store.set_vectors(ids, *self.codec.encode(descriptors), reset=True)
        if not self._keeps_category_network(categories):
            self._fit_category_model(descriptors, np.asarray(categories), views, progress=progress)
        if views is not None:
            self._fit_match_threshold(descriptors, self._image_products(ids), views)

    def _catalog_views(self, ids: np.ndarray, *, progress: bool) -> CatalogViews | None:
        """Synthetic views of a sample of catalog images (whose files can still be read)."""
        sources = dict((image_id, source) for image_id, _, source in self.store.image_rows())
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(ids), min(MAX_VIEWS, len(ids)), replace=False))
        images, rows = [], []
        for row in sample:
            try:
                images.append(self.load(sources[int(ids[row])]))
                rows.append(row)
            except SnapshopError as exc:
                log.info("no synthetic view of image %d: %s", ids[row], exc)
        if len(images) < MIN_VIEWS:
            return None
        return describe_views(self.encoder, images, np.array(rows), views_per_image=VIEWS_PER_IMAGE,
                              fit_objectness=self.store.fitted("click_objectness") is None,
                              front=self._category_front(), progress=progress)

    def _fit_codec(self, descriptors: np.ndarray, views: CatalogViews | None) -> Codec:
        dim, bits = self.manifest.dim, self.manifest.bits
        if self.encoder.backbone.has_head:
            # Embeddings trained from clicks are the metric already; whitening them measured worse
            # (held-out SIMULATED recall@1 0.356 raw, 0.324 learned whitening, 0.242 PCA-whitening).
            return Codec.unprojected(descriptors, bits=bits, source="trained embedding")
        if len(descriptors) >= max(self.settings.min_fit_images, 2 * dim):
            if views is not None and self.settings.whitening == "learned":
                return Codec.fit(descriptors, dim=dim, bits=bits, source="catalog, learned whitening",
                                 pairs=_view_pairs(descriptors, views))
            return Codec.fit(descriptors, dim=dim, bits=bits, source="catalog")
        log.info("catalog of %d images is too small to fit the projection; using the generic image set", len(descriptors))
        generic = generic_descriptors(self.encoder, default_cache_dir())
        return Codec.fit(generic, dim=dim, bits=bits, source="generic")

    def _fit_category_model(self, descriptors: np.ndarray, labels: np.ndarray, views: CatalogViews | None, *,
                            progress: bool = False) -> None:
        """Train the classifier on catalog labels; choose alpha on held-out images.

        With views, the classifier reads regional layouts of catalog images and of their views
        (true and found boxes), and alpha is chosen on the found-box crops of held-out images'
        views, the crops queries get. With the views' front maps (`_category_front`), a network
        fine-tuned on the same crops replaces the linear classifier. Like the linear classifier,
        it is trained twice: without the held-out images to choose alpha, then on all of them
        (on 1,000 SIMULATED shopper photos, true-box accuracy 0.816-0.826 over three runs
        without them, 0.848 with them; docs/benchmarks.md). A catalog too small for views trains
        on its pooled descriptors and chooses alpha on them."""
        classes, counts = np.unique(labels[labels != ""], return_counts=True)
        alpha, classifier, network = 0.0, None, None
        if len(classes) >= 2 and counts.min() >= MIN_IMAGES_PER_CATEGORY:
            truth = np.full(len(labels), -1)
            labelled = np.flatnonzero(labels != "")
            truth[labelled] = np.searchsorted(classes, labels[labelled])
            held_idx, train_idx = _split(len(labelled), truth[labelled])
            held, train = labelled[held_idx], labelled[train_idx]
            if views is not None:
                shown = truth[views.rows]  # the category of the catalog image each view shows
                in_held = np.isin(views.rows, held) & (shown >= 0)
                examples = lambda rows: _layout_examples(views, np.isin(views.rows, rows) & (shown >= 0), shown)
                probe, probe_pooled, probe_truth = views.found.layout[in_held], views.found.pooled[in_held], shown[in_held]
            else:
                examples = lambda rows: (descriptors[rows], truth[rows])
                probe, probe_pooled, probe_truth = descriptors[held], descriptors[held], truth[held]
            clicks = self._click_examples(classes) if views is not None else None
            if clicks is not None:  # query crops labelled by what shoppers clicked
                catalog_examples = examples
                examples = lambda rows: tuple(np.concatenate(pair) for pair in zip(catalog_examples(rows), clicks))
            fits_network = views is not None and views.fronts is not None
            if fits_network:
                fit_network = lambda rows: fit_category_network(
                    *_front_examples(views, np.isin(views.rows, rows) & (shown >= 0), shown), len(classes),
                    epochs=self.settings.category_epochs, progress=progress)
                p_model = top_probabilities(fit_network(train), views.fronts["found"][in_held])
            else:
                held_clf = CategoryClassifier().fit(*examples(train))
                p_model = _expand(held_clf, held_clf.predict_proba(probe), len(classes))
            sims = self.codec.encode(probe_pooled)[0] @ self.codec.encode(descriptors[train])[0].T
            nearest = np.argsort(-sims, axis=1)[:, : self.settings.category_knn]
            p_search = knn_vote(truth[train][nearest], np.take_along_axis(sims, nearest, 1), classes)
            alpha = choose_alpha(p_model, p_search, probe_truth) if len(probe_truth) else 0.5
            if fits_network:  # the network that is kept learns from the held-out images too
                network = export_category_network(fit_network(labelled))
            else:
                classifier = CategoryClassifier().fit(*examples(labelled))
            log.info("category model: %d classes, %s, alpha=%.2f", len(classes),
                     "fine-tuned network" if network else "linear classifier", alpha)
        arrays = {"classes": classes.astype(str)}
        if classifier is not None:
            arrays.update(coef=classifier.coef_, intercept=classifier.intercept_)
        if network is not None:
            arrays.update(network=np.frombuffer(network, np.uint8))
        self.store.save_fitted("category", save_arrays(**arrays),
                               {"alpha": alpha, "fitted_on": len(labels), "network": network is not None})

    def inherit_category_network(self, source: "Engine") -> None:
        """Start from `source`'s category network, if it has one (a version trained from clicks
        keeps it: see `_keeps_category_network`)."""
        stored = source.store.fitted("category")
        if stored is not None and stored[1].get("network"):
            with self.store.transaction():
                self.store.save_fitted("category", stored[0],
                                       {**stored[1], "inherited_from": source.manifest.model_version})

    def _keeps_category_network(self, labels: Sequence[str]) -> bool:
        """Whether a refit keeps the stored category network instead of fitting a category model:
        with click examples no network is fine-tuned (`_category_front`), and the linear classifier
        that would replace it measured worse: on a version trained from SIMULATED clicks, category
        0.678 with it and the click examples, 0.802 with the network of the version it was trained
        from (docs/benchmarks.md). Only while the catalog's categories are the network's classes."""
        stored = self.store.fitted("category")
        if stored is None or not stored[1].get("network") or self.store.fitted("click_category") is None:
            return False
        return set(load_arrays(stored[0])["classes"]) == set(labels) - {""}

    def _category_front(self) -> Backbone | None:
        """The frozen blocks of a category network when this catalog gets one: `category_epochs`
        above 0, at least `category_network_from` labelled images, and no click examples (kept as
        regional layouts, which only the linear classifier reads)."""
        labelled = sum(count for name, count in self.store.category_counts().items() if name)
        if (self.settings.category_epochs == 0 or labelled < self.settings.category_network_from
                or self.store.fitted("click_category") is not None):
            return None
        return front_backbone(default_cache_dir(), threads=self.settings.threads)

    def set_click_examples(self, layouts: np.ndarray, labels: list[str]) -> None:
        """Keep query crops' regional layouts labelled with their clicked item's category: the
        category classifier learns from them at every fit of this index."""
        with self.store.transaction():
            self.store.save_fitted("click_category", save_arrays(layouts=layouts.astype(np.float16),
                                                                 labels=np.array(labels, str)),
                                   {"examples": len(labels)})

    def set_click_objectness(self, objectness: ObjectnessModel, photos: int) -> None:
        """Localize with an objectness model learned from clicks (`learn.boxes`) from now on; a
        refit of this index keeps it (synthetic views only teach a model while none is)."""
        with self.store.transaction():
            self.store.save_fitted("click_objectness", _objectness_blob(objectness), {"fitted_on": photos})
        self.encoder.objectness = objectness
        self.boxes_from_clicks = True

    def _click_examples(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored click examples of known classes, as classifier input and class indices."""
        stored = self.store.fitted("click_category")
        if stored is None:
            return None
        arrays = load_arrays(stored[0])
        known = np.isin(arrays["labels"], classes)
        if not known.any():
            return None
        return (arrays["layouts"][known].astype(np.float32),
                np.searchsorted(classes, arrays["labels"][known]))

    def _image_products(self, ids: np.ndarray) -> np.ndarray:
        """The product (group id, else item id) each image shows, as a number per image."""
        info = self.store.image_info(ids)
        return np.unique([info[int(image_id)].group for image_id in ids], return_inverse=True)[1]

    def _fit_match_threshold(self, descriptors: np.ndarray, products: np.ndarray, views: CatalogViews) -> None:
        """The first-result cosine that tells a close match from a stranger, on synthetic views.

        A query whose product is in the catalog and comes first is a true match (its first
        score); a query whose product is not in the catalog gets the best image of another
        product first (each view's best other-product score). Each view is scored with a
        projection fitted without it (`MATCH_FOLDS`-fold), as a shopper's photo is. The two
        score samples are stored; the threshold is chosen from them at load (`no_match_point`)."""
        learned = isinstance(self.codec.projection, LearnedWhitening)  # the only projection fitted on views
        fold = (np.random.default_rng(1).integers(MATCH_FOLDS, size=len(descriptors))[views.rows] if learned
                else np.zeros(len(views.rows), int))  # any other has not seen the views: one pass
        own, other = np.empty(len(views.rows)), np.empty(len(views.rows))
        for k in np.unique(fold):
            scored = np.flatnonzero(fold == k)
            projection = (copy.copy(self.codec.projection).refit(_view_pairs(descriptors, views, keep=fold != k))
                          if learned else self.codec.projection)
            catalog = projection.transform(descriptors)
            block = max(1, SIMILARITY_BLOCK // len(catalog))
            for start in range(0, len(scored), block):
                rows = scored[start : start + block]
                sims = projection.transform(views.found.pooled[rows]) @ catalog.T
                same = products[None, :] == products[views.rows[rows], None]
                own[rows] = np.where(same, sims, -np.inf).max(axis=1)
                other[rows] = np.where(same, -np.inf, sims).max(axis=1)
        true, false = own[own > other], other
        info = {"true_first": len(true), "fitted_on": len(own)}
        fitted = len(true) >= MIN_MATCH_EXAMPLES and len(false) >= MIN_MATCH_EXAMPLES
        if fitted:
            info.update(true_median=float(np.median(true)), false_median=float(np.median(false)))
        scores = {"true": true.astype(np.float32), "false": false.astype(np.float32)} if fitted else {}
        self.store.save_fitted("match", save_arrays(**scores), info)
        log.info("no-match calibration on %d synthetic views: %s", len(own), info)

    def _relocate_scenes(self, *, progress: bool) -> dict[int, int]:
        """Locate and describe again, with the objectness model just fitted, the catalog photos
        that are not clean shots (SCDA located them before there was a model; a clean shot's
        box needs no model). Returns {old image id: new image id} of the images replaced."""
        sources: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for image_id, item_id, source in self.store.image_rows():
            sources[item_id].append((image_id, source))
        renamed: dict[int, int] = {}
        for item_id, stored in tqdm(sources.items(), desc="re-locating", unit="item", disable=not progress):
            try:
                images = [self.load(source) for _, source in stored]
            except SnapshopError:
                continue  # keep the item as it was indexed
            if all(is_clean_shot(image) for image in images):
                continue
            boxes = [found[0] for found in self.encoder.locate(images)]
            described = self.encoder.describe([crop(image, box) for image, box in zip(images, boxes)])
            item = self.store.item(item_id)
            fields = item_fields(item)
            new_ids, = self.store.upsert_items([NewItem(item_id, item["category"], fields, [
                _new_image(item_id, source, image, box, descriptor)
                for (_, source), image, box, descriptor in zip(stored, images, boxes, described)])])
            renamed.update((old, new) for (old, _), new in zip(stored, new_ids))
        return renamed

    def _group_duplicates(self, item_ids: list[str], formerly_linked: set[str], *, progress: bool) -> None:
        """Link the written items to the identical items already indexed; regroup everything touched."""
        if self.codec is None or not item_ids:
            return
        self._refresh()
        image_ids = self.store.images_of(item_ids)
        vectors = self.store.vectors(image_ids)
        rules = DuplicateRules(self.settings.duplicate_accept, self.settings.duplicate_candidate,
                               self.settings.duplicate_inliers, self.settings.duplicate_correlation,
                               self.settings.duplicate_colour_distance)
        verifier = DuplicateVerifier(self.load, rules)
        links: list[tuple[str, str, dict]] = []
        for start in tqdm(range(0, len(image_ids), INGEST_CHUNK), desc="identical items", unit="batch",
                          disable=not progress):
            rows = slice(start, start + INGEST_CHUNK)
            features = vectors.features[rows].astype(np.float32)
            found = self.index.search(self.codec.rotation.query(features), features, self.settings.shortlist)
            info = self.store.image_info(np.unique(np.concatenate([found.image_ids.ravel(), vectors.image_ids[rows]])))
            for image_id, neighbours, scores in zip(vectors.image_ids[rows], found.image_ids, found.scores):
                mine = info.get(int(image_id))
                nearest = slice(0, DUPLICATE_NEIGHBOURS + 1)  # itself included; partitions are merged best first
                for other_id, cosine in zip(neighbours[nearest], scores[nearest]):
                    other = info.get(int(other_id))
                    if mine is None or other is None or other.item_id == mine.item_id \
                            or cosine < rules.min_cosine:
                        continue
                    check = verifier.check(_image_ref(int(image_id), mine), _image_ref(int(other_id), other),
                                           float(cosine))
                    if check.same:
                        links.append((mine.item_id, other.item_id, check.to_json()))
        self._save_links(links, item_ids, formerly_linked)

    def _save_links(self, links: list[tuple[str, str, dict]], item_ids: list[str], formerly_linked: set[str]) -> None:
        """Store the links touching the written items (between items indexed here); regroup everything touched."""
        written = set(item_ids)
        held = self.store.existing_items({item for a, b, _ in links for item in (a, b)})
        with self.store.transaction():
            self.store.link_duplicates([(a, b, evidence) for a, b, evidence in links
                                        if (a in written or b in written) and a in held and b in held])
            self.store.regroup(written | formerly_linked)

    # --- reading state -------------------------------------------------------------------

    def _reload(self) -> None:
        """Load the fitted models and open the live index from the store and segment files."""
        with self.store.snapshot():
            codec_info = self.store.fitted("codec")
            self.codec = Codec.from_blob(*_blob_and_source(codec_info)) if codec_info else None
            self.category_model = _category_model(self.store.fitted("category"), self.settings.threads)
            self.no_match = no_match_point(self.store.fitted("match"), self.settings.no_match_keep)
            click_objectness = self.store.fitted("click_objectness")
            self.encoder.objectness = _objectness_model(click_objectness or self.store.fitted("objectness"))
            self.boxes_from_clicks = click_objectness is not None
        codec_id = hashlib.sha1(codec_info[0]).hexdigest()[:16] if codec_info else ""
        settings = self.settings
        params = IndexParams.from_settings(settings, bits=self.manifest.bits, dim=self.manifest.dim)
        # queries on the old backend finish there
        self.index = open_backend(self.folder.path, self.store, params, codec_id, settings)

    def _refresh(self) -> None:
        """Catch up with committed writes (this process's or another's); reload after a refit;
        move to another model version when one was activated (`snapshop train`, `model use`)."""
        if self.folder.active_stamp() != self._active_stamp:
            with self._reload_lock:
                self._follow_active_version()
        if self.index.refresh():
            with self._reload_lock:
                if self.index.refresh():
                    self._reload()

    def _follow_active_version(self) -> None:
        """Open the active version's model, store and index, and only then swap them in: a
        search sees the old version or the new one, never a mix."""
        stamp = self.folder.active_stamp()
        if stamp == self._active_stamp:
            return
        folder = self.folder.active()
        if folder.path.resolve() != self.folder.path.resolve():
            moved = Engine(folder, self.settings, folder.read_manifest())
            # The old store and index are left to the garbage collector: a search of another
            # thread may still be reading them.
            self.folder, self.manifest, self.store, self.encoder = moved.folder, moved.manifest, moved.store, moved.encoder
            self.codec, self.category_model = moved.codec, moved.category_model
            self.no_match, self.boxes_from_clicks = moved.no_match, moved.boxes_from_clicks
            self.index = moved.index
            log.info("now searching model version %s", self.manifest.model_version)
        self._active_stamp = stamp

    @property
    def versions(self) -> list[dict]:
        """Every model version of the index: version, model name, items, whether searches use it."""
        active = self.folder.active().path.resolve()
        listed = []
        for version, folder in self.folder.versions():
            manifest = folder.read_manifest()
            training = folder.path / "training.json"
            listed.append({"version": version, "model": manifest.model_name, "active": folder.path.resolve() == active,
                           "folder": str(folder.path),
                           "training": json.loads(training.read_text()) if training.is_file() else None})
        return listed

    @property
    def match_threshold(self) -> float | None:
        """The cosine under which a result is not a close match; None when the calibration is not used."""
        return self.no_match["threshold"] if self.no_match["used"] else None

    @property
    def categories(self) -> list[str]:
        return [name for name in self.index.partitions if name]

    def stats(self) -> dict:
        counts = self.store.counts()
        codec_info = self.store.fitted("codec")
        category_info = self.store.fitted("category")
        match_info = self.store.fitted("match")
        from_clicks = self.store.fitted("click_objectness")
        learned = from_clicks or self.store.fitted("objectness")
        objectness = self.encoder.objectness
        return {
            "items": counts["items"],
            "images": counts["images"],
            "pending_images": counts["pending"],
            "partitions": self.index.partitions,
            "shards": self.index.params.shards,
            "replicas": self.index.params.replicas,
            "segments": self.index.segment_report(),
            "change_log_seq": self.index.seq,
            "model": {"name": self.manifest.model_name, "version": self.manifest.model_version},
            "dim": self.manifest.dim,
            "bits": self.manifest.bits,
            "pooling": self.manifest.pooling,
            "projection": codec_info[1] if codec_info else None,
            "no_match": {**(match_info[1] if match_info else {}), **self.no_match},
            "product_groups": len(self.store.duplicate_groups()),
            "category_model": {
                "classes": [str(c) for c in self.category_model.classes] if self.category_model else [],
                "classifier": bool(self.category_model and self.category_model.classifier is not None),
                "network": bool(self.category_model and self.category_model.network is not None),
                **(category_info[1] if category_info else {}),
            },
            "localizer": {
                "model": "off" if not self.encoder.localize else objectness.kind if objectness else "SCDA",
                "learned_from": "clicks" if from_clicks else "synthetic views" if learned else None,
                **(learned[1] if learned else {}),
            },
            "index": str(self.folder.path),
        }

    def item(self, item_id: str) -> dict | None:
        return self.store.item(item_id)

    # --- search --------------------------------------------------------------------------

    def search(self, queries: Sequence[Query], *, k: int | None = None, category: str | None = None,
               colour: str | None = None, explain: bool = False) -> list[SearchResult]:
        """Search a batch of query photos; a query that fails carries its error, the others run.
        `colour` keeps only products of that basic colour; `explain` adds per-partition
        candidates and timings to each result."""
        k = self.settings.k if k is None else k
        colour = check_colour(colour) if colour is not None else None
        if k < 1:
            raise SnapshopError(f"k must be at least 1, got {k}")
        self._refresh()
        if category is not None and category not in self.index.partitions:
            known = ", ".join(self.categories) or "none"
            raise SnapshopError(f"unknown category {category!r}; this index has: {known}")
        results = [SearchResult(query=q.name) for q in queries]
        if self.codec is None or len(self.index) == 0:
            raise IndexError_(f"{self.folder.path}: the index is empty; add a catalog first")
        timer = _StageTimer()
        with timer("decode"):
            images: dict[int, Image.Image] = {}
            given: dict[int, Box] = {}
            for position, query in enumerate(queries):
                try:
                    images[position] = self.load(query.source)
                    if query.box is not None:
                        given[position] = _given_box(query.box, images[position])
                except SnapshopError as exc:
                    images.pop(position, None)
                    results[position].error = str(exc)
        ok = list(images)
        if not ok:
            return results
        with timer("detect"):
            need_boxes = [p for p in ok if p not in given]
            found = dict(zip(need_boxes, self.encoder.locate_with_candidates([images[p] for p in need_boxes])))
            for p in ok:
                results[p].boxes = [given[p]] if p in given else found[p][0]
            candidates = {p: [given[p]] if p in given else found[p][0][:1] if self.boxes_from_clicks else found[p][1]
                          for p in ok}
            network_says = self._choose_main_boxes(results, images, candidates, category)
        with timer("embed"):
            crops = [crop(images[p], results[p].boxes[0]) for p in ok]
            descriptors = self.encoder.describe_regions(crops)
            features, projections = self.codec.query(descriptors.pooled)
        with timer("category"):
            partitions = self._choose_partitions(results, ok, crops, descriptors, features, projections, category,
                                                 network_says)
        with timer("search"):
            candidates = self._search_partitions(results, ok, features, projections, partitions, k, explain)
        with timer("curate"):
            for p in ok:
                options = self._curation(colour, images[p], results[p].boxes[0])
                results[p].results = self._hits(*candidates[p], k, options)
                if self.settings.no_match and self.match_threshold is not None:
                    close = bool(results[p].results) and results[p].results[0].score >= self.match_threshold
                    results[p].match = "close" if close else "none"
        for p in ok:
            results[p].timing_ms = timer.per_query(len(ok))
        return results

    def _choose_main_boxes(self, results: list[SearchResult], images: dict[int, Image.Image],
                           candidates: dict[int, list[Box]], forced: str | None) -> dict[int, np.ndarray]:
        """With a category network, make each query's main box the candidate most likely to show
        a catalog product: the network's confidence that its crop shows a catalog category (the
        forced one, if given) times the objectness model's peak P(product) in it. A cluttered
        photo's most product-like region is often another object, and the product a fainter
        one; a crop of background can look like a product to the network alone. Measured on
        1,000 SIMULATED shopper photos: box IoU 0.558 -> 0.572, category 0.735 -> 0.771 for the
        network's choice, for 3.7 network passes a photo instead of one; the objectness factor
        then lifted the network's accuracy 0.768 -> 0.784 and the IoU 0.570 -> 0.586
        (docs/benchmarks.md). A box given with the query, or by an objectness model learned from
        clicks, is its only candidate: on a version trained from SIMULATED clicks, the network's
        choice among the click model's candidates lowered box IoU 0.541 -> 0.500 and recall@1
        0.428 -> 0.399. Returns the network's probabilities of each query's chosen crop, by
        position (none without a network)."""
        network = self.category_model.network if self.category_model is not None else None
        if network is None or not candidates:
            return {}
        positions = list(candidates)
        crops = [crop(images[p], box) for p in positions for box in candidates[p]]
        probabilities = network.probabilities(crops)
        classes = list(self.category_model.classes)
        confidence = probabilities[:, classes.index(forced)] if forced in classes else probabilities.max(axis=1)
        product_likelihood = confidence * np.array([box.score for p in positions for box in candidates[p]])
        chosen: dict[int, np.ndarray] = {}
        start = 0
        for p in positions:
            count = len(candidates[p])
            best = start + int(np.argmax(product_likelihood[start : start + count]))
            main = candidates[p][best - start]
            results[p].boxes = [main] + [box for box in results[p].boxes if box.as_list() != main.as_list()]
            chosen[p] = probabilities[best]
            start += count
        return chosen

    def _choose_partitions(self, results: list[SearchResult], ok: list[int], crops: list[Image.Image],
                           descriptors: Descriptions, features: np.ndarray, projections: np.ndarray,
                           forced: str | None, network_says: dict[int, np.ndarray]) -> list[list[str] | None]:
        """Per query, the categories to search (None = all), filling in the category prediction
        (`network_says`: the network's probabilities already computed, by position)."""
        model = self.category_model
        if forced is not None:
            for p in ok:
                results[p].category = CategoryScore(forced, 1.0, forced=True)
            return [[forced]] * len(ok)
        if model is None or len(model.classes) == 0:
            return [None] * len(ok)
        knn = self.index.search(projections, features,
                                min(self.settings.shortlist, KNN_SHORTLIST_PER_VOTE * self.settings.category_knn))
        top = knn.image_ids[:, : self.settings.category_knn]
        class_of = {name: i for i, name in enumerate(model.classes)}
        labels = np.vectorize(lambda name: class_of.get(name, -1), otypes=[np.int64])(
            knn.partitions[:, : self.settings.category_knn]) if top.size else np.zeros(top.shape, np.int64)
        labels = np.where(top >= 0, labels, -1)
        known = np.stack([network_says[p] for p in ok]) if network_says else None
        probabilities = model.predict(crops, descriptors, labels, knn.scores[:, : self.settings.category_knn], known)
        probabilities = probabilities * np.isin(model.classes, self.categories)  # skip emptied categories
        chosen: list[list[str] | None] = []
        for p, probs in zip(ok, probabilities):
            order = np.argsort(-probs)
            best = str(model.classes[order[0]])
            results[p].category = CategoryScore(best, float(probs[order[0]]))
            names = [best] + ([""] if "" in self.index.partitions else [])  # uncategorised items too
            if probs[order[0]] < self.settings.runner_up_below and len(order) > 1:
                names.append(str(model.classes[order[1]]))
            chosen.append(names)
        return chosen

    def _search_partitions(self, results: list[SearchResult], ok: list[int], features: np.ndarray, projections: np.ndarray,
                           partitions: list[list[str] | None], k: int,
                           explain: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Re-ranked candidates (image ids, cosines) of each query, by position in the batch."""
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        groups: dict[tuple[str, ...] | None, list[int]] = defaultdict(list)
        for row, names in enumerate(partitions):
            groups[tuple(names) if names is not None else None].append(row)
        shortlist = max(self.settings.shortlist, 4 * CURATION_POOL * k)
        for names, rows in groups.items():
            candidates = self.index.search(projections[rows], features[rows], shortlist, list(names) if names else None,
                                           explain=explain)
            for row, ids, scores in zip(rows, candidates.image_ids, candidates.scores):
                found[ok[row]] = (ids, scores)
                results[ok[row]].searched_categories = list(names) if names else self.categories
                if explain:
                    results[ok[row]].explain = candidates.explain
        return found

    def _curation(self, colour: str | None, image: Image.Image, box: Box) -> CurationOptions:
        settings = self.settings
        query_colours = ([c.to_json() for c in dominant_colours(image, box.as_list())]
                         if settings.colour_weight else [])
        return CurationOptions(collapse=settings.collapse_duplicates, quality_weight=settings.quality_weight,
                               diversity=settings.diversity, colour_weight=settings.colour_weight, colour=colour,
                               query_colours=query_colours)

    def _hits(self, image_ids: np.ndarray, scores: np.ndarray, k: int, options: CurationOptions) -> list[Hit]:
        """Curated results: the best image of each candidate item (images deleted since the index
        last caught up are skipped), then quality, colour, identical items and diversity."""
        pool: dict[str, Candidate] = {}
        sources: dict[int, ImageInfo] = {}
        wanted = CURATION_POOL * k
        valid = image_ids >= 0
        image_ids, scores = image_ids[valid], scores[valid]
        for start in range(0, len(image_ids), wanted):
            block = image_ids[start : start + wanted]
            info = self.store.image_info(block)
            for image_id, score in zip(block, scores[start : start + wanted]):
                image = info.get(int(image_id))
                if image is not None and image.item_id not in pool:
                    sources[int(image_id)] = image
                    pool[image.item_id] = Candidate(image.item_id, int(image_id), float(score), image.group,
                                                    image.quality, image.colours)
            if len(pool) >= wanted:
                break
        vectors = self.store.vectors([c.image_id for c in pool.values()])
        unit = vectors.features.astype(np.float32)
        unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        features = dict(zip(vectors.image_ids.tolist(), unit))
        threshold = self.match_threshold if self.settings.no_match else None
        hits = []
        cards = curate(list(pool.values()), options, k, features)
        items = self.store.items(card.candidate.item_id for card in cards)
        for card in cards:
            candidate = card.candidate
            variants = other_colours(card, list(pool.values()), features)
            item = items.get(candidate.item_id, {})
            image = sources[candidate.image_id]
            hits.append(Hit(candidate.item_id, candidate.score, image.source, image.category or None,
                            item_fields(item), group=candidate.group, also=card.also, quality=candidate.quality,
                            colours=candidate.colours, signals=card.signals, curated_score=card.score,
                            close=None if threshold is None else candidate.score >= threshold,
                            other_colours=variants, image_number=_position(item.get("images", []), image.source)))
        return hits

    @property
    def backbone(self) -> Backbone:
        return self.encoder.backbone

    def load(self, source: str | Path | bytes) -> Image.Image:
        """Decode an image with this engine's size limits (the one loader for every path in)."""
        return load_image(source, max_pixels=self.settings.max_pixels, max_bytes=self.settings.max_image_bytes)


class _StageTimer:
    """Wall-clock time per pipeline stage for one batch."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000

    def per_query(self, count: int) -> dict[str, float]:
        return {stage: ms / count for stage, ms in self.ms.items()}


Embedder = Callable[[Sequence[CatalogRow]], "list[NewImage | str]"]


def embed_rows(encoder: ImageEncoder, load: Callable[[Path], Image.Image],
               rows: Sequence[CatalogRow]) -> list[NewImage | str]:
    """Decode (with `load`), localize and describe catalog rows in batches: a NewImage per
    row, or the reason it could not be read. Runs in the engine or in a Ray worker."""
    outcomes: list[NewImage | str] = [""] * len(rows)
    decoded: list[tuple[int, CatalogRow, Image.Image]] = []
    for position, row in enumerate(rows):
        try:
            decoded.append((position, row, load(row.image)))
        except SnapshopError as exc:
            outcomes[position] = str(exc)
    boxes = encoder.locate([image for _, _, image in decoded])
    descriptors = encoder.describe([crop(image, found[0]) for (_, _, image), found in zip(decoded, boxes)])
    for (position, row, image), found, descriptor in zip(decoded, boxes, descriptors):
        outcomes[position] = _new_image(row.item_id, str(row.image), image, found[0], descriptor)
    return outcomes


def _chunks(items: list[list[CatalogRow]], images_per_chunk: int) -> Iterator[list[list[CatalogRow]]]:
    chunk: list[list[CatalogRow]] = []
    size = 0
    for rows in items:
        chunk.append(rows)
        size += len(rows)
        if size >= images_per_chunk:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _grown(info: dict, images: int, min_fit_images: int) -> bool:
    """A fit is due when the catalog doubled since the last one, or outgrew the generic fallback."""
    if info.get("source") == "generic" and images >= min_fit_images:
        return True
    return images >= 2 * info.get("fitted_on", 0)


def _blob_and_source(info: tuple[bytes, dict]) -> tuple[bytes, str]:
    return info[0], info[1].get("source", "catalog")


def _category_model(info: tuple[bytes, dict] | None, threads: int) -> CategoryModel | None:
    if info is None:
        return None
    arrays = load_arrays(info[0])
    classifier = None
    if "coef" in arrays:
        classifier = CategoryClassifier()
        classifier.classes_ = arrays["classes"]
        classifier.coef_, classifier.intercept_ = arrays["coef"], arrays["intercept"]
    network = CategoryNetwork(arrays["network"].tobytes(), threads=threads) if "network" in arrays else None
    return CategoryModel(arrays["classes"], classifier, float(info[1].get("alpha", 0.0)), network)


def _objectness_blob(model: CellObjectness) -> bytes:
    return save_arrays(**model.to_arrays())


def _objectness_model(info: tuple[bytes, dict] | None) -> CellObjectness | None:
    return None if info is None else objectness_from_arrays(load_arrays(info[0]))


def _split(count: int, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified held-out / train split of `count` labelled rows."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held.extend(members[: max(1, int(len(members) * HELD_OUT_FRACTION))])
    held = np.array(sorted(held))
    if len(held) > MAX_HELD_OUT:
        held = np.sort(rng.choice(held, MAX_HELD_OUT, replace=False))
    train = np.setdiff1d(np.arange(count), held)
    return held, train


def _expand(classifier: CategoryClassifier, probabilities: np.ndarray, class_count: int) -> np.ndarray:
    """Probabilities over all classes, for a classifier that saw only some of them."""
    full = np.zeros((len(probabilities), class_count))
    full[:, classifier.classes_.astype(int)] = probabilities
    return full


def _given_box(box: list[int], image: Image.Image) -> Box:
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
        raise SnapshopError(f"box {box} is not inside the {image.width}x{image.height} image")
    return Box(x0, y0, x1, y1, 1.0)


def no_match_point(match: tuple[bytes, dict] | None, keep: float) -> dict:
    """The no-match threshold of a calibration (the stored first scores of true matches and of
    strangers): the highest that keeps `keep` of the true matches close, with the shares it
    predicts, and whether it is used (strangers under it `NO_MATCH_EVIDENCE` times as often)."""
    scores = load_arrays(match[0]) if match else {}
    if "true" not in scores:
        return {"threshold": None, "used": False}
    candidates, kept, refused = threshold_sweep(scores["true"], scores["false"])
    best = np.flatnonzero(kept >= keep)[-1]
    missed = max(1 - kept[best], 1 / len(scores["true"]))
    return {"threshold": float(candidates[best]), "close_when_right": round(float(kept[best]), 4),
            "none_when_absent": round(float(refused[best]), 4), "used": bool(refused[best] >= NO_MATCH_EVIDENCE * missed)}


def threshold_sweep(true: np.ndarray, false: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every score seen as a threshold t: (thresholds, share of `true` >= t, share of `false` < t)."""
    candidates = np.unique(np.concatenate([true, false]))
    kept = 1 - np.searchsorted(np.sort(true), candidates) / len(true)
    refused = np.searchsorted(np.sort(false), candidates) / len(false)
    return candidates, kept, refused


def _view_pairs(descriptors: np.ndarray, views: CatalogViews,
                keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Matching pairs for learned whitening: each catalog image with its views (those `keep`
    marks), twice: on the view's true box and on the box found."""
    keep = np.ones(len(views.rows), bool) if keep is None else keep
    rows = views.rows[keep]
    return (descriptors[np.concatenate([rows, rows])],
            np.concatenate([views.truth.pooled[keep], views.found.pooled[keep]]))


def _layout_examples(views: CatalogViews, chosen: np.ndarray, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classifier examples of the chosen views: the catalog image's layout (once per image, however
    many views it has), the view's on its true box and on the box found, each labelled with the
    catalog image's category."""
    first = np.zeros(len(views.rows), bool)
    first[np.unique(views.rows, return_index=True)[1]] = True
    picks = ((views.catalog.layout, chosen & first), (views.truth.layout, chosen), (views.found.layout, chosen))
    return (np.concatenate([part[rows] for part, rows in picks]).astype(np.float32),
            np.concatenate([shown[rows] for _, rows in picks]))


def _front_examples(views: CatalogViews, chosen: np.ndarray, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category network examples of the chosen views, as `_layout_examples`: front maps of the
    catalog image (once), the view's true-box and found-box crops, each with the image's category."""
    per_image = len(views.rows) // len(views.fronts["catalog"])  # a catalog image's views are consecutive
    first = np.zeros(len(views.rows), bool)
    first[::per_image] = True
    fronts = np.concatenate([views.fronts["catalog"][np.flatnonzero(chosen & first) // per_image],
                             views.fronts["truth"][chosen], views.fronts["found"][chosen]])
    return fronts, np.concatenate([shown[chosen & first], shown[chosen], shown[chosen]])


def _classifier_input(classifier: CategoryClassifier, descriptors: Descriptions) -> np.ndarray:
    """The regional layouts; the pooled descriptors for a classifier fitted on them (older indexes)."""
    if classifier.coef_.shape[1] == descriptors.pooled.shape[1]:
        return descriptors.pooled
    return descriptors.layout


def _new_image(item_id: str, source: str, image: Image.Image, box: Box, descriptor: np.ndarray) -> NewImage:
    """A catalog image to store, with its quality and the product's colours inside its box."""
    corners = box.as_list()
    colours = [colour.to_json() for colour in dominant_colours(image, corners)]
    return NewImage(item_id, source, corners, descriptor, image_quality(image, corners), colours)


def _distinct_images(images: list[NewImage], descriptors: np.ndarray) -> list[int]:
    """Positions of the images of one item to keep: of near-identical ones, the best-quality one."""
    unit = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    order = sorted(range(len(images)), key=lambda i: -(images[i].quality.score if images[i].quality else 0.0))
    kept: list[int] = []
    for i in order:
        if all(float(unit[i] @ unit[j]) < SAME_IMAGE_COSINE for j in kept):
            kept.append(i)
    return sorted(kept)


def _position(sources: list[str], source: str) -> int:
    return sources.index(source) if source in sources else 0


def item_fields(item: dict) -> dict:
    """The catalog's own fields of an item (title, price, ...), without what the store adds."""
    return {key: value for key, value in item.items()
            if key not in ("item_id", "category", "images", "main_image", "group")}


def _image_ref(image_id: int, info: ImageInfo) -> ImageRef:
    return ImageRef(image_id, info.item_id, info.source, info.colours)
