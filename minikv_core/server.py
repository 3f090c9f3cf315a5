"""`minikv serve`: one node process — configuration, the node, its APIs, signals.

    python -m minikv_core.server --id 1 --data-dir DIR --http 127.0.0.1:8001 \\
        --grpc 127.0.0.1:9001 --peers 1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003

(`minikv serve` in the CLI calls `main()` with the same arguments.)

Configuration, later wins: the TOML file (`--config`, or `MINIKV_CONFIG`), then `MINIKV_*`
environment variables, then flags. Every option has the same name in all three: flag
`--data-dir`, TOML key `data_dir`, variable `MINIKV_DATA_DIR`. `peers` is
`1=host:port,2=host:port` everywhere (TOML also takes a table `[peers] 1 = "host:port"`).
Anything wrong that a person can fix (a bad value, a port in use, an unwritable directory, a
peer list without this node) is one line on stderr and exit status 2, never a traceback; a
data directory that fails its checks at start (corruption) is exit status 1.

Process shape: one asyncio loop (uvloop when installed) running the node, one gRPC server on
`--grpc` (KV, Admin and the peers' Raft streams: peers reach this node at this address) and
one HTTP server on `--http`. GRPC_VERBOSITY defaults to ERROR before grpc is imported, so the
C core does not flood stderr; logs go to stderr with timestamps.

SIGTERM or SIGINT: stop accepting requests (HTTP listener closed, new KV/Admin calls refused),
let the ones in flight finish (up to 10 s) while Raft keeps replicating them, stop the node
(which flushes), close the gRPC server, exit 0.
"""

from __future__ import annotations

import os

# Before anything imports grpc: the C core reads this once, at import.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from minikv_core import early_signals

if __name__ == "__main__":  # a node process, as the launcher starts it
    early_signals.note_until_serving()

import argparse
import asyncio
import contextlib
import errno
import faulthandler
import json
import logging
import random
import signal
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import grpc.aio

from minikv_core import task_dump
from minikv_core.cluster.config import (
    REPLICAS_DEFAULT,
    SHARDS_DEFAULT,
    IdentityError,
    IdentityMismatchError,
    NodeConfig,
    store_atomically,
)
from minikv_core.cluster.host import NodeStartError
from minikv_core.cluster.join import JoinError, resolve_join
from minikv_core.cluster.node_service import Node
from minikv_core.cluster.shard_map import ShardMap
from minikv_core.net import limits
from minikv_core.net.api import ApiConfig
from minikv_core.net.fault import FaultFilter
from minikv_core.net.forwarder import GrpcForwarder
from minikv_core.net.grpc_api import GrpcBindError, GrpcServer
from minikv_core.net.http_api import HttpApi, bind_socket
from minikv_core.net.metrics import NodeMetrics
from minikv_core.net.peer_transport import (
    FrameHandler,
    PeerTransport,
    TransportError,
    TransportStats,
)
from minikv_core.storage.errors import StorageError, WalCorruptionError, WalLockedError
from minikv_core.storage.wal_format import SEGMENT_HEADER_SIZE, SEGMENT_SUFFIX

logger = logging.getLogger("minikv.server")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

ENV_PREFIX: Final = "MINIKV_"


class ConfigError(Exception):
    """A configuration a person must fix; the message is the one line they see (exit 2)."""


# -------------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class _Option:
    name: str
    """TOML key; the flag is `--` + name with dashes; the variable MINIKV_ + NAME."""
    kind: type
    help: str


