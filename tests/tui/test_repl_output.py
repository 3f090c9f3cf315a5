"""What the REPL shows: the bottom toolbar's live context, values as text or escapes, and
errors as exactly one line that says what to do."""

from __future__ import annotations

import io

import pytest
from prompt_toolkit.formatted_text import to_plain_text
from rich.console import Console

from minikv_core.client import Consistency, OpKind, OpResult, ScanItem, ShardRouting, TxnOp
from minikv_core.cluster.shard_map import shard_for_key
from minikv_tui.repl_errors import ReplError
from minikv_tui.repl_multi import MultiQueue, Watched
from minikv_tui.repl_render import Renderer, display_bytes
from minikv_tui.repl_state import Connection, SessionState
from minikv_tui.repl_toolbar import prompt_message, toolbar
from minikv_tui.repl_watcher import ClusterEvent, EventKind

ROUTING = ShardRouting(
    epoch=3,
    shard_count=2,
    addresses={1: "127.0.0.1:9001", 2: "127.0.0.1:9002", 3: "127.0.0.1:9003"},
    leaders={0: 1, 1: 3},
    replicas={0: (1, 2, 3), 1: (3, 1, 2)},
)


def renderer(
    *, interactive: bool = True, raw: bool = False
) -> tuple[Renderer, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    made = Renderer(
        Console(file=out, width=80), Console(file=err, width=80), interactive=interactive, raw=raw
    )
    return made, out, err


def test_the_toolbar_shows_endpoint_last_key_leader_latency_mode_and_connection() -> None:
    state = SessionState(label="dev", endpoints=("127.0.0.1:9001", "127.0.0.1:9002"))
    state.routing = ROUTING
    state.last_key = b"user/1"
    state.last_latency_ms = 1.234
    state.connection = Connection.CONNECTED
    shard = shard_for_key(b"user/1", 2)
    leader = ROUTING.leaders[shard]
    assert to_plain_text(toolbar(state)) == (
        f" dev (127.0.0.1:9001)  │  user/1 → shard {shard} leader n{leader} "
        f"{ROUTING.addresses[leader]}  │  1.2 ms  │  linearizable  │  ● connected "
    )


def test_the_toolbar_before_any_key_and_while_the_cluster_is_unreachable() -> None:
    state = SessionState(label="127.0.0.1:9001", endpoints=("127.0.0.1:9001",))
    state.consistency = Consistency.STALE
    state.connection = Connection.LOST
    assert to_plain_text(toolbar(state)) == (
        " 127.0.0.1:9001  │  no key used yet  │  - ms  │  stale  │  ● unreachable "
    )


def test_the_toolbar_says_when_a_shard_has_no_leader() -> None:
    state = SessionState(label="dev", endpoints=("127.0.0.1:9001",))
    state.routing = ShardRouting(1, 1, {1: "127.0.0.1:9001"}, {}, {0: (1,)})
    state.last_key = b"k" * 40
    text = to_plain_text(toolbar(state))
    assert "kkkkkkkkkkkkkkkkkkkkkkk… → shard 0 leader none" in text


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"ada", "ada"),
        (b"hello world", "hello world"),
        ("é✓".encode(), "é✓"),
        (b"", '""'),
        (b" padded ", '" padded "'),
        (b"two\nlines", '"two\\nlines"'),
        (b"\x00\xff", '"\\x00\\xff"'),
    ],
)
def test_values_print_as_text_or_as_escapes_that_read_back(data: bytes, shown: str) -> None:
    assert display_bytes(data) == shown


def test_an_error_is_one_line_with_its_hint_and_markup_is_not_interpreted() -> None:
    made, out, err = renderer()
    made.error(ReplError("GET [bold]x[/]: not found " + "y" * 120, "EXISTS tests a key."), "line 3")
    assert out.getvalue() == ""
    assert err.getvalue() == (
        "error: line 3: GET [bold]x[/]: not found " + "y" * 120 + " — EXISTS tests a key.\n"
    )


def test_scripted_scans_are_tab_separated_lines_and_raw_writes_bytes() -> None:
    items = [ScanItem(b"a", b"1", 5), ScanItem(b"b\x00", b"x y", 6)]
    made, out, _ = renderer(interactive=False)
    made.scan(items, more=False, limit=100, prefix=b"")
    assert out.getvalue() == 'a\t1\n"b\\x00"\tx y\n'


