"""The registry: which local clusters exist, where their nodes live, and what happened to them.

Several processes share one file: CLI commands racing each other, a dashboard polling, the
launcher recording what it did. SQLite in WAL mode lets readers run beside the one writer;
every write takes the write lock up front (`BEGIN IMMEDIATE`) so a read-then-write transaction
can never deadlock on a lock upgrade, and a 10 s busy timeout turns contention into waiting
instead of "database is locked". Event ids are assigned under that lock, so they increase in
commit order and a poller reading `after_id` never skips an event committed late.

Everything a person can meet here is a `RegistryError` (a `UserError`): a name taken, a corrupt
or newer file, a home that cannot be written. Other sqlite errors are bugs and propagate.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, get_args

import aiosqlite

from minikv_tui.errors import EXIT_USAGE, UserError

REGISTRY_FILENAME: Final = "registry.sqlite3"
BUSY_TIMEOUT_MS: Final = 10_000
OPEN_RETRY_S: Final = 0.02
"""Between attempts to open a registry another process is setting up (`Registry.open`)."""
CLUSTER_NAME_RULE: Final = "[a-z0-9][a-z0-9_-]{0,39}"
_CLUSTER_NAME: Final = re.compile(CLUSTER_NAME_RULE)

NodeState = Literal["stopped", "running", "paused", "killed", "failed"]
NODE_STATES: Final[tuple[NodeState, ...]] = get_args(NodeState)

# Each script moves the schema up one version and runs in its own transaction; never edit a
# released script, append a new one. Events have no ON DELETE CASCADE: `remove_cluster` deletes
# them explicitly, and the foreign keys only refuse orphans.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE clusters (
        name       TEXT PRIMARY KEY NOT NULL,
        directory  TEXT NOT NULL,
        nodes      INTEGER NOT NULL CHECK (nodes >= 1),
        shards     INTEGER NOT NULL CHECK (shards >= 1),
        replicas   INTEGER NOT NULL CHECK (replicas BETWEEN 1 AND nodes),
        created_at REAL NOT NULL
    );
    CREATE TABLE nodes (
        cluster    TEXT NOT NULL REFERENCES clusters (name),
        node_id    INTEGER NOT NULL,
        grpc_port  INTEGER NOT NULL,
        http_port  INTEGER NOT NULL,
        data_dir   TEXT NOT NULL,
        log_path   TEXT NOT NULL,
        state      TEXT NOT NULL
                   CHECK (state IN ('stopped', 'running', 'paused', 'killed', 'failed')),
        pid        INTEGER,
        pid_start  INTEGER,
        PRIMARY KEY (cluster, node_id)
    );
    -- AUTOINCREMENT: ids are never reused, even after the newest events are deleted with their
    -- cluster, so a poller's after_id stays valid when a cluster of the same name is re-created.
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      REAL NOT NULL,
        cluster TEXT NOT NULL REFERENCES clusters (name),
        node    INTEGER,
        kind    TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    CREATE INDEX events_by_cluster ON events (cluster, id);
    """,
    # Membership changes (issue #10). `joined`: the node was added to a running cluster and
    # starts with `--join`, not the founding `--peers` (its identity file holds the rest).
    # `removed_at`: the cluster let the node go; it is never started again, but its row stays:
    # founding nodes keep it in their `--peers` list, and its id and ports are never reused.
    """
    ALTER TABLE nodes ADD COLUMN joined INTEGER NOT NULL DEFAULT 0 CHECK (joined IN (0, 1));
    ALTER TABLE nodes ADD COLUMN removed_at REAL;
    """,
)
SCHEMA_VERSION: Final[int] = len(_MIGRATIONS)
assert all(f"'{state}'" in "".join(_MIGRATIONS) for state in NODE_STATES), "states vs schema"


def default_home() -> Path:
    """$MINIKV_HOME if set, else $XDG_DATA_HOME/minikv, else ~/.local/share/minikv.

    A relative $XDG_DATA_HOME is ignored, as the XDG base directory specification requires.
    """
    if home := os.environ.get("MINIKV_HOME"):
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "minikv"
    return Path.home() / ".local" / "share" / "minikv"


class RegistryError(UserError):
    """User-facing: the message says what is wrong, the hint what to do (e.g. a name exists)."""


@dataclass(frozen=True)
class ClusterSettings:
    nodes: int
    shards: int
    replicas: int


