"""The REPL against a real three-node cluster (real `minikv_core.server` processes): scripted
runs through the Typer app, the interactive loop driven through a pipe, the cluster watcher
(leader changes, lost and regained contact), and one end-to-end session of the installed
`minikv` console script in a pseudo-terminal."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pexpect
import pytest
from prompt_toolkit.formatted_text import to_plain_text
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console
from typer.testing import CliRunner

from minikv_core.client import Client, OpKind, ShardRouting, TxnOp
from minikv_core.cluster.shard_map import shard_for_key
from minikv_tui.cli import app
from minikv_tui.errors import EXIT_USAGE, UserError
from minikv_tui.repl_keys import KeyIndex
from minikv_tui.repl_render import Renderer
from minikv_tui.repl_session import InteractiveRepl
from minikv_tui.repl_state import Connection, SessionState
from minikv_tui.repl_toolbar import prompt_message
from minikv_tui.repl_watcher import ClusterEvent, ClusterWatcher, EventKind
from tests.integration.conftest import Cluster, reserve_ports

pytestmark = pytest.mark.integration

WAIT_S = 15.0
MINIKV = str(Path(sys.executable).parent / "minikv")


async def _started(cluster: Cluster, *node_ids: int) -> None:
    async with aiohttp.ClientSession() as session:
        cluster.session = session
        try:
            if node_ids:
                for node_id in node_ids:
                    await cluster.wait_started(node_id)
            else:
                await cluster.start()
            await cluster.wait_ready()
        finally:
            cluster.session = None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes, two shards of three replicas, shared by this module's tests."""
    made = Cluster(tmp_path_factory.mktemp("repl-cluster"), size=3, shards=2)
    try:
        asyncio.run(_started(made))
        yield made
    finally:
        made.kill_all()


@pytest.fixture
def endpoints(cluster: Cluster) -> str:
    return ",".join(cluster.grpc_endpoints)


def until(predicate: Callable[[], object], what: str, cluster: Cluster | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out waiting for {what}{cluster.describe() if cluster else ''}"
            )
        time.sleep(0.02)


def repl(
    endpoints: str, *args: str, stdin: str | bytes | None = None
) -> tuple[int, str, str, bytes]:
    result = CliRunner().invoke(app, ["repl", "--endpoints", endpoints, *args], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr, result.stdout_bytes


# --------------------------------------------------------------------------- scripted mode


def test_a_script_prints_results_only_and_exits_zero(endpoints: str) -> None:
    code, out, err, _ = repl(
        endpoints,
        "-c",
        'PUT greeting "hello world"; GET greeting; EXISTS greeting; SCAN greet; '
        "DEL greeting; EXISTS greeting; DEL greeting",
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "OK",
        "hello world",
        "yes",
        "greeting\thello world",
        "deleted",
        "no",
        "not found (nothing deleted)",
    ]


def test_piped_lines_all_run_and_any_failure_exits_one(endpoints: str) -> None:
    code, out, err, _ = repl(
        endpoints, stdin="PUT p/1 one\nFROB x\nGET p/1\n# a comment\nGET p/missing\nGET p/1\n"
    )
    assert code == 1
    assert out.splitlines() == ["OK", "one", "one"]
    assert err.splitlines() == [
        "error: line 2: unknown command 'FROB' — HELP lists the commands.",
        "error: line 5: GET p/missing: not found — SCAN <prefix> lists existing keys; "
        "EXISTS tests a key without failing.",
    ]


def test_exit_stops_a_script(endpoints: str) -> None:
    code, out, _, _ = repl(endpoints, stdin="PUT e/1 a\nEXIT\nPUT e/1 b\n")
    assert (code, out.splitlines()) == (0, ["OK"])
    assert repl(endpoints, "-c", "GET e/1")[1] == "a\n"


def test_binary_values_print_escaped_and_raw_prints_the_bytes(endpoints: str) -> None:
    assert repl(endpoints, "-c", 'PUT bin "\\x00\\xffé\\n"')[0] == 0
    assert repl(endpoints, "-c", "GET bin")[1] == '"\\x00\\xffé\\n"\n'
    assert repl(endpoints, "--raw", "-c", "GET bin")[3] == b"\x00\xff\xc3\xa9\n\n"


def test_a_value_is_read_from_a_file_with_at_path(endpoints: str, tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)))
    assert repl(endpoints, "-c", f"PUT blob @{path}")[0] == 0
    assert repl(endpoints, "--raw", "-c", "GET blob")[3] == bytes(range(256)) + b"\n"
    code, _, err, _ = repl(endpoints, "-c", f"PUT blob @{tmp_path}/missing")
    assert code == 1
    assert f"cannot read @{tmp_path}/missing: No such file or directory" in err


