"""Tab completion for the REPL: command names first, then each argument by its kind in the
command table (keys, choices, shard numbers, command names, `@file` paths).

Key names come from the KeyIndex: recently seen keys first, at once, then the keys a
server-side prefix scan finds. The scan runs in the KeyIndex's thread; this completer's
async generator only polls for its answer, and stops as soon as the user types on, so typing
never waits for the cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prompt_toolkit.application.current import get_app_or_none
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from minikv_tui import repl_grammar
from minikv_tui.repl_grammar import ArgKind, CommandSpec
from minikv_tui.repl_keys import KeyIndex
from minikv_tui.repl_tokens import Token, TokenKind, escape_bytes, quote_bytes, tokenize

SCAN_WAIT_S_MAX: Final = 2.0
"""How long one completion waits for its prefix scan before giving up on it."""
POLL_S: Final = 0.02


@dataclass(slots=True)
class _Context:
    """Where the cursor is: which argument of which command, and what is typed of it."""

    index: int
    """0 for the command name, n for the n-th argument."""
    current: Token | None
    """The token under the cursor (being typed), or None at the start of a new one."""
    head: Token | None
    before: list[Token] = field(default_factory=list)
    """Argument tokens before the one being completed."""

    @property
    def typed(self) -> str:
        return self.current.raw if self.current is not None else ""

    @property
    def typed_value(self) -> bytes:
        return self.current.value if self.current is not None else b""


def _context(text: str) -> _Context | None:
    tokens = tokenize(text, partial=True)
    statement: list[Token] = []
    for token in tokens:
        if token.kind is TokenKind.SEPARATOR:
            statement = []
        else:
            statement.append(token)
    if any(token.kind is TokenKind.COMMENT for token in statement):
        return None
    current = statement[-1] if statement and statement[-1].end == len(text) else None
    done = statement[:-1] if current is not None else statement
    head = done[0] if done else current
    return _Context(index=len(done), current=current, head=head, before=done[1:])


class ReplCompleter(Completer):
    """Completes REPL input; `shard_count` says how many shards LEADER may name (None when
    the shard map is not known yet)."""

    def __init__(
        self,
        keys: KeyIndex,
        shard_count: Callable[[], int | None] = lambda: None,
        *,
        scan_wait_s: float = SCAN_WAIT_S_MAX,
    ) -> None:
        self._keys = keys
        self._shard_count = shard_count
        self._scan_wait_s = scan_wait_s
        self._paths = PathCompleter(expanduser=True)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        """What is known now (the synchronous interface never waits for a scan; it still
        asks for one, so the next keystroke may find it cached)."""
        context = _context(document.text_before_cursor)
        if context is None:
            return
        yield from self._known(context, document, complete_event, set())
        if self._wants_keys(context):
            self._request_scan(context.typed_value)

    async def get_completions_async(
        self, document: Document, complete_event: CompleteEvent
    ) -> AsyncGenerator[Completion, None]:
        context = _context(document.text_before_cursor)
        if context is None:
            return
        shown: set[bytes] = set()
        for completion in self._known(context, document, complete_event, shown):
            yield completion
        if not self._wants_keys(context):
            return
        prefix = context.typed_value
        keys = await self._wait_for_scan(prefix, document)
        for key in keys or ():
            if key not in shown and key.startswith(prefix):
                shown.add(key)
                yield self._key_completion(key, context, "key")

    # --- what to offer ---------------------------------------------------------------------

    def _known(
        self,
        context: _Context,
        document: Document,
        complete_event: CompleteEvent,
        shown: set[bytes],
    ) -> Iterator[Completion]:
        if context.index == 0:
            if context.current is None or context.current.kind is TokenKind.WORD:
                yield from _words(
                    context.typed, repl_grammar.command_words(), _command_meta, upper=True
                )
            return
        spec = _spec_of(context)
        if spec is None:
            return
        kind = _argument_kind(spec, context)
        if kind is None:
            return
        if kind is ArgKind.CHOICE:
            yield from _words(context.typed, spec.choices, lambda _: "", upper=False)
        elif kind is ArgKind.COMMAND:
            names = tuple(command.name for command in repl_grammar.COMMANDS)
            yield from _words(context.typed, names, _command_meta, upper=True)
        elif kind is ArgKind.LIMIT_CLAUSE:
            yield from _words(context.typed, (repl_grammar.LIMIT_KEYWORD,), lambda _: "", True)
        elif kind is ArgKind.SHARD:
            count = self._shard_count()
            if count is not None:
                yield from _words(context.typed, [str(n) for n in range(count)], lambda _: "")
        elif kind is ArgKind.VALUE:
            typed = context.typed
            if typed.startswith("@") and context.current is not None:
                path_document = Document(typed[1:], len(typed) - 1)
                yield from self._paths.get_completions(path_document, complete_event)
        elif kind in (ArgKind.KEY, ArgKind.PREFIX):
            prefix = context.typed_value
            for key in self._keys.recent.matching(prefix):
                shown.add(key)
                yield self._key_completion(key, context, "recent")
            scanner = self._keys.scanner
            cached = scanner.cached(prefix) if scanner is not None else None
            for key in cached or ():
                if key not in shown:
                    shown.add(key)
                    yield self._key_completion(key, context, "key")
            if kind is ArgKind.PREFIX and not context.before:
                yield from _words(context.typed, (repl_grammar.LIMIT_KEYWORD,), lambda _: "", True)

    def _key_completion(self, key: bytes, context: _Context, meta: str) -> Completion:
        return Completion(
            quote_bytes(key),
            start_position=-len(context.typed),
            display=escape_bytes(key),
            display_meta=meta,
        )

    def _wants_keys(self, context: _Context) -> bool:
        if context.index == 0 or self._keys.scanner is None:
            return False
        spec = _spec_of(context)
        kind = _argument_kind(spec, context) if spec is not None else None
        return kind in (ArgKind.KEY, ArgKind.PREFIX)

    def _request_scan(self, prefix: bytes) -> None:
        scanner = self._keys.scanner
        if scanner is not None and scanner.cached(prefix) is None:
            scanner.request(prefix)

    async def _wait_for_scan(self, prefix: bytes, document: Document) -> tuple[bytes, ...] | None:
        """The scan's keys, or None when it fails, takes too long, or the user typed on."""
        scanner = self._keys.scanner
        assert scanner is not None
        if scanner.cached(prefix) is not None:
            return None  # already offered by _known
        future = scanner.request(prefix)
        deadline = time.monotonic() + self._scan_wait_s
        while not future.done():
            if time.monotonic() >= deadline or _text_changed(document):
                return None
            await asyncio.sleep(POLL_S)
        return future.result()


