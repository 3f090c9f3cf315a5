"""The interactive session of `minikv repl`: the configured prompt-toolkit prompt and the
loop around it.

Why the blocking `Client` and the synchronous `PromptSession.prompt()`: one command runs at a
time between prompts, so nothing is gained by interleaving commands with the prompt's event
loop, and the `Client` runs its gRPC loop in its own thread, which lets the main thread
(commands), the completion scanner and the watcher share one client and its connections
safely. Ctrl-C while a command waits simply interrupts that wait.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Final

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output import Output
from prompt_toolkit.shortcuts import CompleteStyle

from minikv_core.client import Client, Consistency
from minikv_tui.registry import default_home
from minikv_tui.repl_commands import Executor, Outcome
from minikv_tui.repl_completer import ReplCompleter
from minikv_tui.repl_errors import ParseError, ReplError
from minikv_tui.repl_keys import KeyIndex, PrefixScanner
from minikv_tui.repl_lexer import MinikvLexer
from minikv_tui.repl_parser import parse
from minikv_tui.repl_render import Renderer
from minikv_tui.repl_state import Connection, SessionState
from minikv_tui.repl_toolbar import STYLE, prompt_message, toolbar
from minikv_tui.repl_watcher import ClusterEvent, ClusterWatcher

HISTORY_FILE_NAME: Final = "repl_history"
SCAN_TIMEOUT_S: Final = 1.0
"""A completion scan: stale reads, answered in milliseconds by a healthy cluster."""
WATCH_TIMEOUT_S: Final = 1.0
"""One shard-map poll of the watcher: below its poll interval."""
EVENTS_PENDING_MAX: Final = 100


def build_session(
    state: SessionState,
    completer: ReplCompleter,
    history: History,
    *,
    input: Input | None = None,
    output: Output | None = None,
) -> PromptSession[str]:
    """The configured prompt (tests drive this very session through a pipe input)."""
    return PromptSession(
        message=lambda: prompt_message(state),
        lexer=PygmentsLexer(MinikvLexer),
        completer=completer,
        complete_while_typing=True,
        complete_style=CompleteStyle.COLUMN,
        history=history,
        auto_suggest=AutoSuggestFromHistory(),
        enable_history_search=False,  # Up walks history; Ctrl-R searches it
        search_ignore_case=True,
        bottom_toolbar=lambda: toolbar(state),
        style=STYLE,
        include_default_pygments_style=False,
        input=input,
        output=output,
    )


class InteractiveRepl:
    """The prompt loop of a terminal session. Ctrl-C clears the line (or interrupts the
    command waiting), Ctrl-D or EXIT leaves; nothing else does."""

    def __init__(
        self,
        client: Client,
        state: SessionState,
        renderer: Renderer,
        keys: KeyIndex,
        history: History,
        *,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self._state = state
        self._renderer = renderer
        self._keys = keys
        self._executor = Executor(client, state, renderer, keys)
        completer = ReplCompleter(keys, self._shard_count)
        self._session = build_session(state, completer, history, input=input, output=output)
        self._events = _EventBoard(renderer, self._session)
        self._watcher = ClusterWatcher(
            lambda: client.shard_map(timeout_s=WATCH_TIMEOUT_S),
            state,
            self._events.post,
            self._session.app.invalidate,
        )

    def run(self) -> None:
        self._watcher.poll_once()
        self._banner()
        self._watcher.start()
        try:
            while True:
                self._events.drain()
                try:
                    text = self._session.prompt()
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    self._executor.finish()
                    return
                if self._execute(text) is Outcome.EXIT:
                    self._executor.finish()
                    return
        finally:
            self._watcher.stop()
            self._keys.close()

    def _execute(self, text: str) -> Outcome:
        try:
            statements = parse(text)
        except ParseError as error:
            self._executor.parse_failed(error)
            return Outcome.FAILED
        outcome = Outcome.OK
        for statement in statements:
            try:
                outcome = self._executor.run(statement)
            except KeyboardInterrupt:
                self._renderer.error(
                    ReplError(
                        "interrupted; the request may still take effect on the cluster",
                        "GET the key to see where it stands.",
                    )
                )
                return Outcome.FAILED
            if outcome is not Outcome.OK:
                return outcome  # EXIT leaves; after a failure the rest of the line is skipped
        return outcome

    def _shard_count(self) -> int | None:
        routing = self._state.routing
        return routing.shard_count if routing is not None else None

    def _banner(self) -> None:
        state = self._state
        routing = state.routing
        if state.connection is Connection.CONNECTED and routing is not None:
            self._renderer.note(
                f"minikv repl · {state.label}: {len(routing.addresses)} nodes, "
                f"{routing.shard_count} shards",
                "bold",
            )
        else:
            self._renderer.note(f"minikv repl · {state.label}", "bold")
        self._renderer.note(
            "HELP lists the commands; Tab completes; Ctrl-R searches history; Ctrl-D exits.",
            "dim",
        )
        self._events.drain()


class _EventBoard:
    """Cluster events, from the watcher thread to the terminal: printed above the prompt
    while it is shown, else before the next one."""

    def __init__(self, renderer: Renderer, session: PromptSession[str]) -> None:
        self._renderer = renderer
        self._session = session
        self._pending: deque[ClusterEvent] = deque(maxlen=EVENTS_PENDING_MAX)
        self._lock = threading.Lock()

    def post(self, event: ClusterEvent) -> None:
        """Any thread."""
        with self._lock:
            self._pending.append(event)
        app = self._session.app
        loop, context = app.loop, app.context
        if not app.is_running or loop is None:
            return
        # RuntimeError: the prompt just closed its loop; the main thread drains before the next.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(
                self._drain_above_prompt, context=context.copy() if context else None
            )

    def _drain_above_prompt(self) -> None:
        """On the prompt's loop, in its context (so run_in_terminal finds the app)."""
        run_in_terminal(self.drain)

    def drain(self) -> None:
        with self._lock:
            events = list(self._pending)
            self._pending.clear()
        for event in events:
            self._renderer.event(event)


def key_index_of(client: Client) -> KeyIndex:
    """Recent keys plus background prefix scans through `client` (stale reads: completion
    wants speed, not the latest write)."""
    return KeyIndex(PrefixScanner(lambda prefix, limit: _scan_keys(client, prefix, limit)))


def _scan_keys(client: Client, prefix: bytes, limit: int) -> tuple[list[bytes], bool]:
    result = client.scan(
        prefix=prefix, limit=limit, consistency=Consistency.STALE, timeout_s=SCAN_TIMEOUT_S
    )
    return [item.key for item in result.items], result.more


def default_history() -> History:
    """The history file in the minikv home; in memory only if the home cannot be written."""
    try:
        home = default_home()
        home.mkdir(parents=True, exist_ok=True)
        path = home / HISTORY_FILE_NAME
        path.touch(exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(path))
