"""The record of which data each peer runs on (cluster/peer_incarnations.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minikv_core.cluster.config import IdentityError
from minikv_core.cluster.peer_incarnations import PeerIncarnations


async def test_the_first_incarnation_heard_is_kept_durably_and_another_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "peer_incarnations.json"
    book = PeerIncarnations.open(path, 1)
    assert await book.admit(2, "bbbb") == ""
    assert await book.admit(2, "bbbb") == ""
    assert await book.admit(3, "cccc") == ""
    # What a restart of this node reads back: the fence must survive it.
    reopened = PeerIncarnations.open(path, 1)
    assert reopened.known == {2: "bbbb", 3: "cccc"}
    refusal = await reopened.admit(2, "dddd")
    assert refusal.startswith("node 1 knew node 2 with other data (incarnation bbbb, now dddd)")
    assert "repair --dead 2" in refusal and "remove-node 2" in refusal
    assert reopened.known[2] == "bbbb", "first heard wins: a refused one is not recorded"


async def test_a_caller_that_sends_no_incarnation_is_admitted_and_not_recorded(
    tmp_path: Path,
) -> None:
    book = PeerIncarnations.open(tmp_path / "p.json", 1)
    assert await book.admit(2, "") == ""
    assert book.known == {} and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    "content",
    [b"{", b"[]", json.dumps({"format": 9, "peers": {}}).encode(), b'{"format": 1}'],
)
def test_a_malformed_record_is_refused_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "peer_incarnations.json"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match=f"{path} is malformed"):
        PeerIncarnations.open(path, 1)


async def test_a_record_that_cannot_be_written_raises_and_admits_nothing(
    tmp_path: Path,
) -> None:
    """The transport refuses the stream then: admitted unrecorded, the incarnation would not
    be known after this node restarts, and another one would pass."""
    directory = tmp_path / "node"
    directory.mkdir()
    book = PeerIncarnations.open(directory / "p.json", 1)
    directory.rmdir()
    directory.write_bytes(b"")  # the directory is gone: every write under it fails
    with pytest.raises(OSError):
        await book.admit(2, "bbbb")
    assert book.known == {}
