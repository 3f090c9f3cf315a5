"""Completion: what is offered where, key names from recent use and from a background prefix
scan, and that typing never waits for that scan. The prompt tests drive the REPL's real
PromptSession through a pipe input with prompt-toolkit's DummyOutput.

The cluster is replaced here by an in-memory sorted key list behind the scan function the
REPL passes to its PrefixScanner: the subject is the completion logic, and the function's
blocking is what the tests need to control.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from minikv_core.client import ShardRouting
from minikv_tui.repl_completer import ReplCompleter
from minikv_tui.repl_keys import KeyIndex, PrefixScanner
from minikv_tui.repl_session import build_session
from minikv_tui.repl_state import SessionState

WAIT_S = 5.0

KEYS = sorted([b"user/1", b"user/2", b"user/10", b"user name", b"order/7", b"\x00bin"])


class KeyStore:
    """Keys of a pretend cluster; `gate` holds every scan until the test opens it."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys = sorted(keys)
        self.gate = threading.Event()
        self.gate.set()
        self.prefixes: list[bytes] = []
        self.fail = False

    def scan(self, prefix: bytes, limit: int) -> tuple[list[bytes], bool]:
        self.prefixes.append(prefix)
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        if self.fail:
            raise ConnectionError("cluster down")
        found = [key for key in self.keys if key.startswith(prefix)]
        return found[:limit], len(found) > limit


@pytest.fixture
def store() -> Iterator[KeyStore]:
    made = KeyStore(KEYS)
    yield made
    made.gate.set()  # never leave the scanner thread blocked


@pytest.fixture
def keys(store: KeyStore) -> Iterator[KeyIndex]:
    index = KeyIndex(PrefixScanner(store.scan))
    yield index
    index.close()


def texts(completions: Sequence[Completion]) -> list[str]:
    return [c.text for c in completions]


def complete(completer: ReplCompleter, text: str) -> list[Completion]:
    return list(completer.get_completions(Document(text), CompleteEvent(completion_requested=True)))


async def complete_async(completer: ReplCompleter, text: str) -> list[Completion]:
    return [
        c
        async for c in completer.get_completions_async(
            Document(text), CompleteEvent(completion_requested=True)
        )
    ]


# ------------------------------------------------------------------------ what is offered


def test_the_first_word_completes_to_commands_in_the_case_typed() -> None:
    completer = ReplCompleter(KeyIndex(None))
    assert texts(complete(completer, "GE")) == ["GET"]
    assert texts(complete(completer, "ge")) == ["get"]
    assert texts(complete(completer, "s")) == ["set", "scan", "status", "shard"]
    assert "CONSISTENCY" in texts(complete(completer, ""))
    assert complete(completer, "GE")[0].display_meta_text == "Print the value of a key."


def test_arguments_complete_by_their_kind() -> None:
    completer = ReplCompleter(KeyIndex(None), lambda: 3)
    assert texts(complete(completer, "CONSISTENCY s")) == ["stale"]
    assert texts(complete(completer, "TIMING ")) == ["on", "off"]
    assert texts(complete(completer, "LEADER ")) == ["0", "1", "2"]
    assert texts(complete(completer, "HELP EX")) == ["EXISTS", "EXEC", "EXIT"]
    assert texts(complete(completer, "help ex")) == ["exists", "exec", "exit"]
    assert texts(complete(completer, "SCAN user/ ")) == ["LIMIT"]
    assert texts(complete(completer, "SCAN user/ LIMIT ")) == []
    assert texts(complete(completer, "GET a ")) == []  # GET takes one argument
    assert texts(complete(completer, "FROB ")) == []
    assert texts(complete(completer, "GET a; TIMING o")) == ["on", "off"]
    assert texts(complete(completer, "# TIMING o")) == []


def test_transaction_commands_complete_and_watch_completes_every_key() -> None:
    keys = KeyIndex(None)
    keys.saw([b"acct/1", b"acct/2"])
    completer = ReplCompleter(keys)
    assert texts(complete(completer, "MU")) == ["MULTI"]
    assert texts(complete(completer, "ex")) == ["exists", "exec", "exit"]
    assert texts(complete(completer, "HELP WA")) == ["WATCH"]
    assert texts(complete(completer, "WATCH acct/1 acct/")) == ["acct/2", "acct/1"]
    assert texts(complete(completer, "EXEC ")) == []
    assert texts(complete(completer, "UNWATCH ")) == []


def test_leader_offers_no_shards_before_the_shard_map_is_known() -> None:
    assert texts(complete(ReplCompleter(KeyIndex(None)), "LEADER ")) == []


