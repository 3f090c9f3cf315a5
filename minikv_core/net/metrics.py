"""Prometheus metrics of one node: its API traffic, and its Raft, WAL and transport state.

Each node owns a private `CollectorRegistry` (never the process-global one), so several nodes
in one process (the unit tests, an embedded cluster) keep separate numbers, and `/metrics`
answers exactly one node's.

Two kinds of metric:

- API traffic, counted as requests finish: `minikv_requests_total{api, route, code}` and the
  latency histogram `minikv_request_duration_seconds{api, route}`. `route` is the route
  *template* (`/kv/{key}`) or the RPC name, never the raw path, so a scan of random keys cannot
  grow the label set without bound; an unmatched path counts as `route="unmatched"`.
- Node state, read at scrape time (a pull collector) from the node's status document (Raft
  term, commit, applied, last and snapshot index and leader per group, WAL bytes, appends
  and syncs) and from the peer transport's counters (messages and bytes per peer, drops per
  peer and reason, connection state). Reading at scrape time keeps the hot paths free of
  metric updates and the numbers exactly those `GET /admin/status` shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from minikv_core.net.peer_transport import TransportStats

logger = logging.getLogger(__name__)

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
"""The text exposition format every Prometheus scraper accepts."""

LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""From 0.5 ms (a lease read on an idle node) to past the 5 s default deadline."""

UNMATCHED_ROUTE: Final = "unmatched"


StatusSource = Callable[[], Mapping[str, Any]]
"""Returns the node's status document (`NodeService.status().body`)."""
TransportSource = Callable[[], "TransportStats | None"]
"""Returns the peer transport's counters (None before the node started)."""