OPTIONS: Final = (
    _Option("id", int, "this node's id (a positive integer, a key of --peers)"),
    _Option("data_dir", str, "directory of this node's WAL and shard data"),
    _Option("http", str, "HTTP API address host:port (port 0 picks a free one)"),
    _Option("grpc", str, "gRPC address host:port: clients and peers (default: --peers[id])"),
    _Option("peers", str, "every node of the cluster: 1=host:port,2=host:port,..."),
    _Option("join", str, "join a running cluster through this node's gRPC host:port"),
    _Option("rebalance", bool, "with --join: rebalance replicas onto this node (default true)"),
    _Option(
        "repair_after_s", int, "replace replicas of a node down this long (default 60; 0: never)"
    ),
    _Option(
        "txn_record_gc_s",
        int,
        "forget transaction records left behind after this long (default 180; same on all nodes)",
    ),
    _Option("shards", int, f"shards at cluster creation (default {SHARDS_DEFAULT})"),
    _Option("replicas", int, f"replicas per shard (default {REPLICAS_DEFAULT})"),
    _Option("value_size_max", int, "largest value in bytes (default 1 MiB)"),
    _Option("request_timeout_ms", int, "default request deadline in ms (default 5000)"),
    _Option("admin_allow_remote", bool, "serve admin/fault endpoints to non-loopback clients"),
    _Option("cluster_id", str, "cluster name checked on every peer stream (default: none)"),
    _Option("ready_file", str, "write {pid, http, grpc} as JSON here once serving"),
    _Option("log_level", str, "debug, info, warning or error (default info)"),
)
_BY_NAME: Final = {option.name: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `minikv serve` was told, validated: the node's own configuration, the API
    knobs, and the process's (ready file, log level)."""

    node: NodeConfig
    """`grpc_address` is the address to bind (`--grpc`, default `peers[id]`);
    `http_address` the HTTP one (port 0: any free port)."""
    api: ApiConfig = field(default_factory=ApiConfig)
    ready_file: Path | None = None
    log_level: str = "info"
    join: str | None = None
    rebalance_after_join: bool = True
    """With `join`: the meta leader starts a rebalance job once this node serves."""
    """`--join`: a member's gRPC address; this node joins that cluster on its first start
    (the peers, shard count and replicas then come from the cluster, see `join.py`)."""

    @property
    def node_id(self) -> int:
        return self.node.node_id

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def http_address(self) -> str:
        return self.node.http_address

    @property
    def grpc_address(self) -> str:
        return self.node.grpc_address

    @property
    def peers(self) -> Mapping[int, str]:
        return self.node.peers


_INT_DIGITS_MAX: Final = 18


def _int_text(text: str, *, signed: bool = False) -> int | None:
    """`text` (ASCII digits, after a `-` if `signed`) as an int, else None. Why not just
    `isdigit()` and `int()`: `"²".isdigit()` is true but `int("²")` raises, and `int()` refuses
    more than 4300 digits; either escaped as a traceback (exit 70) instead of ConfigError.
    Numbers of more than _INT_DIGITS_MAX digits are refused too: no option takes one."""
    digits = text[1:] if signed and text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > _INT_DIGITS_MAX:
        return None
    return int(text)


def _shown(value: object) -> str:
    """A value quoted in a ConfigError, cut so a huge one still makes one line."""
    if isinstance(value, str) and len(value) > 60:
        return f"{value[:60]!r}... ({len(value)} characters)"
    return repr(value)


def split_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    port = _int_text(port_text)
    if not sep or not host or port is None or not 0 <= port < 65536:
        raise ConfigError(f"{what} must be host:port, got {_shown(text)}")
    return host, port


def parse_peers(text: str) -> dict[int, str]:
    """`1=host:port,2=host:port` to {1: "host:port", ...}, refusing anything ambiguous."""
    peers: dict[int, str] = {}
    addresses: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        node, sep, address = part.partition("=")
        parsed_id = _int_text(node.strip())
        if not sep or parsed_id is None or parsed_id <= 0:
            raise ConfigError(f"peers entry {_shown(part)} must be id=host:port with a positive id")
        node_id = parsed_id
        _, port = split_address(address.strip(), f"the address of peer {node_id}")
        if port == 0:
            raise ConfigError(f"peer {node_id} needs a fixed port, got {address!r}")
        if node_id in peers:
            raise ConfigError(f"peer {node_id} is listed twice")
        if address in addresses:
            raise ConfigError(f"peers {addresses[address]} and {node_id} share address {address}")
        peers[node_id] = address.strip()
        addresses[address.strip()] = node_id
    if not peers:
        raise ConfigError("peers is empty: list every node as id=host:port,...")
    if len(peers) > limits.PEERS_MAX:
        raise ConfigError(f"{len(peers)} peers; at most {limits.PEERS_MAX}")
    return peers


def _coerce(option: _Option, value: object, source: str) -> object:
    """One raw value (TOML value or env/flag text) to the option's type."""
    where = f"{option.name} ({source})"
    if option.name == "peers" and isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if option.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if option.kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        parsed = _int_text(value.strip(), signed=True) if isinstance(value, str) else None
        if parsed is not None:
            return parsed
        raise ConfigError(f"{where} must be an integer, got {_shown(value)}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where} must be a string, got {value!r}")


def read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except ValueError as error:
        # tomllib's other refusals: bytes that are not UTF-8 (UnicodeDecodeError), an
        # integer of more than 4300 digits.
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(document) - set(_BY_NAME))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}"
        )
    return {name: _coerce(_BY_NAME[name], value, str(path)) for name, value in document.items()}


