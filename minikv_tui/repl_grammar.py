"""The REPL's command table: the one description of every command that the parser, the
lexer, the completer and HELP all read, so what is highlighted, completed and documented is
exactly what runs.

Pure data: no I/O, no prompt-toolkit, no client.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


class ArgKind(enum.Enum):
    """What an argument position holds, which decides how it is completed."""

    KEY = "key"
    VALUE = "value"
    PREFIX = "prefix"
    SHARD = "shard"
    COMMAND = "command"
    CHOICE = "choice"
    LIMIT_CLAUSE = "limit clause"
    """Where SCAN's `LIMIT n` may start (after its prefix)."""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    usage: str
    summary: str
    details: str = ""
    aliases: tuple[str, ...] = ()
    args: tuple[ArgKind, ...] = ()
    """Kinds of the positional arguments, in order (SCAN's `LIMIT n` is handled apart)."""
    choices: tuple[str, ...] = ()
    """The words a CHOICE argument accepts."""


LIMIT_KEYWORD: Final = "LIMIT"
SCAN_LIMIT_DEFAULT: Final = 100
"""Items a SCAN shows when it names no LIMIT: a screenful, not the node's page of 1000."""

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    CommandSpec(
        "GET",
        "GET key",
        "Print the value of a key.",
        "Fails when the key does not exist (EXISTS tests a key without failing). Reads are "
        "linearizable unless CONSISTENCY stale is set.",
        args=(ArgKind.KEY,),
    ),
    CommandSpec(
        "PUT",
        "PUT key value",
        "Write a value (committed on a quorum before it answers).",
        'Quote values with spaces: PUT greeting "hello world". Escapes in double quotes: '
        '\\n \\t \\r \\0 \\\\ \\" \\xHH. A bare @path reads the value from a file; quote it '
        '("@name") to store the text itself.',
        aliases=("SET",),
        args=(ArgKind.KEY, ArgKind.VALUE),
    ),
    CommandSpec(
        "DEL",
        "DEL key",
        "Delete a key (deleting a missing key is not an error).",
        aliases=("DELETE",),
        args=(ArgKind.KEY,),
    ),
    CommandSpec(
        "SCAN",
        "SCAN [prefix] [LIMIT n]",
        f"List keys in order, optionally under a prefix (default LIMIT {SCAN_LIMIT_DEFAULT}).",
        'An unquoted LIMIT always starts the limit clause: quote it to scan the prefix "LIMIT".',
        args=(ArgKind.PREFIX,),
    ),
    CommandSpec(
        "EXISTS",
        "EXISTS key",
        "Tell whether a key exists (and its version).",
        args=(ArgKind.KEY,),
    ),
    CommandSpec("STATUS", "STATUS", "Cluster summary: nodes, their state, and shard leaders."),
    CommandSpec(
        "SHARD",
        "SHARD key",
        "Which shard holds a key, its replicas and its leader.",
        args=(ArgKind.KEY,),
    ),
    CommandSpec(
        "LEADER",
        "LEADER [shard]",
        "The leader of every shard, or of one.",
        args=(ArgKind.SHARD,),
    ),
    CommandSpec(
        "CONSISTENCY",
        "CONSISTENCY [linearizable|stale]",
        "Show or set the read consistency of GET, EXISTS and SCAN.",
        "linearizable: served by the shard leader, sees every acknowledged write. "
        "stale: any replica's applied state, faster, possibly behind.",
        args=(ArgKind.CHOICE,),
        choices=("linearizable", "stale"),
    ),
    CommandSpec(
        "TIMING",
        "TIMING [on|off]",
        "Show or set whether each command prints its latency.",
        args=(ArgKind.CHOICE,),
        choices=("on", "off"),
    ),
    CommandSpec(
        "HELP",
        "HELP [command]",
        "List the commands, or explain one.",
        args=(ArgKind.COMMAND,),
    ),
    CommandSpec("CLEAR", "CLEAR", "Clear the screen."),
    CommandSpec("EXIT", "EXIT", "Leave the REPL (Ctrl-D does too).", aliases=("QUIT",)),
)

NOT_AVAILABLE: Final[Mapping[str, str]] = {
    "MULTI": "MULTI is not available yet: minikv has no cross-shard transactions yet",
    "EXEC": "EXEC is not available yet: minikv has no cross-shard transactions yet",
    "DISCARD": "DISCARD is not available yet: minikv has no cross-shard transactions yet",
}
"""Words reserved for features that do not exist yet: they answer plainly instead of
'unknown command', so nobody thinks they mistyped."""

NOT_AVAILABLE_HINT: Final = "Run the commands one by one; each is atomic on its own."

_BY_WORD: Final[Mapping[str, CommandSpec]] = {
    word: spec for spec in COMMANDS for word in (spec.name, *spec.aliases)
}


def lookup(word: str) -> CommandSpec | None:
    """The command a (case-insensitive) word names, aliases included."""
    return _BY_WORD.get(word.upper())


def command_words() -> tuple[str, ...]:
    """Every word that starts a valid command, aliases included, in table order."""
    return tuple(_BY_WORD)
