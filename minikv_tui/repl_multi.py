"""MULTI/EXEC in the REPL: the queue of a transaction being typed, and the one transaction
EXEC makes of it.

Each check the cluster would make of the whole transaction is made here for each command as
it is queued, so a mistake is reported next to the command that made it, not at EXEC after
twenty more lines. The model's rules (minikv_core.cluster.txn) decide what is refused: a
branch writes each key at most once, and so many ops and bytes at most. One rule is the
REPL's own: a GET of a key written earlier in the same transaction is refused too, because
the transaction's reads see the state before it (not the queued write, as redis's would).

Pure: no client, no I/O. The queue is immutable; each change is a new one, so the session
state can swap it whole while another thread (the toolbar) reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

from minikv_core.client import Compare, CompareOp, CompareTarget, OpKind, TxnOp, TxnRequest
from minikv_core.cluster import limits
from minikv_core.cluster.service import ServiceError
from minikv_core.cluster.txn import validate
from minikv_tui import repl_grammar
from minikv_tui.repl_errors import ReplError
from minikv_tui.repl_tokens import quote_bytes

_PLACE: Final = re.compile(r"^(?:success op|compare) \d+: ")
VERB: Final = {OpKind.PUT: "PUT", OpKind.DELETE: "DEL", OpKind.GET: "GET"}


@dataclass(frozen=True, slots=True)
class Watched:
    """A key WATCHed, with its version when it was (0: it did not exist)."""

    key: bytes
    version: int


@dataclass(frozen=True, slots=True)
class MultiQueue:
    """An open MULTI: the commands queued so far and how many commands failed meanwhile
    (any failure makes EXEC refuse the whole transaction)."""

    ops: tuple[TxnOp, ...] = ()
    failures: int = 0

    @property
    def aborted(self) -> bool:
        return self.failures > 0

    def failed(self) -> MultiQueue:
        return replace(self, failures=self.failures + 1)

    def queued(self, op: TxnOp, watched: tuple[Watched, ...] = ()) -> MultiQueue:
        """The queue with `op` appended, or a ReplError saying why the transaction cannot
        hold it."""
        what = f"{VERB[op.kind]} {quote_bytes(op.key)}"
        for number, earlier in enumerate(self.ops, start=1):
            if earlier.key != op.key or earlier.kind is OpKind.GET:
                continue
            if op.kind is OpKind.GET:
                raise ReplError(
                    f"{what}: cannot be queued, command {number} of this transaction "
                    f"({VERB[earlier.kind]}) writes the key, and a transaction's reads see the "
                    "state before it, not its own writes",
                    "GET the key before MULTI, or queue the GET before the write.",
                )
            raise ReplError(
                f"{what}: cannot be queued, command {number} of this transaction already "
                f"{'writes' if earlier.kind is OpKind.PUT else 'deletes'} the key; a "
                "transaction writes each key at most once",
                "Queue one PUT or DEL per key (the value you want last).",
            )
        if len(self.ops) + len(watched) >= repl_grammar.MULTI_QUEUE_MAX:
            raise ReplError(
                f"{what}: cannot be queued, the transaction already holds "
                f"{len(self.ops)} commands and {len(watched)} watched keys; the limit is "
                f"{repl_grammar.MULTI_QUEUE_MAX} in all",
                "EXEC what is queued, then start another transaction for the rest.",
            )
        grown = replace(self, ops=(*self.ops, op))
        try:
            validate(grown.request(watched))
        except ServiceError as error:  # too many bytes, a reserved key, a key too long
            # The model names the op by its place in the branch; here it is the one just typed.
            reason = _PLACE.sub("", str(error))
            raise ReplError(f"{what}: cannot be queued: {reason}", "") from None
        return grown

    def request(self, watched: tuple[Watched, ...] = ()) -> TxnRequest:
        """The transaction EXEC sends: the watched keys' versions as compares, the queued
        commands as the success branch, nothing on failure."""
        return TxnRequest(compare=watch_compares(watched), success=self.ops)


def watch_compares(watched: tuple[Watched, ...]) -> tuple[Compare, ...]:
    return tuple(
        Compare(item.key, CompareTarget.VERSION, CompareOp.EQUAL, version=item.version)
        for item in watched
    )


def watching(watched: tuple[Watched, ...], new: list[Watched]) -> tuple[Watched, ...]:
    """`watched` plus `new`, a key already watched keeping its first version (as redis: a
    change since the first WATCH still aborts)."""
    known = {item.key for item in watched}
    added = tuple(item for item in new if item.key not in known)
    if len(watched) + len(added) > limits.TXN_OPS_MAX:
        raise ReplError(
            f"WATCH: {len(watched) + len(added)} keys; a transaction holds at most "
            f"{limits.TXN_OPS_MAX} watched keys and commands in all",
            "Watch fewer keys.",
        )
    return watched + added
