"""One Raft group as the host runs it: its RawNode, its state machine, and the clients waiting
on it (proposals, linearizable reads, applied-index waits).

The host (host.py) owns the driver loop and calls into groups in this order per round:
`take_ready()` -> [`apply_entries()` early] -> (persist all, send all) -> `finish_ready()`
(apply, answer reads, advance). Client coroutines call `enqueue()` / `read_index()` /
`wait_applied()` and await the futures these return; every wait is bounded by the caller's
deadline (the caller stops waiting and calls `forget_*` on timeout), so nothing here can make
a request hang.

Write batching: client writes to a shard queue on its group (`enqueue`) and the host proposes
the queue at the start of its next loop iteration (`propose_queued`), as one BatchCommand entry
per run of distinct keys (commands.py refuses a key twice in one batch; a repeated key starts
a new entry, so writes to one key keep their order). Many clients then cost one entry, one WAL
record and one engine batch, and every write of a batch gets the entry's index as its version.

Waiter matching (Raft §8, "clients"): a proposal is identified by the (term, index) its entry
got from `RawNode.propose`, plus the request id of each write inside the command. When the
entry at that index is applied with the same term and request id, the client gets its
result; if another entry was committed at that index (a new leader overwrote ours, Raft
§5.3), the proposal is known NOT to have committed and fails with UnavailableError (retry is
safe). Followers apply too, so a proposal still resolves after this node lost leadership if
its entry committed.

Forwarded writes (thesis §6.2): on a follower, queued writes go to the leader in a PROPOSE
message (`RawNode.forward_proposal`) and wait in `forwarded`, by request id (unique across
nodes: the proposer's node id is in it), for this replica to apply them. Nothing answers a
PROPOSE, so a lost one (peer stream down, leader refusing during a transfer) is settled by
terms: a write forwarded in term T can only be in an entry of term T, terms never decrease
along a log, so once this replica applies an entry of a later term the write never committed
and fails with a retry-safe UnavailableError (`_settle_forwarded`). Lost with no term change
(the leader alive but deaf to this node, or over its uncommitted bound), it waits out the
client's deadline, as etcd's forwarded proposals do.

Shard snapshots (Raft §7). A shard's snapshot data is its engine snapshot directory (MANIFEST
plus SSTables) packed as an uncompressed tar. Packing happens on demand, when the core ships
a snapshot to a lagging follower (`GroupStorage.snapshot_data_source`); the data then holds
the engine's state at its *current* applied index, which may be above the snapshot metadata's
index. That is safe: everything the engine holds is committed, and the receiver's state
machine skips re-delivered entries at or below its applied index (state_machine.py). The
receiver unpacks (validating every member name and size: the bytes come from the network),
fsyncs the files and the directory before the Ready's INSTALL mark is persisted, installs
after, then deletes them (raft_log.py: "installing a snapshot from the leader").
"""

from __future__ import annotations

import abc
import asyncio
import heapq
import io
import itertools
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from minikv_core.cluster.commands import (
    BatchCommand,
    ChecksumCommand,
    CommandEncodeError,
    TxnCommand,
    WriteCommand,
)
from minikv_core.cluster.config import fsync_directory
from minikv_core.cluster.limits import COMMAND_BATCH_COMMANDS_MAX, COMMAND_SESSION_BYTES
from minikv_core.cluster.meta import MetaStateMachine
from minikv_core.cluster.raft_log import GroupStorage
from minikv_core.cluster.read_batches import ReadBatches
from minikv_core.cluster.service import InvalidRequestError, UnavailableError
from minikv_core.cluster.state_machine import ApplyResult, ResultKind, ShardStateMachine
from minikv_core.raft import (
    NONE,
    NotLeaderError,
    ProposalDroppedError,
    RawNode,
    Ready,
    Role,
    SnapshotMetadata,
)
from minikv_core.raft import limits as raft_limits

logger = logging.getLogger(__name__)

SNAPSHOT_ARCHIVE_FILES_MAX: Final = 100_000
SNAPSHOT_ARCHIVE_NAME_BYTES_MAX: Final = 255
PROPOSAL_BATCH_BYTES_MAX: Final = 256 * 1024
"""Client writes batched into one entry stop at this many bytes (a single larger write goes
alone): an entry stays well inside one AppendEntries message (raft limits)."""
APPLIED_WAITERS_PRUNE_AT: Final = 4096
"""Applied-index waiters whose clients gave up are dropped once this many wait."""
_PUT_ITEM_BYTES: Final = 17
assert PROPOSAL_BATCH_BYTES_MAX <= raft_limits.MESSAGE_BYTES_MAX
INCOMING_SUFFIX: Final = ".incoming"
PENDING_SUFFIX: Final = ".snapshot"


