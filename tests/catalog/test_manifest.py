"""Catalog manifests (DESIGN.md): JSON Lines, CSV with a header, or a plain folder of images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapshop.catalog.manifest import read_catalog
from snapshop.errors import ManifestError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


# --- JSON Lines ------------------------------------------------------------------------------


def test_jsonl_rows_keep_extra_fields(tmp_path):
    manifest = write_jsonl(tmp_path / "catalog.jsonl", [
        {"item_id": "a1", "image": "img/a1.jpg", "category": "Bag", "title": "Red bag", "price": 19.5,
         "url": "https://shop.example/a1", "tags": ["red", "leather"]},
        {"item_id": "b2", "image": "img/b2.jpg"},
    ])
    catalog = read_catalog(manifest)

    assert catalog.errors == []
    first, second = catalog.rows
    assert (first.item_id, first.category, first.line) == ("a1", "Bag", 1)
    assert first.fields == {"title": "Red bag", "price": 19.5, "url": "https://shop.example/a1", "tags": ["red", "leather"]}
    assert second.category is None and second.fields == {}
    assert second.line == 2


def test_relative_images_resolve_against_the_manifest_folder_and_absolute_ones_are_kept(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "photo.png"
    (tmp_path / "shop").mkdir()
    manifest = write_jsonl(tmp_path / "shop" / "catalog.jsonl", [
        {"item_id": "rel", "image": "img/rel.png"},
        {"item_id": "abs", "image": str(elsewhere)},
    ])
    rows = {row.item_id: row for row in read_catalog(manifest).rows}
    assert rows["rel"].image == tmp_path / "shop" / "img" / "rel.png"
    assert rows["abs"].image == elsewhere


def test_relative_manifest_path_resolves_images_from_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "shop").mkdir()
    write_jsonl(tmp_path / "shop" / "catalog.jsonl", [{"item_id": "a", "image": "a.png"}])
    monkeypatch.chdir(tmp_path)
    row = read_catalog("shop/catalog.jsonl").rows[0]
    assert row.image.is_absolute()  # stored so: a server started in another folder finds it
    assert row.image.resolve() == (tmp_path / "shop" / "a.png").resolve()


def test_several_rows_share_an_item(tmp_path):
    manifest = write_jsonl(tmp_path / "c.jsonl", [
        {"item_id": "a", "image": "a-front.jpg"}, {"item_id": "b", "image": "b.jpg"}, {"item_id": "a", "image": "a-back.jpg"},
    ])
    catalog = read_catalog(manifest)
    assert len(catalog.rows) == 3
    assert catalog.item_ids == ["a", "b"]


def test_bad_rows_are_reported_with_line_numbers_and_good_rows_kept(tmp_path):
    manifest = write_jsonl(tmp_path / "catalog.jsonl", [
        {"item_id": "ok1", "image": "1.jpg"},          # line 1
        "{not json",                                     # line 2
        {"image": "2.jpg"},                              # line 3: no item_id
        {"item_id": "noimg"},                            # line 4: no image
        "",                                              # line 5: blank, ignored
        '["a", "list"]',                                 # line 6: not an object
        {"item_id": "  ", "image": "3.jpg"},             # line 7: blank item_id
        {"item_id": "ok2", "image": "4.jpg"},          # line 8
        {"item_id": "num", "image": 5},                  # line 9: image not a path
    ])
    catalog = read_catalog(manifest)

    assert [(row.item_id, row.line) for row in catalog.rows] == [("ok1", 1), ("ok2", 8)]
    reasons = {error.line: error.reason for error in catalog.errors}
    assert sorted(reasons) == [2, 3, 4, 6, 7, 9]
    assert "JSON" in reasons[2]
    assert "item_id" in reasons[3] and "item_id" in reasons[7]
    assert "image" in reasons[4] and "image" in reasons[9]
    assert "object" in reasons[6]
    assert {error.line: error.item_id for error in catalog.errors}[4] == "noimg"


def test_numeric_item_id_becomes_text(tmp_path):
    manifest = write_jsonl(tmp_path / "c.jsonl", [{"item_id": 123, "image": "a.jpg", "category": 7}])
    row = read_catalog(manifest).rows[0]
    assert row.item_id == "123" and row.category == "7"


def test_manifest_that_is_not_utf8_is_a_manifest_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"item_id": "caf\xe9", "image": "a.jpg"}\n'.encode("latin-1"))
    with pytest.raises(ManifestError):
        read_catalog(path)


# --- CSV -----------------------------------------------------------------------------------


def test_csv_with_header_and_quoted_commas(tmp_path):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text(
        "item_id,image,category,title,price\n"
        'p1,img/p1.jpg,Shoe,"Runner, size 42",59.90\n'
        'p2,img/p2.jpg,,"Plain ""classic"" tee",\n',
        encoding="utf-8",
    )
    catalog = read_catalog(manifest)

    assert catalog.errors == []
    p1, p2 = catalog.rows
    assert (p1.item_id, p1.category, p1.image) == ("p1", "Shoe", tmp_path / "img" / "p1.jpg")
    assert p1.fields == {"title": "Runner, size 42", "price": "59.90"}
    assert p2.category is None  # an empty cell is no category
    assert p2.fields == {"title": 'Plain "classic" tee'}
    assert (p1.line, p2.line) == (2, 3)


def test_csv_with_a_byte_order_mark(tmp_path):
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes("\ufeffitem_id,image\nx,x.jpg\n".encode("utf-8"))
    assert [row.item_id for row in read_catalog(manifest).rows] == ["x"]


def test_csv_bad_rows_are_reported_and_good_rows_kept(tmp_path):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text("item_id,image\na,a.jpg\n,b.jpg\nc,\nd,d.jpg,extra\ne,e.jpg\n", encoding="utf-8")
    catalog = read_catalog(manifest)
    assert [row.item_id for row in catalog.rows] == ["a", "e"]
    assert sorted(error.line for error in catalog.errors) == [3, 4, 5]


@pytest.mark.parametrize("header", ["id,image,category", "item_id,picture", "sku,photo"])
def test_csv_missing_required_columns_is_a_manifest_error(tmp_path, header):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text(header + "\nx,y,z\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="lacks"):
        read_catalog(manifest)


# --- folders -------------------------------------------------------------------------------


def test_folder_catalog(tmp_path):
    root = tmp_path / "photos"
    for relative in ["Bags/tote.jpg", "Bags/clutch.PNG", "Shoes/runner.webp", "loose.jpeg", "notes.txt", "Shoes/readme.md"]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    catalog = read_catalog(root)

    assert catalog.errors == []
    found = {row.item_id: (row.category, row.image) for row in catalog.rows}
    assert found == {
        "tote": ("Bags", root / "Bags" / "tote.jpg"),
        "clutch": ("Bags", root / "Bags" / "clutch.PNG"),
        "runner": ("Shoes", root / "Shoes" / "runner.webp"),
        "loose": (None, root / "loose.jpeg"),
    }


def test_nested_folder_takes_the_top_sub_folder_as_category(tmp_path):
    path = tmp_path / "photos" / "Bags" / "2024" / "tote.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    row = read_catalog(tmp_path / "photos").rows[0]
    assert (row.item_id, row.category) == ("tote", "Bags")


def test_folder_without_images_is_empty(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "readme.txt").write_text("no images here")
    with pytest.raises(ManifestError, match="empty"):
        read_catalog(tmp_path / "photos")


# --- whole-file problems -------------------------------------------------------------------------


def test_unknown_extension(tmp_path):
    path = tmp_path / "catalog.xlsx"
    path.write_text("item_id,image\n")
    with pytest.raises(ManifestError, match="jsonl"):
        read_catalog(path)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="no such"):
        read_catalog(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n  \n"), ("empty.csv", "")])
def test_empty_manifest(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ManifestError):
        read_catalog(path)


def test_csv_with_only_a_header_is_empty(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("item_id,image,category\n")
    with pytest.raises(ManifestError, match="empty"):
        read_catalog(path)
