"""The folder of searched photos stays bounded: the least recently searched go first."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from snapshop.serve.storage import BoundedPhotoFolder


def keep(folder: BoundedPhotoFolder, shade: int) -> Path:
    data = f"photo {shade}".encode()  # the id is the upload's hash; the kept file is the decoded image
    photo = folder.keep_query(data, Image.new("RGB", (40, 30), (shade, shade, shade)))
    assert photo.id == hashlib.sha256(data).hexdigest()
    return photo.path


def test_the_least_recently_searched_photo_goes_first(tmp_path):
    folder = BoundedPhotoFolder(tmp_path / "queries", max_files=3, max_bytes=10**9)
    first, second, third = (keep(folder, shade) for shade in (10, 20, 30))
    assert keep(folder, 10) == first  # searched again: now the most recent
    fourth = keep(folder, 40)
    assert sorted(path.name for path in (tmp_path / "queries").iterdir()) == sorted(
        path.name for path in (first, third, fourth))
    assert not second.exists()


def test_a_byte_limit_drops_the_oldest_but_never_the_photo_just_kept(tmp_path):
    folder = BoundedPhotoFolder(tmp_path / "queries", max_files=100, max_bytes=1)
    first = keep(folder, 10)
    assert first.is_file()
    second = keep(folder, 20)
    assert second.is_file() and not first.exists()


def test_photos_kept_before_a_restart_count_oldest_first(tmp_path):
    old = BoundedPhotoFolder(tmp_path / "queries", max_files=10, max_bytes=10**9)
    paths = [keep(old, shade) for shade in (10, 20, 30)]
    for age, path in zip((300, 200, 100), paths):
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - age))
    BoundedPhotoFolder(tmp_path / "queries", max_files=2, max_bytes=10**9)  # trims at start-up
    assert [path.exists() for path in paths] == [False, True, True]
