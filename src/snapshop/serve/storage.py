"""Files the server writes: searched photos, uploaded catalog images, and the click log.

Every file name is made here from the content's SHA-256, never from anything the client sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from snapshop.errors import ImageError

# Formats a catalog image may be kept in, with the extension it is saved under.
CATALOG_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
QUERY_ID_PATTERN = r"^[0-9a-f]{64}$"


@dataclass(frozen=True)
class StoredPhoto:
    """A photo kept on disk: its id (content hash), path, and decoded size."""

    id: str
    path: Path
    width: int
    height: int


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file whole or not at all (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class PhotoFolder:
    """Content-addressed photos in one folder: `<sha256>.<ext>`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def keep_query(self, data: bytes, image: Image.Image) -> StoredPhoto:
        """Keep a searched photo as `<sha256>.jpg`: the decoded, upright image re-encoded (no EXIF kept)."""
        photo_id = hashlib.sha256(data).hexdigest()
        path = self.folder / f"{photo_id}.jpg"
        if not path.is_file():
            _atomic_write(path, lambda out: image.save(out, format="JPEG", quality=92))
        self._kept(path)
        return StoredPhoto(photo_id, path, image.width, image.height)

    def _kept(self, path: Path) -> None:
        """Called with each photo kept or searched again (a bounded folder drops its oldest here)."""

    def catalog_image_path(self, data: bytes) -> Path:
        """Where an uploaded catalog image is kept: `<sha256>.<ext>`, the extension from its content."""
        with Image.open(io.BytesIO(data)) as sniffed:
            kind = sniffed.format or ""
        if kind not in CATALOG_FORMATS:
            raise ImageError(f"upload: {kind or 'this'} format is not accepted for catalog images "
                             f"(use {', '.join(sorted(set(CATALOG_FORMATS) - {'MPO'}))})")
        return self.folder / f"{hashlib.sha256(data).hexdigest()}.{CATALOG_FORMATS[kind]}"

    def keep_bytes(self, path: Path, data: bytes) -> None:
        """Keep `data` at `path` (a path this folder made) unless it is there already."""
        if not path.is_file():
            _atomic_write(path, lambda out: out.write(data))

    def query_path(self, photo_id: str) -> Path | None:
        """The kept search photo with this id, if there is one (the id is a hex digest, checked by the caller)."""
        path = self.folder / f"{photo_id}.jpg"
        return path if path.is_file() else None


class BoundedPhotoFolder(PhotoFolder):
    """A PhotoFolder that keeps at most `max_files` photos and `max_bytes` bytes of them.

    The photo searched least recently goes first (by file time at start-up, by use after).
    A click on a dropped photo is refused as an unknown query.
    """

    def __init__(self, folder: Path, *, max_files: int, max_bytes: int) -> None:
        super().__init__(folder)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        found = [(entry.stat(), entry) for entry in folder.glob("*.jpg")] if folder.is_dir() else []
        found.sort(key=lambda pair: pair[0].st_mtime)
        self._sizes: OrderedDict[Path, int] = OrderedDict((path, stat.st_size) for stat, path in found)
        self._bytes = sum(self._sizes.values())
        with self._lock:
            self._drop_oldest()

    def _kept(self, path: Path) -> None:
        with self._lock:
            if path in self._sizes:
                self._sizes.move_to_end(path)
                return
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # dropped meanwhile by another request
                return
            self._sizes[path] = size
            self._bytes += size
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        while len(self._sizes) > 1 and (len(self._sizes) > self.max_files or self._bytes > self.max_bytes):
            path, size = self._sizes.popitem(last=False)
            self._bytes -= size
            path.unlink(missing_ok=True)


class ClickLog:
    """DESIGN.md's click log: JSON Lines, one search impression per line, appended under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, query_image: Path, box: list[int] | None, shown: list[str], clicked: list[str]) -> dict[str, Any]:
        """Append one line and return it; `query_image` is written relative to the log's folder when inside it."""
        try:
            image = query_image.relative_to(self.path.parent)
        except ValueError:
            image = query_image
        record = {"ts": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "query_image": image.as_posix(),
                  "box": box, "shown": shown, "clicked": clicked}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as log_file:
                log_file.write(line)
                log_file.flush()
                os.fsync(log_file.fileno())
        return record
