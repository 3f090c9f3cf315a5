"""The replicated state machine of the simulation: a tiny key-value map, and its commands.

Each applied command folds into a running digest of everything applied so far, so two nodes
can be compared at an index in O(1) (state machine safety) and a snapshot carries the digest
of the state it holds (a snapshot install is compared too).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from minikv_core.raft.types import Entry, EntryType

_DIGEST_BYTES = 16


class CommandFormatError(ValueError):
    """A NORMAL entry's data is not a command this simulation wrote."""


@dataclass(frozen=True, slots=True)
class WriteCommand:
    client: int
    key: str
    value: str  # unique per write attempt: "c<client>.<sequence>"

    def encode(self) -> bytes:
        return f"w|{self.client}|{self.key}|{self.value}".encode()

    @staticmethod
    def decode(data: bytes) -> WriteCommand:
        parts = data.decode(errors="replace").split("|")
        if len(parts) != 4 or parts[0] != "w" or not parts[1].isdigit():
            raise CommandFormatError(f"not a simulator write command: {data[:60]!r}")
        return WriteCommand(int(parts[1]), parts[2], parts[3])


def command_digest(entry: Entry) -> bytes:
    """What identifies an entry's command (type and payload, not its position)."""
    return bytes((int(entry.type),)) + entry.data


class KvStateMachine:
    """A dict of key -> value, the index of the last applied entry, and the running digest."""

    __slots__ = ("applied_index", "digest", "values")

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.applied_index = 0
        self.digest = bytes(_DIGEST_BYTES)

    def apply(self, entry: Entry) -> WriteCommand | None:
        """Apply one committed entry (the next index); returns the write it performed, if any.

        Conf changes and the leader's empty no-op change no key but still advance the index
        and the digest (two nodes must agree on those too).
        """
        assert entry.index == self.applied_index + 1, (
            f"apply out of order: {entry.index} after {self.applied_index}"
        )
        write: WriteCommand | None = None
        if entry.type == EntryType.NORMAL and entry.data:
            write = WriteCommand.decode(entry.data)
            self.values[write.key] = write.value
        self.digest = hashlib.blake2b(
            self.digest + command_digest(entry), digest_size=_DIGEST_BYTES
        ).digest()
        self.applied_index = entry.index
        return write

    def encode(self) -> bytes:
        """Snapshot data: canonical JSON, so equal states give equal bytes."""
        image = {"applied": self.applied_index, "digest": self.digest.hex(), "kv": self.values}
        return json.dumps(image, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> KvStateMachine:
        try:
            image = json.loads(data)
            machine = KvStateMachine()
            machine.applied_index = int(image["applied"])
            machine.digest = bytes.fromhex(image["digest"])
            machine.values = {str(k): str(v) for k, v in image["kv"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CommandFormatError(f"bad snapshot data {data[:60]!r}: {error}") from error
        return machine
