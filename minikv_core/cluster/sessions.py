"""Client sessions: a write sent again after an unknown outcome applies at most once.

Why: when a leader dies or a connection breaks after a write was sent, the client cannot
know whether it applied. Sending it again blindly can apply it a second time *after* later
writes to the key, and readers see an overwritten value come back (the anomaly
tests/integration/test_register_histories.py found). Without sessions the client must give up
and report an unknown outcome; with them it retries safely (Raft thesis §6.3, "Implementing
linearizable semantics").

How: a client picks a random 16-byte id and numbers its writes 1, 2, 3, ... (`seq`). Each
write carries `WriteSession(client_id, seq, acked, retry)`: `acked` says every write of this
client numbered below it has been answered or given up, so the shard may forget them; `retry`
marks a repeat. A shard's state machine remembers, per client, the result of each applied
write numbered `acked` or more. When it applies a write:

- seen before (same client and seq): nothing is written; the remembered result is answered
  again (the retry learns the outcome of the write that did apply);
- numbered below the session's `acked`, or a retry of a client the shard does not know while
  the shard has ever forgotten a session (the client's may be the one): refused with
  EXPIRED, nothing written. The outcome is then unknown to the client, which says so —
  never applied a second time. (A shard that never forgot a session and does not know the
  client has never applied any of its writes, so a retry of its first one applies.)
- otherwise applied, and its result remembered.

Every decision depends only on the log, so every replica decides alike. The table lives in
the shard's engine under SESSION_KEY_PREFIX (one record per client, written in the same
atomic batch as the entry's writes), so it survives crashes (replay restarts above the
engine's durable applied index with the records as of that index), travels in snapshots, and
is rebuilt from the engine at open and after a snapshot install.

Bounds (limits.py): SESSIONS_PER_SHARD_MAX sessions (the one touched longest ago, by log
index then client id, is forgotten first) and SESSION_RESULTS_MAX results per session (the
oldest are forgotten and `acked` moves above them). No clock: expiry by wall time would need
the leader's clock in every entry, and eviction by count is deterministic without it.

Record layout (little-endian): `acked u64 | last_index u64 | count u32 | count x seq u64 |
count x code u64`, where a code is the version a put wrote, or DELETED_CODE /
DELETED_ABSENT_CODE for a delete that found the key or not (versions are Raft indexes and
never reach those). Columns of u64: the whole record packs in one call.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from minikv_core.cluster import limits
from minikv_core.cluster.txn import SYSTEM_KEY_PREFIX
from minikv_core.storage.engine import Delete, Engine, Op, Put
from minikv_core.storage.errors import StorageError

SESSION_KEY_PREFIX = SYSTEM_KEY_PREFIX + b"s/"
EVICTED_KEY = SYSTEM_KEY_PREFIX + b"sessions-evicted"
"""How many sessions the shard has forgotten (u64), absent while none."""
assert not EVICTED_KEY.startswith(SESSION_KEY_PREFIX)
_COUNT = struct.Struct("<Q")

_U64_MAX = 2**64 - 1
_HEADER = struct.Struct("<QQI")  # acked, last_index, count
_RESULT_BYTES = 8 + 8  # seq, code


class SessionError(ValueError):
    """A session's fields are out of range."""


class SessionCorruptionError(StorageError):
    """A stored session record does not decode (it was not written by this module)."""


class WriteSession(NamedTuple):
    """What a client's write carries so that sending it again cannot apply it twice. (A
    NamedTuple: one is built per write decoded on every replica.)"""

    client_id: bytes
    """SESSION_CLIENT_ID_BYTES random bytes, fixed for the client's lifetime."""
    seq: int
    """This write's number, 1.. and unique per client."""
    acked: int
    """Every write of the client numbered below it is answered or given up (<= seq)."""
    retry: bool = False
    """A repeat of a write sent before."""

    def check(self) -> WriteSession:
        """Self, or SessionError naming the field that is out of range."""
        if not isinstance(self.client_id, bytes) or (
            len(self.client_id) != limits.SESSION_CLIENT_ID_BYTES
        ):
            raise SessionError(
                f"session client_id must be {limits.SESSION_CLIENT_ID_BYTES} bytes, got "
                f"{len(self.client_id) if isinstance(self.client_id, bytes) else self.client_id!r}"
            )
        if type(self.seq) is not int or not 1 <= self.seq <= _U64_MAX:
            raise SessionError(f"session seq must be in 1..2**64-1, got {self.seq!r}")
        if type(self.acked) is not int or not 0 <= self.acked <= self.seq:
            raise SessionError(
                f"session acked must be in 0..seq ({self.seq}), got {self.acked!r}: a client "
                "cannot have given up on the write it is sending"
            )
        if type(self.retry) is not bool:
            raise SessionError(f"session retry must be a bool, got {self.retry!r}")
        return self


