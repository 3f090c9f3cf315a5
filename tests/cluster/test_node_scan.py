"""`merge_shard_scans`: the cross-shard scan merge, tested without a cluster.

The invariant under test: a page never returns a key past the smallest last key of a part
that came back cut short, so a client resuming after the page's last key sees every key of
every shard exactly once.
"""

from __future__ import annotations

import random

import pytest

from minikv_core.cluster.node_service import merge_shard_scans
from minikv_core.cluster.service import ScanItem, ScanResult


def part(keys: list[bytes], more: bool) -> ScanResult:
    return ScanResult(tuple(ScanItem(key, b"v" + key, 1) for key in keys), more)


def keys_of(result: ScanResult) -> list[bytes]:
    return [item.key for item in result.items]


def test_page_stops_at_the_smallest_last_key_of_the_cut_parts() -> None:
    short_a = part([b"a1", b"c1"], more=True)  # shard A has keys past c1
    short_b = part([b"b1", b"e1"], more=True)  # shard B has keys past e1
    whole = part([b"a2", b"d2", b"z2"], more=False)
    result = merge_shard_scans([short_a, short_b, whole], limit=100)
    assert keys_of(result) == [b"a1", b"a2", b"b1", b"c1"]
    assert result.more


def test_no_cut_part_and_under_limit_returns_everything_without_more() -> None:
    result = merge_shard_scans([part([b"a", b"c"], False), part([b"b"], False)], limit=3)
    assert keys_of(result) == [b"a", b"b", b"c"]
    assert not result.more


def test_limit_cuts_after_the_bound_cut_and_sets_more() -> None:
    result = merge_shard_scans(
        [part([b"a", b"c", b"e"], False), part([b"b", b"d", b"f"], False)], limit=4
    )
    assert keys_of(result) == [b"a", b"b", b"c", b"d"]
    assert result.more


def test_exactly_limit_items_without_cut_is_not_more() -> None:
    result = merge_shard_scans([part([b"a", b"c"], False), part([b"b", b"d"], False)], limit=4)
    assert len(result.items) == 4
    assert not result.more


def test_cut_part_whose_last_key_is_the_bound_keeps_all_its_items() -> None:
    # The bound is inclusive: the cut part's own last key is returned, so the page is never
    # empty while some part is cut (each cut part holds at least one item).
    result = merge_shard_scans([part([b"m"], True), part([b"n", b"o"], False)], limit=10)
    assert keys_of(result) == [b"m"]
    assert result.more


def test_reverse_page_stops_at_the_largest_last_key_of_the_cut_parts() -> None:
    short_a = part([b"z1", b"x1"], more=True)
    short_b = part([b"y1", b"w1"], more=True)
    whole = part([b"z2", b"x2", b"a2"], more=False)
    result = merge_shard_scans([short_a, short_b, whole], limit=100, reverse=True)
    assert keys_of(result) == [b"z2", b"z1", b"y1", b"x2", b"x1"]
    assert result.more


def test_cut_part_with_no_items_is_refused() -> None:
    with pytest.raises(ValueError, match="part 1 is cut short"):
        merge_shard_scans([part([b"a"], False), part([], True)], limit=10)


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        merge_shard_scans([part([b"a"], False)], limit=0)


def shard_part(
    shard_keys: list[bytes], start: bytes, end: bytes | None, cap: int, reverse: bool
) -> ScanResult:
    """One shard's answer as `_scan_shard` + a byte cut would give it: the keys in
    [start, end) in scan order, at most `cap` of them, `more` when some were left out."""
    in_range = [k for k in shard_keys if k >= start and (end is None or k < end)]
    ordered = sorted(in_range, reverse=reverse)
    return part(ordered[:cap], more=len(ordered) > cap)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("seed", range(40))
def test_resumed_scan_sees_every_key_exactly_once_with_uneven_shard_cuts(
    seed: int, reverse: bool
) -> None:
    rng = random.Random(seed)
    shards = rng.randint(1, 8)
    keys = sorted({rng.randbytes(rng.randint(1, 3)) for _ in range(rng.randint(0, 300))})
    by_shard: list[list[bytes]] = [[] for _ in range(shards)]
    for key in keys:
        by_shard[rng.randrange(shards)].append(key)
    limit = rng.randint(1, 50)
    seen: list[bytes] = []
    start, end = b"", None  # forward resumes start = last + b"\x00"; reverse, end = last
    for _page in range(len(keys) + 2):
        # Each shard's part is cut by the limit or by a random smaller cap (the byte bound of
        # a forwarded answer), never below one item.
        parts = [
            shard_part(shard_keys, start, end, rng.randint(1, limit), reverse)
            for shard_keys in by_shard
        ]
        page = merge_shard_scans(parts, limit, reverse=reverse)
        assert len(page.items) <= limit, f"seed={seed}"
        seen.extend(keys_of(page))
        if not page.more:
            break
        assert page.items, f"seed={seed}: an empty page with more=True makes no progress"
        last = page.items[-1].key
        if reverse:
            end = last
        else:
            start = last + b"\x00"
    else:
        pytest.fail(f"seed={seed}: the scan did not finish")
    expected = sorted(keys, reverse=reverse)
    assert seen == expected, f"seed={seed}: keys missed, repeated or out of order"
