"""Read a catalog: a JSON Lines or CSV manifest, or a plain folder of images (DESIGN.md)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from snapshop.errors import ManifestError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
REQUIRED_FIELDS = ("item_id", "image")
CORE_FIELDS = ("item_id", "image", "category")


@dataclass(frozen=True)
class CatalogRow:
    """One image of one catalog item, as a manifest row describes it."""

    line: int
    item_id: str
    image: Path
    category: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowError:
    """A manifest row that could not be used, with the reason."""

    line: int
    reason: str
    item_id: str | None = None


@dataclass
class Catalog:
    """The parsed rows of a catalog and the rows that were rejected while parsing."""

    source: Path
    rows: list[CatalogRow]
    errors: list[RowError]

    @property
    def item_ids(self) -> list[str]:
        """Distinct item ids in manifest order."""
        return list(dict.fromkeys(row.item_id for row in self.rows))


def read_catalog(source: str | Path) -> Catalog:
    """Parse a catalog given as a `.jsonl` / `.csv` manifest or a folder of images.

    A whole-file problem (missing file, no `item_id`/`image` columns) raises ManifestError;
    a bad row is recorded in `Catalog.errors` and the other rows are kept.
    """
    path = Path(source)
    if not path.exists():
        raise ManifestError(f"{path}: no such catalog file or folder")
    path = path.absolute()  # image paths are stored absolute: a server started elsewhere still finds them
    if path.is_dir():
        rows, errors = _read_folder(path), []
    elif path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows, errors = _collect(_jsonl_records(path), path.parent)
    elif path.suffix.lower() == ".csv":
        rows, errors = _collect(_csv_records(path), path.parent)
    else:
        raise ManifestError(f"{path}: a catalog is a .jsonl or .csv manifest or a folder of images")
    if not rows and not errors:
        raise ManifestError(f"{path}: the catalog is empty")
    return Catalog(source=path, rows=rows, errors=errors)


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with _open_text(path) as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON ({exc.msg})"
                continue
            yield number, record if isinstance(record, dict) else "a row must be a JSON object"


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in REQUIRED_FIELDS if name not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: the CSV header lacks {', '.join(missing)}")
        for record in reader:
            if None in record:
                yield reader.line_num, "more values than header columns"
                continue
            yield reader.line_num, {key: value for key, value in record.items() if value not in ("", None)}


def _open_text(path: Path):
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror})") from None


def _collect(
    records: Iterator[tuple[int, dict[str, Any] | str]], root: Path
) -> tuple[list[CatalogRow], list[RowError]]:
    rows: list[CatalogRow] = []
    errors: list[RowError] = []
    try:
        for line, record in records:
            if isinstance(record, str):
                errors.append(RowError(line, record))
                continue
            row = _to_row(line, record, root)
            (rows if isinstance(row, CatalogRow) else errors).append(row)
    except UnicodeDecodeError:
        raise ManifestError(f"{root}: the manifest is not UTF-8 text") from None
    return rows, errors


def _to_row(line: int, record: dict[str, Any], root: Path) -> CatalogRow | RowError:
    item_id = record.get("item_id")
    if item_id is None or str(item_id).strip() == "":
        return RowError(line, "missing item_id")
    item_id = str(item_id).strip()
    image = record.get("image")
    if not isinstance(image, str) or not image.strip():
        return RowError(line, "missing image path", item_id)
    category = record.get("category")
    category = str(category).strip() or None if category is not None else None
    extra = {key: value for key, value in record.items() if key not in CORE_FIELDS}
    image_path = Path(image.strip())
    return CatalogRow(
        line=line,
        item_id=item_id,
        image=image_path if image_path.is_absolute() else root / image_path,
        category=category,
        fields=extra,
    )


def _read_folder(root: Path) -> list[CatalogRow]:
    """Each image file is an item (id = file stem); a sub-folder's name is its category."""
    rows = []
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for number, image in enumerate(files, start=1):
        relative = image.relative_to(root)
        category = relative.parts[0] if len(relative.parts) > 1 else None
        rows.append(CatalogRow(line=number, item_id=image.stem, image=image, category=category))
    return rows