DELETED_CODE = _U64_MAX
"""The remembered result of a delete that found the key."""
DELETED_ABSENT_CODE = _U64_MAX - 1
"""The remembered result of a delete that found no key."""
# Any other code is the version a put wrote (a Raft index: never this large).


def put_code(version: int) -> int:
    assert 1 <= version < DELETED_ABSENT_CODE, version
    return version


def delete_code(existed: bool) -> int:
    return DELETED_CODE if existed else DELETED_ABSENT_CODE


def is_delete_code(code: int) -> bool:
    return code >= DELETED_ABSENT_CODE


class _Session:
    __slots__ = ("acked", "last_index", "results")

    def __init__(self, acked: int, last_index: int, results: dict[int, int]) -> None:
        self.acked = acked
        self.last_index = last_index
        self.results = results
        """Write number to its result code (put_code / delete_code)."""

    def copy(self) -> _Session:
        return _Session(self.acked, self.last_index, dict(self.results))

    def encode(self) -> bytes:
        """The record, after forgetting the results below `acked` (done here, once per entry,
        rather than on every write that raises `acked`: every replica encodes alike)."""
        acked = self.acked
        results = self.results
        if results and min(results) < acked:
            results = self.results = {s: r for s, r in results.items() if s >= acked}
        count = len(results)
        return struct.pack(
            f"<QQI{2 * count}Q", acked, self.last_index, count, *results, *results.values()
        )


def _decode(key: bytes, stored: bytes) -> _Session:
    if len(stored) < _HEADER.size:
        raise SessionCorruptionError(f"session record {key!r} is {len(stored)} bytes, too short")
    acked, last_index, count = _HEADER.unpack_from(stored, 0)
    if len(stored) != _HEADER.size + count * _RESULT_BYTES:
        raise SessionCorruptionError(
            f"session record {key!r} is {len(stored)} bytes, but its header counts {count} results"
        )
    columns = struct.unpack_from(f"<{2 * count}Q", stored, _HEADER.size)
    results = dict(zip(columns[:count], columns[count:], strict=True))
    if 0 in results.values():
        raise SessionCorruptionError(f"session record {key!r} holds a result code of 0")
    return _Session(acked, last_index, results)


class SessionTable:
    """A shard's client sessions: an index over records in its engine (module docstring)."""

    __slots__ = ("_sessions", "evicted", "repeats_answered", "repeats_refused")

    def __init__(self) -> None:
        self._sessions: dict[bytes, _Session] = {}
        self.evicted = 0
        """Sessions forgotten so far (SESSIONS_PER_SHARD_MAX): replicated state."""
        self.repeats_answered = 0
        """Repeats answered with the first send's result since this replica started."""
        self.repeats_refused = 0
        """Repeats refused as unmatched (EXPIRED) since this replica started."""

    def __len__(self) -> int:
        return len(self._sessions)

    def load(self, engine: Engine) -> None:
        """Rebuild from the records in `engine` (at open and after a snapshot install)."""
        self._sessions = {
            key[len(SESSION_KEY_PREFIX) :]: _decode(key, stored)
            for key, stored in engine.scan(prefix=SESSION_KEY_PREFIX)
        }
        stored = engine.get(EVICTED_KEY)
        if stored is not None and len(stored) != _COUNT.size:
            raise SessionCorruptionError(f"{EVICTED_KEY!r} is {len(stored)} bytes, not 8")
        self.evicted = 0 if stored is None else _COUNT.unpack(stored)[0]

    def begin(self, index: int) -> SessionChanges:
        """The sessions' changes for the entry at `index`, staged until `commit()`."""
        return SessionChanges(self, index)

    def record_count(self) -> int:
        """Engine keys this table stands for: one per session, and the forgotten count."""
        return len(self._sessions) + (1 if self.evicted else 0)

    def status(self) -> dict[str, int]:
        return {
            "clients": len(self._sessions),
            "forgotten": self.evicted,
            "repeats_answered": self.repeats_answered,
            "repeats_refused": self.repeats_refused,
        }

    def results_of(self, client_id: bytes) -> dict[int, int]:
        """A copy of what the shard remembers of `client_id` (tests, inspection)."""
        session = self._sessions.get(client_id)
        return {} if session is None else dict(session.results)