@dataclass(frozen=True)
class ClusterRecord:
    name: str
    directory: Path  # holds node<i>/ data dirs and node<i>.log files
    settings: ClusterSettings
    created_at: float  # unix seconds


@dataclass(frozen=True)
class NodeRecord:
    cluster: str
    node_id: int
    grpc_port: int
    http_port: int
    data_dir: Path
    log_path: Path
    state: NodeState  # what the launcher last did or observed; liveness is re-checked by pid
    pid: int | None = None
    pid_start: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid apart
    joined: bool = False  # added to a running cluster: started with --join, not --peers
    removed_at: float | None = None  # unix seconds the cluster let it go; None: a member

    @property
    def removed(self) -> bool:
        return self.removed_at is not None


@dataclass(frozen=True)
class EventRecord:
    id: int
    at: float  # unix seconds
    cluster: str
    node: int | None
    kind: str  # up, down, start, stop, kill, pause, resume, partition, leader-change, ...
    detail: str


def validate_cluster_name(name: str) -> None:
    """Names become directory names and CLI arguments: keep them short and shell-safe."""
    if not _CLUSTER_NAME.fullmatch(name):
        raise RegistryError(
            f"invalid cluster name {name!r}",
            hint=f"use 1-40 characters matching {CLUSTER_NAME_RULE}: lower-case letters, "
            "digits, '-' and '_', starting with a letter or digit",
            exit_code=EXIT_USAGE,
        )


def _validate_state(state: str) -> NodeState:
    for known in NODE_STATES:
        if state == known:
            return known
    raise RegistryError(
        f"unknown node state {state!r}",
        hint=f"use one of: {', '.join(NODE_STATES)}",
        exit_code=EXIT_USAGE,
    )


def _path_text(path: Path) -> str:
    """Absolute, so the record means the same to a process started in another directory."""
    text = str(path.absolute())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RegistryError(
            f"path {text!r} is not valid UTF-8 and cannot be recorded",
            hint="choose a directory whose name is valid UTF-8",
            exit_code=EXIT_USAGE,
        ) from None
    return text


def _statements(script: str) -> list[str]:
    """Split a migration script on statement boundaries, as sqlite itself sees them.

    `executescript` would do this, but it commits any open transaction first, which would
    split a migration from its schema_version row.
    """
    statements: list[str] = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statements.append(script[start : index + 1].strip())
            start = index + 1
    assert not script[start:].strip(), f"unterminated SQL in a migration: {script[start:]!r}"
    return statements


# Primary result codes (https://sqlite.org/rescode.html) a person can act on.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


def _primary_code(exc: BaseException | None) -> int:
    """SQLite's primary result code of `exc` (-1 & 0xFF for anything without one)."""
    return getattr(exc, "sqlite_errorcode", -1) & 0xFF


def _user_facing(path: Path, exc: sqlite3.Error) -> RegistryError | None:
    code = _primary_code(exc)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return RegistryError(
            f"the minikv registry {path} is corrupt or not a SQLite database ({exc})",
            hint=f"move it aside (mv {path} {path}.broken) and run the command again: a new "
            "registry is created, and clusters must then be created again",
        )
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return RegistryError(
            f"the minikv registry {path} is locked by another process (gave up after "
            f"waiting up to {BUSY_TIMEOUT_MS // 1000} s)",
            hint="wait for the other minikv command to finish, then run this one again",
        )
    if code == _SQLITE_FULL:
        return RegistryError(
            f"the disk holding the minikv registry {path} is full",
            hint="free some space, then run the command again",
        )
    if code in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN):
        return RegistryError(
            f"cannot read or write the minikv registry {path} ({exc})",
            hint="check the file and its directory are writable, or set MINIKV_HOME to a "
            "directory that is",
        )
    return None


def _locked(exc: BaseException | None) -> bool:
    return isinstance(exc, sqlite3.Error) and _primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        error = _user_facing(path, exc)
        if error is None:
            raise
        raise error from exc


def _cluster_from_row(row: Sequence[Any]) -> ClusterRecord:
    name, directory, nodes, shards, replicas, created_at = row
    return ClusterRecord(
        name=name,
        directory=Path(directory),
        settings=ClusterSettings(nodes=nodes, shards=shards, replicas=replicas),
        created_at=created_at,
    )


