"""The manifest: which tables are live, in which sorted run, and the Raft index they cover.

Why a whole-state file replaced atomically (and not LevelDB's log of version edits plus a
CURRENT pointer): the state is small (one line per table, a few hundred tables at most), so
rewriting it costs one small write; a single self-contained file has no replay logic, no edit
ordering to get wrong and no log to roll over, and it is exactly the shape a snapshot ships.
The commit protocol is DESIGN.md's "write-new-then-rename with directory fsync":

    write MANIFEST.tmp -> fsync it -> rename over MANIFEST -> fsync the directory

A crash before the rename leaves the old MANIFEST (and a stray MANIFEST.tmp, deleted on open);
after the directory fsync the new one is durable. POSIX rename is atomic, so a reader sees the
old or the new file, never a mix.

The applied Raft index lives in the same file as the table list, so it is persisted atomically
with every flush: the tables named here contain every write with index <= `applied_index`, and
nothing later. (etcd 3.5's data-inconsistency bug came from persisting the two separately.)

File format (little-endian): 8-byte MAGIC | u32 format version | u32 CRC-32C of the payload |
u64 payload length | payload, UTF-8 JSON:

    {"applied_index": 42, "next_file_number": 9,
     "runs": [[{"file_number": 8, "size_bytes": 4096, "entry_count": 10, "tombstone_count": 1,
                "smallest": "<hex>", "largest": "<hex>"}, ...], ...]}

`runs` are newest first; the tables of one run are sorted by key and do not overlap.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import crc32c

from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.lsm_limits import LSM_KEY_SIZE_BYTES_MAX, LSM_MANIFEST_SIZE_BYTES_MAX
from minikv_core.storage.sstable_format import table_file_name

MANIFEST_NAME: Final = "MANIFEST"
MANIFEST_TEMP_NAME: Final = "MANIFEST.tmp"
MAGIC: Final = b"MKVMANI\x01"
FORMAT_VERSION: Final = 1
HEADER: Final = struct.Struct("<8sIIQ")

assert len(MAGIC) == 8


@dataclass(frozen=True, slots=True)
class TableMeta:
    """What the manifest records of one table (enough to plan compactions without opening)."""

    file_number: int
    size_bytes: int
    entry_count: int
    tombstone_count: int
    smallest: bytes
    largest: bytes

    @property
    def file_name(self) -> str:
        return table_file_name(self.file_number)


@dataclass(frozen=True, slots=True)
class ManifestState:
    """A version of the engine's durable state. `runs[0]` is the newest sorted run."""

    applied_index: int
    next_file_number: int
    runs: tuple[tuple[TableMeta, ...], ...]

    def problem(self) -> str | None:
        """Why this state is not a valid manifest, or None (checked on write and on read)."""
        return _problem(self)

    def tables(self) -> list[TableMeta]:
        return [table for run in self.runs for table in run]


def _problem(state: ManifestState) -> str | None:
    """Why `state` is not a valid manifest, or None. Checked on write and on read."""
    if state.applied_index < 0:
        return f"applied_index {state.applied_index} is negative"
    seen: set[int] = set()
    for position, run in enumerate(state.runs):
        if not run:
            return f"run {position} is empty"
        for i, table in enumerate(run):
            if not 1 <= table.file_number < state.next_file_number:
                return (
                    f"table {table.file_number} is outside 1..next_file_number "
                    f"({state.next_file_number})"
                )
            if table.file_number in seen:
                return f"table {table.file_number} is listed twice"
            seen.add(table.file_number)
            if table.entry_count < 1 or table.size_bytes < 1:
                return f"table {table.file_number} has no entries or no bytes"
            if not 0 <= table.tombstone_count <= table.entry_count:
                return f"table {table.file_number} has an impossible tombstone count"
            if not table.smallest <= table.largest:
                return f"table {table.file_number} has smallest > largest"
            if i and table.smallest <= run[i - 1].largest:
                return f"run {position}: table {table.file_number} overlaps its predecessor"
    return None


