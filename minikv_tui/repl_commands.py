"""Running parsed REPL statements against the cluster through the blocking client.

Every failure a command can meet, from a missing file to a cluster with no leader, leaves as
a `ReplError` printed on one line; `run` returns whether the command failed so scripted runs
can set their exit status, and never raises (short of Ctrl-C, which the session handles).

Inside MULTI the table (repl_grammar) says what each command does: queued for EXEC, run at
once, or refused. Any failure while MULTI is open marks the transaction, and EXEC then refuses
it whole (redis's EXECABORT): a script whose third line had a typo must not commit the rest.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from minikv_core.client import (
    Client,
    ClientError,
    DeadlineExceededError,
    NotFoundError,
    OpKind,
    OpResult,
    PermissionDeniedError,
    ShardRouting,
    TxnOp,
    TxnRequest,
    UnavailableError,
)
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.net.limits import CLIENT_MESSAGE_BYTES_MAX
from minikv_tui import repl_grammar
from minikv_tui import repl_parser as p
from minikv_tui.errors import is_output_error
from minikv_tui.repl_errors import ParseError, ReplError, from_client_error, from_txn_error
from minikv_tui.repl_keys import KeyIndex
from minikv_tui.repl_multi import MultiQueue, Watched, watching
from minikv_tui.repl_render import NodeReport, Renderer
from minikv_tui.repl_state import Connection, SessionState
from minikv_tui.repl_tokens import quote_bytes

VALUE_FILE_BYTES_MAX: Final = CLIENT_MESSAGE_BYTES_MAX
"""A `@file` value larger than the client can send is refused before it is read."""
ADMIN_TIMEOUT_S: Final = 2.0
"""STATUS asks every node; a down node costs at most this, all nodes asked at once."""
STATUS_THREADS_MAX: Final = 16
WHAT_CHARS_MAX: Final = 80
"""An error names its command ("PUT user/1: ..."); past this its key is cut short, or a
4 KiB key would bury the one line that says what went wrong."""


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    EXIT = "exit"


class Executor:
    def __init__(
        self,
        client: Client,
        state: SessionState,
        renderer: Renderer,
        keys: KeyIndex,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._client = client
        self._state = state
        self._render = renderer
        self._keys = keys
        self._clock = clock

    def run(self, statement: p.Statement, where: str = "") -> Outcome:
        """Do one statement and print its result or its error (prefixed by `where`)."""
        try:
            if isinstance(statement, p.Exit):
                return Outcome.EXIT
            self._dispatch(statement)
        except ReplError as error:
            self._render.error(self._failed(error), where)
            return Outcome.FAILED
        except OSError as error:
            if is_output_error(error):
                # stdout is gone (`minikv repl < cmds | head`) or full: no later command can
                # print either, so the session ends, told once by `minikv_tui.cli.main`.
                raise
            self._internal_error(error, where)
            return Outcome.FAILED
        except Exception as error:  # the REPL's last line of defence: no traceback, ever
            self._internal_error(error, where)
            return Outcome.FAILED
        return Outcome.OK

    def _internal_error(self, error: Exception, where: str) -> None:
        self._render.error(
            self._failed(
                ReplError(
                    f"internal error: {type(error).__name__}: {error}",
                    "This is a bug in minikv; please report it with the command you ran.",
                )
            ),
            where,
        )

    def parse_failed(self, error: ParseError, where: str = "") -> None:
        """Print a line that did not parse; inside MULTI it counts as a failed command."""
        self._render.error(self._failed(error), where)

    def finish(self, where: str = "") -> bool:
        """The session ends (end of a script, EXIT, Ctrl-D): False, with an error, when it
        ends inside MULTI, whose queued commands are then dropped unsent."""
        multi = self._state.multi
        self._state.multi = None
        self._state.watched = ()
        if multi is None:
            return True
        count = len(multi.ops)
        self._render.error(
            ReplError(
                f"the session ended inside MULTI: {count} queued "
                f"command{'s were' if count != 1 else ' was'} not executed",
                "End a transaction with EXEC (or DISCARD) before the input ends.",
            ),
            where,
        )
        return False

    def _failed(self, error: ReplError) -> ReplError:
        """`error`, marking the open transaction failed (and saying so) if there is one."""
        multi = self._state.multi
        if multi is None:
            return error
        self._state.multi = multi.failed()
        consequence = "EXEC will refuse this transaction: DISCARD, then MULTI again."
        hint = f"{error.hint} {consequence}" if error.hint else consequence
        return ReplError(error.message, hint)

    # --- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, statement: p.Statement) -> None:
        if self._state.multi is not None and self._in_multi(statement):
            return
        match statement:
            case p.Get(key):
                self._get(key)
            case p.Put(key, value):
                self._put(key, value)
            case p.Delete(key):
                self._delete(key)
            case p.Scan(prefix, limit, _):
                self._scan(prefix, limit)
            case p.Exists(key):
                self._exists(key)
            case p.Multi():
                self._state.multi = MultiQueue()
                self._render.ok()
            case p.Exec():
                self._exec()
            case p.Discard():
                self._discard()
            case p.Watch(keys):
                self._watch(keys)
            case p.Unwatch():
                self._state.watched = ()
                self._render.ok()
            case p.Status():
                self._status()
            case p.ShardOf(key):
                self._shard_of(key)
            case p.Leader(shard):
                self._leader(shard)
            case p.SetConsistency(mode):
                if mode is not None:
                    self._state.consistency = mode
                self._render.note(f"consistency: {self._state.consistency.value}")
            case p.SetTiming(on):
                if on is not None:
                    self._state.timing = on
                self._render.note(f"timing: {'on' if self._state.timing else 'off'}")
            case p.Help(topic):
                self._render.help(topic)
            case p.Clear():
                self._render.clear()
            case _:
                raise AssertionError(f"unhandled statement {statement!r}")

    @contextmanager
    def _request(
        self,
        what: str,
        *,
        cluster_wide: bool = False,
        translate: Callable[..., ReplError] = from_client_error,
    ) -> Iterator[None]:
        """Time a client call and translate its errors for `what` ("GET user/1").
        `cluster_wide`: the call may be answered by any node (a shard map), so failing to
        reach one means the cluster does not answer, whatever the watcher last saw."""
        started = self._clock()
        try:
            yield
        except ClientError as error:
            self._state.last_latency_ms = (self._clock() - started) * 1000.0
            down = cluster_wide or self._state.connection is Connection.LOST
            raise translate(error, _brief(what), cluster_down=down) from None
        latency_ms = (self._clock() - started) * 1000.0
        self._state.last_latency_ms = latency_ms
        if self._state.timing:
            self._render.timing(latency_ms)

    # --- data -------------------------------------------------------------------------------

    def _get(self, key: bytes) -> None:
        self._state.last_key = key
        with self._request(f"GET {quote_bytes(key)}"):
            value = self._client.get(key, consistency=self._state.consistency)
            self._keys.saw((key,))
            self._render.value(value)

    def _put(self, key: bytes, value: bytes | p.FileValue) -> None:
        self._state.last_key = key
        data = _read_value_file(value) if isinstance(value, p.FileValue) else value
        with self._request(f"PUT {quote_bytes(key)}"):
            version = self._client.put(key, data)
            self._keys.wrote(key)
            self._render.ok(f"version {version}")

    def _delete(self, key: bytes) -> None:
        self._state.last_key = key
        with self._request(f"DEL {quote_bytes(key)}"):
            existed = self._client.delete(key)
            self._keys.deleted(key)
            # Deleting a missing key is no failure: afterwards the key is absent either way.
            if existed:
                self._render.note("deleted", "green")
            else:
                self._render.note("not found (nothing deleted)", "yellow")

    def _scan(self, prefix: bytes, limit: int) -> None:
        with self._request(f"SCAN {quote_bytes(prefix)}" if prefix else "SCAN"):
            result = self._client.scan_paged(
                prefix=prefix, limit=limit, consistency=self._state.consistency
            )
            self._keys.saw(item.key for item in result.items)
            self._render.scan(result.items, result.more, limit, prefix)

    def _exists(self, key: bytes) -> None:
        self._state.last_key = key
        with self._request(f"EXISTS {quote_bytes(key)}"):
            try:
                versioned = self._client.get_versioned(key, consistency=self._state.consistency)
            except NotFoundError:
                self._render.note("no")
                return
            self._keys.saw((key,))
            if self._render.interactive:
                self._render.note(f"yes (version {versioned.version})")
            else:
                self._render.note("yes")

    # --- transactions -----------------------------------------------------------------------

    def _in_multi(self, statement: p.Statement) -> bool:
        """Inside MULTI: queue `statement` (True), refuse it, or let it run (False)."""
        spec = repl_grammar.lookup(p.command_of(statement))
        assert spec is not None, statement
        multi = self._state.multi
        assert multi is not None
        if not spec.in_multi:
            if spec.name == "MULTI":
                raise ReplError(
                    f"MULTI: a transaction is already open ({_commands(len(multi.ops))} "
                    "queued); transactions do not nest",
                    "EXEC or DISCARD it first.",
                )
            if spec.name in ("WATCH", "UNWATCH"):
                raise ReplError(
                    f"{spec.name} inside MULTI is not allowed: it must come before MULTI",
                    "DISCARD, WATCH the keys, then MULTI again.",
                )
            raise ReplError(
                f"{spec.name} cannot be used inside MULTI: a transaction holds "
                f"{', '.join(s.name for s in repl_grammar.COMMANDS if s.queued)} only",
                "EXEC or DISCARD first, or queue a GET.",
            )
        if not spec.queued:
            return False
        match statement:
            case p.Get(key):
                op = TxnOp(OpKind.GET, key)
            case p.Put(key, value):
                data = _read_value_file(value) if isinstance(value, p.FileValue) else value
                op = TxnOp(OpKind.PUT, key, data)
            case p.Delete(key):
                op = TxnOp(OpKind.DELETE, key)
            case _:
                raise AssertionError(f"{spec.name} is queued but has no transaction op")
        self._state.last_key = op.key
        self._state.multi = multi.queued(op, self._state.watched)
        info = self._state.shard_of(op.key)
        self._render.queued(len(multi.ops) + 1, info.shard if info is not None else None)
        return True

    def _exec(self) -> None:
        multi, watched = self._state.multi, self._state.watched
        if multi is None:
            raise ReplError(
                "EXEC without MULTI: no transaction is open",
                "MULTI starts one; queue PUT, DEL and GET; then EXEC.",
            )
        # EXEC ends the transaction and forgets the watches, whatever happens next.
        self._state.multi = None
        self._state.watched = ()
        if multi.aborted:
            raise ReplError(
                f"EXEC: transaction discarded, {_commands(multi.failures)} failed while it "
                "was open; nothing was applied",
                "Start again with MULTI.",
            )
        request = multi.request(watched)
        if not request.success and not request.compare:
            self._render.exec_results((), (), ())
            return
        with self._request("EXEC", translate=from_txn_error):
            response = self._client.txn_request(request)
            if not response.succeeded:
                keys = ", ".join(quote_bytes(item.key) for item in watched)
                raise ReplError(
                    f"EXEC: aborted, a watched key changed since WATCH ({keys}); nothing was "
                    "applied",
                    "WATCH the keys again, read them, and queue the transaction anew.",
                )
            self._note_results(request.success, response.results)
            self._render.exec_results(request.success, response.results, self._shards(request))

    def _note_results(self, ops: Sequence[TxnOp], results: Sequence[OpResult]) -> None:
        for op, result in zip(ops, results, strict=True):
            if op.kind is OpKind.PUT:
                self._keys.wrote(op.key)
            elif op.kind is OpKind.DELETE:
                self._keys.deleted(op.key)
            elif result.value is not None:
                self._keys.saw((op.key,))

    def _shards(self, request: TxnRequest) -> tuple[int, ...]:
        """The shards the transaction touched, by the last known map (() when none)."""
        routing = self._state.routing
        if routing is None:
            return ()
        return tuple(sorted({shard_for_key(key, routing.shard_count) for key in request.keys}))

    def _discard(self) -> None:
        multi = self._state.multi
        if multi is None:
            raise ReplError("DISCARD without MULTI: no transaction is open", "MULTI starts one.")
        self._state.multi = None
        self._state.watched = ()
        self._render.ok(f"{_commands(len(multi.ops))} dropped")

    def _watch(self, keys: tuple[bytes, ...]) -> None:
        found: list[Watched] = []
        for key in keys:
            self._state.last_key = key
            with self._request(f"WATCH {quote_bytes(key)}"):
                try:
                    version = self._client.get_versioned(key).version
                except NotFoundError:
                    version = 0  # a missing key's version, as transactions compare it
            found.append(Watched(key, version))
        self._state.watched = watching(self._state.watched, found)
        self._render.ok(f"watching {len(self._state.watched)}")

    # --- cluster ----------------------------------------------------------------------------

    def _routing(self, what: str) -> ShardRouting:
        """A fresh shard map (also refreshing the session's view of it)."""
        with self._request(what, cluster_wide=True):
            document = self._client.shard_map()
        try:
            routing = ShardRouting.from_document(document)
        except ValueError as error:
            raise ReplError(f"{what}: {error}", "The node answered a bad shard map.") from None
        self._state.routing = routing
        return routing

    def _shard_of(self, key: bytes) -> None:
        self._state.last_key = key
        routing = self._routing(f"SHARD {quote_bytes(key)}")
        self._render.shard(key, shard_for_key(key, routing.shard_count), routing)

    def _leader(self, shard: int | None) -> None:
        routing = self._routing("LEADER")
        if shard is not None and not 0 <= shard < routing.shard_count:
            raise ReplError(
                f"no shard {shard}: the cluster has shards 0 to {routing.shard_count - 1}",
                "LEADER alone lists every shard.",
            )
        shards = [shard] if shard is not None else sorted(range(routing.shard_count))
        self._render.leaders(routing, shards)

    def _status(self) -> None:
        routing = self._routing("STATUS")
        nodes = sorted(routing.addresses.items())

        def ask(node: int, address: str) -> NodeReport:
            try:
                status = self._client.status(address, timeout_s=ADMIN_TIMEOUT_S)
            except UnavailableError:
                return NodeReport(node, address, None, "down (does not answer)")
            except DeadlineExceededError:
                return NodeReport(node, address, None, "down (timed out)")
            except PermissionDeniedError:
                return NodeReport(node, address, None, "admin calls refused (not loopback)")
            except ClientError as error:
                return NodeReport(node, address, None, str(error))
            return NodeReport(node, address, status)

        workers = max(1, min(STATUS_THREADS_MAX, len(nodes)))
        with ThreadPoolExecutor(workers, thread_name_prefix="minikv-repl-status") as pool:
            reports = list(pool.map(lambda pair: ask(*pair), nodes))
        self._render.status(self._state.label, routing, reports)


def _commands(count: int) -> str:
    return f"{count} command{'s' if count != 1 else ''}"


def _brief(what: str) -> str:
    """`what` for an error message, cut to WHAT_CHARS_MAX characters."""
    if len(what) <= WHAT_CHARS_MAX:
        return what
    return f"{what[: WHAT_CHARS_MAX - 1]}… ({len(what)} characters)"


def _read_value_file(value: p.FileValue) -> bytes:
    path = Path(value.path).expanduser()
    hint = f'Paths are relative to {os.getcwd()}; quote the value ("@...") to store it as text.'
    try:
        if path.is_dir():
            raise ReplError(f"@{value.path} is a directory, not a file", hint)
        size = path.stat().st_size
        if size > VALUE_FILE_BYTES_MAX:
            raise ReplError(
                # Not "a value can be at most 16 MiB": that is what one request can carry;
                # the nodes' value limit, 1 MiB by default, is what a user meets first.
                f"@{value.path} is {size} bytes, more than one request can carry "
                f"({VALUE_FILE_BYTES_MAX} bytes); values are at most the nodes' value limit "
                "(1 MiB unless configured otherwise)",
                "Store a smaller file, or split it over several keys.",
            )
        return path.read_bytes()
    except OSError as error:
        raise ReplError(f"cannot read @{value.path}: {error.strerror or error}", hint) from None