def _node_from_row(row: Sequence[Any]) -> NodeRecord:
    (
        cluster,
        node_id,
        grpc_port,
        http_port,
        data_dir,
        log_path,
        state,
        pid,
        pid_start,
        joined,
        removed_at,
    ) = row
    return NodeRecord(
        cluster=cluster,
        node_id=node_id,
        grpc_port=grpc_port,
        http_port=http_port,
        data_dir=Path(data_dir),
        log_path=Path(log_path),
        state=_validate_state(state),
        pid=pid,
        pid_start=pid_start,
        joined=bool(joined),
        removed_at=removed_at,
    )


def _node_row(node: NodeRecord) -> tuple[Any, ...]:
    return (
        node.cluster,
        node.node_id,
        node.grpc_port,
        node.http_port,
        _path_text(node.data_dir),
        _path_text(node.log_path),
        _validate_state(node.state),
        node.pid,
        node.pid_start,
        int(node.joined),
        node.removed_at,
    )


def _event_from_row(row: Sequence[Any]) -> EventRecord:
    event_id, at, cluster, node, kind, detail = row
    return EventRecord(id=event_id, at=at, cluster=cluster, node=node, kind=kind, detail=detail)


_CLUSTER_COLUMNS: Final = "name, directory, nodes, shards, replicas, created_at"
_NODE_COLUMNS: Final = (
    "cluster, node_id, grpc_port, http_port, data_dir, log_path, state, pid, pid_start, "
    "joined, removed_at"
)
_NODE_PLACEHOLDERS: Final = ", ".join("?" * len(_NODE_COLUMNS.split(",")))
_EVENT_COLUMNS: Final = "id, at, cluster, node, kind, detail"


def _no_such_cluster(name: str) -> RegistryError:
    return RegistryError(
        f"there is no local cluster named {name!r}",
        hint="check the name against the list of clusters, or create the cluster first",
    )