def test_interactive_scans_are_a_table_that_says_when_more_keys_exist() -> None:
    made, out, _ = renderer()
    made.scan([ScanItem(b"user/1", b"ada", 7)], more=True, limit=1, prefix=b"user/")
    text = out.getvalue()
    assert "user/1" in text and "ada" in text and "7" in text
    assert "1 key shown; more exist: SCAN user/ LIMIT 10 shows more" in text
    made, out, _ = renderer()
    made.scan([ScanItem(b"user/1", b"ada", 7)], more=True, limit=10_000, prefix=b"user/")
    assert "more exist: a longer prefix narrows the scan" in out.getvalue()  # no LIMIT > 10000


def test_events_print_one_line_each() -> None:
    made, _, err = renderer()
    made.event(ClusterEvent(EventKind.LEADER_CHANGED, "shard 0: leader n1 → n2 (127.0.0.1:9002)"))
    assert err.getvalue() == "* shard 0: leader n1 → n2 (127.0.0.1:9002)\n"


def test_the_prompt_shows_an_open_transaction_and_whether_exec_will_refuse_it() -> None:
    state = SessionState(label="dev", endpoints=("127.0.0.1:9001",))
    assert to_plain_text(prompt_message(state)) == "dev> "
    state.multi = MultiQueue()
    assert to_plain_text(prompt_message(state)) == "dev(multi 0)> "
    state.multi = state.multi.queued(TxnOp(OpKind.PUT, b"a", b"1"))
    state.multi = state.multi.queued(TxnOp(OpKind.GET, b"b"))
    assert to_plain_text(prompt_message(state)) == "dev(multi 2)> "
    state.multi = state.multi.failed()
    assert to_plain_text(prompt_message(state)) == "dev(multi 2, failed)> "


def test_the_toolbar_counts_watched_keys() -> None:
    state = SessionState(label="dev", endpoints=("dev",))
    state.watched = (Watched(b"a", 3), Watched(b"b", 0))
    assert "│  watching 2  │" in to_plain_text(toolbar(state))


EXEC_OPS = [
    TxnOp(OpKind.PUT, b"a", b"1"),
    TxnOp(OpKind.GET, b"b"),
    TxnOp(OpKind.GET, b"c"),
    TxnOp(OpKind.DELETE, b"d"),
    TxnOp(OpKind.DELETE, b"e"),
]
EXEC_RESULTS = [
    OpResult(OpKind.PUT, version=812),
    OpResult(OpKind.GET, version=5, value=b"two words"),
    OpResult(OpKind.GET),
    OpResult(OpKind.DELETE, deleted=True),
    OpResult(OpKind.DELETE, deleted=False),
]


def test_exec_results_are_numbered_lines_with_the_shards_in_a_terminal() -> None:
    made, out, _ = renderer()
    made.exec_results(EXEC_OPS, EXEC_RESULTS, (0, 1))
    assert out.getvalue().splitlines() == [
        "1) OK (version 812)",
        "2) two words",
        "3) (nil)",
        "4) deleted",
        "5) not found (nothing deleted)",
        "atomic: 5 commands across shards 0, 1 (two-phase commit)",
    ]
    made, out, _ = renderer()
    made.exec_results(EXEC_OPS[:1], EXEC_RESULTS[:1], (1,))
    assert out.getvalue().splitlines()[-1] == "atomic: 1 command on shard 1 (one Raft entry)"


def test_scripted_exec_results_are_one_plain_line_per_command_nil_empty() -> None:
    made, out, _ = renderer(interactive=False)
    made.exec_results(EXEC_OPS, EXEC_RESULTS, (0, 1))
    assert out.getvalue() == "OK\ntwo words\n\ndeleted\nnot found (nothing deleted)\n"
    made, out, _ = renderer(interactive=False)
    made.exec_results([], [], ())
    assert out.getvalue() == ""


def test_queued_commands_answer_queued_with_their_shard_in_a_terminal() -> None:
    made, out, _ = renderer()
    made.queued(2, 1)
    made.queued(3, None)
    assert out.getvalue().splitlines() == ["QUEUED (2 queued, shard 1)", "QUEUED (3 queued)"]
    made, out, _ = renderer(interactive=False)
    made.queued(2, 1)
    assert out.getvalue() == "QUEUED\n"