def read_env(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for option in OPTIONS:
        text = env.get(ENV_PREFIX + option.name.upper())
        if text is not None:
            values[option.name] = _coerce(option, text, ENV_PREFIX + option.name.upper())
    return values


def resolve(
    flags: Mapping[str, object], env: Mapping[str, str], config_path: Path | None = None
) -> ServerConfig:
    """Layer TOML < environment < flags and validate. `flags` holds only the flags given
    (None values are ignored). The config file is `config_path`, else MINIKV_CONFIG."""
    merged: dict[str, object] = {}
    path = config_path
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    if path is not None:
        merged.update(read_toml(path))
    merged.update(read_env(env))
    for name, value in flags.items():
        if value is not None:
            if name not in _BY_NAME:
                raise ConfigError(f"unknown option {name}")
            merged[name] = _coerce(_BY_NAME[name], value, f"--{name.replace('_', '-')}")
    return _validate(merged)


def _validate(values: Mapping[str, object]) -> ServerConfig:
    def required(name: str) -> object:
        if name not in values:
            raise ConfigError(
                f"--{name.replace('_', '-')} is required (or {name} in the config file, "
                f"or {ENV_PREFIX}{name.upper()})"
            )
        return values[name]

    node_id = required("id")
    assert isinstance(node_id, int)
    if node_id <= 0:
        raise ConfigError(f"--id must be a positive integer, got {node_id}")
    join = values.get("join")
    if join is not None:
        assert isinstance(join, str)
        split_address(join, "--join")
        if "peers" in values:
            raise ConfigError(
                "--join and --peers exclude each other: a joining node learns its peers"
            )
        if "grpc" not in values:
            raise ConfigError(
                "--join needs --grpc: the address the cluster will reach this node at"
            )
        given = [name for name in ("shards", "replicas", "cluster_id") if name in values]
        if given:
            raise ConfigError(
                f"--join takes {', '.join('--' + g.replace('_', '-') for g in given)} from the "
                "cluster; leave them out"
            )
        peers = {node_id: str(values["grpc"])}
    else:
        peers_text = required("peers")
        assert isinstance(peers_text, str)
        peers = parse_peers(peers_text)
    if node_id not in peers:
        raise ConfigError(f"--peers must list this node (id {node_id}); it lists {sorted(peers)}")
    grpc_address = str(values.get("grpc") or peers[node_id])
    _, grpc_port = split_address(grpc_address, "--grpc")
    _, advertised_port = split_address(peers[node_id], f"the address of peer {node_id}")
    if grpc_port != advertised_port:
        raise ConfigError(
            f"--grpc {grpc_address} listens on port {grpc_port}, but --peers tells the other "
            f"nodes to reach node {node_id} at {peers[node_id]}"
        )
    http_address = str(required("http"))
    split_address(http_address, "--http")
    data_dir = Path(str(required("data_dir"))).expanduser()
    log_level = str(values.get("log_level", "info")).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    optional: dict[str, Any] = {}
    for name, field_name in (
        ("shards", "shards"),
        ("replicas", "replicas"),
        ("value_size_max", "value_size_bytes_max"),
        ("request_timeout_ms", "request_timeout_ms"),
        ("cluster_id", "cluster_id"),
        ("repair_after_s", "repair_after_s"),
        ("txn_record_gc_s", "txn_record_gc_s"),
    ):
        if name in values:
            optional[field_name] = values[name]
    if join is not None:
        # Provisional until the cluster answers the join (server.resolve_join).
        optional["replicas"] = 1
    try:
        node = NodeConfig(
            node_id=node_id,
            data_dir=data_dir,
            grpc_address=grpc_address,
            http_address=http_address,
            peers=peers,
            **optional,
        )
    except ValueError as error:
        raise ConfigError(_option_names(str(error))) from None
    try:
        api = ApiConfig(
            key_size_bytes_max=node.key_size_bytes_max,
            value_size_bytes_max=node.value_size_bytes_max,
            request_timeout_ms_default=node.request_timeout_ms,
            admin_allow_remote=bool(values.get("admin_allow_remote", False)),
        )
    except ValueError as error:
        raise ConfigError(_option_names(str(error))) from None
    ready_file = values.get("ready_file")
    return ServerConfig(
        node=node,
        api=api,
        ready_file=Path(str(ready_file)) if ready_file else None,
        log_level=log_level,
        join=str(join) if join is not None else None,
        rebalance_after_join=bool(values.get("rebalance", True)),
    )


_FIELD_TO_OPTION: Final = {
    "value_size_bytes_max": "--value-size-max",
    "request_timeout_ms_default": "--request-timeout-ms",
    "request_timeout_ms": "--request-timeout-ms",
    "replicas": "--replicas",
    "shards": "--shards",
    "cluster_id": "--cluster-id",
}


def _option_names(message: str) -> str:
    """NodeConfig and ApiConfig speak of their fields; a person typed options."""
    head, sep, rest = message.partition(" ")
    option = _FIELD_TO_OPTION.get(head)
    return f"{option} {rest}" if option is not None and sep else message


def check_data_dir(path: Path) -> None:
    """Create the data directory if needed and prove it writable (write, fsync, remove a
    probe file), so a read-only mount fails here with one line, not deep in the WAL."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"data directory {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create data directory {path}: {error.strerror}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True) as probe:
            probe.write(b"minikv")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ConfigError(f"data directory {path} is not writable: {error.strerror}") from None


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def recovery_advice(error: BaseException, node: NodeConfig) -> str:
    """What a person does about a data directory the node refused to open, as one clause.

    The refusal itself names the file and the damage, but the promise is that a node which
    cannot start also says what to do: without it an operator is left guessing between
    editing files, deleting the data directory (losing the replica's vote) and a repair.
    The advice follows the cause the node wrapped (`NodeStartError.__cause__`).
    """
    causes = _causes(error)
    denied = next((c for c in causes if isinstance(c, PermissionError)), None)
    if denied is not None:
        where = denied.filename if denied.filename is not None else node.data_dir
        return (
            f"to recover: let the user running the node read and write {where} "
            "(and its directory), then start the node again"
        )
    failed = next((c for c in causes if isinstance(c, OSError)), None)
    if failed is not None and failed.errno in (errno.ENOSPC, errno.EDQUOT):
        # The data is intact: replacing the node (the advice for damage) would be needless.
        return (
            f"to recover: free space on the file system holding {node.data_dir}, then start "
            "the node again"
        )
    if failed is not None and failed.errno == errno.EROFS:
        return (
            f"to recover: make the file system holding {node.data_dir} writable again, then "
            "start the node again"
        )
    # `remove-node`, not `repair --dead`: after the latter the node stays a member, and
    # `minikv cluster up` then fails on it again and stops the nodes it had started.
    replace_node = (
        "to recover: this node's data cannot be used as it is, but the other replicas hold "
        f"the data: retire it with `minikv cluster remove-node {node.node_id}`, which moves "
        "its replicas to the other nodes (`minikv cluster add-node` first if every node "
        "already holds a replica of each shard)"
    )
    damaged = next((c for c in causes if isinstance(c, WalCorruptionError)), None)
    if damaged is None:
        return replace_node
    segments = sorted(p for p in node.wal_dir.glob(f"*{SEGMENT_SUFFIX}") if p.is_file())
    if damaged.offset < SEGMENT_HEADER_SIZE and segments and damaged.path == segments[0]:
        # `wal repair` would cut the whole log (its oldest segment's header is bad), and a
        # node without its log cannot rejoin by itself: advising it would be a dead end.
        return replace_node
    return (
        f"to recover: with the node stopped, `minikv wal repair {node.wal_dir}` cuts the log "
        "at the damage; then start the node again and it catches up from its peers"
    )


# ------------------------------------------------------------------------------- argparse


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2 from `main`) instead of printing
    usage and exiting from deep inside `parse_args`."""

    def error(self, message: str) -> Any:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="minikv serve",
        description="Run one minikv node. Options also come from --config (TOML) and "
        "MINIKV_* environment variables; flags win.",
    )
    parser.add_argument("--config", help="TOML file with the same options (MINIKV_CONFIG)")
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        if option.kind is bool:
            parser.add_argument(
                flag,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=option.help,
            )
        else:
            parser.add_argument(flag, dest=option.name, default=None, help=option.help)
    return parser


def config_from_argv(argv: Sequence[str], env: Mapping[str, str]) -> ServerConfig:
    """Flags (argv without the program name) layered over `env` and the config file."""
    namespace = build_parser().parse_args(list(argv))
    flags = {name: value for name, value in vars(namespace).items() if name != "config"}
    config_path = Path(namespace.config) if namespace.config else None
    return resolve(flags, env, config_path)


# -------------------------------------------------------------------------------- serving


class _StopSignal:
    """SIGTERM / SIGINT turned into an event the serve loop awaits."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal_name = ""

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._fire, signum)
        for early in early_signals.take_noted():  # sent while the process was importing
            self._fire(early)

    def _fire(self, signum: int) -> None:
        if not self.event.is_set():
            self.signal_name = signal.Signals(signum).name
            logger.info("%s received: stopping", self.signal_name)
        self.event.set()


def _write_ready_file(path: Path, document: Mapping[str, object]) -> None:
    """Atomically (write, fsync, rename, fsync the directory): a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    store_atomically(path, json.dumps(document).encode())


def _make_node(
    config: NodeConfig, server: grpc.aio.Server, join_map: ShardMap | None = None
) -> Node:
    """The node, its peer transport on the node's one gRPC server, and its gRPC forwarder
    (which finds peers in the node's current shard map: nodes come and go, issue #10)."""
    host, port = split_address(config.grpc_address, "--grpc")
    made: list[Node] = []

    def address_of(node_id: int) -> str | None:
        if made:
            address = made[0].host.shard_map.nodes.get(node_id)
            if address is not None:
                return str(address)
        return config.peers.get(node_id)

    def transport_factory(
        node_config: NodeConfig, on_frame: FrameHandler, rng: random.Random
    ) -> PeerTransport:
        return PeerTransport(
            node_config.node_id,
            node_config.peers,
            on_frame,
            rng=rng,
            host=host,
            port=port,
            cluster_id=node_config.cluster_id,
            server=server,
        )

    def forwarder_factory(node_config: NodeConfig, fault_filter: FaultFilter) -> GrpcForwarder:
        return GrpcForwarder(
            node_config.node_id,
            address_of,
            fault_filter,
            message_bytes_max=ApiConfig(
                key_size_bytes_max=node_config.key_size_bytes_max,
                value_size_bytes_max=node_config.value_size_bytes_max,
            ).grpc_message_bytes_max,
        )

    node = Node(
        config,
        transport_factory=transport_factory,
        forwarder_factory=forwarder_factory,
        join_map=join_map,
    )
    made.append(node)
    return node


class NodeServer:
    """One node and its APIs in this process: what `minikv serve` runs, and what tests and
    embedders start in-process (real node, real sockets, real files).

    `await start()` binds both addresses (raising ConfigError for a port in use or a bad
    data directory, NodeStartError when the node refuses its data), then `http_port` and
    `grpc_port` are the bound ports. `await stop()` is the graceful stop of SIGTERM.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = NodeMetrics(self._status, self._transport_stats)
        self._grpc = GrpcServer(config.api, self.metrics)
        self.node: Node | None = None
        self._http: HttpApi | None = None
        self.http_port = 0
        self.grpc_port = 0
        self._started = False
        self._stopped = False

    def _status(self) -> Mapping[str, Any]:
        if self.node is None:
            return {}
        return self.node.status().body

    def _peer_cut(self, peer: int) -> str | None:
        """Why fault injection cuts this node off from `peer` (either direction), or None."""
        transport = self.node.host.transport_or_none if self.node is not None else None
        if transport is None:
            return None
        rules = transport.fault_filter.rules
        if peer in rules.drop_from:
            return f"fault injection drops traffic from node {peer}"
        if peer in rules.drop_to:
            return f"fault injection drops traffic to node {peer} (the answer could not return)"
        return None

    def _transport_stats(self) -> TransportStats | None:
        transport = self.node.host.transport_or_none if self.node is not None else None
        return transport.stats() if transport is not None else None

    @property
    def grpc_calls_in_flight(self) -> int:
        """KV and Admin calls being served (what a graceful stop waits for)."""
        return self._grpc.in_flight

    @property
    def http_address(self) -> str:
        host, _ = split_address(self.config.http_address, "--http")
        return f"{host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        host, _ = split_address(self.config.grpc_address, "--grpc")
        return f"{host}:{self.grpc_port}"

    async def start(self) -> None:
        assert not self._started, "start() called twice"
        self._started = True
        config = self.config
        check_data_dir(config.data_dir)
        # Both addresses are bound before the node opens its data: a port in use is a clear
        # error (exit 2) that touched nothing.
        http_host, http_port = split_address(config.http_address, "--http")
        try:
            http_socket = bind_socket(http_host, http_port)
        except OSError as error:
            raise ConfigError(
                f"cannot bind HTTP address {config.http_address}: {error.strerror or error}"
            ) from None
        try:
            self.grpc_port = self._grpc.bind(config.grpc_address)
        except GrpcBindError as error:
            http_socket.close()
            await self._grpc.stop(0)
            raise ConfigError(f"{error} (is another node or process using it?)") from None
        self.http_port = int(http_socket.getsockname()[1])
        node_config = replace(
            config.node, grpc_address=self.grpc_address, http_address=self.http_address
        )
        try:
            node_config, join_map = await resolve_join(
                node_config, config.join, rebalance=config.rebalance_after_join
            )
            self.node = _make_node(node_config, self._grpc.server, join_map)
            await self.node.start()
        except BaseException as error:
            self.node = None
            http_socket.close()
            await self._grpc.stop(0)
            if isinstance(error, IdentityMismatchError):
                raise ConfigError(str(error)) from None
            if isinstance(error, WalLockedError):
                raise ConfigError(
                    f"{error} (is another node running on {config.data_dir}?)"
                ) from None
            if isinstance(error, JoinError):
                raise  # the cluster refused the join: its message says what to do
            if isinstance(error, NodeStartError | StorageError | IdentityError):
                raise NodeStartError(f"{error}; {recovery_advice(error, config.node)}") from error
            if isinstance(error, TransportError):
                raise ConfigError(str(error)) from None
            raise
        try:
            self._grpc.add_api(self.node, self._peer_cut, self.node.maintenance)
            await self._grpc.start()
            self._http = HttpApi(self.node, config.api, self.metrics, self.node.maintenance)
            await self._http.start_on(http_socket)
        except BaseException:
            http_socket.close()
            await self._shutdown(graceful=False)
            raise
        logger.info(
            "node %d serving: http=%s grpc=%s data_dir=%s loop=%s",
            config.node_id,
            self.http_address,
            self.grpc_address,
            config.data_dir,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        if config.ready_file is not None:
            _write_ready_file(
                config.ready_file,
                {
                    "pid": os.getpid(),
                    "node_id": config.node_id,
                    "http": self.http_address,
                    "grpc": self.grpc_address,
                },
            )

    async def stop(self) -> None:
        """Stop accepting (HTTP listener closed, new KV/Admin calls refused), let requests in
        flight finish (up to API_SHUTDOWN_GRACE_S) while Raft still runs, stop the node (it
        flushes), close the gRPC server. Idempotent."""
        await self._shutdown(graceful=True)

    async def _shutdown(self, *, graceful: bool) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._http is not None:
                http_stop = asyncio.create_task(self._http.stop())
                if graceful and not await self._grpc.drain():
                    logger.warning("gRPC calls still running after the grace period: cancelled")
                await http_stop
        finally:
            try:
                if self.node is not None:
                    await self.node.stop()
            finally:
                await self._grpc.stop()
        logger.info("node %d stopped", self.config.node_id)


async def serve(config: ServerConfig, stop: _StopSignal | None = None) -> int:
    """Run one node until SIGTERM/SIGINT (or `stop`); returns the exit status."""
    stop = stop if stop is not None else _StopSignal()
    stop.install(asyncio.get_running_loop())
    task_dump.install(asyncio.get_running_loop())  # SIGUSR2: where every task waits
    server = NodeServer(config)
    starting = asyncio.ensure_future(server.start())
    stopped_early = asyncio.ensure_future(stop.event.wait())
    try:
        await asyncio.wait((starting, stopped_early), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped_early.cancel()
    if not starting.done() and server.node is None:
        # SIGTERM while `--join` still looks for the cluster (up to 30 s): nothing is open
        # yet, and start() undoes its binds when cancelled, so stop now with 0 instead of
        # exiting 1 once the join gives up. (Once the node opens its data, start finishes.)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        logger.info("node %d stopped before it joined the cluster", config.node_id)
        return EXIT_OK
    await starting
    assert server.node is not None
    host = server.node.host
    decommissioned = asyncio.ensure_future(host.decommissioned.wait())
    fenced = asyncio.ensure_future(host.fenced.wait())
    stopped = asyncio.ensure_future(stop.event.wait())
    status = EXIT_OK
    try:
        await asyncio.wait((decommissioned, fenced, stopped), return_when=asyncio.FIRST_COMPLETED)
        if decommissioned.done():
            if host.decommissioned_reason:
                logger.info("node %d stops: %s", config.node_id, host.decommissioned_reason)
            else:
                logger.info("node %d was removed from the cluster: stopping", config.node_id)
        elif fenced.done():
            # Its data is not what the cluster knew under its id (peer_incarnations.py):
            # serving on would let it vote and acknowledge with a forgotten log. Or most of
            # its peers belong to another cluster: it would run on alone, refused by all.
            logger.error("node %d stops: %s", config.node_id, host.fenced_reason)
            status = EXIT_FAILURE
    finally:
        for waiter in (decommissioned, fenced, stopped):
            waiter.cancel()
        await server.stop()
    return status


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        force=True,
    )
    # aiohttp logs every refused connection at INFO; keep its access log off and the rest quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _run(coroutine: Any) -> int:
    try:
        import uvloop
    except ImportError:  # not on every platform (pyproject marks it Linux/macOS only)
        return int(asyncio.run(coroutine))
    return int(uvloop.run(coroutine))


def run(config: ServerConfig) -> int:
    """Configure logging and serve `config` until stopped; returns the exit status.

    Raises ConfigError (a bind or directory problem found at start) and NodeStartError (the
    node refused its data directory)."""
    _configure_logging(config.log_level)
    # SIGUSR1: every thread's Python stack, written to stderr (a node's log) by the C-level
    # handler, so it works even while the event loop or the GIL is stuck: where a node that
    # answers nothing is, without stopping it (`kill -USR1 PID`; the integration tests do it
    # when a wait times out).
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    return _run(serve(config))


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """`python -m minikv_core.server ARGS`: returns the exit status (0 after a clean stop, 2
    for a configuration a person must fix, 1 when the node could not open its data)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    environment = os.environ if env is None else env
    try:
        return run(config_from_argv(arguments, environment))
    except ConfigError as error:
        print(f"minikv serve: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NodeStartError as error:
        print(f"minikv serve: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
