"""REPL input as commands: one typed statement per command, checked against the command
table (repl_grammar), from the tokens of repl_tokens. A line is parsed whole before any of it
runs, so a typo late in a line never leaves its first commands half done.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Final

from minikv_core.client import Consistency
from minikv_core.net.limits import SCAN_LIMIT_MAX
from minikv_tui import repl_grammar
from minikv_tui.repl_errors import ParseError
from minikv_tui.repl_tokens import Token, TokenKind, statements_of, tokenize

# --------------------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True)
class FileValue:
    """A value to be read from a file when the command runs (`PUT key @path`)."""

    path: str


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes | FileValue


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class Scan:
    prefix: bytes
    limit: int
    limit_given: bool


@dataclass(frozen=True, slots=True)
class Exists:
    key: bytes


@dataclass(frozen=True, slots=True)
class Multi:
    pass


@dataclass(frozen=True, slots=True)
class Exec:
    pass


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class Watch:
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Unwatch:
    pass


@dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclass(frozen=True, slots=True)
class ShardOf:
    key: bytes


@dataclass(frozen=True, slots=True)
class Leader:
    shard: int | None


@dataclass(frozen=True, slots=True)
class SetConsistency:
    mode: Consistency | None
    """None: show the current mode."""


@dataclass(frozen=True, slots=True)
class SetTiming:
    on: bool | None
    """None: show the current setting."""


@dataclass(frozen=True, slots=True)
class Help:
    topic: str | None
    """A command name (upper case), or None for the list."""


@dataclass(frozen=True, slots=True)
class Clear:
    pass


@dataclass(frozen=True, slots=True)
class Exit:
    pass


Statement = (
    Get
    | Put
    | Delete
    | Scan
    | Exists
    | Multi
    | Exec
    | Discard
    | Watch
    | Unwatch
    | Status
    | ShardOf
    | Leader
    | SetConsistency
    | SetTiming
    | Help
    | Clear
    | Exit
)


def parse(text: str) -> list[Statement]:
    """Every command of `text` (separated by `;` or newlines). Raises ParseError naming the
    first problem; nothing of `text` runs when any part of it is malformed."""
    return [parse_tokens(group) for group in statements_of(tokenize(text))]


def parse_tokens(tokens: list[Token]) -> Statement:
    """One command from its tokens (non-empty, no separators)."""
    assert tokens, "an empty command has nothing to parse"
    head, args = tokens[0], tokens[1:]
    if head.kind is not TokenKind.WORD:
        raise ParseError(
            f"a command must start with a command name, not {head.raw}",
            "HELP lists the commands.",
            head.start + 1,
        )
    word = head.raw.upper()
    spec = repl_grammar.lookup(word)
    if spec is None:
        close = difflib.get_close_matches(word, repl_grammar.command_words(), n=1)
        hint = f"Did you mean {close[0]}? " if close else ""
        raise ParseError(
            f"unknown command '{head.raw}'", hint + "HELP lists the commands.", head.start + 1
        )
    return _PARSERS[spec.name](spec, args)


def _arity(spec: repl_grammar.CommandSpec, args: list[Token], low: int, high: int) -> None:
    if low <= len(args) <= high:
        return
    if low == high:
        wanted = f"{low} argument{'s' if low != 1 else ''}" if low else "no arguments"
    else:
        wanted = f"{low} to {high} arguments"
    hint = f"Usage: {spec.usage}."
    if spec.name == "PUT" and len(args) > high:
        hint += ' Quote a value with spaces: PUT key "two words".'
    raise ParseError(f"{spec.name} takes {wanted}, got {len(args)}", hint)


def _key(token: Token) -> bytes:
    if not token.value:
        raise ParseError("a key cannot be empty", "Give a key of 1 byte or more.", token.start + 1)
    return token.value


def _number(token: Token, what: str, low: int, high: int | None) -> int:
    text = token.text
    if not text.isdigit() or not text.isascii():
        raise ParseError(f"{what} must be a whole number, got {token.raw}", "", token.start + 1)
    number = int(text)
    if number < low or (high is not None and number > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ParseError(f"{what} must be {bound}, got {number}", "", token.start + 1)
    return number


def _parse_get(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 1, 1)
    return Get(_key(args[0]))


def _parse_put(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 2, 2)
    key, value = args
    if value.kind is TokenKind.WORD and value.raw.startswith("@"):
        if len(value.raw) == 1:
            raise ParseError(
                "@ needs a file path after it (PUT key @path/to/file)",
                'Quote it to store a lone "@".',
                value.start + 1,
            )
        return Put(_key(key), FileValue(value.raw[1:]))
    return Put(_key(key), value.value)


def _parse_delete(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 1, 1)
    return Delete(_key(args[0]))


def _parse_scan(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    positional: list[Token] = []
    limit: int | None = None
    index = 0
    while index < len(args):
        token = args[index]
        if token.kind is TokenKind.WORD and token.raw.upper() == repl_grammar.LIMIT_KEYWORD:
            if index + 1 >= len(args):
                raise ParseError(
                    "LIMIT needs a number (SCAN user/ LIMIT 10)",
                    'Quote "LIMIT" to use it as a prefix.',
                    token.start + 1,
                )
            limit = _number(args[index + 1], "LIMIT", 1, SCAN_LIMIT_MAX)
            if index + 2 < len(args):
                extra = args[index + 2]
                raise ParseError(
                    f"unexpected {extra.raw} after LIMIT {limit}",
                    f"Usage: {spec.usage}.",
                    extra.start + 1,
                )
            break
        positional.append(token)
        index += 1
    if len(positional) > 1:
        raise ParseError(
            f"SCAN takes one prefix, got {len(positional)} words",
            f'Usage: {spec.usage}. Quote a prefix with spaces: SCAN "my prefix".',
            positional[1].start + 1,
        )
    prefix = positional[0].value if positional else b""
    return Scan(
        prefix,
        limit if limit is not None else repl_grammar.SCAN_LIMIT_DEFAULT,
        limit_given=limit is not None,
    )


def _parse_exists(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 1, 1)
    return Exists(_key(args[0]))


def _parse_multi(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 0)
    return Multi()


def _parse_exec(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 0)
    return Exec()


def _parse_discard(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 0)
    return Discard()


def _parse_watch(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    if not args:
        raise ParseError("WATCH takes 1 or more keys, got none", f"Usage: {spec.usage}.")
    keys = [_key(token) for token in args]
    return Watch(tuple(dict.fromkeys(keys)))  # a key named twice is watched once


def _parse_unwatch(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 0)
    return Unwatch()


def _parse_status(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 0)
    return Status()


def _parse_shard(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 1, 1)
    return ShardOf(_key(args[0]))


def _parse_leader(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 1)
    return Leader(_number(args[0], "the shard", 0, None) if args else None)


def _choice(spec: repl_grammar.CommandSpec, token: Token) -> str:
    word = token.text.lower()
    if word not in spec.choices:
        raise ParseError(
            f"{spec.name} takes {' or '.join(spec.choices)}, got {token.raw}",
            f"Usage: {spec.usage}.",
            token.start + 1,
        )
    return word


def _parse_consistency(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 1)
    return SetConsistency(Consistency(_choice(spec, args[0])) if args else None)


def _parse_timing(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 1)
    return SetTiming(_choice(spec, args[0]) == "on" if args else None)


def _parse_help(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 1)
    if not args:
        return Help(None)
    word = args[0].text.upper()
    found = repl_grammar.lookup(word)
    if found is not None:
        return Help(found.name)
    raise ParseError(f"no command named '{args[0].raw}'", "HELP lists the commands.")


def _parse_clear(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 0)
    return Clear()


def _parse_exit(spec: repl_grammar.CommandSpec, args: list[Token]) -> Statement:
    _arity(spec, args, 0, 0)
    return Exit()


_PARSERS: Final = {
    "GET": _parse_get,
    "PUT": _parse_put,
    "DEL": _parse_delete,
    "SCAN": _parse_scan,
    "EXISTS": _parse_exists,
    "MULTI": _parse_multi,
    "EXEC": _parse_exec,
    "DISCARD": _parse_discard,
    "WATCH": _parse_watch,
    "UNWATCH": _parse_unwatch,
    "STATUS": _parse_status,
    "SHARD": _parse_shard,
    "LEADER": _parse_leader,
    "CONSISTENCY": _parse_consistency,
    "TIMING": _parse_timing,
    "HELP": _parse_help,
    "CLEAR": _parse_clear,
    "EXIT": _parse_exit,
}
assert set(_PARSERS) == {spec.name for spec in repl_grammar.COMMANDS}, "a command has no parser"


_COMMAND_OF: Final[dict[type, str]] = {
    Get: "GET",
    Put: "PUT",
    Delete: "DEL",
    Scan: "SCAN",
    Exists: "EXISTS",
    Multi: "MULTI",
    Exec: "EXEC",
    Discard: "DISCARD",
    Watch: "WATCH",
    Unwatch: "UNWATCH",
    Status: "STATUS",
    ShardOf: "SHARD",
    Leader: "LEADER",
    SetConsistency: "CONSISTENCY",
    SetTiming: "TIMING",
    Help: "HELP",
    Clear: "CLEAR",
    Exit: "EXIT",
}
assert set(_COMMAND_OF.values()) == set(_PARSERS), "a command has no statement"


def command_of(statement: Statement) -> str:
    """The name (in the command table) of the command `statement` came from."""
    return _COMMAND_OF[type(statement)]
