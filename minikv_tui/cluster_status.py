"""One poll of a cluster, as one immutable `ClusterSnapshot`.

Every view of a running cluster (`minikv cluster status`, the dashboard, the REPL's STATUS)
reads the same snapshot, so they can never disagree about what they saw. A snapshot is built
only from what the nodes themselves answer (their admin documents) plus what the launcher
knows of their processes; nothing is inferred that a node did not say. A node that does not
answer within the poll timeout is shown as unreachable, with the reason, rather than holding
up the poll: a paused node must not freeze a dashboard. A node the launcher knows is paused
(or down) is not asked at all: it is shown as such at once, and costs the poll nothing.

Snapshots round-trip through JSON (`to_json` / `from_json`) so the dashboard's snapshot tests
and screenshots replay recorded cluster states deterministically.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from minikv_core.client import AsyncClient, ClientError
from minikv_tui.node_process import CLOCK_TICKS, proc_usage

ProcessState = Literal["up", "down", "paused", "stopped", "external"]
"""What the launcher knows of a node's process; "external": not started by us."""

POLL_TIMEOUT_S_DEFAULT = 1.0
META_GROUP = 0


@dataclass(frozen=True)
class NodeTarget:
    """A node to poll, and what the launcher knows of its process."""

    node_id: int
    grpc: str
    http: str | None = None
    pid: int | None = None
    process: ProcessState = "external"


@dataclass(frozen=True)
class ReplicaStatus:
    node_id: int
    role: str
    term: int
    commit: int
    applied: int
    last_index: int
    lag: int = 0
    """Entries behind the shard leader's last index (0 for the leader, or when unknown)."""


@dataclass(frozen=True)
class TableInfo:
    name: str
    level: int
    bytes: int
    keys: int


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    group: int
    replicas: tuple[int, ...]
    leader: int | None
    term: int
    replica_status: Mapping[int, ReplicaStatus]
    """By node id; a replica on an unreachable node is absent (unknown, not "none")."""
    keys: int | None = None
    """Entries in the leader's memtable and tables: approximate, shadowed versions included."""
    bytes: int | None = None
    tables: tuple[TableInfo, ...] = ()


@dataclass(frozen=True)
class WalSegment:
    name: str
    size_bytes: int
    used_bytes: int
    records: int
    state: str
    first_index: int | None
    last_index: int | None


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    grpc: str
    http: str | None
    pid: int | None
    process: ProcessState
    reachable: bool
    error: str | None = None
    cut_off_from: tuple[int, ...] = ()
    meta_role: str = "unknown"
    meta_term: int = 0
    commit: int = 0
    applied: int = 0
    last_index: int = 0
    shard_leaders: int = 0
    wal_bytes: int | None = None
    wal_segments: tuple[WalSegment, ...] = ()
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    """Private resident memory (RssAnon: node_process.proc_usage says why not all of RSS)."""
    reads: int | None = None
    writes: int | None = None
    uptime_s: float | None = None

    @property
    def state(self) -> str:
        """One word for a person: the process state wins over what the network shows."""
        if self.process in ("down", "stopped", "paused"):
            return self.process
        if not self.reachable:
            return "unreachable"
        if self.cut_off_from:
            return "partitioned"
        return "up"


@dataclass(frozen=True)
class ClusterSnapshot:
    taken_at: float
    name: str | None
    nodes: tuple[NodeStatus, ...]
    shards: tuple[ShardStatus, ...]
    meta_leader: int | None
    meta_term: int
    epoch: int
    read_rate: float | None = None
    write_rate: float | None = None

    def node(self, node_id: int) -> NodeStatus | None:
        return next((node for node in self.nodes if node.node_id == node_id), None)

    @property
    def nodes_up(self) -> int:
        return sum(1 for node in self.nodes if node.reachable)

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "name": self.name,
            "meta_leader": self.meta_leader,
            "meta_term": self.meta_term,
            "epoch": self.epoch,
            "read_rate": self.read_rate,
            "write_rate": self.write_rate,
            "nodes": [_node_json(node) for node in self.nodes],
            "shards": [_shard_json(shard) for shard in self.shards],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ClusterSnapshot:
        return cls(
            taken_at=float(document["taken_at"]),
            name=document.get("name"),
            nodes=tuple(_node_from_json(node) for node in document["nodes"]),
            shards=tuple(_shard_from_json(shard) for shard in document["shards"]),
            meta_leader=document.get("meta_leader"),
            meta_term=int(document.get("meta_term", 0)),
            epoch=int(document.get("epoch", 0)),
            read_rate=document.get("read_rate"),
            write_rate=document.get("write_rate"),
        )


@dataclass(frozen=True)
class ObservedEvent:
    """A change seen between two polls (the launcher's own actions are journalled apart)."""

    kind: str
    node: int | None
    detail: str