# ---------------------------------------------------------------------------- transactions


def keys_on_both_shards(cluster: Cluster, prefix: str) -> tuple[str, str]:
    """A key on shard 0 and a key on shard 1 (the module's cluster has two shards)."""
    with Client(cluster.grpc_endpoints) as client:
        count = ShardRouting.from_document(client.shard_map()).shard_count
    assert count == 2
    found: dict[int, str] = {}
    for number in range(100):
        key = f"{prefix}{number}"
        found.setdefault(shard_for_key(key.encode(), count), key)
        if len(found) == 2:
            return found[0], found[1]
    raise AssertionError("no keys on both shards among 100 candidates")


def coordinator_counters(client: Client, cluster: Cluster) -> dict[str, int]:
    """The transaction coordinators' counters, summed over every node (whichever node a
    transaction reached coordinated it)."""
    total: dict[str, int] = {}
    for address in cluster.grpc_endpoints:
        counters = client.status(address)["txn"]["coordinator"]
        for name, value in counters.items():
            total[name] = total.get(name, 0) + int(value)
    return total


def test_exec_sends_the_queue_as_one_transaction_across_two_shards(
    endpoints: str, cluster: Cluster
) -> None:
    first, second = keys_on_both_shards(cluster, "multi/a")
    with Client(cluster.grpc_endpoints) as client:
        client.put(b"multi/read", b"before")
        before = coordinator_counters(client, cluster)
        code, out, err, _ = repl(
            endpoints,
            "-c",
            f"MULTI; PUT {first} one; SET {second} two; GET multi/read; DEL multi/read; "
            "GET multi/absent; EXEC",
        )
        after = coordinator_counters(client, cluster)
        assert (code, err) == (0, "")
        # redis's shape: OK, QUEUED per command, then each command's result in order.
        assert out.splitlines() == ["OK", *["QUEUED"] * 5, "OK", "OK", "before", "deleted", ""]
        assert client.get(first.encode()) == b"one"
        assert client.get(second.encode()) == b"two"
        assert not client.txn(success=[TxnOp(OpKind.GET, b"multi/read")]).results[0].value
        # One transaction, committed by two-phase commit: not five requests, not one per shard.
        assert after["started"] - before["started"] == 1
        assert after["committed"] - before["committed"] == 1
        assert after["one_phase"] == before["one_phase"]


def test_readers_never_see_half_of_an_exec(endpoints: str, cluster: Cluster) -> None:
    """Atomic visibility through the REPL: while EXECs write the same value to a key on each
    shard, a reader's transactions (one consistent state of both keys) always see the two
    keys equal."""
    first, second = keys_on_both_shards(cluster, "multi/pair")
    keys = (first.encode(), second.encode())
    with Client(cluster.grpc_endpoints) as client:
        client.txn(success=[TxnOp(OpKind.PUT, key, b"0") for key in keys])
        seen: list[tuple[bytes | None, bytes | None]] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                response = client.txn(success=[TxnOp(OpKind.GET, key) for key in keys])
                seen.append((response.results[0].value, response.results[1].value))

        reader = threading.Thread(target=read, name="pair-reader")
        reader.start()
        try:
            script = "; ".join(
                f"MULTI; PUT {first} {n}; PUT {second} {n}; EXEC" for n in range(1, 6)
            )
            code, _, err, _ = repl(endpoints, "-c", script)
            until(lambda: len(seen) >= 3, "three reads")
        finally:
            stop.set()
            reader.join(WAIT_S)
        assert (code, err) == (0, "")
        assert not reader.is_alive()
    torn = [pair for pair in seen if pair[0] != pair[1]]
    assert torn == [], f"reads saw half a transaction: {torn[:5]}"
    assert seen[-1] == (b"5", b"5")


