"""A shard's transaction state: intents, locks and transaction records, applied from the log.

Everything here is *replicated state*: it changes only when a committed entry is applied, the
same way on every replica, and it lives in the shard's engine under `txn.SYSTEM_KEY_PREFIX`
(intent records `…i/<txn id>`, transaction records `…r/<txn id>`), so it is in every engine
snapshot (what InstallSnapshot ships) and survives restarts. The in-memory lock table is an
index over the intent records, rebuilt by `load()` whenever the engine's state is replaced.

Lock rules, each with the invariant it protects:

- A PREPARE takes a *write lock* on every key either branch writes and a *read lock* on every
  key a compare or get reads. It is refused (no-wait: `Conflict`, nothing applied) if another
  transaction holds a write lock on any of its keys, or a read lock on a key it writes.
  Invariant: between a part's prepare and its resolve, no other write reaches the keys it read
  or will write, so its compares and gets are still true at the commit point (strict two-phase
  locking, hence serializable) and its staged writes' version (the prepare index) is above
  every earlier write of those keys and below every later one (versions only grow).
- A plain put or delete, and a ONE_PHASE transaction's writes, are refused (`Conflict`) on a
  key with any lock. Invariant: plain writes serialize with transactions; a prepared
  transaction's reads are never invalidated before it resolves.
- A ONE_PHASE transaction's reads are refused on a write-locked key (read-read is fine).
  Invariant: a read never sees the state "before" a transaction that may already have
  committed elsewhere (its decision record) but not yet here.
- A RESOLVE applies (commit) or drops (abort) the intent's staged writes and releases all its
  locks in the same entry. A RESOLVE for an unknown transaction is a no-op, so resolving twice
  (coordinator and a resolver racing) cannot apply writes twice. Invariant: each prepared
  write is applied at most once, and only when its record says committed.
- A DECIDE or FINISH writes the record only if there is none: the first decision wins, so a
  resolver's abort and a coordinator's commit can never both take effect.
- Expiry times are only advice for resolvers: nothing at apply time reads a clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from minikv_core.cluster import limits
from minikv_core.cluster.txn import (
    SYSTEM_KEY_PREFIX,
    OpKind,
    OpResult,
    TxnOp,
    evaluate_compare,
)
from minikv_core.cluster.txn_codec import (
    Blocker,
    Conflict,
    Decide,
    Decided,
    Decision,
    Finish,
    Finished,
    Forget,
    Forgotten,
    Intent,
    OnePhase,
    PartDone,
    Prepare,
    Prepared,
    Resolve,
    Resolved,
    ResolveMany,
    ShardPart,
    TxnBody,
    TxnCodecError,
    TxnResult,
    decode_intent,
    decode_record,
    encode_intent,
    encode_record,
)
from minikv_core.storage.engine import Delete, Engine, Op, Put

INTENT_PREFIX = SYSTEM_KEY_PREFIX + b"i/"
RECORD_PREFIX = SYSTEM_KEY_PREFIX + b"r/"
_VERSION = struct.Struct("<Q")
assert _VERSION.size == limits.STORED_VERSION_BYTES

Reader = Callable[[bytes], "tuple[bytes, int] | None"]
"""A client key's committed (value, version), or None."""


class TxnStateCorruptionError(ValueError):
    """A stored intent or record does not decode: the engine holds what this module never
    wrote."""


def intent_key(txn_id: bytes) -> bytes:
    return INTENT_PREFIX + txn_id


def record_key(txn_id: bytes) -> bytes:
    return RECORD_PREFIX + txn_id


@dataclass(slots=True)
class Applied:
    """What applying one transaction body does: engine ops (one atomic batch with the entry's
    index), the result for the proposer, and the lock-table change to make once the engine
    has taken the ops (never before: a refused batch must leave the table as it was)."""

    ops: list[Op]
    result: TxnResult
    commit: Callable[[], None]


def _nothing() -> None:
    return None