# --------------------------------------------------------------------------------- polling


@dataclass
class _NodeDocuments:
    status: dict[str, Any] | None = None
    wal: dict[str, Any] | None = None
    sstables: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class _Sample:
    at: float
    cpu_ticks: int | None
    reads: int
    writes: int


@dataclass
class Poller:
    """Polls a set of nodes; keeps what CPU and request rates need between polls.

    One poll at a time per Poller (the dashboard never overlaps its polls), so the samples
    need no lock.
    """

    client: AsyncClient
    name: str | None = None
    timeout_s: float = POLL_TIMEOUT_S_DEFAULT
    _samples: dict[int, _Sample] = field(default_factory=dict)

    async def poll(self, targets: Sequence[NodeTarget], *, detail: bool = True) -> ClusterSnapshot:
        documents = await asyncio.gather(*(self._fetch(target, detail) for target in targets))
        now = time.time()
        usage = {
            t.node_id: proc_usage(t.pid) if t.pid is not None else (None, None) for t in targets
        }
        nodes = [
            self._node_status(target, docs, now, usage[target.node_id])
            for target, docs in zip(targets, documents, strict=True)
        ]
        read_rate, write_rate = self._rates(nodes, now, usage)
        by_node = {
            target.node_id: docs.status
            for target, docs in zip(targets, documents, strict=True)
            if docs.status is not None
        }
        sstables = {
            target.node_id: docs.sstables
            for target, docs in zip(targets, documents, strict=True)
            if docs.sstables is not None
        }
        meta_leader, meta_term = _group_leader(by_node, META_GROUP)
        return ClusterSnapshot(
            taken_at=now,
            name=self.name,
            nodes=tuple(nodes),
            shards=_shards(by_node, sstables),
            meta_leader=meta_leader,
            meta_term=meta_term,
            epoch=max((int(doc.get("epoch", 0)) for doc in by_node.values()), default=0),
            read_rate=read_rate,
            write_rate=write_rate,
        )

    async def _fetch(self, target: NodeTarget, detail: bool) -> _NodeDocuments:
        # A paused (SIGSTOPped) process cannot answer: asking it only waits out the timeout,
        # which would show it a refresh late and slow every refresh while it stays paused.
        if target.process in ("down", "stopped", "paused"):
            return _NodeDocuments(error=f"node {target.node_id} is {target.process}")
        try:
            async with asyncio.timeout(self.timeout_s):
                calls = [self.client.status(target.grpc, timeout_s=self.timeout_s)]
                if detail:
                    calls.append(self.client.wal(target.grpc, timeout_s=self.timeout_s))
                    calls.append(self.client.sstables(target.grpc, timeout_s=self.timeout_s))
                answers = await asyncio.gather(*calls)
        except TimeoutError:
            return _NodeDocuments(error=f"no answer within {self.timeout_s:g} s")
        except ClientError as error:
            return _NodeDocuments(error=_one_line(str(error)))
        return _NodeDocuments(
            status=answers[0],
            wal=answers[1] if detail else None,
            sstables=answers[2] if detail else None,
        )

    def _node_status(
        self,
        target: NodeTarget,
        docs: _NodeDocuments,
        now: float,
        usage: tuple[int | None, int | None],
    ) -> NodeStatus:
        cpu_ticks, rss = usage
        base = NodeStatus(
            node_id=target.node_id,
            grpc=target.grpc,
            http=target.http,
            pid=target.pid,
            process=target.process,
            reachable=False,
            error=docs.error,
            rss_bytes=rss,
        )
        status = docs.status
        if status is None:
            self._samples.pop(target.node_id, None)
            return base
        groups = [g for g in status.get("groups", []) if isinstance(g, dict)]
        meta = next((g for g in groups if g.get("group") == META_GROUP), {})
        fault = status.get("fault") or {}
        requests = status.get("requests") or {}
        reads = _int_or_none(requests.get("reads"))
        writes = _int_or_none(requests.get("writes"))
        cpu_percent = None
        previous = self._samples.get(target.node_id)
        if previous is not None and cpu_ticks is not None and previous.cpu_ticks is not None:
            elapsed = now - previous.at
            if elapsed > 0 and cpu_ticks >= previous.cpu_ticks:
                cpu_percent = 100.0 * (cpu_ticks - previous.cpu_ticks) / CLOCK_TICKS / elapsed
        wal = status.get("wal") or {}
        return replace(
            base,
            reachable=True,
            error=None,
            http=target.http or status.get("http_address"),
            cut_off_from=tuple(
                sorted({int(p) for p in (*fault.get("drop_to", []), *fault.get("drop_from", []))})
            ),
            meta_role=_role(meta, target.node_id) if meta else "unknown",
            meta_term=int(meta.get("term", 0)),
            commit=int(meta.get("commit", 0)),
            applied=int(meta.get("applied", 0)),
            last_index=int(meta.get("last_index", 0)),
            shard_leaders=sum(
                1 for g in groups if g.get("shard") is not None and g.get("role") == "leader"
            ),
            wal_bytes=_int_or_none(wal.get("used_bytes")),
            wal_segments=_segments(docs.wal),
            cpu_percent=cpu_percent,
            reads=reads,
            writes=writes,
            uptime_s=float(status["uptime_s"]) if "uptime_s" in status else None,
        )

    def _rates(
        self,
        nodes: Sequence[NodeStatus],
        now: float,
        usage: Mapping[int, tuple[int | None, int | None]],
    ) -> tuple[float | None, float | None]:
        """Cluster request rates from each node's counters; a restarted node's counters start
        again at zero, which counts as everything it served since (never a negative rate)."""
        reads = writes = 0.0
        measured = False
        for node in nodes:
            if node.reads is None or node.writes is None:
                continue
            previous = self._samples.get(node.node_id)
            self._samples[node.node_id] = _Sample(
                now, usage[node.node_id][0], node.reads, node.writes
            )
            if previous is None or now <= previous.at:
                continue
            elapsed = now - previous.at
            reads += _delta(previous.reads, node.reads) / elapsed
            writes += _delta(previous.writes, node.writes) / elapsed
            measured = True
        return (reads, writes) if measured else (None, None)