AloneCommand = TxnCommand | ChecksumCommand
"""Commands proposed alone in their entry."""


class SnapshotArchiveError(ValueError):
    """Snapshot data from a peer that is not a valid archive (names the member and reason)."""


# ----------------------------------------------------------------------- snapshot archive


def pack_directory(directory: Path) -> bytes:
    """A tar (uncompressed: SSTables are already dense) of the regular files of `directory`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(directory.iterdir()):
            if path.is_file():
                archive.add(path, arcname=path.name, recursive=False)
    return buffer.getvalue()


def unpack_archive(data: bytes, directory: Path) -> None:
    """Write the archive's files into the new, empty `directory` and make them durable.

    Refuses anything but flat regular files with plain names (no paths, links or devices):
    the archive comes from another node, and extracting a crafted one must not write outside
    `directory`.
    """
    directory.mkdir(parents=True, exist_ok=False)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for count, member in enumerate(archive, 1):
                if count > SNAPSHOT_ARCHIVE_FILES_MAX:
                    raise SnapshotArchiveError(
                        f"snapshot archive holds more than {SNAPSHOT_ARCHIVE_FILES_MAX} files"
                    )
                _extract_member(archive, member, directory)
    except tarfile.TarError as error:
        raise SnapshotArchiveError(f"snapshot data is not a valid tar archive: {error}") from None
    fsync_directory(directory)


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, directory: Path) -> None:
    name = member.name
    if (
        not member.isfile()
        or "/" in name
        or "\\" in name
        or name in ("", ".", "..")
        or len(name.encode()) > SNAPSHOT_ARCHIVE_NAME_BYTES_MAX
    ):
        raise SnapshotArchiveError(
            f"snapshot archive member {name[:80]!r} is not a plain file name"
        )
    source = archive.extractfile(member)
    if source is None:
        raise SnapshotArchiveError(f"snapshot archive member {name!r} has no data")
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        while chunk := source.read(1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def install_snapshot_dir(state_machine: ShardStateMachine, pending_dir: Path, shard: int) -> None:
    """Install the received snapshot waiting in `pending_dir`, then delete it (blocking).

    Deleting only after the engine's install (an atomic manifest switch) is durable keeps a
    crash in between recoverable: the next start finds the directory and installs again."""
    info = state_machine.install_snapshot(pending_dir)
    logger.info(
        "shard %d installed a snapshot at index %d (%d bytes)",
        shard,
        info.applied_index,
        info.size_bytes,
    )
    shutil.rmtree(pending_dir)
    fsync_directory(pending_dir.parent)


# -------------------------------------------------------------------------------- waiters


def _fail_bucket(bucket: _Bucket, error: Exception) -> None:
    for future in bucket.waiters.values():
        if not future.done():
            future.set_exception(error)


@dataclass(slots=True)
class _Bucket:
    """The client writes proposed in one entry (a batch), by request id."""

    term: int
    waiters: dict[int, asyncio.Future[ApplyResult]]


class Group(abc.ABC):
    """What every group shares: the RawNode, reads, applied waits, leadership bookkeeping.

    Subclasses say what "applied" means for their state machine (`ShardGroup`, `MetaGroup`)."""

    def __init__(self, group_id: int, raw: RawNode, storage: GroupStorage) -> None:
        self.group_id = group_id
        self.raw = raw
        self.storage = storage
        self.preferred_leader = NONE
        self.transfer_attempted_term = 0
        self.rebalance_wanted = True
        """Move leadership to `preferred_leader` when possible (host.py explains when)."""
        self.reads: dict[bytes, asyncio.Future[int]] = {}
        """A leader's reads, each its own ReadIndex (the core batches them onto heartbeat
        rounds); a follower's wait in `read_batches`."""
        self.read_batches = ReadBatches(self._send_read)
        self._applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._ready: Ready | None = None
        self._applied_ready: Ready | None = None
        self.compaction_pending = False

    # --- identity

    @property
    def leader_id(self) -> int:
        return self.raw.leader_id

    @property
    def is_leader(self) -> bool:
        return self.raw.role == Role.LEADER

    @property
    @abc.abstractmethod
    def applied_index(self) -> int: ...

    @property
    def snapshot_index(self) -> int:
        return self.storage.snapshot_metadata().index

    # --- rounds (called by the host's driver loop only)

    def take_ready(self) -> Ready | None:
        if self._ready is not None or not self.raw.has_ready():
            return None
        self._ready = self.raw.ready()
        return self._ready

    @abc.abstractmethod
    def prepare_snapshot(self, ready: Ready) -> None:
        """Before persist: make a received snapshot's data durable (blocking; from a thread)."""

    def apply_entries(self, ready: Ready) -> None:
        """Apply the Ready's snapshot (if any) and committed entries; resolve proposals.

        Normally after persist. The host calls it *before* persist when the Ready has no
        snapshot and every committed entry precedes the Ready's new entries (always so on a
        leader, whose commit index counts its own log only once durable): each committed
        entry then has a durable local copy from an earlier round and is durable on a quorum,
        so applying it (and answering its client) need not wait for this round's fsync, as
        etcd applies in parallel with its WAL write. Idempotent per Ready."""
        assert ready is self._ready
        if self._applied_ready is ready:
            return
        self._applied_ready = ready
        self._apply(ready)

    def finish_ready(self, ready: Ready) -> None:
        """After persist and send: answer read states, advance the core, wake applied waits."""
        assert ready is self._ready
        try:
            if self._applied_ready is not ready:
                self._apply(ready)
            if ready.soft_state is not None and ready.soft_state.leader_id != NONE:
                self._reissue_reads()
            for state in ready.read_states:
                if self.read_batches.answered(state.context, state.index):
                    continue
                future = self.reads.pop(state.context, None)
                if future is not None and not future.done():
                    future.set_result(state.index)
        finally:
            self._ready = None
            self._applied_ready = None
            self.raw.advance(ready)
        self._release_applied()

    def abandon_ready(self) -> None:
        """The persist of the outstanding Ready failed: the node stops using this group."""
        self._ready = None
        self._applied_ready = None

    @abc.abstractmethod
    def _apply(self, ready: Ready) -> None: ...

    # --- reads

    def read_index(self, context: bytes) -> asyncio.Future[int]:
        """Ask for a ReadIndex (thesis §6.4); the future gets the index to wait for.

        Raises UnavailableError when no leader is known. On a follower the request goes to
        the leader over the Raft transport, batched with the group's other reads
        (read_batches.py); if leadership changes before the answer, the request is sent
        again to the new leader (`_reissue_reads`)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.is_leader or self.leader_id == NONE:
            self._send_read(context)
            self.reads[context] = future
        else:
            self.read_batches.add(context, future)
        return future

    def _send_read(self, context: bytes) -> None:
        try:
            self.raw.read_index(context)
        except NotLeaderError as error:
            raise UnavailableError(
                f"group {self.group_id} has no known leader", leader_hint=error.leader_id
            ) from None
        except ProposalDroppedError as error:
            raise UnavailableError(
                f"group {self.group_id} refused the read: {error}", leader_hint=self.leader_id
            ) from None

    def forget_read(self, context: bytes) -> None:
        self.reads.pop(context, None)
        self.read_batches.forget(context)

    def tick(self) -> None:
        """One host tick: the core's clock, and overdue read batches sent again."""
        self.raw.tick()
        self.read_batches.tick()

    def _reissue_reads(self) -> None:
        self.read_batches.resend()
        for context, future in list(self.reads.items()):
            if future.done():
                del self.reads[context]
                continue
            try:
                self.raw.read_index(context)
            except (NotLeaderError, ProposalDroppedError):
                break

    def wait_applied(self, index: int) -> asyncio.Future[None] | None:
        """None if `index` is applied already, else a future set once it is."""
        if self.applied_index >= index:
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._sequence), future))
        return future

    def _release_applied(self) -> None:
        waiters = self._applied_waiters
        applied = self.applied_index
        while waiters and waiters[0][0] <= applied:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)
        # Waiters whose clients gave up stay until their index is applied; bound them by
        # dropping cancelled ones when the heap grows.
        if len(waiters) > APPLIED_WAITERS_PRUNE_AT:
            self._applied_waiters = [w for w in waiters if not w[2].done()]
            heapq.heapify(self._applied_waiters)

    def fail_all(self, error: Exception) -> None:
        """The node is stopping: every waiter gets `error`."""
        for future in self.reads.values():
            if not future.done():
                future.set_exception(error)
        self.reads.clear()
        self.read_batches.fail_all(error)
        for _, _, waiter in self._applied_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._applied_waiters.clear()

    def status(self) -> dict[str, object]:
        status = self.raw.status()
        document: dict[str, object] = {
            "group": self.group_id,
            "role": status.role.name.lower(),
            "term": status.term,
            "leader": status.leader_id,
            "commit": status.commit,
            "applied": status.applied,
            "first_index": status.first_index,
            "last_index": status.last_index,
            "snapshot_index": self.snapshot_index,
            "voters": list(status.conf_state.voters),
            "learners": list(status.conf_state.learners),
            "preferred_leader": self.preferred_leader,
            # A follower's linearizable reads, batched onto shared ReadIndex requests.
            "follower_reads": self.read_batches.status(),
        }
        return document


