"""`NodeConfig`: everything one node needs to run, validated once at construction.

Why a frozen dataclass validated in `__post_init__`: the server builds it from flags, the
environment and a TOML file, tests build it directly, and both must be refused the same way —
with a `ValueError` whose message names the field and the bad value — before anything opens a
file or a socket. Every default and bound of the node lives here (the node's limits section);
bounds derived from a lower layer (the engine's key limit, the WAL's segment bounds) are
asserted against it at import, so a change below that breaks a relation fails the first test.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from minikv_core.cluster import limits as cluster_limits
from minikv_core.net import limits as net_limits
from minikv_core.raft import limits as raft_limits
from minikv_core.storage import limits as wal_limits

# The file in a data dir that says whose it is (`NodeIdentity`). The launcher reads its
# presence too: a node that served once and has lost it must not start (launcher_membership).
IDENTITY_FILE: Final = "identity.json"
PEER_INCARNATIONS_FILE: Final = "peer_incarnations.json"

KIB: Final = 1024
MIB: Final = 1024 * KIB

# ------------------------------------------------------------------------------ node limits

SHARDS_DEFAULT: Final = 8
SHARDS_MAX: Final = 1024
"""Shard groups per cluster; every node ticks every local group each tick, so this bounds
the driver loop's per-tick work."""
REPLICAS_DEFAULT: Final = 3
REPLICAS_MAX: Final = 7
META_VOTERS_MAX: Final = 5
"""The meta group has at most this many voters; further nodes join it as learners (a meta
quorum of more than 5 costs latency without adding useful fault tolerance)."""
NODES_MAX: Final = 64

TICK_MS_DEFAULT: Final = 100
TICK_MS_MIN: Final = 1
TICK_MS_MAX: Final = 10_000
ELECTION_TIMEOUT_TICKS_DEFAULT: Final = raft_limits.ELECTION_TIMEOUT_TICKS
HEARTBEAT_INTERVAL_TICKS_DEFAULT: Final = raft_limits.HEARTBEAT_INTERVAL_TICKS

REQUEST_TIMEOUT_MS_DEFAULT: Final = 5_000
REQUEST_TIMEOUT_MS_MAX: Final = net_limits.REQUEST_TIMEOUT_MS_MAX
"""The client APIs refuse (HTTP) or cap (gRPC) deadlines past net/limits.py's bound, so a node
timeout above it could never be honoured: the one constant keeps config and APIs in step."""

VALUE_SIZE_BYTES_DEFAULT: Final = 1 * MIB
VALUE_SIZE_BYTES_MAX: Final = cluster_limits.COMMAND_VALUE_SIZE_BYTES_MAX
"""A configured value limit can go up to what one command can carry, not further."""
KEY_SIZE_BYTES_MIN_ALLOWED: Final = 1 * KIB
"""The issue asks that keys of at least 1 KiB are accepted: a configured key limit below this
is refused."""
KEY_SIZE_BYTES_MAX: Final = cluster_limits.COMMAND_KEY_SIZE_BYTES_MAX
"""The engine's key limit caps the configured one."""
KEY_SIZE_BYTES_DEFAULT: Final = KEY_SIZE_BYTES_MAX

WAL_SEGMENT_SIZE_BYTES_DEFAULT: Final = wal_limits.WAL_SEGMENT_SIZE_BYTES_DEFAULT

SNAPSHOT_ENTRIES_THRESHOLD_DEFAULT: Final = 10_000
"""A group whose log holds more applied entries than this since its last snapshot is
compacted (engine flush, then RawNode.compact), which lets the node's WAL be truncated."""
SNAPSHOT_ENTRIES_THRESHOLD_MIN: Final = 16

assert 0 < SHARDS_DEFAULT <= SHARDS_MAX
assert SHARDS_MAX < cluster_limits.RAFT_GROUP_ID_MAX, "shard groups are ids 1..S, meta is 0"
assert 0 < REPLICAS_DEFAULT <= REPLICAS_MAX <= NODES_MAX
assert 0 < META_VOTERS_MAX <= NODES_MAX
assert TICK_MS_MIN <= TICK_MS_DEFAULT <= TICK_MS_MAX
assert 0 < HEARTBEAT_INTERVAL_TICKS_DEFAULT < ELECTION_TIMEOUT_TICKS_DEFAULT
assert 0 < REQUEST_TIMEOUT_MS_DEFAULT <= REQUEST_TIMEOUT_MS_MAX
assert 0 < VALUE_SIZE_BYTES_DEFAULT <= VALUE_SIZE_BYTES_MAX
assert KEY_SIZE_BYTES_MIN_ALLOWED <= KEY_SIZE_BYTES_DEFAULT <= KEY_SIZE_BYTES_MAX, (
    "the engine's key limit must allow the 1 KiB keys the issue promises"
)
assert (
    wal_limits.WAL_SEGMENT_SIZE_BYTES_MIN
    <= WAL_SEGMENT_SIZE_BYTES_DEFAULT
    <= wal_limits.WAL_SEGMENT_SIZE_BYTES_MAX
)
assert SNAPSHOT_ENTRIES_THRESHOLD_MIN <= SNAPSHOT_ENTRIES_THRESHOLD_DEFAULT


