"""MULTI in the REPL without a cluster: what a transaction may hold (repl_multi) and what the
executor does with each command while MULTI is open — queue it, run it, or refuse it and mark
the transaction so EXEC refuses it whole. Nothing here reaches a node: the client points at a
closed port, and a test that made it send a request would fail on it. EXEC against a real
cluster is in test_repl_cluster.py."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from minikv_core.client import Client, CompareOp, CompareTarget, OpKind, TxnOp
from minikv_core.cluster import limits
from minikv_tui import repl_grammar
from minikv_tui.repl import run_script
from minikv_tui.repl_commands import Executor, Outcome
from minikv_tui.repl_errors import ParseError, ReplError
from minikv_tui.repl_keys import KeyIndex
from minikv_tui.repl_multi import MultiQueue, Watched, watching
from minikv_tui.repl_parser import parse
from minikv_tui.repl_render import Renderer
from minikv_tui.repl_state import SessionState
from tests.integration.conftest import reserve_ports

# ------------------------------------------------------------------------------- the queue


def put(key: bytes, value: bytes = b"v") -> TxnOp:
    return TxnOp(OpKind.PUT, key, value)


def test_a_queue_becomes_one_transaction_with_watches_as_version_compares() -> None:
    queue = MultiQueue().queued(TxnOp(OpKind.GET, b"a")).queued(put(b"a")).queued(put(b"b"))
    queue = queue.queued(TxnOp(OpKind.DELETE, b"c")).queued(TxnOp(OpKind.GET, b"d"))
    request = queue.request((Watched(b"w", 7), Watched(b"gone", 0)))
    assert [(op.kind, op.key) for op in request.success] == [
        (OpKind.GET, b"a"),
        (OpKind.PUT, b"a"),
        (OpKind.PUT, b"b"),
        (OpKind.DELETE, b"c"),
        (OpKind.GET, b"d"),
    ]
    assert [(c.key, c.target, c.op, c.version) for c in request.compare] == [
        (b"w", CompareTarget.VERSION, CompareOp.EQUAL, 7),
        (b"gone", CompareTarget.VERSION, CompareOp.EQUAL, 0),
    ]
    assert request.failure == ()


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (put(b"k"), put(b"k"), "command 1 of this transaction already writes the key"),
        (TxnOp(OpKind.DELETE, b"k"), put(b"k"), "already deletes the key"),
        (put(b"k"), TxnOp(OpKind.DELETE, b"k"), "a transaction writes each key at most once"),
        (put(b"k"), TxnOp(OpKind.GET, b"k"), "reads see the state before it"),
    ],
)
def test_a_key_written_twice_or_read_after_its_write_is_refused_when_queued(
    first: TxnOp, second: TxnOp, message: str
) -> None:
    queue = MultiQueue().queued(first)
    with pytest.raises(ReplError) as caught:
        queue.queued(second)
    assert message in caught.value.message
    assert caught.value.hint


def test_reading_a_key_twice_or_before_writing_it_is_allowed() -> None:
    get = TxnOp(OpKind.GET, b"k")
    assert len(MultiQueue().queued(get).queued(get).queued(put(b"k")).ops) == 3


def test_the_limits_of_a_transaction_are_checked_per_command() -> None:
    queue = MultiQueue()
    watched = (Watched(b"w", 1),)
    for number in range(repl_grammar.MULTI_QUEUE_MAX - 1):
        queue = queue.queued(put(b"k%d" % number), watched)
    with pytest.raises(ReplError, match=r"the limit is 128 in all"):
        queue.queued(put(b"one-more"), watched)
    big = b"x" * (limits.TXN_BYTES_MAX // 2)
    with pytest.raises(ReplError, match=r"cannot be queued: the transaction's keys and values"):
        MultiQueue().queued(put(b"a", big)).queued(put(b"b", big))
    with pytest.raises(ReplError, match=r"cannot be queued: keys starting with .* are reserved"):
        MultiQueue().queued(put(b"\xff\xffminikv/txn/x"))


def test_watching_a_key_again_keeps_its_first_version() -> None:
    watched = watching((), [Watched(b"a", 1)])
    assert watching(watched, [Watched(b"a", 5), Watched(b"b", 2)]) == (
        Watched(b"a", 1),
        Watched(b"b", 2),
    )


# ---------------------------------------------------------------------------- the executor


class Session:
    """An executor whose client points at a closed port, with its output captured."""

    def __init__(self, client: Client, *, interactive: bool = False) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        renderer = Renderer(
            Console(file=self.out, width=300),
            Console(file=self.err, width=300),
            interactive=interactive,
            raw=False,
        )
        self.state = SessionState(label="t", endpoints=("t",))
        self.executor = Executor(client, self.state, renderer, KeyIndex(None))

    def run(self, text: str) -> list[Outcome]:
        return [self.executor.run(statement) for statement in parse(text)]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    (closed_port,) = reserve_ports(1)
    with Client([f"127.0.0.1:{closed_port}"], timeout_s=0.5) as made:
        yield made


def test_queued_commands_answer_queued_and_discard_drops_them(client: Client) -> None:
    session = Session(client)
    assert session.run("MULTI; PUT a 1; SET b 2; GET c; DEL d") == [Outcome.OK] * 5
    assert session.out.getvalue() == "OK\n" + "QUEUED\n" * 4
    assert session.state.multi is not None
    assert [op.key for op in session.state.multi.ops] == [b"a", b"b", b"c", b"d"]
    assert session.state.last_key == b"d"
    assert session.run("DISCARD") == [Outcome.OK]
    assert session.state.multi is None
    assert session.err.getvalue() == ""


def test_a_file_value_is_read_when_queued(client: Client, tmp_path: Path) -> None:
    session = Session(client)
    path = tmp_path / "v.bin"
    path.write_bytes(b"\x00\x01")
    session.run(f"MULTI; PUT a @{path}")
    assert session.state.multi is not None
    assert session.state.multi.ops == (put(b"a", b"\x00\x01"),)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("SCAN", "SCAN cannot be used inside MULTI: a transaction holds GET, PUT, DEL only"),
        ("EXISTS a", "EXISTS cannot be used inside MULTI"),
        ("MULTI", "MULTI: a transaction is already open (1 command queued)"),
        ("WATCH a", "WATCH inside MULTI is not allowed"),
        ("UNWATCH", "UNWATCH inside MULTI is not allowed"),
        ("PUT a 2", "already writes the key"),
        ("PUT b @/nonexistent/file", "cannot read @/nonexistent/file"),
    ],
)
def test_a_refused_command_inside_multi_makes_exec_refuse_everything(
    client: Client, command: str, message: str
) -> None:
    session = Session(client)
    session.run("MULTI; PUT a 1")
    assert session.run(command) == [Outcome.FAILED]
    assert message in session.err.getvalue()
    assert "EXEC will refuse this transaction: DISCARD, then MULTI again." in session.err.getvalue()
    assert session.state.multi is not None and session.state.multi.aborted
    assert len(session.state.multi.ops) == 1  # the queue is kept, for DISCARD to drop
    assert session.run("EXEC") == [Outcome.FAILED]  # and no request is sent
    assert (
        "EXEC: transaction discarded, 1 command failed while it was open; nothing was applied"
        in session.err.getvalue()
    )
    assert session.state.multi is None


def test_a_line_that_does_not_parse_inside_multi_counts_as_a_failure(client: Client) -> None:
    session = Session(client)
    chunks = [("line 1", "MULTI"), ("line 2", "PUT a 1"), ("line 3", "PUT b"), ("line 4", "EXEC")]
    assert run_script(session.executor, chunks) is False
    errors = session.err.getvalue().splitlines()
    assert errors[0].startswith("error: line 3: PUT takes 2 arguments, got 1")
    assert errors[0].endswith("EXEC will refuse this transaction: DISCARD, then MULTI again.")
    assert errors[1].startswith("error: line 4: EXEC: transaction discarded")
    assert session.out.getvalue() == "OK\nQUEUED\n"


def test_session_commands_run_at_once_inside_multi(client: Client) -> None:
    session = Session(client)
    assert session.run("MULTI; TIMING on; CONSISTENCY stale; HELP EXEC") == [Outcome.OK] * 4
    assert session.state.timing is True
    assert "timing: on" in session.out.getvalue()
    assert "EXEC always ends the transaction" in session.out.getvalue()
    assert session.state.multi is not None and not session.state.multi.aborted


def test_exec_and_discard_without_multi_are_errors(client: Client) -> None:
    session = Session(client)
    assert session.run("EXEC; DISCARD") == [Outcome.FAILED, Outcome.FAILED]
    assert session.err.getvalue().splitlines() == [
        "error: EXEC without MULTI: no transaction is open — MULTI starts one; queue PUT, "
        "DEL and GET; then EXEC.",
        "error: DISCARD without MULTI: no transaction is open — MULTI starts one.",
    ]


def test_an_empty_transaction_sends_nothing(client: Client) -> None:
    session = Session(client, interactive=True)
    assert session.run("MULTI; EXEC") == [Outcome.OK, Outcome.OK]
    assert "(nothing was queued)" in session.out.getvalue()


def test_input_that_ends_inside_multi_fails_and_sends_nothing(client: Client) -> None:
    session = Session(client)
    assert run_script(session.executor, [("", "MULTI; PUT a 1; PUT b 2")]) is False
    assert session.err.getvalue() == (
        "error: the session ended inside MULTI: 2 queued commands were not executed — End a "
        "transaction with EXEC (or DISCARD) before the input ends.\n"
    )
    assert session.state.multi is None
    again = Session(client)
    assert run_script(again.executor, [("", "MULTI; PUT a 1; EXIT; PUT c 3")]) is False
    assert "1 queued command was not executed" in again.err.getvalue()


def test_parse_failed_outside_multi_prints_the_error_only(client: Client) -> None:
    session = Session(client)
    with pytest.raises(ParseError) as caught:
        parse("FROB")
    session.executor.parse_failed(caught.value, "line 9")
    assert (
        session.err.getvalue()
        == "error: line 9: unknown command 'FROB' — HELP lists the commands.\n"
    )