def observe_changes(old: ClusterSnapshot | None, new: ClusterSnapshot) -> list[ObservedEvent]:
    """What changed between two polls, in words for the event log."""
    if old is None:
        return []
    events: list[ObservedEvent] = []
    for node in new.nodes:
        before = old.node(node.node_id)
        if before is None:
            continue
        if before.reachable and not node.reachable:
            reason = f": {node.error}" if node.error else ""
            events.append(ObservedEvent("node-down", node.node_id, f"node {node.node_id}{reason}"))
        elif not before.reachable and node.reachable:
            events.append(ObservedEvent("node-up", node.node_id, f"node {node.node_id} answers"))
    if new.meta_leader != old.meta_leader and new.meta_leader is not None:
        events.append(
            ObservedEvent(
                "meta-leader-change",
                new.meta_leader,
                f"meta: leader {_who(old.meta_leader)} -> {new.meta_leader} (term {new.meta_term})",
            )
        )
    old_shards = {shard.shard: shard for shard in old.shards}
    for shard in new.shards:
        before_shard = old_shards.get(shard.shard)
        if before_shard is None:
            continue
        if shard.leader != before_shard.leader and shard.leader is not None:
            events.append(
                ObservedEvent(
                    "leader-change",
                    shard.leader,
                    f"shard {shard.shard}: leader {_who(before_shard.leader)} -> {shard.leader}"
                    f" (term {shard.term})",
                )
            )
        elif shard.term > before_shard.term and shard.leader is not None:
            events.append(
                ObservedEvent(
                    "term-change",
                    shard.leader,
                    f"shard {shard.shard}: term {before_shard.term} -> {shard.term},"
                    f" leader {shard.leader}",
                )
            )
    return events


# --------------------------------------------------------------------------------- assembly


def _shards(
    by_node: Mapping[int, Mapping[str, Any]], sstables: Mapping[int, Mapping[str, Any]]
) -> tuple[ShardStatus, ...]:
    views: dict[int, dict[int, Mapping[str, Any]]] = {}
    for node_id, status in by_node.items():
        for group in status.get("groups", []):
            shard = group.get("shard")
            if isinstance(shard, int):
                views.setdefault(shard, {})[node_id] = group
    result = []
    for shard in sorted(views):
        replicas_views = views[shard]
        group_id = int(next(iter(replicas_views.values())).get("group", shard + 1))
        leader, term = _group_leader(by_node, group_id)
        leader_view = replicas_views.get(leader) if leader is not None else None
        leader_last = int(leader_view["last_index"]) if leader_view is not None else None
        members: set[int] = set()
        for view in replicas_views.values():
            members.update(int(n) for n in view.get("voters", []))
            members.update(int(n) for n in view.get("learners", []))
        replica_status = {
            node_id: ReplicaStatus(
                node_id=node_id,
                role=_role(view, node_id),
                term=int(view.get("term", 0)),
                commit=int(view.get("commit", 0)),
                applied=int(view.get("applied", 0)),
                last_index=int(view.get("last_index", 0)),
                lag=max(0, leader_last - int(view.get("last_index", 0)))
                if leader_last is not None
                else 0,
            )
            for node_id, view in sorted(replicas_views.items())
        }
        keys = size = None
        tables: tuple[TableInfo, ...] = ()
        shard_tables = _shard_tables(sstables.get(leader), shard) if leader is not None else None
        if shard_tables is not None:
            tables = tuple(
                TableInfo(
                    name=str(t.get("name", "")),
                    level=int(t.get("level", 0)),
                    bytes=int(t.get("size_bytes", 0)),
                    keys=int(t.get("keys", 0)),
                )
                for t in shard_tables.get("tables", [])
            )
            # Entries, less the shard's own records (transactions, client sessions): a table
            # of overwritten keys still counts each version, so it is an upper bound.
            entries = int(shard_tables.get("memtable_entries", 0)) + sum(t.keys for t in tables)
            keys = max(0, entries - int(shard_tables.get("system_records", 0)))
            size = int(shard_tables.get("memtable_bytes", 0)) + int(
                shard_tables.get("table_bytes", 0)
            )
        result.append(
            ShardStatus(
                shard=shard,
                group=group_id,
                replicas=tuple(sorted(members)),
                leader=leader,
                term=term,
                replica_status=replica_status,
                keys=keys,
                bytes=size,
                tables=tables,
            )
        )
    return tuple(result)


