"""The command line (DESIGN.md): output contracts, exit codes, one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import snapshop
from snapshop.cli import app

runner = CliRunner()
STAGES = {"decode", "category", "detect", "embed", "search", "curate"}


def invoke(*args, env: dict | None = None):
    return runner.invoke(app, [str(arg) for arg in args], env=env)


def assert_user_error(result, *needles: str) -> str:
    """Exit code 1, exactly one line on stderr, no traceback, no crash."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- search ------------------------------------------------------------------------------------


def test_search_json_prints_one_object_per_query_in_order(shared_index, catalog, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    queries = [catalog.image("square-1"), broken, catalog.image("triangle-2")]
    result = invoke("search", *queries, "--index", shared_index, "-k", 3, "--json")

    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    first, failed, third = (json.loads(line) for line in lines)
    assert [first["query"], failed["query"], third["query"]] == [str(q) for q in queries]

    assert set(failed) == {"query", "error"} and "broken.jpg" in failed["error"]

    for obj, expected in ((first, "square-1"), (third, "triangle-2")):
        assert {"query", "category", "boxes", "results", "timing_ms"} <= set(obj)
        assert set(obj["category"]) >= {"name", "score"} and obj["category"]["name"] == catalog.categories[expected]
        assert 0.0 <= obj["category"]["score"] <= 1.0
        assert obj["boxes"] and all(len(b["box"]) == 4 and all(isinstance(v, int) for v in b["box"]) for b in obj["boxes"])
        assert all(0.0 <= b["score"] <= 1.0 for b in obj["boxes"])
        assert set(obj["timing_ms"]) == STAGES and all(isinstance(v, (int, float)) for v in obj["timing_ms"].values())
        hits = obj["results"]
        assert 1 <= len(hits) <= 3 and hits[0]["item_id"] == expected
        assert len({hit["item_id"] for hit in hits}) == len(hits)
        for hit in hits:
            assert {"item_id", "score", "image", "category", "title", "price", "group", "also", "quality"} <= set(hit)
        assert hits[0]["image"] == str(catalog.image(expected)) and hits[0]["category"] == catalog.categories[expected]
        assert hits[0]["title"].endswith(expected.split("-")[0]) and isinstance(hits[0]["score"], float)


def test_search_human_output(shared_index, catalog):
    result = invoke("search", catalog.image("circle-3"), "--index", shared_index, "-k", 2)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == str(catalog.image("circle-3"))
    assert "circle-3" in result.stdout and "circles" in result.stdout
    assert "Traceback" not in result.output


def test_search_with_a_forced_category(shared_index, catalog):
    result = invoke("search", catalog.image("circle-3"), "--index", shared_index, "--category", "squares", "--json")
    assert result.exit_code == 0
    obj = json_lines(result.stdout)[0]
    assert obj["category"]["name"] == "squares" and obj["category"].get("forced") is True
    assert {hit["category"] for hit in obj["results"]} == {"squares"}


def test_search_index_defaults_to_snapshop_index(shared_index, catalog):
    result = invoke("search", catalog.image("square-0"), "--json", env={"SNAPSHOP_INDEX": str(shared_index)})
    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout)[0]["results"][0]["item_id"] == "square-0"


def test_search_when_every_photo_fails_json(shared_index, tmp_path):
    photo = tmp_path / "notes.jpg"
    photo.write_text("just text")
    result = invoke("search", photo, tmp_path / "missing.jpg", "--index", shared_index, "--json")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert [set(obj) for obj in json_lines(result.stdout)] == [{"query", "error"}, {"query", "error"}]
    assert "Traceback" not in result.output


def test_search_when_every_photo_fails_says_so_on_stderr(shared_index, tmp_path):
    photo = tmp_path / "notes.jpg"
    photo.write_text("just text")
    result = invoke("search", photo, "--index", shared_index)
    assert_user_error(result, "notes.jpg")


def test_search_missing_index(tmp_path, catalog):
    result = invoke("search", catalog.image("square-0"), "--index", tmp_path / "nowhere")
    assert_user_error(result, "error:", "no snapshop index", str(tmp_path / "nowhere"))


@pytest.mark.parametrize("extra,needle", [(["--category", "hats"], "hats"), (["-k", "0"], "k"),
                                          (["--box", "1,2,3"], "--box")])
