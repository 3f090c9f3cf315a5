"""The storage half of `minikv cluster verify`: is every live table (and the MANIFEST naming
them) intact on disk, and what is the shard's logical state, as a digest replicas can compare.

Two checks because they answer different questions. `verify_tables` asks the disk: it opens
each live table afresh (its own descriptor, no block cache) and reads every block, so a block
that is damaged on disk is found even while a good copy of it sits in the cache, and it lists
every damaged block rather than stopping at the first, so an operator sees the whole extent of
the damage. `state_checksum` asks the data: two replicas that applied the same Raft entries
must hold the same live pairs whatever their memtables, flushes and compactions did, so it
digests the pairs in key order and ignores the physical layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from minikv_core.storage.engine import Engine, TableInfo
from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.manifest import MANIFEST_NAME, read_manifest
from minikv_core.storage.sstable import TableReader


@dataclass(frozen=True, slots=True)
class TableProblem:
    """One finding of `verify_tables`: what an operator needs to look at the bytes."""

    path: str  # absolute path of the table file
    offset: int | None  # byte offset of the bad block or footer; None for a whole-file problem
    reason: str

    def describe(self) -> str:
        """One line for a terminal or a log."""
        if self.offset is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path} @ {self.offset}: {self.reason}"


@dataclass(frozen=True, slots=True)
class StateChecksum:
    """The live key/value state of one replica: equal state, equal checksum.

    `digest` is BLAKE2b (16-byte digest, hex) over `u32 len | key | u32 len | value` (lengths
    little-endian) of every live pair in ascending key order; tombstones and shadowed values
    do not count. Nothing about tables or memtables enters it, so replicas compare equal
    whatever their flush and compaction history.
    """

    keys: int  # live keys
    digest: str

    def to_json(self) -> dict[str, object]:
        return {"keys": self.keys, "digest": self.digest}


def state_checksum(engine: Engine) -> StateChecksum:
    """The checksum of `engine`'s live state as of the call.

    Why it is exact while compactions run: `Engine.checksum` takes the engine's read view
    (memtables and runs, swapped atomically by writers) and copies the active memtable under
    the write lock, so the view pins the tables it reads even if a compaction unlinks them
    meanwhile. A block already in the block cache is not re-read from disk (that is
    `verify_tables`' job); one read from disk with a bad CRC raises `CorruptionError` naming
    the file and offset, never a digest of wrong data. O(data): a full scan.
    """
    checksum = engine.checksum()
    return StateChecksum(keys=checksum.key_count, digest=checksum.digest)


def verify_tables(engine: Engine) -> list[TableProblem]:
    """Read every live table of `engine` from disk and report each problem found (empty: all
    intact): footer and magic, meta, index and bloom blocks, every data block's CRC and
    structure, and the table's agreement with what the MANIFEST records of it.

    Blocking: a full read of the tables, so callers run it in a thread. Safe while the engine
    serves and compacts: the live tables are listed from one read view, and a table whose
    check failed is reported only if it is still live afterwards (a compaction or snapshot
    install may have deleted it after the listing: that is the engine's business, not damage).
    Table names are never reused by an engine, so a name still listed is the same file.
    The MANIFEST is read back from disk too: a running engine never reads it again, so damage
    to it shows only when the node restarts, and then the node refuses to start. Found here,
    the replica is marked corrupt and rebuilt while the node still runs.

    Raises `EngineClosedError` if the engine is closed.
    """
    problems = _check_manifest(engine.path)
    for info in engine.tables():
        found = _check_table(engine.path / info.name, info)
        if found and _is_live(engine, info.name):
            problems.extend(found)
    return problems


def _check_manifest(directory: Path) -> list[TableProblem]:
    """The MANIFEST as the engine's next open will read it. Safe while the engine writes a
    new one: it is replaced by a rename, so a reader sees the old file or the new, whole."""
    where = str((directory / MANIFEST_NAME).absolute())
    try:
        state = read_manifest(directory)
    except CorruptionError as exc:
        return [TableProblem(where, exc.offset, exc.reason)]
    except OSError as exc:
        return [TableProblem(where, None, f"cannot read: {exc.strerror or exc}")]
    if state is None:
        return [TableProblem(where, None, "missing: the engine could not be opened again")]
    return []


def _is_live(engine: Engine, name: str) -> bool:
    return any(info.name == name for info in engine.tables())


def _check_table(path: Path, info: TableInfo) -> list[TableProblem]:
    """Every problem of one table file, compared with its MANIFEST record `info`."""
    where = str(path.absolute())
    try:
        size_bytes = os.stat(path).st_size
    except FileNotFoundError:
        return [TableProblem(where, None, "listed in the MANIFEST but missing")]
    except OSError as exc:
        return [TableProblem(where, None, f"cannot stat: {exc.strerror or exc}")]
    if size_bytes != info.size_bytes:
        # The size is checked first: a truncated table's footer is gone, so "bad magic" would
        # be the only other finding, and it hides the cause.
        shape = "truncated" if size_bytes < info.size_bytes else "has unexpected trailing bytes"
        return [
            TableProblem(
                where,
                min(size_bytes, info.size_bytes),
                f"file is {size_bytes} bytes, the MANIFEST says {info.size_bytes}: {shape}",
            )
        ]
    try:
        reader = TableReader.open(path, cache=None)  # its own descriptor; no cache at all
    except FileNotFoundError:
        return [TableProblem(where, None, "listed in the MANIFEST but missing")]
    except CorruptionError as exc:
        return [TableProblem(where, exc.offset, exc.reason)]
    except OSError as exc:
        return [TableProblem(where, None, f"cannot read: {exc.strerror or exc}")]
    try:
        return _check_open_table(where, reader, info)
    except OSError as exc:  # an I/O error reading a data block (EIO on a failing disk)
        return [TableProblem(where, None, f"cannot read: {exc.strerror or exc}")]
    finally:
        reader.close()


def _check_open_table(where: str, reader: TableReader, info: TableInfo) -> list[TableProblem]:
    problems: list[TableProblem] = []
    properties = reader.properties
    recorded = (info.key_count, info.tombstone_count, info.smallest, info.largest)
    on_disk = (
        properties.entry_count,
        properties.tombstone_count,
        properties.smallest,
        properties.largest,
    )
    if on_disk != recorded:
        problems.append(
            TableProblem(
                where,
                None,
                f"meta block ({properties.entry_count} entries, {properties.tombstone_count} "
                f"tombstones, keys {properties.smallest!r}..{properties.largest!r}) differs "
                f"from the MANIFEST ({info.key_count} entries, {info.tombstone_count} "
                f"tombstones, keys {info.smallest!r}..{info.largest!r})",
            )
        )
    entries = 0
    tombstones = 0
    damaged = False
    for block in reader.check_blocks():  # every block read from disk, CRC and structure checked
        if block.error is not None:
            damaged = True
            problems.append(TableProblem(where, block.offset, block.error))
            continue
        if block.number == 0 and block.first_key != reader.smallest:
            problems.append(
                TableProblem(
                    where, block.offset, "first key differs from the meta block's smallest key"
                )
            )
        entries += block.entry_count
        tombstones += block.tombstone_count
    if not damaged and (entries, tombstones) != (
        properties.entry_count,
        properties.tombstone_count,
    ):
        problems.append(
            TableProblem(
                where,
                None,
                f"data blocks hold {entries} entries ({tombstones} tombstones), the meta block "
                f"says {properties.entry_count} ({properties.tombstone_count})",
            )
        )
    return problems
