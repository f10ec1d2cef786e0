"""The code scan: segments' codes as faiss lists, stacked and searched in one pass."""

from __future__ import annotations

import numpy as np
import pytest

from snapshop.index.scan import CodeList, CodeScan, sign_code_index

SIZES = (1, 31, 33, 70, 0)  # around the 32-code block, and an empty list


@pytest.fixture(scope="module")
def lists():
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 256, (size, 32), dtype=np.uint8) for size in SIZES]
    return codes, CodeScan([CodeList(part) for part in codes]), rng.standard_normal((5, 256)).astype(np.float32)


@pytest.mark.parametrize("probe", [[0, 1, 2, 3, 4], [2], [1, 3], [4]])
def test_one_scan_scores_as_a_flat_index_of_the_probed_lists(lists, probe):
    codes, scan, queries = lists
    probed = [number for number in probe if SIZES[number]]
    scores, found_lists, rows = scan.search(queries, 40, np.array(probe))
    expected_count = min(40, sum(SIZES[number] for number in probe))
    assert scores.shape == (5, expected_count)
    if not probed:
        return
    flat = sign_code_index(np.concatenate([codes[number] for number in probed]))
    flat_scores, flat_rows = flat.search(queries, expected_count)
    assert np.array_equal(scores, flat_scores)  # the same quantized scores, best first
    assert set(found_lists.ravel()) <= set(probed)
    offsets = dict(zip(probed, np.cumsum([0] + [SIZES[number] for number in probed])))
    as_flat_rows = np.vectorize(offsets.get)(found_lists) + rows
    for query in range(5):  # ties may come in another order: compare the rows score by score
        assert sorted(zip(scores[query], as_flat_rows[query])) == sorted(zip(flat_scores[query], flat_rows[query]))


def test_a_list_holds_its_packed_codes_and_a_label_per_code():
    code_list = CodeList(np.zeros((33, 32), np.uint8))
    assert code_list.size == 33 and code_list.bits == 256
    assert code_list.nbytes == 64 * 32 + 33 * 8  # two blocks of 32 codes
