"""REPL input as tokens: bare words, quoted strings with escapes, `;` and newlines between
commands, `#` comments; and the way back, any bytes written as input that reads as them.

Keys and values are bytes: a quoted string may hold any byte (`"\\xff"`), and `quote_bytes`
writes any bytes back as input that tokenizes to the same bytes, which is how the REPL prints
binary values and inserts completed keys.

The tokenizer has a forgiving mode (`partial=True`) for text still being typed: the lexer and
the completer see an unterminated quote or a bad escape as a marked token, never an error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from minikv_tui import repl_grammar
from minikv_tui.repl_errors import ParseError

_WHITESPACE: Final = frozenset(" \t\r")
_SEPARATORS: Final = frozenset(";\n")
_QUOTES: Final = frozenset("\"'")
_ESCAPES: Final = {
    "n": b"\n",
    "t": b"\t",
    "r": b"\r",
    "0": b"\0",
    "a": b"\a",
    "b": b"\b",
    "\\": b"\\",
    '"': b'"',
    "'": b"'",
}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


class TokenKind(enum.Enum):
    WORD = "word"
    QUOTED = "quoted"
    SEPARATOR = "separator"
    COMMENT = "comment"


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    raw: str
    """The source text of the token, quotes and escapes included."""
    start: int
    """Offset of the token's first character in the input."""
    value: bytes
    """What the token stands for: a word's UTF-8 bytes, a quoted string's decoded bytes."""
    error: str = ""
    """Set in partial mode only: why this token would not parse (e.g. an unterminated quote)."""

    @property
    def end(self) -> int:
        return self.start + len(self.raw)

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", "replace")


def _encode(text: str, column: int) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ParseError(
            f"character at column {column} cannot be encoded as UTF-8",
            "Write the bytes you mean as \\xHH escapes inside double quotes.",
            column,
        ) from None


def tokenize(text: str, *, partial: bool = False) -> list[Token]:
    """Split `text` into tokens. Raises ParseError on the first malformed token unless
    `partial`, in which case the token carries the error and the rest is still tokenized."""
    tokens: list[Token] = []
    position = 0
    at_statement_start = True
    while position < len(text):
        char = text[position]
        if char in _WHITESPACE:
            position += 1
            continue
        if char in _SEPARATORS:
            tokens.append(Token(TokenKind.SEPARATOR, char, position, b""))
            at_statement_start = True
            position += 1
            continue
        if char == "#" and at_statement_start:
            end = text.find("\n", position)
            end = len(text) if end < 0 else end
            tokens.append(Token(TokenKind.COMMENT, text[position:end], position, b""))
            position = end
            continue
        at_statement_start = False
        if char in _QUOTES:
            token = _quoted(text, position, partial)
        else:
            end = position
            while end < len(text) and text[end] not in _WHITESPACE and text[end] not in _SEPARATORS:
                end += 1
            word = text[position:end]
            token = Token(TokenKind.WORD, word, position, _encode(word, position + 1))
        tokens.append(token)
        position = token.end
    return tokens


def _quoted(text: str, start: int, partial: bool) -> Token:
    """The quoted string starting at `start`: double quotes take escapes, single quotes only
    `\\'` and `\\\\` (a backslash before anything else is itself)."""
    quote = text[start]
    value = bytearray()
    position = start + 1
    error = ""
    closed = False
    while position < len(text):
        char = text[position]
        if char == quote:
            position += 1
            closed = True
            break
        if char == "\\" and position + 1 < len(text):
            escape = text[position + 1]
            if quote == "'":
                if escape in "\\'":
                    value += escape.encode()
                    position += 2
                else:
                    value += b"\\"
                    position += 1
                continue
            if escape == "x":
                digits = text[position + 2 : position + 4]
                if len(digits) == 2 and set(digits) <= _HEX_DIGITS:
                    value.append(int(digits, 16))
                    position += 4
                    continue
                error = error or f"\\x at column {position + 1} needs two hex digits (\\x0a)"
            elif escape in _ESCAPES:
                value += _ESCAPES[escape]
                position += 2
                continue
            else:
                error = error or (
                    f"unknown escape \\{escape} at column {position + 1}: use \\\\ for a backslash"
                )
            value += char.encode()
            position += 1
            continue
        value += _encode(char, position + 1)
        position += 1
    if not closed:
        kind = "double" if quote == '"' else "single"
        error = error or f"unterminated {kind} quote starting at column {start + 1}"
    elif position < len(text) and text[position] not in _WHITESPACE | _SEPARATORS:
        error = error or f"text right after the closing quote at column {position + 1}"
        while (
            position < len(text)
            and text[position] not in _WHITESPACE
            and text[position] not in _SEPARATORS
        ):
            value += _encode(text[position], position + 1)
            position += 1
    if error and not partial:
        raise ParseError(error, _hint_for(error), start + 1)
    return Token(TokenKind.QUOTED, text[start:position], start, bytes(value), error)


def _hint_for(error: str) -> str:
    if error.startswith("unterminated"):
        return "Close the string with the same quote it opened with."
    if error.startswith("text right after"):
        return "Put a space after the closing quote."
    return 'Escapes in double quotes: \\n \\t \\r \\0 \\\\ \\" \\xHH.'


def statements_of(tokens: list[Token]) -> list[list[Token]]:
    """The tokens of each command, separators and comments dropped, empty commands skipped."""
    groups: list[list[Token]] = [[]]
    for token in tokens:
        if token.kind is TokenKind.SEPARATOR:
            groups.append([])
        elif token.kind is not TokenKind.COMMENT:
            groups[-1].append(token)
    return [group for group in groups if group]


# ------------------------------------------------------------------------------ quoting


def _is_bare_safe(text: str) -> bool:
    return (
        bool(text)
        and text[0] not in _QUOTES
        and text[0] not in "#@"
        and text.upper() != repl_grammar.LIMIT_KEYWORD
        and all(char.isprintable() and not char.isspace() and char not in ";\\" for char in text)
    )


def quote_bytes(data: bytes, *, force_quotes: bool = False) -> str:
    """Input text that tokenizes to exactly `data`: a bare word when one would do (unless
    `force_quotes`), else a double-quoted string with escapes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not force_quotes and _is_bare_safe(text):
        return text
    return '"' + escape_bytes(data) + '"'


def escape_bytes(data: bytes) -> str:
    """`data` as the inside of a double-quoted string: printable UTF-8 stays as it is,
    everything else is an escape."""
    out: list[str] = []
    text = data.decode("utf-8", "surrogateescape")
    reverse = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}
    for char in text:
        if char in reverse:
            out.append(reverse[char])
        elif "\udc80" <= char <= "\udcff":  # a byte that was not valid UTF-8
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)