def test_a_file_value_completes_to_paths(tmp_path: Path) -> None:
    (tmp_path / "value.bin").write_bytes(b"x")
    completer = ReplCompleter(KeyIndex(None))
    completions = complete(completer, f"PUT k @{tmp_path}/va")
    assert texts(completions) == ["lue.bin"]


def test_recent_keys_come_first_most_recent_first_and_quoted_when_needed() -> None:
    keys = KeyIndex(None)
    keys.saw([b"user/1", b"other", b"user name"])
    keys.wrote(b"user/2")
    completer = ReplCompleter(keys)
    completions = complete(completer, "GET us")
    assert texts(completions) == ["user/2", '"user name"', "user/1"]
    assert [c.display_meta_text for c in completions] == ["recent"] * 3
    assert completions[0].start_position == -2
    keys.deleted(b"user/2")
    assert texts(complete(completer, "GET us")) == ['"user name"', "user/1"]


def test_a_quoted_prefix_being_typed_is_replaced_whole() -> None:
    keys = KeyIndex(None)
    keys.saw([b"user name", b"\x00bin"])
    completer = ReplCompleter(keys)
    (completion,) = complete(completer, 'GET "user n')
    assert completion.text == '"user name"'
    assert completion.start_position == -len('"user n')
    (binary,) = complete(completer, 'DEL "\\x00')
    assert binary.text == '"\\x00bin"'


async def test_scanned_keys_follow_recent_ones_without_duplicates(
    store: KeyStore, keys: KeyIndex
) -> None:
    keys.saw([b"user/2"])
    completer = ReplCompleter(keys)
    completions = await complete_async(completer, "GET user/")
    assert texts(completions) == ["user/2", "user/1", "user/10"]
    assert [c.display_meta_text for c in completions] == ["recent", "key", "key"]
    assert store.prefixes == [b"user/"]


async def test_a_fresh_scan_is_reused_and_a_complete_one_serves_longer_prefixes(
    store: KeyStore, keys: KeyIndex
) -> None:
    completer = ReplCompleter(keys)
    await complete_async(completer, "GET ")
    assert texts(complete(completer, "GET user/1")) == ["user/1", "user/10"]
    assert texts(await complete_async(completer, "SHARD or")) == ["order/7"]
    assert store.prefixes == [b""]  # one scan, of everything; the rest came from it


async def test_a_failed_scan_offers_what_is_known_and_pauses_scanning(
    store: KeyStore, keys: KeyIndex
) -> None:
    store.fail = True
    keys.saw([b"user/9"])
    completer = ReplCompleter(keys)
    assert texts(await complete_async(completer, "GET user/")) == ["user/9"]
    assert texts(await complete_async(completer, "GET o")) == []
    assert store.prefixes == [b"user/"]  # no second request while the cluster looks down


# ------------------------------------------------------------------------------ the scanner


def test_a_request_superseded_before_its_scan_starts_is_answered_none(store: KeyStore) -> None:
    store.gate.clear()
    scanner = PrefixScanner(store.scan)
    try:
        first = scanner.request(b"a")
        _until(lambda: store.prefixes == [b"a"], "the first scan to start")
        queued = scanner.request(b"b")
        newest = scanner.request(b"c")
        assert queued.result(timeout=WAIT_S) is None  # never scanned
        store.gate.set()
        assert first.result(timeout=WAIT_S) == ()
        assert newest.result(timeout=WAIT_S) == ()
        assert store.prefixes == [b"a", b"c"]
    finally:
        store.gate.set()
        scanner.close()


def test_writes_and_deletes_update_complete_cached_scans(store: KeyStore) -> None:
    scanner = PrefixScanner(store.scan)
    try:
        assert scanner.request(b"user/").result(timeout=WAIT_S) == (
            b"user/1",
            b"user/10",
            b"user/2",
        )
        scanner.note_put(b"user/3")
        scanner.note_delete(b"user/1")
        scanner.note_put(b"other")
        assert scanner.cached(b"user/") == (b"user/10", b"user/2", b"user/3")
        assert scanner.cached(b"other") is None
    finally:
        scanner.close()


def test_cached_results_expire(store: KeyStore) -> None:
    now = [100.0]
    scanner = PrefixScanner(store.scan, fresh_s=3.0, clock=lambda: now[0])
    try:
        scanner.request(b"user/").result(timeout=WAIT_S)
        assert scanner.cached(b"user/1") == (b"user/1", b"user/10")
        now[0] += 3.5
        assert scanner.cached(b"user/") is None
    finally:
        scanner.close()