def encode_manifest(state: ManifestState) -> bytes:
    problem = _problem(state)
    assert problem is None, f"refusing to write an invalid manifest: {problem}"
    document = {
        "applied_index": state.applied_index,
        "next_file_number": state.next_file_number,
        "runs": [
            [
                {
                    "file_number": table.file_number,
                    "size_bytes": table.size_bytes,
                    "entry_count": table.entry_count,
                    "tombstone_count": table.tombstone_count,
                    "smallest": table.smallest.hex(),
                    "largest": table.largest.hex(),
                }
                for table in run
            ]
            for run in state.runs
        ],
    }
    payload = json.dumps(document, separators=(",", ":")).encode()
    assert len(payload) + HEADER.size <= LSM_MANIFEST_SIZE_BYTES_MAX
    return HEADER.pack(MAGIC, FORMAT_VERSION, crc32c.crc32c(payload), len(payload)) + payload


def _key(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a hex string")
    key = bytes.fromhex(value)
    if not 1 <= len(key) <= LSM_KEY_SIZE_BYTES_MAX:
        raise ValueError(f"{what} is {len(key)} bytes long")
    return key


def _int(document: dict[str, object], name: str) -> int:
    value = document[name]
    if type(value) is not int:
        raise ValueError(f"{name} is not an integer")
    return value


def decode_manifest(data: bytes, path: Path) -> ManifestState:
    """Parse a manifest file's bytes; raises `CorruptionError` naming `path` and the offset."""
    if len(data) < HEADER.size:
        raise CorruptionError(path, 0, f"manifest is {len(data)} bytes, shorter than its header")
    magic, version, stored_crc, length = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptionError(path, 0, f"bad magic {magic.hex()}: not a minikv manifest")
    if version != FORMAT_VERSION:
        raise CorruptionError(
            path, 8, f"unsupported manifest format version {version} (reads {FORMAT_VERSION})"
        )
    payload = data[HEADER.size :]
    if length != len(payload):
        raise CorruptionError(
            path, HEADER.size, f"header says {length} payload bytes, file holds {len(payload)}"
        )
    computed = crc32c.crc32c(payload)
    if computed != stored_crc:
        raise CorruptionError(
            path,
            HEADER.size,
            f"manifest CRC mismatch (stored {stored_crc:#010x}, computed {computed:#010x})",
        )
    try:
        document = json.loads(payload)
        if not isinstance(document, dict):
            raise ValueError("payload is not a JSON object")
        runs_document = document["runs"]
        if not isinstance(runs_document, list):
            raise ValueError("runs is not a list")
        runs: list[tuple[TableMeta, ...]] = []
        for run_document in runs_document:
            if not isinstance(run_document, list):
                raise ValueError("a run is not a list")
            run: list[TableMeta] = []
            for table in run_document:
                if not isinstance(table, dict):
                    raise ValueError("a table entry is not an object")
                run.append(
                    TableMeta(
                        file_number=_int(table, "file_number"),
                        size_bytes=_int(table, "size_bytes"),
                        entry_count=_int(table, "entry_count"),
                        tombstone_count=_int(table, "tombstone_count"),
                        smallest=_key(table["smallest"], "smallest"),
                        largest=_key(table["largest"], "largest"),
                    )
                )
            runs.append(tuple(run))
        applied_index = _int(document, "applied_index")
        next_file_number = _int(document, "next_file_number")
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(path, HEADER.size, f"manifest payload is malformed: {exc}") from None
    state = ManifestState(applied_index, next_file_number, tuple(runs))
    problem = _problem(state)
    if problem is not None:
        raise CorruptionError(path, HEADER.size, f"manifest is inconsistent: {problem}")
    return state


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (creates, renames, unlinks) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, state: ManifestState) -> None:
    """Replace `directory/MANIFEST` with `state`, durably and atomically (see module doc)."""
    data = encode_manifest(state)
    temp = directory / MANIFEST_TEMP_NAME
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, directory / MANIFEST_NAME)
    fsync_directory(directory)


def read_manifest(directory: Path) -> ManifestState | None:
    """The durable state in `directory`, or None if it has no MANIFEST."""
    path = directory / MANIFEST_NAME
    try:
        with open(path, "rb") as file:
            data = file.read(LSM_MANIFEST_SIZE_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    if len(data) > LSM_MANIFEST_SIZE_BYTES_MAX:
        raise CorruptionError(
            path, 0, f"manifest is larger than the limit of {LSM_MANIFEST_SIZE_BYTES_MAX} bytes"
        )
    return decode_manifest(data, path)