def _check_address(field_name: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{field_name} must be host:port with a port in 0..65535, got {address!r}")


def derive_cluster_id(peers: Mapping[int, str]) -> str:
    """A stable name for the cluster formed by `peers`: nodes started with the same peer list
    derive the same id, and a node from another cluster (another list) is refused on every
    peer stream and by the identity check at start."""
    canonical = ",".join(f"{node_id}={peers[node_id]}" for node_id in sorted(peers))
    return "minikv-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


REPAIR_AFTER_S_DEFAULT: Final = 60.0
REPAIR_AFTER_S_MAX: Final = 86_400.0
TXN_RECORD_GC_S_DEFAULT: Final = 180.0
"""How long a transaction record its coordinator did not forget stays (txn_record_gc.py).
Transactions are capped at half of it, so the default leaves the longest request deadline
(REQUEST_TIMEOUT_MS_MAX) untouched."""
TXN_RECORD_GC_S_MIN: Final = 1.0
TXN_RECORD_GC_S_MAX: Final = 86_400.0
assert TXN_RECORD_GC_S_DEFAULT / 2 >= REQUEST_TIMEOUT_MS_MAX / 1000, "no deadline is cut short"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node's configuration. Construction validates every field (ValueError naming it)."""

    node_id: int
    data_dir: Path
    grpc_address: str
    """host:port where peers (and gRPC clients) reach this node; port 0 only before binding."""
    http_address: str
    peers: Mapping[int, str]
    """Every node of the cluster, this one included: node id -> gRPC address."""
    shards: int = SHARDS_DEFAULT
    replicas: int = REPLICAS_DEFAULT
    tick_ms: int = TICK_MS_DEFAULT
    election_timeout_ticks: int = ELECTION_TIMEOUT_TICKS_DEFAULT
    heartbeat_interval_ticks: int = HEARTBEAT_INTERVAL_TICKS_DEFAULT
    request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT
    value_size_bytes_max: int = VALUE_SIZE_BYTES_DEFAULT
    key_size_bytes_max: int = KEY_SIZE_BYTES_DEFAULT
    wal_segment_size_bytes: int = WAL_SEGMENT_SIZE_BYTES_DEFAULT
    snapshot_entries_threshold: int = SNAPSHOT_ENTRIES_THRESHOLD_DEFAULT
    cluster_id: str = ""
    """Empty: derived from the sorted peer list (`derive_cluster_id`)."""
    repair_after_s: float = REPAIR_AFTER_S_DEFAULT
    """The meta leader replaces the replicas of a node down this long (0: never on its
    own; `minikv cluster repair` still does)."""
    txn_record_gc_s: float = TXN_RECORD_GC_S_DEFAULT
    """Transaction records left behind are forgotten this long after their shard's leader
    first saw them; a transaction's deadline is capped at half of it. Use one value on every
    node: the cap protects records forgotten by *other* nodes (txn_record_gc.py)."""
    seed: int | None = None
    """Seed of the election-timeout randomness; None draws one from the OS (production).
    Tests pass a seed so a run can be reproduced."""

    def __post_init__(self) -> None:
        if isinstance(self.node_id, bool) or not isinstance(self.node_id, int):
            raise ValueError(f"node_id must be an integer, got {self.node_id!r}")
        if not 0 < self.node_id <= cluster_limits.NODE_ID_MAX:
            raise ValueError(
                f"node_id must be a positive integer up to {cluster_limits.NODE_ID_MAX}, "
                f"got {self.node_id}"
            )
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not str(self.data_dir):
            raise ValueError("data_dir must not be empty")
        _check_address("grpc_address", self.grpc_address)
        _check_address("http_address", self.http_address)
        if not self.peers:
            raise ValueError("peers must list every node of the cluster, this one included")
        if len(self.peers) > NODES_MAX:
            raise ValueError(f"peers lists {len(self.peers)} nodes; the limit is {NODES_MAX}")
        for peer_id, address in self.peers.items():
            if isinstance(peer_id, bool) or not isinstance(peer_id, int) or peer_id <= 0:
                raise ValueError(f"peers: node ids must be positive integers, got {peer_id!r}")
            _check_address(f"peers[{peer_id}]", address)
        if self.node_id not in self.peers:
            raise ValueError(
                f"peers must include this node (node_id {self.node_id}); "
                f"it lists {sorted(self.peers)}"
            )
        addresses = list(self.peers.values())
        duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
        if duplicates:
            raise ValueError(f"peers: address(es) {', '.join(duplicates)} used by several nodes")
        frozen = MappingProxyType(dict(sorted(self.peers.items())))
        object.__setattr__(self, "peers", frozen)
        _check_range("shards", self.shards, 1, SHARDS_MAX)
        _check_range("replicas", self.replicas, 1, REPLICAS_MAX)
        if self.replicas > len(self.peers):
            raise ValueError(
                f"replicas ({self.replicas}) cannot exceed the number of nodes "
                f"({len(self.peers)}): replicas are placed on distinct nodes"
            )
        _check_range("tick_ms", self.tick_ms, TICK_MS_MIN, TICK_MS_MAX)
        _check_range("heartbeat_interval_ticks", self.heartbeat_interval_ticks, 1, 1000)
        _check_range(
            "election_timeout_ticks",
            self.election_timeout_ticks,
            self.heartbeat_interval_ticks + 1,
            10_000,
        )
        _check_range("request_timeout_ms", self.request_timeout_ms, 1, REQUEST_TIMEOUT_MS_MAX)
        _check_range("value_size_bytes_max", self.value_size_bytes_max, 1, VALUE_SIZE_BYTES_MAX)
        _check_range(
            "key_size_bytes_max",
            self.key_size_bytes_max,
            KEY_SIZE_BYTES_MIN_ALLOWED,
            KEY_SIZE_BYTES_MAX,
        )
        _check_range(
            "wal_segment_size_bytes",
            self.wal_segment_size_bytes,
            wal_limits.WAL_SEGMENT_SIZE_BYTES_MIN,
            wal_limits.WAL_SEGMENT_SIZE_BYTES_MAX,
        )
        _check_range(
            "snapshot_entries_threshold",
            self.snapshot_entries_threshold,
            SNAPSHOT_ENTRIES_THRESHOLD_MIN,
            2**62,
        )
        if not self.cluster_id:
            object.__setattr__(self, "cluster_id", derive_cluster_id(self.peers))
        elif len(self.cluster_id) > 128 or not self.cluster_id.isprintable():
            raise ValueError(
                f"cluster_id must be at most 128 printable characters, got {self.cluster_id!r}"
            )
        if (
            isinstance(self.repair_after_s, bool)
            or not isinstance(self.repair_after_s, int | float)
            or not 0 <= self.repair_after_s <= REPAIR_AFTER_S_MAX
        ):
            raise ValueError(
                f"repair_after_s must be in 0..{REPAIR_AFTER_S_MAX} seconds, "
                f"got {self.repair_after_s!r}"
            )
        if (
            isinstance(self.txn_record_gc_s, bool)
            or not isinstance(self.txn_record_gc_s, int | float)
            or not TXN_RECORD_GC_S_MIN <= self.txn_record_gc_s <= TXN_RECORD_GC_S_MAX
        ):
            raise ValueError(
                f"txn_record_gc_s must be in {TXN_RECORD_GC_S_MIN:g}..{TXN_RECORD_GC_S_MAX:g} "
                f"seconds, got {self.txn_record_gc_s!r}"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def request_timeout_s(self) -> float:
        return self.request_timeout_ms / 1000.0

    @property
    def election_timeout_s(self) -> float:
        """The shortest election timeout (the Raft core randomizes each in [T, 2T))."""
        return self.election_timeout_ticks * self.tick_ms / 1000.0

    @property
    def wal_dir(self) -> Path:
        return self.data_dir / "wal"

    @property
    def shards_dir(self) -> Path:
        return self.data_dir / "shards"

    def shard_dir(self, shard: int) -> Path:
        return self.shards_dir / str(shard)

    @property
    def identity_path(self) -> Path:
        return self.data_dir / IDENTITY_FILE

    @property
    def peer_incarnations_path(self) -> Path:
        return self.data_dir / PEER_INCARNATIONS_FILE


def _check_range(field_name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field_name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{field_name} must be in {low}..{high}, got {value}")


# ------------------------------------------------------------------------------ identity

IDENTITY_FORMAT: Final = 1


class IdentityError(Exception):
    """The identity file of a data directory is unreadable or malformed (names the file)."""


class IdentityMismatchError(ValueError):
    """The configuration contradicts the identity stored in the data directory: the message
    names the field, the stored value and the configured one."""

    def __init__(self, path: Path, field_name: str, stored: object, configured: object) -> None:
        self.path = path
        self.field_name = field_name
        self.stored = stored
        self.configured = configured
        super().__init__(
            f"data directory {path.parent} belongs to a node with {field_name}={stored!r} "
            f"(stored in {path.name}), but this node was started with "
            f"{field_name}={configured!r}; use the original setting or an empty data directory"
        )


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a data directory is: written once at bootstrap, checked at every start, so a node
    restarted with another id, peer list or shard count is refused instead of corrupting a
    cluster (a shard count change would silently re-route every key)."""

    node_id: int
    cluster_id: str
    peers: Mapping[int, str]
    shards: int
    replicas: int
    bootstrapped: bool
    """False until every founding group is created: a start that finds False finishes it."""
    incarnation: str = ""
    """Random, made with the directory and never changed: which data this node id runs on.
    Peers remember the first incarnation they hear from each node id and refuse another
    (peer_incarnations.py): a node whose directory was lost and made anew must not vote or
    acknowledge as if it still held what it promised (Raft §5.2, §5.4). "" in a file
    written before incarnations existed: the node gives itself one at its next start."""

    @classmethod
    def of(cls, config: NodeConfig, *, bootstrapped: bool, incarnation: str) -> NodeIdentity:
        return cls(
            config.node_id,
            config.cluster_id,
            dict(config.peers),
            config.shards,
            config.replicas,
            bootstrapped,
            incarnation,
        )

    @staticmethod
    def new_incarnation() -> str:
        return secrets.token_hex(8)

    def check(self, config: NodeConfig, path: Path) -> None:
        """Raise IdentityMismatchError naming the first field `config` contradicts."""
        pairs: tuple[tuple[str, object, object], ...] = (
            ("node_id", self.node_id, config.node_id),
            ("peers", dict(self.peers), dict(config.peers)),
            ("shards", self.shards, config.shards),
            ("replicas", self.replicas, config.replicas),
            ("cluster_id", self.cluster_id, config.cluster_id),
        )
        for field_name, stored, configured in pairs:
            if stored != configured:
                raise IdentityMismatchError(path, field_name, stored, configured)

    def encode(self) -> bytes:
        document = {
            "format": IDENTITY_FORMAT,
            "node_id": self.node_id,
            "cluster_id": self.cluster_id,
            "peers": {str(node_id): address for node_id, address in sorted(self.peers.items())},
            "shards": self.shards,
            "replicas": self.replicas,
            "bootstrapped": self.bootstrapped,
            "incarnation": self.incarnation,
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes, path: Path) -> NodeIdentity:
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise TypeError("not a JSON object")
            if document.get("format") != IDENTITY_FORMAT:
                raise ValueError(f"unknown format {document.get('format')!r}")
            identity = cls(
                node_id=_strict_int(document["node_id"]),
                cluster_id=str(document["cluster_id"]),
                peers={int(k): str(v) for k, v in dict(document["peers"]).items()},
                shards=_strict_int(document["shards"]),
                replicas=_strict_int(document["replicas"]),
                bootstrapped=bool(document["bootstrapped"]),
                incarnation=str(document.get("incarnation", "")),
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
            raise IdentityError(
                f"identity file {path} is malformed ({type(error).__name__}: {error}); "
                "it is written by the node at bootstrap and must not be edited"
            ) from None
        return identity

    @classmethod
    def load(cls, path: Path) -> NodeIdentity | None:
        """The stored identity, or None when the file does not exist (a fresh directory)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise IdentityError(f"cannot read identity file {path}: {error.strerror}") from None
        return cls.decode(data, path)

    def store(self, path: Path) -> None:
        store_atomically(path, self.encode())


def store_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file, fsync it, rename it over `path`, fsync the directory: a crash
    leaves the old file or the new one, never half of one."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:  # a short write continues; a failing one raises OSError
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def _strict_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