class ShardGroup(Group):
    """A shard's group: entries are commands applied to the shard's engine."""

    def __init__(  # noqa: PLR0917 - one constructor wiring the parts the host built
        self,
        group_id: int,
        shard: int,
        raw: RawNode,
        storage: GroupStorage,
        state_machine: ShardStateMachine,
        pending_dir: Path,
    ) -> None:
        super().__init__(group_id, raw, storage)
        self.shard = shard
        self.state_machine = state_machine
        self.proposals: dict[int, _Bucket] = {}
        """Entry index -> the client writes it carries, waiting for its apply result."""
        self.forwarded: dict[int, tuple[int, asyncio.Future[ApplyResult]]] = {}
        """Request id -> (term it was forwarded in, its client) for writes this follower sent
        to the leader in a PROPOSE (see `_settle_forwarded`)."""
        self.forwarded_sent = 0
        self._queued: list[tuple[WriteCommand | AloneCommand, asyncio.Future[ApplyResult]]] = []
        self.corrupt = ""
        """Why this replica is known corrupt (verify found a bad table or a checksum
        mismatch); repair rebuilds it from the leader. Memory only: a restart re-verifies."""
        self.pending_dir = pending_dir
        """Where a received snapshot waits, durable, until the engine has installed it."""
        self.entries_rejected = 0
        self.snapshots_packed = 0
        """Snapshots packed for a lagging follower (InstallSnapshot sent by this leader)."""

    @property
    def applied_index(self) -> int:
        return self.state_machine.applied_index

    def enqueue(self, command: WriteCommand | AloneCommand) -> asyncio.Future[ApplyResult]:
        """Queue a client write for the next `propose_queued` (the host calls it at the
        start of its next loop iteration, which the caller wakes). Writes queued together
        are proposed as one entry (a BatchCommand) when their keys are distinct: one log
        entry, one WAL record, one engine batch for many clients. A transaction command is
        proposed alone, in queue order."""
        future: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._queued.append((command, future))
        return future

    @property
    def has_queued(self) -> bool:
        return bool(self._queued)

    def propose_queued(self) -> None:
        """Propose the queued writes (in the driver loop, when no Ready is outstanding or
        between ready() and advance(): RawNode allows proposals at any time)."""
        queued = [(c, f) for c, f in self._queued if not f.done()]
        self._queued.clear()
        batch: list[tuple[WriteCommand | AloneCommand, asyncio.Future[ApplyResult]]] = []
        keys: set[bytes] = set()
        size = 0
        for command, future in queued:
            if isinstance(command, TxnCommand | ChecksumCommand):
                if batch:
                    self._propose_batch(batch)
                    batch, keys, size = [], set(), 0
                self._propose_batch([(command, future)])
                continue
            cost = _PUT_ITEM_BYTES + len(command.key) + len(getattr(command, "value", b""))
            if command.session is not None:
                cost += COMMAND_SESSION_BYTES
            if batch and (
                command.key in keys
                or len(batch) >= COMMAND_BATCH_COMMANDS_MAX
                or size + cost > PROPOSAL_BATCH_BYTES_MAX
            ):
                self._propose_batch(batch)
                batch, keys, size = [], set(), 0
            batch.append((command, future))
            keys.add(command.key)
            size += cost
        if batch:
            self._propose_batch(batch)

    def _propose_batch(
        self, batch: list[tuple[WriteCommand | AloneCommand, asyncio.Future[ApplyResult]]]
    ) -> None:
        error: Exception | None = None
        try:
            if len(batch) == 1:
                data = batch[0][0].encode()
            else:
                writes = tuple(
                    c for c, _ in batch if not isinstance(c, TxnCommand | ChecksumCommand)
                )
                assert len(writes) == len(batch), "a transaction command is proposed alone"
                data = BatchCommand(writes).encode()
            if not self.is_leader and not isinstance(batch[0][0], TxnCommand | ChecksumCommand):
                self._forward_batch(data, batch)
                return
            term, index = self.raw.propose(data)
        except CommandEncodeError as refused:
            error = InvalidRequestError(str(refused))
        except NotLeaderError as refused:
            error = UnavailableError(
                f"node {self.raw.node_id} does not lead shard {self.shard}",
                leader_hint=refused.leader_id,
                unapplied=True,
            )
        except ProposalDroppedError as refused:
            error = UnavailableError(
                f"shard {self.shard} refused the write: {refused}",
                leader_hint=self.leader_id,
                retry_after_s=0.1,
                unapplied=True,
            )
        if error is not None:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.proposals[index] = _Bucket(
            term, {command.request_id: future for command, future in batch}
        )

    def _forward_batch(
        self,
        data: bytes,
        batch: list[tuple[WriteCommand | AloneCommand, asyncio.Future[ApplyResult]]],
    ) -> None:
        """A follower's writes go to the leader in a PROPOSE (thesis §6.2) and are answered
        when this replica applies them. Raises NotLeaderError when no leader is known."""
        self.raw.forward_proposal([data])
        self.forwarded_sent += 1
        term = self.raw.term
        for command, future in batch:
            self.forwarded[command.request_id] = (term, future)

    def _settle_forwarded(self, results: list[ApplyResult], last_term: int) -> None:
        """Answer forwarded writes from applied entries, matched by request id (unique per
        node: `Node.next_request_id`). A write forwarded in term T can only be in an entry of
        term T (the leader of T appends it; no one else does), and a log's terms never go
        down, so once an entry of a later term is applied, every term-T entry that will ever
        commit has been applied here: a write still unanswered then never committed, and a
        retry is safe."""
        forwarded = self.forwarded
        for result in results:
            if result.request_id is not None:
                waiting = forwarded.pop(result.request_id, None)
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_result(result)
        if forwarded and last_term > min(term for term, _ in forwarded.values()):
            lost = [rid for rid, (term, _) in forwarded.items() if term < last_term]
            for request_id in lost:
                _, future = forwarded.pop(request_id)
                if not future.done():
                    future.set_exception(
                        UnavailableError(
                            f"shard {self.shard}: leadership changed before the leader "
                            "appended the write; it did not commit",
                            leader_hint=self.leader_id,
                            retry_after_s=0.05,
                            unapplied=True,
                        )
                    )

    def _fail_forwarded(self, error: Exception) -> None:
        for _, future in self.forwarded.values():
            if not future.done():
                future.set_exception(error)
        self.forwarded.clear()

    def forget_proposals(self) -> None:
        """Drop buckets whose clients all gave up (called when a wait times out)."""
        for index in [
            i for i, b in self.proposals.items() if all(f.done() for f in b.waiters.values())
        ]:
            del self.proposals[index]
        for request_id in [r for r, (_, f) in self.forwarded.items() if f.done()]:
            del self.forwarded[request_id]

    def prepare_snapshot(self, ready: Ready) -> None:
        if ready.snapshot.is_empty:
            return
        incoming = self.pending_dir.with_name(self.pending_dir.name + INCOMING_SUFFIX)
        shutil.rmtree(incoming, ignore_errors=True)
        unpack_archive(ready.snapshot.data, incoming)
        shutil.rmtree(self.pending_dir, ignore_errors=True)
        os.replace(incoming, self.pending_dir)
        fsync_directory(self.pending_dir.parent)

    def install_pending_snapshot(self) -> None:
        """Install the durable received snapshot into the engine, then delete it (blocking)."""
        install_snapshot_dir(self.state_machine, self.pending_dir, self.shard)

    def _apply(self, ready: Ready) -> None:
        if not ready.snapshot.is_empty:
            self.install_pending_snapshot()
            # Proposals at or below the snapshot were decided elsewhere; their outcome here
            # is unknown.
            covered = ready.snapshot.metadata.index
            unknown = UnavailableError(
                f"shard {self.shard}: a snapshot replaced the log; the write's outcome is unknown",
                leader_hint=self.leader_id,
            )
            for index in [i for i in self.proposals if i <= covered]:
                _fail_bucket(self.proposals.pop(index), unknown)
            self._fail_forwarded(unknown)
        if not ready.committed_entries:
            return
        results = self.state_machine.apply(ready.committed_entries)
        if self.forwarded:
            self._settle_forwarded(results, ready.committed_entries[-1].term)
        proposals = self.proposals
        for result in results:
            if result.kind is ResultKind.REJECTED:
                self.entries_rejected += 1
            if not proposals:
                continue
            bucket = proposals.get(result.index)
            if bucket is None:
                continue
            if result.term == bucket.term and result.request_id is not None:
                future = bucket.waiters.pop(result.request_id, None)
                if future is not None and not future.done():
                    future.set_result(result)
                if not bucket.waiters:
                    del proposals[result.index]
                continue
            del proposals[result.index]
            if result.term == bucket.term and result.kind is ResultKind.REJECTED:
                _fail_bucket(bucket, InvalidRequestError(f"the write was rejected: {result.error}"))
            else:
                _fail_bucket(
                    bucket,
                    UnavailableError(
                        f"shard {self.shard}: leadership changed and another entry was "
                        f"committed at index {result.index}; the write did not commit",
                        leader_hint=self.leader_id,
                        retry_after_s=0.05,
                        unapplied=True,
                    ),
                )
        if proposals and results:
            # Every write of an applied entry got its result above; a bucket left at or below
            # the applied index means the entry held fewer writes than proposed (impossible
            # unless the codec and this module disagree): fail it rather than hang.
            applied = results[-1].index
            for index in [i for i in proposals if i <= applied]:
                _fail_bucket(
                    proposals.pop(index),
                    UnavailableError(f"shard {self.shard}: entry {index} lost the write"),
                )

    def fail_all(self, error: Exception) -> None:
        super().fail_all(error)
        for bucket in self.proposals.values():
            _fail_bucket(bucket, error)
        self.proposals.clear()
        self._fail_forwarded(error)
        for _, future in self._queued:
            if not future.done():
                future.set_exception(error)
        self._queued.clear()

    def status(self) -> dict[str, object]:
        document = super().status()
        document["corrupt"] = self.corrupt
        # Writes this replica sent to its leader in PROPOSE messages, those still unanswered,
        # and (as leader) forwarded writes it refused: a lost PROPOSE shows up here.
        document["forwarded"] = {
            "sent": self.forwarded_sent,
            "waiting": len(self.forwarded),
            "refused": self.raw.forwarded_proposals_dropped,
        }
        # Client sessions (sessions.py): how many clients the shard remembers, and how many
        # writes sent again it answered from memory or refused as unmatched.
        document["sessions"] = self.state_machine.sessions.status()
        return document

    def snapshot_data(self, scratch_dir: Path) -> Callable[[SnapshotMetadata], bytes]:
        """The GroupStorage data source: the engine's current state, packed (blocking)."""

        def source(metadata: SnapshotMetadata) -> bytes:
            target = scratch_dir / f"ship-{self.shard}-{metadata.index}"
            shutil.rmtree(target, ignore_errors=True)
            try:
                info = self.state_machine.snapshot(target)
                assert info.applied_index >= metadata.index, (info.applied_index, metadata)
                self.snapshots_packed += 1
                return pack_directory(target)
            finally:
                shutil.rmtree(target, ignore_errors=True)

        return source


class MetaGroup(Group):
    """The meta group: entries are meta commands applied to the replicated shard map."""

    def __init__(
        self, raw: RawNode, storage: GroupStorage, state_machine: MetaStateMachine
    ) -> None:
        super().__init__(0, raw, storage)
        self.state_machine = state_machine
        self.epoch_proposed_term = 0
        """The term in which this node (as leader) last proposed the bootstrap map."""

    @property
    def applied_index(self) -> int:
        return self.state_machine.applied_index

    def prepare_snapshot(self, ready: Ready) -> None:
        if not ready.snapshot.is_empty:
            self.state_machine.install(ready.snapshot.data)

    def _apply(self, ready: Ready) -> None:
        if ready.committed_entries:
            self.state_machine.apply(ready.committed_entries)

    def snapshot_data(self) -> Callable[[SnapshotMetadata], bytes]:
        def source(metadata: SnapshotMetadata) -> bytes:
            snapshot = self.state_machine.snapshot()
            assert snapshot.applied_index >= metadata.index, (snapshot.applied_index, metadata)
            return snapshot.encode()

        return source