def test_search_user_errors(shared_index, catalog, extra, needle):
    result = invoke("search", catalog.image("square-0"), "--index", shared_index, *extra)
    assert_user_error(result, needle)


def test_bad_setting_in_the_environment_is_a_user_error(shared_index, catalog):
    result = invoke("search", catalog.image("square-0"), "--index", shared_index, env={"SNAPSHOP_SHORTLIST": "lots"})
    assert_user_error(result, "SNAPSHOP_SHORTLIST")


@pytest.mark.parametrize("args", [
    ["search"],                                   # no photo
    ["search", "x.jpg", "-k", "many"],            # not a number
    ["search", "x.jpg", "--flavour", "red"],      # unknown option
    ["frobnicate"],                               # unknown command
    ["remove"],                                   # no item id
])
def test_usage_errors_exit_2(args):
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.output)


# --- stats -------------------------------------------------------------------------------------


def test_colour_filter_and_curation_switch(shared_index, catalog):
    plain = json_lines(invoke("search", catalog.image("square-1"), "--index", shared_index, "-k", 12, "--json",
                              "--no-curate").stdout)[0]["results"]
    assert all("signals" not in hit for hit in plain)
    colour = plain[0]["colours"][0]["name"]
    kept = json_lines(invoke("search", catalog.image("square-1"), "--index", shared_index, "-k", 12, "--json",
                             "--colour", colour).stdout)[0]["results"]
    assert kept and len(kept) < len(plain) and all(colour in {c["name"] for c in hit["colours"]} for hit in kept)
    assert_user_error(invoke("search", catalog.image("square-1"), "--index", shared_index, "--colour", "octarine"),
                      "unknown colour")


def test_duplicates_reports_groups(fresh_index, catalog, tmp_path):
    from PIL import Image

    copy = tmp_path / "copy.jpg"
    Image.open(catalog.image("triangle-2")).save(copy, quality=35)
    (tmp_path / "copy.jsonl").write_text(json.dumps({"item_id": "resold", "image": str(copy), "category": "triangles"}))
    assert invoke("add", tmp_path / "copy.jsonl", "--index", fresh_index).exit_code == 0
    report = json.loads(invoke("duplicates", "--index", fresh_index, "--json").stdout)
    assert [group["items"] for group in report["groups"]] == [["resold", "triangle-2"]]
    assert report["groups"][0]["pairs"][0]["same"] is True
    human = invoke("duplicates", "--index", fresh_index).stdout
    assert "resold, triangle-2" in human and "1 groups" in human


