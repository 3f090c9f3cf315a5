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

from minikv_core.cluster.limits import TXN_OPS_MAX


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
    repeats: bool = False
    """The last argument kind may repeat (WATCH key [key ...]); at least one is required."""
    queued: bool = False
    """Inside MULTI the command is queued for EXEC instead of run."""
    in_multi: bool = True
    """Whether the command may be used inside MULTI at all (queued or run at once)."""


LIMIT_KEYWORD: Final = "LIMIT"
SCAN_LIMIT_DEFAULT: Final = 100
"""Items a SCAN shows when it names no LIMIT: a screenful, not the node's page of 1000."""

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    CommandSpec(
        "GET",
        "GET key",
        "Print the value of a key.",
        "Fails when the key does not exist (EXISTS tests a key without failing). Reads are "
        "linearizable unless CONSISTENCY stale is set. Inside MULTI it is queued and reads "
        "the state before the transaction; a missing key is then (nil), not an error.",
        args=(ArgKind.KEY,),
        queued=True,
    ),
    CommandSpec(
        "PUT",
        "PUT key value",
        "Write a value (committed on a quorum before it answers).",
        'Quote values with spaces: PUT greeting "hello world". Escapes in double quotes: '
        '\\n \\t \\r \\0 \\\\ \\" \\xHH. A bare @path reads the value from a file; quote it '
        '("@name") to store the text itself. Inside MULTI it is queued (a @file is read '
        "when it is queued).",
        aliases=("SET",),
        args=(ArgKind.KEY, ArgKind.VALUE),
        queued=True,
    ),
    CommandSpec(
        "DEL",
        "DEL key",
        "Delete a key (deleting a missing key is not an error).",
        "Inside MULTI it is queued.",
        aliases=("DELETE",),
        args=(ArgKind.KEY,),
        queued=True,
    ),
    CommandSpec(
        "SCAN",
        "SCAN [prefix] [LIMIT n]",
        f"List keys in order, optionally under a prefix (default LIMIT {SCAN_LIMIT_DEFAULT}).",
        'An unquoted LIMIT always starts the limit clause: quote it to scan the prefix "LIMIT". '
        "Refused inside MULTI (a transaction holds PUT, DEL and GET only).",
        args=(ArgKind.PREFIX,),
        in_multi=False,
    ),
    CommandSpec(
        "EXISTS",
        "EXISTS key",
        "Tell whether a key exists (and its version).",
        "Refused inside MULTI: queue a GET instead.",
        args=(ArgKind.KEY,),
        in_multi=False,
    ),
    CommandSpec(
        "MULTI",
        "MULTI",
        "Start a transaction: PUT, DEL and GET are queued until EXEC.",
        "EXEC then sends the queued commands as one atomic transaction, across shards too "
        "(two-phase commit): all of them take effect or none. Queued GETs read the state "
        "before the transaction. A transaction writes each key once, and cannot GET a key it "
        "writes earlier (it would read the old value); both are refused when queued. Any "
        "command that fails while MULTI is open (a typo, a refused command) makes EXEC refuse "
        "the whole transaction, as redis does: DISCARD and start again.",
        in_multi=False,
    ),
    CommandSpec(
        "EXEC",
        "EXEC",
        "Run the queued commands as one atomic transaction and print each result.",
        "One result per queued command, in order: OK for a PUT, the value (or (nil), an "
        "empty line in scripts) for a GET, deleted / not found for a DEL. If a WATCHed key "
        "changed since WATCH, nothing is applied and EXEC fails. If the transaction keeps "
        "meeting other transactions' locks until the deadline, nothing is applied and EXEC "
        "fails; run it again. EXEC always ends the transaction.",
    ),
    CommandSpec(
        "DISCARD",
        "DISCARD",
        "Drop the queued commands and leave MULTI (nothing is sent).",
        "Also forgets the WATCHed keys.",
    ),
    CommandSpec(
        "WATCH",
        "WATCH key [key ...]",
        "Make the next EXEC apply nothing if one of these keys changes before it.",
        "Optimistic locking, as redis's WATCH: the keys' versions are read now (linearizable) "
        "and EXEC sends them as compares, so it fails if any key was written or deleted in "
        "between (by anyone, this session included). Use before MULTI; EXEC, DISCARD and "
        "UNWATCH forget the keys.",
        args=(ArgKind.KEY,),
        repeats=True,
        in_multi=False,
    ),
    CommandSpec(
        "UNWATCH",
        "UNWATCH",
        "Forget the WATCHed keys.",
        in_multi=False,
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

MULTI_QUEUE_MAX: Final = TXN_OPS_MAX
"""Queued commands plus WATCHed keys: each is one op or compare of the transaction."""

_BY_WORD: Final[Mapping[str, CommandSpec]] = {
    word: spec for spec in COMMANDS for word in (spec.name, *spec.aliases)
}


def lookup(word: str) -> CommandSpec | None:
    """The command a (case-insensitive) word names, aliases included."""
    return _BY_WORD.get(word.upper())


def argument_kind(spec: CommandSpec, index: int) -> ArgKind | None:
    """The kind of the `index`-th positional argument (0-based), None past the last one."""
    if index < len(spec.args):
        return spec.args[index]
    if spec.repeats and spec.args:
        return spec.args[-1]
    return None


def command_words() -> tuple[str, ...]:
    """Every word that starts a valid command, aliases included, in table order."""
    return tuple(_BY_WORD)


def multi_rules() -> str:
    """What each command does inside MULTI, from the table (HELP MULTI prints it)."""
    queued = [spec.name for spec in COMMANDS if spec.queued]
    at_once = [spec.name for spec in COMMANDS if spec.in_multi and not spec.queued]
    refused = [spec.name for spec in COMMANDS if not spec.in_multi]
    return (
        f"Inside MULTI: {', '.join(queued)} are queued; {', '.join(at_once)} run at once; "
        f"{', '.join(refused)} are refused."
    )