def _text_changed(document: Document) -> bool:
    app = get_app_or_none()
    if app is None or not app.is_running:
        return False
    return app.current_buffer.document.text_before_cursor != document.text_before_cursor


def _spec_of(context: _Context) -> CommandSpec | None:
    if context.head is None or context.head.kind is not TokenKind.WORD:
        return None
    return repl_grammar.lookup(context.head.raw)


def _argument_kind(spec: CommandSpec, context: _Context) -> ArgKind | None:
    position = context.index - 1
    if spec.name == "SCAN":
        words = [token.raw.upper() for token in context.before]
        if repl_grammar.LIMIT_KEYWORD in words:
            return None  # the number, then nothing
        if position == 0:
            return ArgKind.PREFIX
        return ArgKind.LIMIT_CLAUSE if position == 1 else None
    return repl_grammar.argument_kind(spec, position)


def _command_meta(word: str) -> str:
    spec = repl_grammar.lookup(word)
    return spec.summary if spec is not None else ""


def _words(
    typed: str, words: Iterable[str], meta: Callable[[str], str], upper: bool = False
) -> Iterator[Completion]:
    """Words starting with what is typed (any case), written in the case the user types in."""
    lower = upper and typed != "" and typed == typed.lower()
    for word in words:
        if word.lower().startswith(typed.lower()):
            text = word.lower() if lower else word
            yield Completion(text, start_position=-len(typed), display_meta=meta(word))