def test_stats_json(shared_index):
    result = invoke("stats", "--index", shared_index, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["items"] == 12 and info["images"] == 13
    assert info["partitions"] == {"circles": 5, "squares": 4, "triangles": 4}
    assert info["model"]["name"] == "efficientnet-lite0"


def test_stats_human(shared_index):
    result = invoke("stats", "--index", shared_index)
    assert result.exit_code == 0
    assert "12 (13 images" in result.stdout and "partition  circles: 5 images" in result.stdout


def test_stats_missing_index(tmp_path):
    assert_user_error(invoke("stats", "--index", tmp_path / "nowhere", "--json"), "no snapshop index")


# --- add and remove ----------------------------------------------------------------------------


def test_add_a_folder_catalog_then_again(tmp_path, draw_product):
    folder = tmp_path / "photos"
    (folder / "Squares").mkdir(parents=True)
    (folder / "Circles").mkdir()
    draw_product("square", 0).save(folder / "Squares" / "sq0.png")
    draw_product("square", 1).save(folder / "Squares" / "sq1.png")
    draw_product("circle", 2).save(folder / "Circles" / "ci2.png")
    (folder / "Circles" / "broken.png").write_text("not an image")
    index = tmp_path / "idx"

    first = invoke("add", folder, "--index", index)
    assert first.exit_code == 0, first.output
    assert "added 3 items" in first.stdout and "holds 3 items (3 images)" in first.stdout
    skipped = [line for line in first.stderr.splitlines() if line.strip()]
    assert len(skipped) == 1 and "broken" in skipped[0] and skipped[0].startswith("skipped line")

    again = invoke("add", folder, "--index", index)
    assert again.exit_code == 0 and "added 0 items, updated 3" in again.stdout

    stats = json.loads(invoke("stats", "--index", index, "--json").stdout)
    assert stats["items"] == 3 and stats["partitions"] == {"Circles": 1, "Squares": 2}


def test_add_a_bad_manifest(tmp_path):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text("sku,photo\n1,a.jpg\n")
    result = invoke("add", manifest, "--index", tmp_path / "idx")
    assert_user_error(result, "catalog.csv")
    assert not (tmp_path / "idx").exists()


def test_add_a_missing_catalog(tmp_path):
    assert_user_error(invoke("add", tmp_path / "none.jsonl", "--index", tmp_path / "idx"), "none.jsonl")


def test_add_with_another_model_to_an_existing_index(fresh_index, catalog, tiny_onnx):
    result = invoke("add", catalog.manifest, "--index", fresh_index, "--model", tiny_onnx)
    assert_user_error(result, "another --index")


def test_remove_then_search(fresh_index, catalog):
    removed = invoke("remove", "square-2", "ghost", "--index", fresh_index)
    assert removed.exit_code == 0
    assert "removed 1 items" in removed.stdout and "not in the index: ghost" in removed.stderr

    result = invoke("search", catalog.image("square-2"), "--index", fresh_index, "-k", 20, "--json")
    assert result.exit_code == 0
    ids = [hit["item_id"] for hit in json_lines(result.stdout)[0]["results"]]
    assert ids and "square-2" not in ids
    assert json.loads(invoke("stats", "--index", fresh_index, "--json").stdout)["items"] == 11


def test_remove_from_a_missing_index(tmp_path):
    assert_user_error(invoke("remove", "a", "--index", tmp_path / "nowhere"), "no snapshop index")


# --- the real process --------------------------------------------------------------------------


def run_snapshop(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    src = str(Path(snapshop.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "snapshop", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_process_user_error_is_one_line_without_traceback(tmp_path):
    done = run_snapshop("search", "photo.jpg", "--index", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in done.stderr


def test_process_usage_error_exits_2(tmp_path):
    done = run_snapshop("search", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr


# --- the index engine: compact, explain, segments ---------------------------------------------------


def test_compact_folds_deltas_into_base_segments_and_keeps_answers(fresh_index, catalog):
    before = json_lines(invoke("search", catalog.image("circle-2"), "--index", fresh_index, "--json").stdout)[0]
    removed = invoke("remove", "square-3", "--index", fresh_index)
    assert removed.exit_code == 0
    stats = json.loads(invoke("stats", "--index", fresh_index, "--json").stdout)
    assert sum(seg["tombstones"] for seg in stats["segments"]) == 1  # square-3 was in a base segment

    result = invoke("compact", "--index", fresh_index)
    assert result.exit_code == 0, result.output
    assert "compacted" in result.stdout and "12 images" in result.stdout  # 11 items, circle-0 has two images
    stats = json.loads(invoke("stats", "--index", fresh_index, "--json").stdout)
    assert all(seg["delta_images"] == 0 and seg["tombstones"] == 0 and seg["base"] == "codes" for seg in stats["segments"])
    after = json_lines(invoke("search", catalog.image("circle-2"), "--index", fresh_index, "--json").stdout)[0]
    assert [hit["item_id"] for hit in after["results"]] == [hit["item_id"] for hit in before["results"] if hit["item_id"] != "square-3"]


def test_search_explain_reports_every_searched_partition(shared_index, catalog):
    result = invoke("search", catalog.image("circle-2"), "--index", shared_index, "--json", "--explain")
    answer = json_lines(result.stdout)[0]
    searched = {part["partition"] for part in answer["explain"]}
    assert answer["category"]["name"] in searched and searched <= {"circles", "squares", "triangles"}
    assert all({"base", "base_images", "delta_images", "tombstones", "candidates", "ms"} <= set(p) for p in answer["explain"])
    human = invoke("search", catalog.image("circle-2"), "--index", shared_index, "--explain")
    assert "searched circles / shard 0" in human.stdout
    assert "explain" not in json_lines(invoke("search", catalog.image("circle-2"), "--index", shared_index, "--json").stdout)[0]


def test_compact_missing_index(tmp_path):
    assert_user_error(invoke("compact", "--index", tmp_path / "nope"), "no snapshop index")