class NodeMetrics:
    """The registry of one node and the API traffic metrics in it."""

    def __init__(
        self,
        status_source: StatusSource | None = None,
        transport_source: TransportSource | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "minikv_requests",
            "Client API requests answered, by API, route and status code.",
            ("api", "route", "code"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "minikv_request_duration_seconds",
            "Client API request latency from arrival to answer, by API and route.",
            ("api", "route"),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.http_handovers = Counter(
            "minikv_http_connections_handed_over",
            "HTTP connections the data-plane protocol gave to aiohttp at a request of another "
            "kind (served the same, at aiohttp's cost per request).",
            registry=self.registry,
        )
        if status_source is not None:
            self.registry.register(NodeStateCollector(status_source, transport_source))
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        """(api, route, code) -> its counter and histogram children: `labels()` validates
        and locks on every call, ~1% of a node's CPU under load. Bounded: the routes and
        codes are fixed sets."""

    def observe(self, api: str, route: str, code: str, started_s: float) -> None:
        """Count one answered request that arrived at `started_s` (time.perf_counter())."""
        key = (api, route, code)
        children = self._children.get(key)
        if children is None:
            children = (self._requests.labels(api, route, code), self._latency.labels(api, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class NodeStateCollector(Collector):
    """Raft, WAL and transport numbers taken from the status document at scrape time.

    The document's shape is the node's (see `GET /admin/status`); fields this collector does not
    find are skipped rather than reported as zero, so a missing number is visibly missing.
    """

    def __init__(
        self, status_source: StatusSource, transport_source: TransportSource | None = None
    ) -> None:
        self._status_source = status_source
        self._transport_source = transport_source

    def describe(self) -> list[Metric]:
        # Dynamic label values: describe nothing, so registration does not call collect().
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._status_source()
            transport = self._transport_source() if self._transport_source else None
        except Exception:
            # A scrape must not take the node down, and must not pretend: log, emit nothing.
            logger.exception("node state unavailable for /metrics")
            return
        yield from _group_metrics(status)
        yield from _wal_metrics(status)
        if transport is not None:
            yield from _transport_metrics(transport)
        uptime = _number(status.get("uptime_s"))
        if uptime is not None:
            family = GaugeMetricFamily("minikv_uptime_seconds", "Seconds since the node started.")
            family.add_metric([], uptime)
            yield family


_GROUP_GAUGES: Final = (
    ("term", "minikv_raft_term", "Current Raft term of the group on this node."),
    ("commit", "minikv_raft_commit_index", "Highest log index known committed."),
    ("applied", "minikv_raft_applied_index", "Highest log index applied."),
    ("last_index", "minikv_raft_last_index", "Last index of the local log."),
    ("snapshot_index", "minikv_raft_snapshot_index", "Index of the last log snapshot."),
    ("leader", "minikv_raft_leader_id", "Node id of the known leader (0: none)."),
)
"""(field of a group in the status document, metric, help)."""


def _group_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
    groups = status.get("groups")
    if not isinstance(groups, list):
        return
    families = {
        field: GaugeMetricFamily(name, help_text, labels=("group", "shard"))
        for field, name, help_text in _GROUP_GAUGES
    }
    is_leader = GaugeMetricFamily(
        "minikv_raft_is_leader",
        "1 when this node leads the group.",
        labels=("group", "shard"),
    )
    for group in groups:
        if not isinstance(group, Mapping):
            continue
        group_id = group.get("group")
        if group_id is None:
            continue
        shard = group.get("shard")
        labels = [str(group_id), "meta" if shard is None else str(shard)]
        for field, family in families.items():
            value = _number(group.get(field))
            if value is not None:
                family.add_metric(labels, value)
        role = group.get("role")
        if isinstance(role, str):
            is_leader.add_metric(labels, 1.0 if role.lower() == "leader" else 0.0)
    yield from families.values()
    yield is_leader


_WAL_FIELDS: Final = (
    ("bytes_written", "minikv_wal_written_bytes", "Bytes appended to the node's WAL.", True),
    ("syncs", "minikv_wal_syncs", "fdatasync calls of the node's WAL.", True),
    ("appends", "minikv_wal_appends", "Append batches written to the node's WAL.", True),
    ("segments", "minikv_wal_segments", "WAL segment files on disk.", False),
    ("size_bytes", "minikv_wal_size_bytes", "Bytes of WAL segment files on disk.", False),
)


def _wal_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
    wal = status.get("wal")
    if not isinstance(wal, Mapping):
        return
    for field, name, help_text, is_counter in _WAL_FIELDS:
        value = _number(wal.get(field))
        if value is None:
            continue
        family: Metric = (
            CounterMetricFamily(name, help_text, value=value)
            if is_counter
            else GaugeMetricFamily(name, help_text, value=value)
        )
        yield family


def _transport_metrics(stats: TransportStats) -> Iterator[Metric]:
    drops = CounterMetricFamily(
        "minikv_transport_dropped_messages",
        "Raft messages the peer transport dropped, by peer and reason (frames for malformed, "
        "streams for misaddressed).",
        labels=("peer", "reason"),
    )
    sent = CounterMetricFamily(
        "minikv_transport_sent_messages", "Raft messages sent, by peer.", labels=("peer",)
    )
    received = CounterMetricFamily(
        "minikv_transport_received_messages", "Raft messages received, by peer.", labels=("peer",)
    )
    sent_bytes = CounterMetricFamily(
        "minikv_transport_sent_bytes", "Frame bytes sent, by peer.", labels=("peer",)
    )
    connected = GaugeMetricFamily(
        "minikv_transport_connected", "1 when the stream to the peer is open.", labels=("peer",)
    )
    queued = GaugeMetricFamily(
        "minikv_transport_queued_messages", "Messages buffered for the peer.", labels=("peer",)
    )
    for peer in stats.peers:
        node = str(peer.node_id)
        for reason, count in sorted(peer.drops.items()):
            drops.add_metric([node, reason.value], count)
        sent.add_metric([node], peer.messages_sent)
        received.add_metric([node], peer.messages_received)
        sent_bytes.add_metric([node], peer.bytes_sent)
        connected.add_metric([node], 1.0 if peer.connected else 0.0)
        queued.add_metric([node], peer.queued_messages)
    yield from (drops, sent, received, sent_bytes, connected, queued)