def _group_leader(
    by_node: Mapping[int, Mapping[str, Any]], group_id: int
) -> tuple[int | None, int]:
    """The leader a group's members report in the highest term any of them has seen.

    A stale leader (partitioned away, still believing itself leader in an old term) loses to
    the newer term, which is what Raft itself decides (§5.1: a higher term wins).
    """
    best_term = 0
    leader: int | None = None
    for status in by_node.values():
        for group in status.get("groups", []):
            if group.get("group") != group_id:
                continue
            term = int(group.get("term", 0))
            hint = int(group.get("leader") or 0)
            if term > best_term or (term == best_term and leader is None and hint):
                best_term = term
                leader = hint or None
    return leader, best_term


def _shard_tables(document: Mapping[str, Any] | None, shard: int) -> Mapping[str, Any] | None:
    if document is None:
        return None
    for entry in document.get("shards", []):
        if entry.get("shard") == shard and "error" not in entry:
            return cast(Mapping[str, Any], entry)
    return None


def _segments(document: Mapping[str, Any] | None) -> tuple[WalSegment, ...]:
    if document is None:
        return ()
    return tuple(
        WalSegment(
            name=str(segment.get("name", "")),
            size_bytes=int(segment.get("size_bytes", 0)),
            used_bytes=int(segment.get("used_bytes", 0)),
            records=int(segment.get("records", 0)),
            state=str(segment.get("state", "")),
            first_index=_int_or_none(segment.get("first_index")),
            last_index=_int_or_none(segment.get("last_index")),
        )
        for segment in document.get("segments", [])
    )


def _role(group: Mapping[str, Any], node_id: int) -> str:
    if node_id in group.get("learners", []):
        return "learner"
    return str(group.get("role", "unknown")).replace("_", "-")


def _who(node: int | None) -> str:
    return "none" if node is None else str(node)


def _delta(before: int, now: int) -> int:
    return now - before if now >= before else now


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


# ------------------------------------------------------------------------------------ JSON


def _node_json(node: NodeStatus) -> dict[str, Any]:
    document = {name: getattr(node, name) for name in NodeStatus.__dataclass_fields__}
    document["cut_off_from"] = list(node.cut_off_from)
    document["wal_segments"] = [vars(segment) for segment in node.wal_segments]
    return document


def _node_from_json(document: Mapping[str, Any]) -> NodeStatus:
    fields = dict(document)
    fields["cut_off_from"] = tuple(fields.get("cut_off_from", ()))
    fields["wal_segments"] = tuple(WalSegment(**s) for s in fields.get("wal_segments", ()))
    return NodeStatus(**fields)


def _shard_json(shard: ShardStatus) -> dict[str, Any]:
    return {
        "shard": shard.shard,
        "group": shard.group,
        "replicas": list(shard.replicas),
        "leader": shard.leader,
        "term": shard.term,
        "replica_status": [vars(replica) for replica in shard.replica_status.values()],
        "keys": shard.keys,
        "bytes": shard.bytes,
        "tables": [vars(table) for table in shard.tables],
    }


def _shard_from_json(document: Mapping[str, Any]) -> ShardStatus:
    replicas = [ReplicaStatus(**r) for r in document.get("replica_status", ())]
    return ShardStatus(
        shard=int(document["shard"]),
        group=int(document["group"]),
        replicas=tuple(document.get("replicas", ())),
        leader=document.get("leader"),
        term=int(document.get("term", 0)),
        replica_status={replica.node_id: replica for replica in replicas},
        keys=document.get("keys"),
        bytes=document.get("bytes"),
        tables=tuple(TableInfo(**t) for t in document.get("tables", ())),
    )
