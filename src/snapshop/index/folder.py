"""The index folder: its manifest, model file, metadata database and writer lock.

```
snapshop-index/
  manifest.json   format version, model name/version/preprocessing, dim, bits, pooling
  model.onnx      the backbone every vector in this index was computed with
  meta.sqlite     items, images, vectors, fitted projection / ITQ / classifier
  write.lock      held by the one process that is writing
  versions/V/     a later model version (`snapshop train`): a whole index folder like this one
  active.json     which version searches use; absent: this folder's own
```
Switching versions is one atomic replace of `active.json`; a running engine notices it
before its next search and moves over (`Engine._refresh`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from snapshop.errors import IndexError_
from snapshop.index.segments import fsync_folder
from snapshop.models.backbone import ModelSpec, Preprocessing, file_digest

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
DATABASE = "meta.sqlite"
LOCK = "write.lock"
ACTIVE = "active.json"
VERSIONS = "versions"


@dataclass(frozen=True)
class IndexManifest:
    """What an index was built with; a query must use exactly the same."""

    format: int
    model_name: str
    model_version: str
    preprocessing: Preprocessing
    dim: int
    bits: int
    pooling: str

    def to_json(self) -> dict:
        data = asdict(self)
        data["preprocessing"] = asdict(self.preprocessing)
        return data


class IndexFolder:
    """Paths and files of one index folder."""

    def __init__(self, path: Path, root: Path | None = None) -> None:
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path  # the folder users name; holds the lock

    # --- model versions ------------------------------------------------------------------

    def active(self) -> "IndexFolder":
        """The folder of the version searches use."""
        pointer = self.root / ACTIVE
        if not pointer.is_file():
            return IndexFolder(self.root)
        try:
            version = json.loads(pointer.read_text())["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexError_(f"{pointer}: damaged ({exc}); write {{\"version\": ...}} or delete it") from None
        return self.version(version)

    def version(self, version: str) -> "IndexFolder":
        """The folder of a model version (the top folder's own, or one under versions/)."""
        if (self.root / MANIFEST).is_file() and IndexFolder(self.root).read_manifest().model_version == version:
            return IndexFolder(self.root)
        folder = IndexFolder(self.root / VERSIONS / version, root=self.root)
        if not folder.exists():
            known = ", ".join(v for v, _ in self.versions()) or "none"
            raise IndexError_(f"{self.root}: no model version {version!r} (known: {known})")
        return folder

    def versions(self) -> list[tuple[str, "IndexFolder"]]:
        """(model version, folder) of every version, oldest first."""
        found = [IndexFolder(self.root)] if (self.root / MANIFEST).is_file() else []
        found += sorted((IndexFolder(path.parent, root=self.root) for path in (self.root / VERSIONS).glob(f"*/{MANIFEST}")),
                        key=lambda folder: (folder.path / MANIFEST).stat().st_mtime_ns)
        return [(folder.read_manifest().model_version, folder) for folder in found]

    def new_version_folder(self, version: str) -> "IndexFolder":
        return IndexFolder(self.root / VERSIONS / version, root=self.root)

    def activate(self, version: str) -> None:
        """Make `version` the one searches use (one atomic, durable file replace)."""
        self.version(version)
        _atomic_write(self.root / ACTIVE, json.dumps({"version": version}))
        fsync_folder(self.root)

    def active_stamp(self) -> tuple[int, int] | None:
        """Changes whenever `activate` runs: a cheap check for a switch."""
        try:
            stat = (self.root / ACTIVE).stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    @property
    def database(self) -> Path:
        return self.path / DATABASE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def create(self, spec: ModelSpec, *, dim: int, bits: int, pooling: str) -> IndexManifest:
        """Write a new index folder holding a copy of the model."""
        if self.path.exists() and not self.path.is_dir():
            raise IndexError_(f"{self.path}: exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_copy(spec.onnx_path, self.model_path)
        manifest = IndexManifest(FORMAT_VERSION, spec.name, spec.version, spec.preprocessing, dim, bits, pooling)
        _atomic_write(self.path / MANIFEST, json.dumps(manifest.to_json(), indent=2))
        return manifest

    def read_manifest(self) -> IndexManifest:
        if not self.exists():
            raise IndexError_(f"{self.path}: no snapshop index here (run `snapshop add CATALOG --index {self.path}`)")
        try:
            data = json.loads((self.path / MANIFEST).read_text())
            if data.get("format") != FORMAT_VERSION:
                raise IndexError_(f"{self.path}: index format {data.get('format')} is not supported (expected {FORMAT_VERSION})")
            data["preprocessing"] = Preprocessing(**data["preprocessing"])
            return IndexManifest(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise IndexError_(f"{self.path}: the index manifest is damaged ({exc})") from None

    def model_spec(self, manifest: IndexManifest) -> ModelSpec:
        """The index's own model file, checked against the version in the manifest."""
        if not self.model_path.is_file():
            raise IndexError_(f"{self.path}: the model file {MODEL_FILE} is missing")
        if file_digest(self.model_path)[:16] != manifest.model_version:
            raise IndexError_(f"{self.path}: {MODEL_FILE} is not the model version {manifest.model_version} this index was built with")
        return ModelSpec(manifest.model_name, self.model_path, manifest.preprocessing)

    @contextmanager
    def write_lock(self, *, for_this_thread: bool = False) -> Iterator[None]:
        """Hold the single-writer lock of the whole index (every version); a second writer is
        refused with a clear message. Taken `for_this_thread`, the writes this thread makes
        inside (several engines' adds, then a version switch) run under it as one."""
        held: set[Path] = _held_locks.__dict__.setdefault("roots", set())
        self.root.mkdir(parents=True, exist_ok=True)
        root = self.root.resolve()
        if root in held:
            yield
            return
        with open(self.root / LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexError_(f"{self.root}: another process is writing to this index; try again when it is done") from None
            if for_this_thread:
                held.add(root)
            try:
                yield
            finally:
                held.discard(root)
                fcntl.flock(handle, fcntl.LOCK_UN)


_held_locks = threading.local()  # index roots whose write lock this thread holds


def _atomic_write(path: Path, text: str) -> None:
    scratch = path.with_suffix(path.suffix + ".tmp")
    with open(scratch, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)


def _atomic_copy(source: Path, target: Path) -> None:
    scratch = target.with_suffix(target.suffix + ".tmp")
    shutil.copyfile(source, scratch)
    with open(scratch, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(scratch, target)
