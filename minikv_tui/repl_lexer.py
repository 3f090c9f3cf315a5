"""Syntax highlighting of REPL input: a Pygments lexer built on the REPL's own tokenizer and
command table, so the colours never disagree with what the parser will do (a word the
parser would reject is shown as an error while it is typed, a `@path` only where it reads a
file).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar, Final

from pygments.lexer import Lexer
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Punctuation,
    String,
    Text,
    Whitespace,
    _TokenType,
)

from minikv_tui import repl_grammar
from minikv_tui.repl_grammar import ArgKind
from minikv_tui.repl_tokens import Token, TokenKind, statements_of, tokenize

KEY: Final = Name.Variable
VALUE: Final = String
FILE_REFERENCE: Final = String.Other
COMMAND: Final = Keyword

_DOUBLE_ESCAPE: Final = re.compile(r"\\(?:x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SINGLE_ESCAPE: Final = re.compile(r"\\['\\]")

TokenStream = Iterator[tuple[int, _TokenType, str]]


class MinikvLexer(Lexer):  # type: ignore[misc]  # pygments has no type stubs
    """Lexes REPL input; each statement is classified against repl_grammar."""

    name = "minikv"
    aliases: ClassVar[list[str]] = ["minikv", "minikv-repl"]
    filenames: ClassVar[list[str]] = []

    def __init__(self, **options: Any) -> None:
        # The token stream must concatenate to the input exactly (prompt-toolkit maps it
        # back to positions): no newline stripping or adding.
        options.setdefault("stripnl", False)
        options.setdefault("ensurenl", False)
        super().__init__(**options)

    def get_tokens_unprocessed(self, text: str) -> TokenStream:
        tokens = tokenize(text, partial=True)
        kinds: dict[int, _TokenType] = {}
        for statement in statements_of(tokens):
            kinds.update(_classify(statement))
        position = 0
        for token in tokens:
            if token.start > position:
                yield position, Whitespace, text[position : token.start]
            if token.kind is TokenKind.SEPARATOR:
                yield token.start, Punctuation if token.raw == ";" else Whitespace, token.raw
            elif token.kind is TokenKind.COMMENT:
                yield token.start, Comment.Single, token.raw
            elif token.kind is TokenKind.QUOTED and kinds.get(token.start) is not Error:
                yield from _quoted(token)
            else:
                yield token.start, kinds.get(token.start, Text), token.raw
            position = token.end
        if position < len(text):
            yield position, Whitespace, text[position:]


def _quoted(token: Token) -> TokenStream:
    if token.error:
        yield token.start, Error, token.raw
        return
    kind = String.Double if token.raw.startswith('"') else String.Single
    pattern = _DOUBLE_ESCAPE if kind is String.Double else _SINGLE_ESCAPE
    position = 0
    for match in pattern.finditer(token.raw):
        if match.start() > position:
            yield token.start + position, kind, token.raw[position : match.start()]
        yield token.start + match.start(), String.Escape, match.group()
        position = match.end()
    if position < len(token.raw):
        yield token.start + position, kind, token.raw[position:]


def _classify(statement: list[Token]) -> dict[int, _TokenType]:
    """Token start offset -> token type, for the tokens of one statement."""
    head, args = statement[0], statement[1:]
    kinds: dict[int, _TokenType] = {}
    word = head.raw.upper()
    spec = repl_grammar.lookup(word) if head.kind is TokenKind.WORD else None
    if spec is not None:
        kinds[head.start] = COMMAND
    elif head.kind is TokenKind.WORD and args == [] and _is_command_prefix(word):
        kinds[head.start] = Text  # still being typed
    else:
        kinds[head.start] = Error
    if spec is None:
        for token in args:
            kinds[token.start] = Text
        return kinds
    if spec.name == "SCAN":
        kinds.update(_classify_scan(args))
        return kinds
    for index, token in enumerate(args):
        kind = repl_grammar.argument_kind(spec, index)
        if kind is None or token.error:
            kinds[token.start] = Error
            continue
        kinds[token.start] = _argument_type(spec, kind, token)
    return kinds


def _argument_type(spec: repl_grammar.CommandSpec, kind: ArgKind, token: Token) -> _TokenType:
    text = token.text
    if kind is ArgKind.VALUE:
        if token.kind is TokenKind.WORD and token.raw.startswith("@"):
            return FILE_REFERENCE
        return VALUE
    if kind in (ArgKind.KEY, ArgKind.PREFIX):
        return KEY
    if kind is ArgKind.SHARD:
        return Number.Integer if text.isdigit() else Error
    if kind is ArgKind.CHOICE:
        if text.lower() in spec.choices:
            return Name.Constant
        return Text if any(c.startswith(text.lower()) for c in spec.choices) else Error
    if kind is ArgKind.COMMAND:
        return COMMAND if repl_grammar.lookup(text) is not None else Text
    return Error  # LIMIT_CLAUSE: only SCAN has one, and _classify_scan lexes it


def _classify_scan(args: list[Token]) -> dict[int, _TokenType]:
    kinds: dict[int, _TokenType] = {}
    after_limit = False
    positional = 0
    for token in args:
        if token.error:
            kinds[token.start] = Error
        elif after_limit:
            kinds[token.start] = Number.Integer if token.text.isdigit() else Error
            after_limit = False
            positional = 2  # nothing may follow the limit
        elif token.kind is TokenKind.WORD and token.raw.upper() == repl_grammar.LIMIT_KEYWORD:
            kinds[token.start] = Keyword
            after_limit = True
        else:
            kinds[token.start] = KEY if positional == 0 else Error
            positional += 1
    return kinds


def _is_command_prefix(word: str) -> bool:
    return any(name.startswith(word) for name in repl_grammar.command_words())