class SessionChanges:
    """What one entry does to the session table: decided against the table as the entry
    found it plus the entry's own earlier writes, written to the engine in the entry's batch
    (`ops()`), and made visible only by `commit()` once that batch applied."""

    __slots__ = ("_answered", "_evicted", "_index", "_refused", "_table", "_touched")

    def __init__(self, table: SessionTable, index: int) -> None:
        self._table = table
        self._index = index
        self._touched: dict[bytes, _Session] = {}
        self._evicted: list[bytes] = []
        self._answered = 0
        self._refused = 0

    def _session(self, client_id: bytes) -> _Session | None:
        session = self._touched.get(client_id)
        if session is None:
            found = self._table._sessions.get(client_id)
            if found is None:
                return None
            session = self._touched[client_id] = found.copy()
        return session

    def admit(self, write: WriteSession) -> int | str | None:
        """Whether a write carrying `write` applies (module docstring): None if it does, the
        result code it answered if it applied before, or why the shard cannot tell."""
        session = self._session(write.client_id)
        if session is None:
            if write.retry and self._table.evicted:
                self._refused += 1
                return (
                    "this shard does not know the client's session and has forgotten sessions "
                    "before, so it cannot tell whether the write applied"
                )
            session = self._touched[write.client_id] = _Session(0, self._index, {})
        session.last_index = self._index
        session.acked = max(session.acked, write.acked)  # results below it are dropped by encode()
        code = session.results.get(write.seq)
        if code is not None:
            self._answered += 1
            return code
        if write.seq < session.acked:
            self._refused += 1
            return (
                f"write {write.seq} of the client is older than the writes this shard still "
                f"remembers (from {session.acked}), so it cannot tell whether it applied"
            )
        return None

    def remember(self, write: WriteSession, code: int) -> None:
        """Record the result code of a write `admit` let apply."""
        session = self._touched[write.client_id]
        results = session.results
        results[write.seq] = code
        if len(results) > limits.SESSION_RESULTS_MAX:
            del results[min(results)]
            session.acked = min(results)

    def ops(self) -> list[Op]:
        """The engine ops of these changes: the touched sessions' records, and deletes of the
        sessions forgotten to stay within SESSIONS_PER_SHARD_MAX."""
        sessions = self._table._sessions
        excess = len(sessions) + sum(1 for c in self._touched if c not in sessions)
        excess -= limits.SESSIONS_PER_SHARD_MAX
        if excess > 0:
            self._evicted = self._oldest(excess)
        evicted = set(self._evicted)
        ops: list[Op] = [
            Put(SESSION_KEY_PREFIX + client_id, session.encode())
            for client_id, session in self._touched.items()
            if client_id not in evicted
        ]
        ops.extend(Delete(SESSION_KEY_PREFIX + client_id) for client_id in self._evicted)
        if self._evicted:
            ops.append(Put(EVICTED_KEY, _COUNT.pack(self._table.evicted + len(self._evicted))))
        return ops

    def _oldest(self, count: int) -> list[bytes]:
        """The `count` sessions touched longest ago, by (last index, client id): sessions this
        entry touched count with this entry's index, so they go last."""

        def candidates() -> Iterator[tuple[int, bytes]]:
            for client_id, session in self._table._sessions.items():
                touched = self._touched.get(client_id)
                yield (session if touched is None else touched).last_index, client_id
            for client_id, session in self._touched.items():
                if client_id not in self._table._sessions:
                    yield session.last_index, client_id

        return [client_id for _, client_id in sorted(candidates())[:count]]

    def commit(self) -> None:
        sessions = self._table._sessions
        sessions.update(self._touched)
        for client_id in self._evicted:
            sessions.pop(client_id, None)
        self._table.evicted += len(self._evicted)
        self._table.repeats_answered += self._answered
        self._table.repeats_refused += self._refused
