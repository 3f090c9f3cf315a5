"""The meta group's state machine (the replicated shard map) and shard snapshot archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from minikv_core.cluster.group import SnapshotArchiveError, pack_directory, unpack_archive
from minikv_core.cluster.meta import (
    MetaDecodeError,
    MetaSnapshot,
    MetaStateMachine,
    decode_meta_command,
    encode_set_shard_map,
)
from minikv_core.cluster.shard_map import ShardMap
from minikv_core.raft import Entry, EntryType

PEERS = {1: "127.0.0.1:9001", 2: "127.0.0.1:9002", 3: "127.0.0.1:9003"}
BOOTSTRAP = ShardMap.bootstrap(PEERS, 4, 3)


def entry(index: int, data: bytes, kind: EntryType = EntryType.NORMAL) -> Entry:
    return Entry(term=1, index=index, type=kind, data=data)


def test_epoch_one_is_applied_once_and_duplicates_are_no_ops(tmp_path: Path) -> None:
    state = MetaStateMachine(tmp_path, BOOTSTRAP)
    assert state.shard_map.epoch == 0
    proposal = encode_set_shard_map(BOOTSTRAP.with_epoch(1))
    state.apply([entry(1, b""), entry(2, proposal), entry(3, proposal)])
    assert state.shard_map == BOOTSTRAP.with_epoch(1)
    assert state.applied_index == 3


def test_an_epoch_that_skips_ahead_is_ignored(tmp_path: Path) -> None:
    state = MetaStateMachine(tmp_path, BOOTSTRAP)
    state.apply([entry(1, encode_set_shard_map(BOOTSTRAP.with_epoch(5)))])
    assert state.shard_map.epoch == 0
    assert state.applied_index == 1


def test_entries_at_or_below_the_applied_index_are_skipped(tmp_path: Path) -> None:
    state = MetaStateMachine(tmp_path, BOOTSTRAP)
    state.apply([entry(1, b""), entry(2, b"")])
    state.apply([entry(2, encode_set_shard_map(BOOTSTRAP.with_epoch(1)))])
    assert state.shard_map.epoch == 0, "entry 2 was applied already"


def test_undecodable_and_conf_change_entries_advance_without_changing_the_map(
    tmp_path: Path,
) -> None:
    state = MetaStateMachine(tmp_path, BOOTSTRAP)
    state.apply(
        [entry(1, b"garbage"), entry(2, b"\x01\x02", EntryType.CONF_CHANGE), entry(3, b"M\x01{")]
    )
    assert state.applied_index == 3
    assert state.entries_rejected == 2
    assert state.shard_map.epoch == 0


def test_persisted_snapshot_is_reloaded_on_restart(tmp_path: Path) -> None:
    state = MetaStateMachine(tmp_path, BOOTSTRAP)
    state.apply([entry(1, encode_set_shard_map(BOOTSTRAP.with_epoch(1))), entry(2, b"")])
    state.persist(state.snapshot())
    reopened = MetaStateMachine(tmp_path, BOOTSTRAP)
    assert reopened.applied_index == 2
    assert reopened.shard_map.epoch == 1


def test_installed_snapshot_replaces_state_and_is_durable(tmp_path: Path) -> None:
    state = MetaStateMachine(tmp_path, BOOTSTRAP)
    data = MetaSnapshot(40, BOOTSTRAP.with_epoch(1)).encode()
    state.install(data)
    assert (state.applied_index, state.shard_map.epoch) == (40, 1)
    assert MetaStateMachine(tmp_path, BOOTSTRAP).applied_index == 40


def test_corrupt_meta_snapshot_file_is_reported_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "meta.snap").write_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00\x05{bad")
    with pytest.raises(MetaDecodeError, match=r"meta\.snap"):
        MetaStateMachine(tmp_path, BOOTSTRAP)


def test_meta_command_codec_refuses_foreign_data() -> None:
    with pytest.raises(MetaDecodeError, match="prefix"):
        decode_meta_command(b"X1{}")
    with pytest.raises(MetaDecodeError, match="format"):
        decode_meta_command(b"M\x09{}")
    with pytest.raises(MetaDecodeError, match="unknown meta command"):
        decode_meta_command(b'M\x01{"type": "drop_everything"}')


# ------------------------------------------------------------------- snapshot archives


def test_archive_round_trips_a_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "MANIFEST").write_bytes(b"manifest")
    (source / "000001.sst").write_bytes(bytes(range(256)) * 100)
    target = tmp_path / "target"
    unpack_archive(pack_directory(source), target)
    assert sorted(p.name for p in target.iterdir()) == ["000001.sst", "MANIFEST"]
    assert (target / "000001.sst").read_bytes() == bytes(range(256)) * 100


def _archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../escape", "sub/file", "/abs", ".."])
def test_archive_member_with_a_path_is_refused(tmp_path: Path, name: str) -> None:
    data = _archive((tarfile.TarInfo(name), b"x"))
    with pytest.raises(SnapshotArchiveError, match="not a plain file name"):
        unpack_archive(data, tmp_path / "target")
    assert not (tmp_path / "escape").exists()


def test_archive_symlink_member_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("MANIFEST")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(SnapshotArchiveError, match="not a plain file name"):
        unpack_archive(_archive((link, b"")), tmp_path / "target")


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "MANIFEST").write_bytes(b"m" * 5000)
    data = pack_directory(source)
    with pytest.raises(SnapshotArchiveError, match="tar"):
        unpack_archive(data[:700], tmp_path / "target")
    with pytest.raises(SnapshotArchiveError, match="tar"):
        unpack_archive(b"not a tar at all" * 64, tmp_path / "target2")
