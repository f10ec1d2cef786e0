"""The index backend interface: what `Engine` needs from the searchable side of an index.

Two implementations: `LiveIndex` (embedded faiss segments in the index folder, the
default) and `MilvusIndex` (`snapshop.index.milvus`, a Milvus collection; needs the
`cluster` extra). Both follow the SQLite change log of `index.store`, the source of
truth, so either can be rebuilt from it and both answer with the same `Candidates`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from snapshop.index.live import Candidates, IndexParams, LiveIndex
from snapshop.index.store import MetadataStore
from snapshop.settings import Settings

BACKENDS = ("faiss", "milvus")


@runtime_checkable
class IndexBackend(Protocol):
    """The searchable images of one index, kept current from the store's change log."""

    params: IndexParams
    seq: int  # the change-log position this backend holds

    def __len__(self) -> int: ...

    @property
    def partitions(self) -> dict[str, int]:
        """Searchable image count per partition (category), empty ones left out."""

    def search(self, projections: np.ndarray, features: np.ndarray, shortlist: int,
               partitions: Sequence[str] | None = None, *, explain: bool = False) -> Candidates:
        """The best `shortlist` images per query, best first: a shortlist by the codes (for the
        queries' float `projections` on the code's axes, through the code decoder: `Codec.query`),
        re-ranked by float cosine with `features`. With `explain`, candidates and timings per
        partition (and shard) searched."""

    def refresh(self) -> bool:
        """Catch up with the change log; True when the codec was refit (the caller reloads)."""

    def due_for_compaction(self) -> list[tuple[str, int]]:
        """(partition, shard)s that need compaction now."""

    def compact(self, keys: Sequence[tuple[str, int]] | None = None) -> list[dict]:
        """Fold pending changes into the searchable base (all partitions when keys is None)."""

    def segment_report(self) -> list[dict]:
        """Per (partition, shard) or per backend segment: what it holds."""

    def close(self) -> None:
        """Release threads and connections."""


def open_backend(folder: Path, store: MetadataStore, params: IndexParams, codec: str,
                 settings: Settings) -> IndexBackend:
    """The backend the `backend` setting names, opened on this index folder."""
    if settings.backend == "milvus":
        from snapshop.index.milvus import MilvusIndex  # the cluster extra: imported only when chosen

        return MilvusIndex(folder, store, params, codec, settings)
    return LiveIndex(folder, store, params, codec)