class TxnLockTable:
    """The in-memory index of a shard's prepared transactions (see the module docstring)."""

    __slots__ = ("intents", "read_locks", "records", "write_locks")

    def __init__(self) -> None:
        self.intents: dict[bytes, Intent] = {}
        self.records: dict[bytes, Decision] = {}
        """Transaction id -> its decision record's content, as the engine holds it: the
        record collector (txn_record_gc.py) reads it without scanning the engine."""
        self.write_locks: dict[bytes, bytes] = {}
        """Key -> the transaction that will write it."""
        self.read_locks: dict[bytes, set[bytes]] = {}
        """Key -> the transactions that read it."""

    def load(self, engine: Engine) -> None:
        """Rebuild from the intent records in `engine` (at open and after a snapshot install)."""
        self.intents.clear()
        self.write_locks.clear()
        self.read_locks.clear()
        self.records.clear()
        for key, stored in engine.scan(prefix=INTENT_PREFIX):
            try:
                intent = decode_intent(stored)
            except TxnCodecError as error:
                raise TxnStateCorruptionError(f"intent record {key!r}: {error}") from None
            self._add(intent)
        for key, stored in engine.scan(prefix=RECORD_PREFIX):
            self.records[key[len(RECORD_PREFIX) :]] = _stored_decision(key, stored)

    # --- queries

    def write_blockers(self, key: bytes, txn_id: bytes = b"") -> list[Blocker]:
        """Transactions (other than `txn_id`) whose locks forbid writing `key` now."""
        found: list[Blocker] = []
        writer = self.write_locks.get(key)
        if writer is not None and writer != txn_id:
            found.append(self.intents[writer].blocker())
        for reader in self.read_locks.get(key, ()):
            if reader != txn_id:
                found.append(self.intents[reader].blocker())
        return found

    def read_blocker(self, key: bytes, txn_id: bytes = b"") -> Blocker | None:
        """The transaction (other than `txn_id`) whose staged write hides `key`'s value."""
        writer = self.write_locks.get(key)
        if writer is None or writer == txn_id:
            return None
        return self.intents[writer].blocker()

    def write_locked_keys(self) -> list[tuple[bytes, Blocker]]:
        return [(key, self.intents[txn].blocker()) for key, txn in self.write_locks.items()]

    def record_count(self) -> int:
        """Engine keys this table stands for: one per intent, one per transaction record."""
        return len(self.intents) + len(self.records)

    def status(self) -> dict[str, int]:
        return {
            "prepared": len(self.intents),
            "write_locks": len(self.write_locks),
            "read_locks": len(self.read_locks),
            "records": len(self.records),
        }

    # --- changes

    def _add(self, intent: Intent) -> None:
        self.intents[intent.txn_id] = intent
        for key in intent.write_keys():
            self.write_locks[key] = intent.txn_id
        for key in intent.read_keys:
            self.read_locks.setdefault(key, set()).add(intent.txn_id)

    def _remove(self, txn_id: bytes) -> None:
        intent = self.intents.pop(txn_id, None)
        if intent is None:
            return
        for key in intent.write_keys():
            if self.write_locks.get(key) == txn_id:
                del self.write_locks[key]
        for key in intent.read_keys:
            readers = self.read_locks.get(key)
            if readers is not None:
                readers.discard(txn_id)
                if not readers:
                    del self.read_locks[key]

    # --- apply

    def apply(self, body: TxnBody, index: int, engine: Engine, read: Reader) -> Applied:
        """What entry `index` carrying `body` does. Pure apart from engine reads: the caller
        applies `ops` to the engine, then calls `commit()`."""
        if isinstance(body, OnePhase):
            return self._one_phase(body.part, index, read)
        if isinstance(body, Prepare):
            return self._prepare(body, index, read)
        if isinstance(body, Resolve):
            return self._resolve(body)
        if isinstance(body, ResolveMany):
            return self._resolve_many(body)
        if isinstance(body, Decide):
            return self._decide(body, engine)
        if isinstance(body, Finish):
            return self._finish(body, index, engine, read)
        assert isinstance(body, Forget)
        present = [txn_id for txn_id in body.txn_ids if engine.get(record_key(txn_id)) is not None]
        ops: list[Op] = [Delete(record_key(txn_id)) for txn_id in present]

        def commit() -> None:
            for txn_id in present:
                self.records.pop(txn_id, None)

        return Applied(ops, Forgotten(bool(ops)), commit)

    def _part_blockers(self, part: ShardPart) -> list[Blocker]:
        """Who stops `part` from running at once: the rules for ONE_PHASE (module docstring)."""
        blockers: list[Blocker] = []
        for key in sorted(part.write_keys()):
            blockers += self.write_blockers(key)
        for key in sorted(part.read_keys() - part.write_keys()):
            blocker = self.read_blocker(key)
            if blocker is not None:
                blockers.append(blocker)
        return blockers

    def _one_phase(self, part: ShardPart, index: int, read: Reader) -> Applied:
        blockers = self._part_blockers(part)
        if blockers:
            return Applied([], Conflict(_unique(blockers), "keys are locked"), _nothing)
        holds = all(evaluate_compare(c, read(c.key)) for c in part.compare)
        ops: list[Op] = []
        branch = (part.success, part.success_index) if holds else (part.failure, part.failure_index)
        results = _run_branch(*branch, index, read, ops)
        return Applied(ops, PartDone(holds, results), _nothing)

    def _prepare(self, body: Prepare, index: int, read: Reader) -> Applied:
        part = body.part
        txn_id = body.txn_id
        existing = self.intents.get(txn_id)
        if existing is not None:
            # The same prepare applied again (the proposer never sends it twice, but a
            # replayed duplicate must not stage a second copy): its locks still hold, so the
            # state it read is unchanged; answer as before, with the first prepare's version.
            return Applied([], _prepared(part, existing.version, read), _nothing)
        write_keys = part.write_keys()
        read_keys = part.read_keys() - write_keys
        blockers: list[Blocker] = []
        for key in sorted(write_keys):
            blockers += self.write_blockers(key, txn_id)
        for key in sorted(read_keys):
            blocker = self.read_blocker(key, txn_id)
            if blocker is not None:
                blockers.append(blocker)
        if blockers:
            return Applied([], Conflict(_unique(blockers), "keys are locked"), _nothing)
        if len(self.intents) >= limits.TXN_INTENTS_PER_SHARD_MAX:
            reason = f"the shard holds {len(self.intents)} prepared transactions (the limit)"
            return Applied([], Conflict((), reason), _nothing)
        intent = Intent(
            txn_id,
            body.home_shard,
            body.expiry_ms,
            index,
            tuple(sorted(read_keys)),
            _writes(part.success),
            _writes(part.failure),
        )
        ops: list[Op] = [Put(intent_key(txn_id), encode_intent(intent))]

        def commit() -> None:
            self._add(intent)

        return Applied(ops, _prepared(part, index, read), commit)

    def _resolve(self, body: Resolve) -> Applied:
        intent = self.intents.get(body.txn_id)
        if intent is None:
            return Applied([], Resolved(False), _nothing)
        ops: list[Op] = [Delete(intent_key(body.txn_id))]
        if body.decision.committed:
            writes = (
                intent.success_writes
                if body.decision is Decision.COMMIT_SUCCESS
                else intent.failure_writes
            )
            for key, value in writes:
                if value is None:
                    ops.append(Delete(key))
                else:
                    ops.append(Put(key, _VERSION.pack(intent.version) + value))
        txn_id = body.txn_id

        def commit() -> None:
            self._remove(txn_id)

        return Applied(ops, Resolved(True), commit)

    def _resolve_many(self, body: ResolveMany) -> Applied:
        """Each item as its own RESOLVE, in order, as one engine batch. Their keys are
        disjoint: intents of different transactions never write-lock the same key."""
        ops: list[Op] = []
        commits: list[Callable[[], None]] = []
        had_intent = False
        seen: set[bytes] = set()
        for item in body.items:
            if item.txn_id in seen:
                continue  # named twice: the first decision resolves it, as two RESOLVEs would
            seen.add(item.txn_id)
            applied = self._resolve(item)
            ops += applied.ops
            commits.append(applied.commit)
            had_intent = had_intent or applied.result == Resolved(True)

        def commit() -> None:
            for each in commits:
                each()

        return Applied(ops, Resolved(had_intent), commit)

    def _decide(self, body: Decide, engine: Engine) -> Applied:
        """Record the decision (the first one sticks) and, with `resolve`, in the same entry
        resolve this shard's own intent of the transaction by the recorded decision: the home
        shard is always a participant, and settling its part atomically with the record saves
        the transaction one RESOLVE entry. Safe because an intent only ever follows its
        record."""
        key = record_key(body.txn_id)
        stored = engine.get(key)
        txn_id = body.txn_id
        ops: list[Op] = []
        new_record = stored is None
        decision = body.decision if stored is None else _stored_decision(key, stored)
        if new_record:
            ops.append(Put(key, bytes([decision])))
        settle: Callable[[], None] = _nothing
        if body.resolve and txn_id in self.intents:
            resolved = self._resolve(Resolve(txn_id, decision))
            ops += resolved.ops
            settle = resolved.commit

        def commit() -> None:
            if new_record:
                self.records[txn_id] = decision
            settle()

        return Applied(ops, Decided(decision), commit)

    def _finish(self, body: Finish, index: int, engine: Engine, read: Reader) -> Applied:
        """The home part and the record in one entry (txn_codec.Finish says why).

        Order matters, each step with the invariant it protects:
        1. A record already there answers: a resolver's ABORT got there first (nothing is
           applied; the coordinator retries), or this is a FINISH proposed again after an
           unknown outcome (it answers what the first one did, from the record).
        2. Keys locked by another transaction: nothing applied, but a transaction that may
           write leaves an ABORT record. A FINISH is never proposed again after a Conflict,
           but a copy of an earlier attempt could still be applied later; it must find the
           record and not commit what the coordinator has already released elsewhere.
        3. Otherwise the branch runs here at once, like ONE_PHASE, and the record says which
           one (for a transaction that writes nowhere, no record: nothing to keep atomic).
        """
        key = record_key(body.txn_id)
        stored = engine.get(key)
        if stored is not None:
            try:
                return Applied([], decode_record(stored), _nothing)
            except TxnCodecError as error:
                raise TxnStateCorruptionError(f"transaction record {key!r}: {error}") from None
        txn_id = body.txn_id
        may_write = body.success_writes or body.failure_writes
        blockers = self._part_blockers(body.part)
        if blockers:
            conflict = Conflict(_unique(blockers), "keys are locked")
            if not may_write:
                return Applied([], conflict, _nothing)
            aborted = Finished(Decision.ABORT, False, ())

            def record_abort() -> None:
                self.records[txn_id] = Decision.ABORT

            return Applied([Put(key, encode_record(aborted))], conflict, record_abort)
        part = body.part
        holds = body.others_hold and all(evaluate_compare(c, read(c.key)) for c in part.compare)
        ops: list[Op] = []
        branch = (part.success, part.success_index) if holds else (part.failure, part.failure_index)
        results = _run_branch(*branch, index, read, ops)
        if not may_write:
            return Applied(ops, Finished(None, holds, results), _nothing)
        decision = Decision.COMMIT_SUCCESS if holds else Decision.COMMIT_FAILURE
        finished = Finished(decision, holds, results)
        ops.append(Put(key, encode_record(finished)))

        def record() -> None:
            self.records[txn_id] = decision

        return Applied(ops, finished, record)


