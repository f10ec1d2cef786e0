"""Crash safety: SIGKILL a writer at random moments; every acknowledged write survives."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from snapshop.index.live import LiveIndex
from snapshop.index.store import MetadataStore
from snapshop.search.engine import Engine
from split_writer import PARAMS, PLANES

WRITER = Path(__file__).with_name("crash_writer.py")
SPLIT_WRITER = Path(__file__).with_name("split_writer.py")
BATCHES = 50


class WriterRun:
    """The writer in a child process, its `begin` / `ack` lines collected as they come."""

    def __init__(self, index: Path, manifest: Path | None, first: int, batches: int = BATCHES) -> None:
        self.lines: list[tuple[str, dict]] = []
        self.errors = index.parent / "writer-errors.txt"
        command = [WRITER, index, manifest] if manifest is not None else [SPLIT_WRITER, index]
        with open(self.errors, "w") as errors:
            self.process = subprocess.Popen([sys.executable, *map(str, command), str(first), str(batches)],
                                            stdout=subprocess.PIPE, stderr=errors, text=True)
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            word, _, payload = line.partition(" ")
            if word in ("begin", "ack"):
                self.lines.append((word, json.loads(payload)))

    def started(self) -> bool:
        return any(word == "begin" for word, _ in self.lines)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._reader.join()

    def finish(self) -> None:
        self.process.wait(timeout=300)
        self._reader.join()
        assert self.process.returncode == 0, f"the writer failed:\n{self.errors.read_text()[-3000:]}"

    def stop(self, kill: bool) -> bool:
        """SIGKILL the writer if `kill` and it still runs (True), else let it finish (False)."""
        if kill and self.process.poll() is None:
            self.kill()
            return True
        self.finish()
        return False

    def outcome(self, present: set[str], absent: set[str], next_batch: int) -> tuple[set[str], set[str], set[str], int]:
        """What the writer's lines tell: `present` and `absent` after its acknowledged writes, the
        ids of the batch it was cut short in (maybe committed, maybe not) and the batch to go on from."""
        for word, data in self.lines:
            if word == "ack":
                present = (present | set(data["present"])) - set(data["absent"])
                absent = (absent | set(data["absent"])) - set(data["present"])
                next_batch = data["batch"] + 1
        in_flight = set(self.lines[-1][1]["ids"]) if self.lines and self.lines[-1][0] == "begin" else set()
        if in_flight:
            next_batch = self.lines[-1][1]["batch"] + 1
        return present, absent, in_flight, next_batch


def check_consistent(index: Path, settings, present: set[str], absent: set[str]) -> None:
    engine = Engine.open(index, settings)
    try:
        searchable = set(engine.index.image_ids())
        stored = set(engine.store.vectors().image_ids)
        assert searchable == stored, "the live index and the database disagree"
        assert engine.stats()["pending_images"] == 0
        info = engine.store.image_info(searchable)
        items_searchable = {image.item_id for image in info.values()}
        for item_id in present:
            assert engine.item(item_id) is not None, f"acknowledged item {item_id} is lost"
            assert item_id in items_searchable, f"acknowledged item {item_id} is not searchable"
        for item_id in absent:
            assert engine.item(item_id) is None and item_id not in items_searchable, f"removed {item_id} is back"
    finally:
        engine.close()


def test_sigkill_during_writes_loses_no_acknowledged_write(fresh_index, catalog, settings):
    rng = random.Random(7)
    present, absent = set(catalog.item_ids), set()
    next_batch, kills = 0, 0
    while next_batch < BATCHES:
        run = WriterRun(fresh_index, catalog.manifest, next_batch)
        deadline = time.monotonic() + 120
        while not run.started() and run.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 3.0))
        kills += run.stop(kill=kills < 12)
        present, absent, in_flight, next_batch = run.outcome(present, absent, next_batch)
        check_consistent(fresh_index, settings, present - in_flight, absent - in_flight)
        # The batch cut short may or may not have committed: learn which, then go on from there.
        engine = Engine.open(fresh_index, settings)
        for item_id in in_flight:
            (present if engine.item(item_id) else absent).add(item_id)
            (absent if engine.item(item_id) else present).discard(item_id)
        engine.close()
    assert kills >= 5
    assert os.listdir(fresh_index / "segments")  # compactions ran (and some were interrupted)


def test_sigkill_during_compactions_into_k_means_lists_loses_nothing(tmp_path):
    """The index's own writer (store + live index, no engine), compacting after every batch into
    bases split into k-means lists, killed at random: each reopened index holds every
    acknowledged image, no removed one, and finds each kept image first by its own vector."""
    folder, batches = tmp_path / "index", 24
    folder.mkdir()
    rng = random.Random(3)
    present, absent, next_batch, kills = set(), set(), 0, 0
    while next_batch < batches:
        run = WriterRun(folder, None, next_batch, batches)
        time.sleep(rng.uniform(0.5, 2.5))
        kills += run.stop(kill=kills < 8)
        present, absent, in_flight, next_batch = run.outcome(present, absent, next_batch)
        store = MetadataStore(folder / "meta.sqlite")
        index = LiveIndex(folder, store, PARAMS, codec="test")
        try:
            stored = store.vectors()
            assert list(index.image_ids()) == sorted(stored.image_ids)  # the index is the store's
            items = set(stored.item_ids)
            assert present - in_flight <= items and not (absent - in_flight) & items
            present, absent = present - in_flight | (in_flight & items), absent - in_flight | (in_flight - items)
            kept = [row for row, item in enumerate(stored.item_ids) if item.endswith("_1")]
            if kept:
                features = stored.features[kept].astype(np.float32)
                found = index.search(features @ PLANES, features, shortlist=10).image_ids[:, 0]
                assert (found == stored.image_ids[kept]).mean() >= 0.9
        finally:
            index.close()
            store.close()
    assert kills >= 4
    assert list((folder / "segments").glob("*.feature_centroids.npy"))  # bases were split into lists