class Registry:
    """One connection to the registry file; safe to share between tasks of one event loop."""

    def __init__(self, path: Path, db: aiosqlite.Connection) -> None:
        self.path = path
        self._db = db
        # One connection carries one transaction at a time: tasks of this process queue here,
        # other processes queue on SQLite's lock.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, home: Path | None = None) -> Registry:
        home = default_home() if home is None else home
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(
                f"cannot create the minikv home {home} ({exc.strerror})",
                hint="set MINIKV_HOME to a writable directory",
            ) from exc
        path = home / REGISTRY_FILENAME
        # SQLite answers SQLITE_BUSY at once, without its busy handler, in cases met while a
        # new file is set up by several processes (the switch to WAL mode needs an exclusive
        # lock; a connection that meets another's WAL set-up does not wait): a race of three
        # processes creating one registry failed 1 run in 15 after ~1 s, not 10. So opening
        # retries a lock error itself, for as long as the busy timeout would have waited.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            with _sqlite_errors(path):
                db = await aiosqlite.connect(
                    path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
                )
            registry = cls(path, db)
            try:
                await registry._configure()
                await registry._migrate()
            except RegistryError as error:
                await db.close()
                if not _locked(error.__cause__) or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(OPEN_RETRY_S)
                continue
            except BaseException:
                await db.close()
                raise
            return registry

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- clusters -----------------------------------------------------------------------------

    async def add_cluster(self, cluster: ClusterRecord, nodes: Sequence[NodeRecord]) -> None:
        validate_cluster_name(cluster.name)
        settings = cluster.settings
        if min(settings.nodes, settings.shards, settings.replicas) < 1:
            raise RegistryError(
                f"invalid settings for cluster {cluster.name!r}: {settings}",
                hint="nodes, shards and replicas must each be at least 1",
                exit_code=EXIT_USAGE,
            )
        if settings.replicas > settings.nodes:
            raise RegistryError(
                f"cluster {cluster.name!r} asks for {settings.replicas} replicas of each shard "
                f"but has only {settings.nodes} nodes",
                hint="use at most as many replicas as nodes",
                exit_code=EXIT_USAGE,
            )
        node_ids = [node.node_id for node in nodes]
        assert len(set(node_ids)) == len(node_ids), f"duplicate node ids: {node_ids}"
        assert all(node.cluster == cluster.name for node in nodes), "node of another cluster"
        node_rows = [_node_row(node) for node in nodes]
        cluster_row = (
            cluster.name,
            _path_text(cluster.directory),
            settings.nodes,
            settings.shards,
            settings.replicas,
            cluster.created_at,
        )
        async with self._write() as db:
            if await self._cluster_exists(cluster.name):
                raise RegistryError(
                    f"a local cluster named {cluster.name!r} already exists",
                    hint="choose another name, or destroy the existing cluster first",
                )
            await db.execute(
                f"INSERT INTO clusters ({_CLUSTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", cluster_row
            )
            await db.executemany(
                f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES ({_NODE_PLACEHOLDERS})", node_rows
            )

    async def cluster(self, name: str) -> ClusterRecord | None:
        rows = await self._read(f"SELECT {_CLUSTER_COLUMNS} FROM clusters WHERE name = ?", (name,))
        return _cluster_from_row(rows[0]) if rows else None

    async def clusters(self) -> list[ClusterRecord]:
        rows = await self._read(f"SELECT {_CLUSTER_COLUMNS} FROM clusters ORDER BY name", ())
        return [_cluster_from_row(row) for row in rows]

    async def remove_cluster(self, name: str) -> None:
        """Its nodes and events go too; an unknown name is an error, so a typo is not silent."""
        async with self._write() as db:
            if not await self._cluster_exists(name):
                raise _no_such_cluster(name)
            await db.execute("DELETE FROM events WHERE cluster = ?", (name,))
            await db.execute("DELETE FROM nodes WHERE cluster = ?", (name,))
            await db.execute("DELETE FROM clusters WHERE name = ?", (name,))

    # -- nodes --------------------------------------------------------------------------------

    async def nodes(self, cluster: str, *, include_removed: bool = False) -> list[NodeRecord]:
        """The cluster's members by id; removed nodes only on request (they are history:
        nothing starts, polls or lists them, but their ids and ports stay taken)."""
        where = "" if include_removed else " AND removed_at IS NULL"
        rows = await self._read(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE cluster = ?{where} ORDER BY node_id",
            (cluster,),
        )
        return [_node_from_row(row) for row in rows]

    async def node(self, cluster: str, node_id: int) -> NodeRecord | None:
        """The node by id, removed or not (`NodeRecord.removed` tells)."""
        rows = await self._read(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE cluster = ? AND node_id = ?",
            (cluster, node_id),
        )
        return _node_from_row(rows[0]) if rows else None

    async def update_node(
        self,
        cluster: str,
        node_id: int,
        *,
        state: NodeState,
        pid: int | None,
        pid_start: int | None,
    ) -> NodeRecord:
        state = _validate_state(state)
        assert pid is None or pid > 0, f"bad pid {pid}"
        assert pid_start is None or pid_start >= 0, f"bad pid start time {pid_start}"
        async with self._write() as db:
            async with db.execute(
                "UPDATE nodes SET state = ?, pid = ?, pid_start = ? "
                "WHERE cluster = ? AND node_id = ?",
                (state, pid, pid_start, cluster, node_id),
            ) as cursor:
                updated = cursor.rowcount
            return await self._updated_node(db, cluster, node_id, updated)

    async def _updated_node(
        self, db: aiosqlite.Connection, cluster: str, node_id: int, updated: int
    ) -> NodeRecord:
        """The node row an UPDATE just changed; a clear error if it matched none."""
        if updated == 0:
            if not await self._cluster_exists(cluster):
                raise _no_such_cluster(cluster)
            raise RegistryError(
                f"cluster {cluster!r} has no node {node_id}",
                hint="check the node id against the cluster's list of nodes",
            )
        rows = await db.execute_fetchall(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE cluster = ? AND node_id = ?",
            (cluster, node_id),
        )
        return _node_from_row(next(iter(rows)))

    async def add_node(self, node: NodeRecord) -> None:
        """One more node of an existing cluster (`minikv cluster add-node`)."""
        row = _node_row(node)
        async with self._write() as db:
            if not await self._cluster_exists(node.cluster):
                raise _no_such_cluster(node.cluster)
            taken = await db.execute_fetchall(
                "SELECT 1 FROM nodes WHERE cluster = ? AND node_id = ?",
                (node.cluster, node.node_id),
            )
            if list(taken):
                raise RegistryError(
                    f"cluster {node.cluster!r} already has a node {node.node_id}",
                    hint="node ids are never reused; pick the next free one",
                )
            await db.execute(
                f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES ({_NODE_PLACEHOLDERS})", row
            )

    async def mark_removed(self, cluster: str, node_id: int) -> NodeRecord:
        """Record that the cluster let the node go (idempotent: the first time is kept)."""
        async with self._write() as db:
            async with db.execute(
                "UPDATE nodes SET removed_at = COALESCE(removed_at, ?) "
                "WHERE cluster = ? AND node_id = ?",
                (time.time(), cluster, node_id),
            ) as cursor:
                updated = cursor.rowcount
            return await self._updated_node(db, cluster, node_id, updated)

    # -- events -------------------------------------------------------------------------------

    async def record_event(
        self, cluster: str, kind: str, detail: str = "", node: int | None = None
    ) -> EventRecord:
        assert kind, "an event needs a kind"
        async with self._write() as db:
            if not await self._cluster_exists(cluster):
                raise _no_such_cluster(cluster)
            # Taken under the write lock, so `at` follows the id order (barring clock jumps).
            at = time.time()
            async with db.execute(
                "INSERT INTO events (at, cluster, node, kind, detail) VALUES (?, ?, ?, ?, ?)",
                (at, cluster, node, kind, detail),
            ) as cursor:
                event_id = cursor.lastrowid
        assert event_id is not None
        return EventRecord(id=event_id, at=at, cluster=cluster, node=node, kind=kind, detail=detail)

    async def events(
        self, cluster: str, *, after_id: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """Ascending id; pass the last id seen as `after_id` to read only what is new."""
        assert limit >= 1, f"limit must be positive, not {limit}"
        rows = await self._read(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE cluster = ? AND id > ? ORDER BY id LIMIT ?",
            (cluster, after_id, limit),
        )
        return [_event_from_row(row) for row in rows]

    # -- plumbing -----------------------------------------------------------------------------

    async def _configure(self) -> None:
        async with self._lock:
            with _sqlite_errors(self.path):
                await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await self._db.execute("PRAGMA foreign_keys = ON")
                # The journal mode is stored in the file: switch only once, since the switch
                # needs an exclusive lock that a busy registry would make us wait for.
                mode = await self._pragma("journal_mode")
                if mode != "wal":
                    mode = await self._pragma("journal_mode = WAL")
                if mode != "wal":
                    raise RegistryError(
                        f"the minikv registry {self.path} cannot use SQLite's WAL mode "
                        f"(it stays in {mode!r} mode)",
                        hint="set MINIKV_HOME to a directory on a local file system",
                    )
                # In WAL mode NORMAL loses no committed data on a process crash, only the last
                # commits on power loss, which also ends every process those rows describe.
                await self._db.execute("PRAGMA synchronous = NORMAL")

    async def _pragma(self, pragma: str) -> str:
        rows = list(await self._db.execute_fetchall(f"PRAGMA {pragma}"))
        return str(rows[0][0]).lower()

    async def _schema_version(self) -> int:
        """The highest migration applied; 0 for a new file."""
        tables = await self._db.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        )
        if not list(tables):
            return 0
        rows = list(await self._db.execute_fetchall("SELECT MAX(version) FROM schema_version"))
        return int(rows[0][0] or 0)

    def _check_not_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"registry schema {version} is newer than this minikv ({SCHEMA_VERSION}): "
                "upgrade minikv",
                hint=f"the registry {self.path} was written by a newer minikv; upgrade this "
                "one, or set MINIKV_HOME to another directory",
            )

    async def _migrate(self) -> None:
        async with self._lock:
            with _sqlite_errors(self.path):
                current = await self._schema_version()
        self._check_not_newer(current)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            async with self._write() as db:
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    "version INTEGER PRIMARY KEY NOT NULL, applied_at REAL NOT NULL)"
                )
                # Another process may have migrated between our read and our lock.
                applied = await self._schema_version()
                self._check_not_newer(applied)
                if applied >= version:
                    continue
                assert applied == version - 1, f"schema {applied} cannot take migration {version}"
                for statement in _statements(_MIGRATIONS[version - 1]):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, holding SQLite's write lock from its first statement."""
        async with self._lock:
            with _sqlite_errors(self.path):
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        # The original error matters more than a failed rollback; SQLite also
                        # rolls back on its own when the connection closes.
                        with suppress(sqlite3.Error):
                            await self._db.execute("ROLLBACK")
                    raise
                await self._db.execute("COMMIT")

    async def _read(self, sql: str, parameters: Sequence[Any]) -> list[Sequence[Any]]:
        async with self._lock:
            with _sqlite_errors(self.path):
                return list(await self._db.execute_fetchall(sql, parameters))

    async def _cluster_exists(self, name: str) -> bool:
        rows = await self._db.execute_fetchall("SELECT 1 FROM clusters WHERE name = ?", (name,))
        return bool(list(rows))