def test_discard_applies_nothing(endpoints: str, cluster: Cluster) -> None:
    first, second = keys_on_both_shards(cluster, "multi/discard")
    code, out, err, _ = repl(
        endpoints,
        "-c",
        f"MULTI; PUT {first} x; PUT {second} y; DISCARD; EXISTS {first}; EXISTS {second}",
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == ["OK", "QUEUED", "QUEUED", "OK", "no", "no"]


def test_a_watched_key_that_changed_makes_exec_apply_nothing(
    endpoints: str, cluster: Cluster
) -> None:
    first, second = keys_on_both_shards(cluster, "multi/watch")
    code, out, err, _ = repl(
        endpoints,
        "-c",
        f"PUT {first} a; WATCH {first} {second}; PUT {first} b; "
        f"MULTI; PUT {first} mine; PUT {second} mine; EXEC; GET {first}; EXISTS {second}",
    )
    assert code == 1
    assert out.splitlines() == ["OK", "OK", "OK", "OK", "QUEUED", "QUEUED", "b", "no"]
    assert err.startswith(f"error: EXEC: aborted, a watched key changed since WATCH ({first}, ")
    code, out, err, _ = repl(
        endpoints,
        "-c",
        f"WATCH {first} {second}; MULTI; PUT {first} mine; PUT {second} mine; EXEC",
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[-2:] == ["OK", "OK"]
    with Client(cluster.grpc_endpoints) as client:
        assert client.get(second.encode()) == b"mine"


def test_shard_leader_and_status_describe_the_cluster(endpoints: str, cluster: Cluster) -> None:
    with Client(cluster.grpc_endpoints) as client:
        routing = ShardRouting.from_document(client.shard_map())
    shard = shard_for_key(b"k", routing.shard_count)
    code, out, err, _ = repl(endpoints, "-c", "SHARD k; LEADER 1; STATUS")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    replicas = ",".join(map(str, routing.replicas[shard]))
    assert lines[0] == f"shard={shard} leader={routing.leaders[shard]} replicas={replicas}"
    assert re.search(
        rf"^\s+1\s+n{routing.leaders[1]} {routing.addresses[routing.leaders[1]]}", out, re.M
    )
    assert "3/3 nodes answer · 2 shards" in out
    assert out.count(" ready ") == 3


def test_a_cluster_that_does_not_answer_is_one_line_and_exit_one() -> None:
    (closed_port,) = reserve_ports(1)
    result = subprocess.run(
        [
            MINIKV,
            "repl",
            "--endpoints",
            f"127.0.0.1:{closed_port}",
            "--timeout",
            "1",
            "-c",
            "GET a",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach the cluster at 127.0.0.1:{closed_port}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], "--timeout must be more than 0"),
        (["--endpoints", "nonsense"], "is not host:port"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["repl", "--endpoints", "127.0.0.1:1", *args, "-c", "GET a"])
    assert isinstance(result.exception, UserError)
    assert message in result.exception.message
    assert result.exception.exit_code == EXIT_USAGE


# ------------------------------------------------------------------------ interactive loop


def test_the_interactive_loop_survives_errors_ctrl_c_clears_and_ctrl_d_exits(
    cluster: Cluster,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = Renderer(
        Console(file=out, width=200), Console(file=err, width=200), interactive=True, raw=False
    )
    state = SessionState(label="test", endpoints=tuple(cluster.grpc_endpoints))
    with Client(cluster.grpc_endpoints) as client, create_pipe_input() as pipe:
        session = InteractiveRepl(
            client,
            state,
            renderer,
            KeyIndex(None),
            InMemoryHistory(),
            input=pipe,
            output=DummyOutput(),
        )
        thread = threading.Thread(target=session.run, name="repl-under-test")
        thread.start()
        try:
            until(lambda: state.connection is Connection.CONNECTED, "the first shard map")
            pipe.send_text("PUT loop/1 one\r")
            until(lambda: "OK" in out.getvalue(), "the PUT")
            pipe.send_text("FROB\r")
            until(lambda: "unknown command 'FROB'" in err.getvalue(), "the error")
            pipe.send_text("DEL loop/1")
            pipe.send_text("\x03")  # Ctrl-C: the line is dropped, not run
            pipe.send_text("GET loop/1\r")
            until(lambda: "one" in out.getvalue(), "the GET after Ctrl-C")
            assert "deleted" not in out.getvalue()
            assert state.last_key == b"loop/1" and state.last_latency_ms is not None
            pipe.send_text("\x04")  # Ctrl-D on an empty line
            thread.join(WAIT_S)
            assert not thread.is_alive(), "Ctrl-D did not end the session"
        finally:
            if thread.is_alive():
                pipe.send_text("\x04")
                thread.join(WAIT_S)
    assert "Traceback" not in out.getvalue() + err.getvalue()


def test_an_interactive_transaction_shows_its_queue_in_the_prompt(cluster: Cluster) -> None:
    first, second = keys_on_both_shards(cluster, "multi/tty")
    out, err = io.StringIO(), io.StringIO()
    renderer = Renderer(
        Console(file=out, width=200), Console(file=err, width=200), interactive=True, raw=False
    )
    state = SessionState(label="test", endpoints=tuple(cluster.grpc_endpoints))
    with Client(cluster.grpc_endpoints) as client, create_pipe_input() as pipe:
        session = InteractiveRepl(
            client,
            state,
            renderer,
            KeyIndex(None),
            InMemoryHistory(),
            input=pipe,
            output=DummyOutput(),
        )
        thread = threading.Thread(target=session.run, name="repl-under-test")
        thread.start()
        try:
            until(lambda: state.connection is Connection.CONNECTED, "the first shard map")
            pipe.send_text("MULTI\r")
            until(lambda: to_plain_text(prompt_message(state)) == "test(multi 0)> ", "MULTI")
            pipe.send_text(f"PUT {first} 1\r")
            pipe.send_text(f"PUT {second} 2\r")
            until(lambda: "QUEUED (2 queued, shard" in out.getvalue(), "two queued commands")
            assert to_plain_text(prompt_message(state)) == "test(multi 2)> "
            pipe.send_text("EXEC\r")
            until(lambda: "atomic: 2 commands across shards 0, 1" in out.getvalue(), "EXEC")
            assert to_plain_text(prompt_message(state)) == "test> "
            assert re.search(
                r"^1\) OK \(version \d+\)\n2\) OK \(version \d+\)$", out.getvalue(), re.M
            )
            pipe.send_text("MULTI\r")
            pipe.send_text(f"PUT {first} 3\r")
            until(lambda: to_plain_text(prompt_message(state)) == "test(multi 1)> ", "queue")
            pipe.send_text("\x04")  # Ctrl-D inside MULTI: nothing is sent, and it says so
            thread.join(WAIT_S)
            assert not thread.is_alive(), "Ctrl-D did not end the session"
        finally:
            if thread.is_alive():
                pipe.send_text("\x04")
                thread.join(WAIT_S)
        assert client.get(first.encode()) == b"1"
    assert "the session ended inside MULTI: 1 queued command was not executed" in err.getvalue()
    assert "Traceback" not in out.getvalue() + err.getvalue()


# --------------------------------------------------------------------------------- watcher


def test_the_watcher_reports_a_leader_change(cluster: Cluster) -> None:
    events: list[ClusterEvent] = []
    state = SessionState(label="test", endpoints=tuple(cluster.grpc_endpoints))
    with Client(cluster.grpc_endpoints) as client:
        watcher = ClusterWatcher(lambda: client.shard_map(timeout_s=1.0), state, events.append)
        assert watcher.poll_once() == []
        assert state.connection is Connection.CONNECTED and state.routing is not None
        leader = state.routing.leaders[0]
        successor = next(n for n in state.routing.replicas[0] if n != leader)
        client.transfer_leader(state.routing.addresses[leader], 0, successor)
        until(lambda: watcher.poll_once() or events, "the leader change", cluster)
    assert [e.kind for e in events] == [EventKind.LEADER_CHANGED]
    assert events[0].text.startswith(f"shard 0: leader n{leader} → n{successor} (")
    assert state.routing.leaders[0] == successor


def connection(state: SessionState) -> Connection:
    """Read afresh (the watcher changes it between the asserts)."""
    return state.connection


def test_the_watcher_reports_lost_contact_and_the_reconnection(cluster: Cluster) -> None:
    """The client reaches the cluster through any node it knows, so contact is lost only
    when none answers: the whole cluster is stopped, then started again."""
    events: list[ClusterEvent] = []
    state = SessionState(label="test", endpoints=tuple(cluster.grpc_endpoints))
    with Client(cluster.grpc_endpoints, timeout_s=10.0) as client:
        watcher = ClusterWatcher(lambda: client.shard_map(timeout_s=1.0), state, events.append)
        watcher.poll_once()
        client.put(b"reconnect/1", b"before")
        try:
            for node_id in cluster.nodes:
                cluster.kill(node_id)
            until(lambda: watcher.poll_once() or events, "contact to be lost", cluster)
            assert connection(state) is Connection.LOST
            assert watcher.poll_once() == []  # said once, not every second
            for node_id in cluster.nodes:
                cluster.launch(node_id)
            until(watcher.poll_once, "the cluster to answer again", cluster)
            assert [e.kind for e in events] == [EventKind.CONTACT_LOST, EventKind.RECONNECTED]
            assert connection(state) is Connection.CONNECTED
            assert client.get(b"reconnect/1") == b"before"  # the same client works again
        finally:
            for node_id, node in cluster.nodes.items():
                if not node.running:
                    cluster.launch(node_id)
            asyncio.run(_started(cluster, *cluster.nodes))


# ------------------------------------------------------------------------ end to end (pty)

CPR_REQUEST = "\x1b[6n"
PROMPT = re.compile(r":\d+(?:\x1b\[[0-9;]*m)*>")


def test_an_interactive_session_in_a_terminal(endpoints: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIKV_", "PROMPT_TOOLKIT"))}
    env.update(MINIKV_HOME=str(tmp_path), TERM="xterm")
    child = pexpect.spawn(
        MINIKV,
        ["repl", "--endpoints", endpoints],
        env=env,
        encoding="utf-8",
        timeout=WAIT_S,
        dimensions=(40, 120),
    )
    transcript = io.StringIO()
    child.logfile_read = transcript

    def expect(pattern: str | re.Pattern[str]) -> None:
        """Wait for `pattern`, answering the terminal's cursor-position requests meanwhile,
        as a real terminal does (prompt-toolkit draws its toolbar once it knows the size)."""
        target = pattern if isinstance(pattern, re.Pattern) else re.escape(pattern)
        while child.expect([re.escape(CPR_REQUEST), target]) == 0:
            child.send("\x1b[5;1R")

    try:
        expect(PROMPT)
        expect("connected")  # the bottom toolbar
        child.sendline("PUT user/1 ada")
        expect("OK")
        expect(PROMPT)
        child.sendline("GET user/1")
        expect("ada")
        expect(PROMPT)
        child.send("GET us")
        expect("recent")  # the completion menu offers the key just used
        child.send("\t")
        expect("er/1")
        child.send("\r")
        expect("ada")
        expect(PROMPT)
        child.sendline("SCAN user/")
        expect("1 key")
        expect(PROMPT)
        child.sendline("MULTI")
        expect("(multi 0)")
        child.sendline("PUT user/2 bob")
        expect("(multi 1)")
        child.sendline("EXEC")
        expect(re.compile(r"1\) (?:\x1b\[[0-9;]*m)*OK"))  # coloured: escapes between
        expect(PROMPT)
        child.sendline("GET user/404")
        expect("error: ")
        expect("GET user/404: not found")
        expect(PROMPT)
        child.sendline("EXIT")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, transcript.getvalue()[-2000:]
    assert "Traceback" not in transcript.getvalue()
    history = (tmp_path / "repl_history").read_text()
    assert "+PUT user/1 ada" in history and "+EXIT" in history