def _stored_decision(key: bytes, stored: bytes) -> Decision:
    try:
        return Decision(stored[0])
    except (ValueError, IndexError):
        raise TxnStateCorruptionError(f"transaction record {key!r} holds {stored!r}") from None


def _unique(blockers: list[Blocker]) -> tuple[Blocker, ...]:
    return tuple({b.txn_id: b for b in blockers}.values())


def _writes(ops: tuple[TxnOp, ...]) -> tuple[tuple[bytes, bytes | None], ...]:
    return tuple(
        (op.key, op.value if op.kind is OpKind.PUT else None)
        for op in ops
        if op.kind is not OpKind.GET
    )


def _run_branch(
    ops: tuple[TxnOp, ...],
    indexes: tuple[int, ...],
    version: int,
    read: Reader,
    engine_ops: list[Op] | None,
) -> tuple[tuple[int, OpResult], ...]:
    """Each op's result, reading the state before the transaction; with `engine_ops`, the
    writes are appended to it (ONE_PHASE), else they are only described (PREPARE)."""
    results: list[tuple[int, OpResult]] = []
    for op, position in zip(ops, indexes, strict=True):
        if op.kind is OpKind.GET:
            current = read(op.key)
            result = (
                OpResult(OpKind.GET, 0, value=None)
                if current is None
                else OpResult(OpKind.GET, current[1], value=current[0])
            )
        elif op.kind is OpKind.PUT:
            if engine_ops is not None:
                engine_ops.append(Put(op.key, _VERSION.pack(version) + op.value))
            result = OpResult(OpKind.PUT, version)
        else:
            existed = read(op.key) is not None
            if engine_ops is not None:
                engine_ops.append(Delete(op.key))
            result = OpResult(OpKind.DELETE, deleted=existed)
        results.append((position, result))
    return tuple(results)


def _prepared(part: ShardPart, version: int, read: Reader) -> Prepared:
    holds = all(evaluate_compare(c, read(c.key)) for c in part.compare)
    return Prepared(
        holds,
        _run_branch(part.success, part.success_index, version, read, None),
        _run_branch(part.failure, part.failure_index, version, read, None),
    )
