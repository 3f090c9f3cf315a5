"""The manifest: atomic replacement, round trip, and damage reported with path and offset."""

from __future__ import annotations

import json
from pathlib import Path

import crc32c
import pytest

from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.manifest import (
    HEADER,
    MAGIC,
    MANIFEST_NAME,
    MANIFEST_TEMP_NAME,
    ManifestState,
    TableMeta,
    decode_manifest,
    encode_manifest,
    read_manifest,
    write_manifest,
)


def meta(number: int, smallest: bytes, largest: bytes) -> TableMeta:
    return TableMeta(number, 1000 + number, 10, 1, smallest, largest)


STATE = ManifestState(
    applied_index=42,
    next_file_number=9,
    runs=(
        (meta(8, b"a", b"z"),),
        (meta(3, b"\x00", b"m"), meta(5, b"n", b"\xff" * 4096)),
    ),
)


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    write_manifest(tmp_path, STATE)
    assert read_manifest(tmp_path) == STATE
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]


def test_replacement_keeps_only_the_new_state(tmp_path: Path) -> None:
    write_manifest(tmp_path, STATE)
    newer = ManifestState(43, 10, ((meta(9, b"b", b"c"),),))
    write_manifest(tmp_path, newer)
    assert read_manifest(tmp_path) == newer
    assert not (tmp_path / MANIFEST_TEMP_NAME).exists()


def test_stray_temp_file_of_an_interrupted_write_is_ignored(tmp_path: Path) -> None:
    write_manifest(tmp_path, STATE)
    (tmp_path / MANIFEST_TEMP_NAME).write_bytes(b"half a manif")
    assert read_manifest(tmp_path) == STATE


def test_crc_mismatch_names_the_file_and_payload_offset(tmp_path: Path) -> None:
    write_manifest(tmp_path, STATE)
    path = tmp_path / MANIFEST_NAME
    data = bytearray(path.read_bytes())
    data[HEADER.size + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="manifest CRC mismatch") as caught:
        read_manifest(tmp_path)
    assert (caught.value.path, caught.value.offset) == (path, HEADER.size)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:10], "shorter than its header"),
        (lambda d: b"NOTMANIF" + d[8:], "bad magic"),
        (lambda d: d[:-1], "payload bytes"),
        (lambda d: d + b"x", "payload bytes"),
    ],
)
def test_damaged_file_is_reported(tmp_path: Path, damage: object, message: str) -> None:
    data = encode_manifest(STATE)
    assert callable(damage)
    with pytest.raises(CorruptionError, match=message):
        decode_manifest(damage(data), tmp_path / MANIFEST_NAME)


def framed(document: object) -> bytes:
    payload = json.dumps(document).encode()
    return HEADER.pack(MAGIC, 1, crc32c.crc32c(payload), len(payload)) + payload


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "not a JSON object"),
        ({"runs": [], "applied_index": 1}, "next_file_number"),
        ({"runs": [[]], "applied_index": 1, "next_file_number": 2}, "run 0 is empty"),
        ({"runs": [], "applied_index": -1, "next_file_number": 2}, "negative"),
        ({"runs": [], "applied_index": "7", "next_file_number": 2}, "not an integer"),
    ],
)
def test_well_framed_but_invalid_payload_is_reported(
    tmp_path: Path, document: object, message: str
) -> None:
    with pytest.raises(CorruptionError, match=message):
        decode_manifest(framed(document), tmp_path / MANIFEST_NAME)


def table_document(number: int, smallest: str, largest: str) -> dict[str, object]:
    return {
        "file_number": number,
        "size_bytes": 100,
        "entry_count": 1,
        "tombstone_count": 0,
        "smallest": smallest,
        "largest": largest,
    }


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([[table_document(1, "61", "63"), table_document(2, "62", "64")]], "overlaps"),
        ([[table_document(1, "61", "61")], [table_document(1, "62", "62")]], "listed twice"),
        ([[table_document(5, "61", "61")]], "outside 1..next_file_number"),
        ([[table_document(1, "63", "61")]], "smallest > largest"),
        ([[table_document(1, "", "61")]], "smallest is 0 bytes"),
    ],
)
def test_inconsistent_table_list_is_reported(
    tmp_path: Path, runs: list[list[dict[str, object]]], message: str
) -> None:
    document = {"applied_index": 3, "next_file_number": 5, "runs": runs}
    with pytest.raises(CorruptionError, match=message):
        decode_manifest(framed(document), tmp_path / MANIFEST_NAME)
