"""A running node's WAL damaged on disk: `check_wal` names the segment and offset while the
node serves, `rewrite_wal` leaves every damaged segment behind by rewriting what the node
needs from memory, and the node then restarts from its data dir with every acknowledged
write (without the rewrite it would refuse to start)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from minikv_core.cluster.service import Consistency
from minikv_core.cluster.wal_health import check_wal, rewrite_wal
from minikv_core.storage import wal as wal_module
from minikv_core.storage.wal_format import SEGMENT_HEADER_SIZE
from tests.cluster.node_harness import retry_unavailable, started_cluster

KEYS = 300
DAMAGED = 2


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize("where", ["sealed", "active"])
async def test_damage_is_found_while_serving_and_rewritten_away(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with started_cluster(tmp_path, 3, shards=2) as cluster:
        node = cluster.nodes[1]
        damaged = cluster.nodes[DAMAGED]
        # The damaged node's maintenance task would compact and truncate sealed segments
        # whenever it runs (a slow machine lets it run mid-test and the segment to damage
        # is gone); only the rewrite's own forced compactions may delete segments here.
        automatic = damaged.host.plan_compactions

        async def forced_only(force_shards: list[int] | None) -> list[object]:
            return [] if force_shards is None else list(await automatic(force_shards))

        monkeypatch.setattr(damaged.host, "plan_compactions", forced_only)
        value = b"v" * 400  # 300 x 400 B over 64 KiB segments: several seals
        for number in range(KEYS):
            key = f"k{number:04d}".encode()

            async def put(deadline: float, key: bytes = key) -> int:
                return await node.put(key, value, deadline)

            await retry_unavailable(put)

        wal_dir = damaged.config.wal_dir
        segments = damaged.host.log.wal.segments()
        assert len(segments) >= 2, segments
        target = segments[0] if where == "sealed" else segments[-1]
        assert target.used_bytes > SEGMENT_HEADER_SIZE + 64, target
        assert check_wal(wal_dir) == []
        flip_byte(target.path, SEGMENT_HEADER_SIZE + 12)  # inside the first record

        (damage,) = check_wal(wal_dir)
        assert damage.segment == target.name
        assert damage.offset == SEGMENT_HEADER_SIZE
        assert target.name in damage.describe()

        rewrite = await rewrite_wal(damaged.host, time.monotonic() + 20)
        assert target.name in rewrite.segments_before
        assert target.name not in rewrite.segments_after
        assert check_wal(wal_dir) == []

        await cluster.stop_node(DAMAGED)
        restarted = await cluster.start_node(DAMAGED)
        await cluster.wait_ready()
        for number in range(KEYS):
            key = f"k{number:04d}".encode()
            found = await restarted.get(key, Consistency.STALE, time.monotonic() + 5)
            assert found.value == value, key


def _report(directory: Path, *offsets: int) -> wal_module.VerifyReport:
    findings = tuple(
        wal_module.Finding(
            wal_module.FindingKind.CORRUPTION, directory / "0000000000000002.wal", offset, "x", 9
        )
        for offset in offsets
    )
    return wal_module.VerifyReport(directory, (), findings)


def test_only_damage_a_second_read_finds_again_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read racing the node's append can see a record half-written across two pages; the
    confirming read finds it whole. Damage that stays is reported; a clean read stays clean
    with no second read."""
    reads = iter([_report(tmp_path, 100, 500), _report(tmp_path, 500, 900)])
    calls: list[Path] = []

    def verify(directory: Path) -> wal_module.VerifyReport:
        calls.append(directory)
        return next(reads)

    monkeypatch.setattr(wal_module, "verify", verify)
    (damage,) = check_wal(tmp_path)
    assert (damage.segment, damage.offset) == ("0000000000000002.wal", 500)
    assert len(calls) == 2

    reads = iter([_report(tmp_path)])
    assert check_wal(tmp_path) == []
    assert len(calls) == 3  # one clean read, no confirming one