# ------------------------------------------------------------------ the real prompt session


def _until(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


async def _until_async(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def prompt(
    keys: KeyIndex,
) -> AsyncIterator[tuple[PromptSession[str], PipeInput, asyncio.Task[str]]]:
    state = SessionState(label="test", endpoints=("127.0.0.1:1",))
    state.routing = ShardRouting(1, 2, {1: "127.0.0.1:1"}, {0: 1, 1: 1}, {0: (1,), 1: (1,)})
    completer = ReplCompleter(keys, lambda: 2)
    with create_pipe_input() as pipe:
        session = build_session(
            state, completer, InMemoryHistory(), input=pipe, output=DummyOutput()
        )
        task = asyncio.create_task(session.prompt_async())
        try:
            yield session, pipe, task
        finally:
            if not task.done():
                session.app.exit(result="")
            await asyncio.wait_for(task, WAIT_S)


def _menu(session: PromptSession[str]) -> list[str]:
    state = session.default_buffer.complete_state
    return texts(state.completions) if state is not None else []


async def test_tab_in_the_prompt_completes_a_command_then_a_key(keys: KeyIndex) -> None:
    keys.saw([b"order/7"])
    async with prompt(keys) as (session, pipe, task):
        buffer = session.default_buffer
        pipe.send_text("GE")
        await _until_async(lambda: _menu(session) == ["GET"], "the command menu")
        pipe.send_text("\t")
        await _until_async(lambda: buffer.text == "GET", "GET to be inserted")
        pipe.send_text(" or")
        await _until_async(lambda: _menu(session) == ["order/7"], "the key menu")
        pipe.send_text("\t")
        await _until_async(lambda: buffer.text == "GET order/7", "the key to be inserted")
        pipe.send_text("\r")
        assert await asyncio.wait_for(task, WAIT_S) == "GET order/7"


async def test_keys_of_a_slow_scan_join_the_menu_when_they_arrive(
    store: KeyStore, keys: KeyIndex
) -> None:
    store.gate.clear()
    keys.saw([b"user/2"])
    async with prompt(keys) as (session, pipe, _):
        pipe.send_text("GET user/")
        await _until_async(lambda: _menu(session) == ["user/2"], "the recent key")
        await _until_async(lambda: store.prefixes == [b"user/"], "the scan to be asked for")
        store.gate.set()
        await _until_async(
            lambda: _menu(session) == ["user/2", "user/1", "user/10"], "the scanned keys"
        )


async def test_typing_never_waits_for_a_scan(store: KeyStore, keys: KeyIndex) -> None:
    store.gate.clear()  # the cluster "hangs": no scan answers until the test is over
    async with prompt(keys) as (session, pipe, task):
        pipe.send_text("GET u")
        await _until_async(lambda: store.prefixes == [b"u"], "the scan to start")
        started = time.monotonic()
        pipe.send_text("ser/42\r")
        assert await asyncio.wait_for(task, WAIT_S) == "GET user/42"
        assert time.monotonic() - started < 1.0
        assert not store.gate.is_set(), "the scan was still hanging while the line was typed"
        assert session.default_buffer.complete_state is None


async def test_history_auto_suggests_and_ctrl_r_searches(keys: KeyIndex) -> None:
    state = SessionState(label="test", endpoints=("127.0.0.1:1",))
    history = InMemoryHistory(["PUT user/1 ada", "SCAN order/", "GET user/1"])
    with create_pipe_input() as pipe:
        session = build_session(
            state, ReplCompleter(keys), history, input=pipe, output=DummyOutput()
        )
        task = asyncio.create_task(session.prompt_async())
        buffer = session.default_buffer
        pipe.send_text("PUT u")
        await _until_async(
            lambda: buffer.suggestion is not None and buffer.suggestion.text == "ser/1 ada",
            "the suggestion from history",
        )
        pipe.send_text("\x1b[C")  # Right arrow takes the suggestion
        await _until_async(lambda: buffer.text == "PUT user/1 ada", "the suggestion taken")
        pipe.send_text("\r")
        assert await asyncio.wait_for(task, WAIT_S) == "PUT user/1 ada"

        task = asyncio.create_task(session.prompt_async())
        pipe.send_text("\x12ORDER\r")  # Ctrl-R, search (ignoring case), keep the line found
        await _until_async(lambda: buffer.text == "SCAN order/", "the search to find the line")
        pipe.send_text("\r")  # and run it
        assert await asyncio.wait_for(task, WAIT_S) == "SCAN order/"
