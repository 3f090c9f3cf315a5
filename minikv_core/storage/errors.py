"""Typed exceptions of the storage layer (WAL and LSM).

Why typed: the node decides what to do by type (refuse to start on `CorruptionError`, crash
and restart on `WalFailedError`), and the CLI turns each into one line for a person. Every
corruption names the file and byte offset, so an operator can look at the exact bytes.
"""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base of every error raised by `minikv_core.storage`."""


class CorruptionError(StorageError):
    """Data on disk is not what was written: names the file, the byte offset and why.

    The common base of WAL and LSM corruption findings; `offset` is where the first bad byte
    or record starts (for a whole-file problem such as a missing segment, 0).
    """

    def __init__(self, path: Path | str, offset: int, reason: str) -> None:
        self.path = Path(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.path}: corruption at byte offset {offset}: {reason}")

    def __reduce__(self) -> tuple[type[CorruptionError], tuple[Path, int, str]]:
        # Keeps the three fields when the error crosses a process boundary (pickle).
        return (type(self), (self.path, self.offset, self.reason))


class WalCorruptionError(CorruptionError):
    """A WAL record or segment header is bad somewhere other than a torn tail.

    The node refuses to start; `minikv wal repair` truncates the log at `offset` and the node
    catches up from its peers (DESIGN: Storage).
    """


class WalDirectoryError(StorageError):
    """The WAL directory is missing, not a directory, or holds something that is not a WAL."""


class WalLockedError(StorageError):
    """Another process (or another open `Wal`) already owns the WAL directory."""


class WalClosedError(StorageError):
    """The `Wal` was closed; no more appends or reads through it."""


class WalFailedError(StorageError):
    """A write or fsync failed earlier, so the log refuses all further appends.

    After a failed fsync the kernel may have dropped the dirty pages and cleared the error
    (PostgreSQL's "fsyncgate", 2018): retrying could report success for data that is gone.
    The only safe continuation is to reopen, which rescans the files from disk.
    """


class WalRecordTooLargeError(StorageError, ValueError):
    """A record (or one caller's batch) is larger than a record or a segment can hold."""


class WalPositionError(StorageError, ValueError):
    """A `Position` does not name a place in this log (deleted segment, past the end...)."""


class RecordDecodeError(StorageError, ValueError):
    """A WAL payload passed its CRC but does not decode as its record type says.

    A CRC-valid payload that does not decode means a writer bug or a format change, not a
    disk fault; it is reported, never guessed around.
    """
