"""pack(): one slot per distinct prefix, each attending to exactly its own row's past."""

from __future__ import annotations

import pytest
import torch

from adaptkit.learning.packing import groups, pack


def test_shared_prefixes_get_one_slot_each() -> None:
    rows = [[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 8], [4]]
    packing = pack(rows)
    # Distinct prefixes: 5, 56, 567, 5678, 569, 4.
    assert packing.length == 6
    assert packing.token_ids.tolist() == [5, 6, 7, 8, 9, 4]
    assert packing.positions.tolist() == [0, 1, 2, 3, 2, 0]
    assert [s.tolist() for s in packing.slots] == [[0, 1, 2, 3], [0, 1, 4], [0, 1, 2, 3], [5]]
    for row, slots in zip(rows, packing.slots, strict=True):
        assert packing.token_ids[slots].tolist() == row
        assert packing.positions[slots].tolist() == list(range(len(row)))


def test_each_slot_sees_exactly_its_ancestors() -> None:
    packing = pack([[5, 6, 7], [5, 6, 9], [4, 6]])
    # slots: 5->0, 6->1, 7->2, 9->3, 4->4, 6 (after 4)->5
    expected = {
        0: {0},
        1: {0, 1},
        2: {0, 1, 2},
        3: {0, 1, 3},
        4: {4},
        5: {4, 5},
    }
    for query, keys in expected.items():
        assert set(packing.allowed[query].nonzero().flatten().tolist()) == keys
    mask = packing.additive_mask(torch.float32)
    assert mask.shape == (1, 1, 6, 6)
    assert mask[0, 0, 3, 2] == torch.finfo(torch.float32).min and mask[0, 0, 3, 1] == 0


def test_empty_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="empty row"):
        pack([[1, 2], []])


def test_groups_stay_under_the_token_budget() -> None:
    assert groups([4, 4, 4], 8) == [[0, 1], [2]]
    assert groups([10, 2], 8) == [[0], [1]]  # a row longer than the budget goes alone
    assert groups([], 8) == []
