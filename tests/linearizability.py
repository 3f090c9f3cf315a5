"""A linearizability checker for histories of single-key registers (put and get).

Why a checker and not asserts on final values: a store can lose no acknowledged write and still
lie — a read served by a deposed leader, a write applied twice, a value seen and then unseen.
Only the whole history, with each operation's real-time interval, says whether some single
order of the operations explains every answer (Herlihy & Wing's linearizability).

Keys are independent registers, so each key's history is checked alone (linearizability is
local: Herlihy & Wing, Theorem 1). Every put writes a value of its own, so each read names the
write it saw, and a register's history can be decided without searching orders (a search,
Wing & Gong's, went exponential on a few hundred overlapping ops). The zones of Gibbons &
Korach (1997), as stated by Golab, Li & Shah ("Analyzing consistency properties for fun and
profit", PODC 2011): the *cluster* of a write is the write and the reads that saw it; its
zone runs from the earliest completion among them (f) to the latest invocation (s). Forward
when f < s: the whole cluster must take effect inside (f, s), one cluster after another.
Backward otherwise: the cluster can take effect at one instant in (s, f). The history is
linearizable iff no read completes before its write is invoked, no two forward zones overlap,
and no backward zone lies inside a forward zone. The absent key is a write at -inf.

Unknown outcomes (a put that timed out, or whose node died): it may or may not have taken
effect, at any time after its call; its completion is +inf. An unknown put whose value nobody
read is dropped (Knossos does the same): it explains nothing. A read of it means it happened.
A get that failed observed nothing and is left out of the history by its recorder.

tests/test_linearizability.py checks this against brute force over every order.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["put", "get"]


@dataclass(frozen=True, slots=True)
class Op:
    client: int
    kind: Kind
    key: bytes
    value: bytes | None
    """A put's value (unique per history), or what a get saw (None: the key was absent)."""
    invoked: float
    completed: float | None
    """None: the outcome is unknown (puts only; the op may or may not have happened)."""

    def __str__(self) -> str:
        shown = "absent" if self.value is None else self.value.decode(errors="replace")
        end = "?" if self.completed is None else f"{self.completed:.3f}"
        verb = "put" if self.kind == "put" else "get ->"
        return f"client {self.client} {verb} {shown} [{self.invoked:.3f}, {end}]"


@dataclass(frozen=True, slots=True)
class Violation:
    key: bytes
    reason: str
    ops: tuple[Op, ...]
    """The operations that cannot all be placed in one order, in invocation order."""

    def __str__(self) -> str:
        lines = [f"key {self.key!r}: {self.reason}:"]
        lines += [f"    {op}" for op in self.ops]
        return "\n".join(lines)


def check_history(ops: Iterable[Op]) -> list[Violation]:
    """Every key's first violation (empty: the history is linearizable)."""
    by_key: dict[bytes, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    found = []
    for key in sorted(by_key):
        violation = check_register(by_key[key])
        if violation is not None:
            found.append(violation)
    return found


@dataclass(frozen=True, slots=True)
class _Cluster:
    value: bytes | None
    ops: tuple[Op, ...]
    f: float
    """The earliest completion among the cluster's ops."""
    s: float
    """The latest invocation among them."""

    @property
    def forward(self) -> bool:
        return self.f < self.s

    def must(self) -> str:
        """Where the cluster must take effect: inside its zone, either way round."""
        start, end = (self.f, self.s) if self.forward else (self.s, self.f)
        return (
            f"{_show(self.value)} (its put and reads) must take effect between "
            f"{start:.3f} and {end:.3f}"
        )


def _show(value: bytes | None) -> str:
    return "absent" if value is None else value.decode(errors="replace")


def _end(op: Op) -> float:
    return math.inf if op.completed is None else op.completed


def check_register(ops: Sequence[Op]) -> Violation | None:
    """None if some order of `ops` (one key's, starting absent) respects real time and
    explains every get; else the first reason found why none does."""
    if not ops:
        return None
    key = ops[0].key
    assert all(op.key == key for op in ops), "check_register takes one key's history"
    writes: dict[bytes | None, Op] = {}
    for op in ops:
        if op.kind == "put":
            assert op.value is not None and op.value not in writes, "puts write unique values"
            writes[op.value] = op
    reads: dict[bytes | None, list[Op]] = {}
    for op in ops:
        if op.kind == "get":
            if op.value is not None and op.value not in writes:
                reason = f"a get saw {_show(op.value)}, which no put wrote"
                return Violation(key, reason, (op,))
            write = writes.get(op.value)
            if write is not None and _end(op) < write.invoked:
                reason = f"a get saw {_show(op.value)} before the put of it was sent"
                return Violation(key, reason, (op, write))
            reads.setdefault(op.value, []).append(op)

    clusters = []
    for value, seen_by in reads.items():
        members = tuple(seen_by) if value is None else (writes[value], *seen_by)
        f = min(_end(op) for op in members)
        s = max(op.invoked for op in members)
        if value is None:
            f = -math.inf  # the absent key's write, before everything
        clusters.append(_Cluster(value, members, f, s))
    for value, write in writes.items():
        if value not in reads and write.completed is not None:
            clusters.append(_Cluster(value, (write,), write.completed, write.invoked))

    forward = sorted((c for c in clusters if c.forward), key=lambda c: c.f)
    for first, second in itertools.pairwise(forward):
        if second.f < first.s:
            reason = (
                f"{first.must()}, and {second.must()}: the windows overlap, so no one order "
                "explains both"
            )
            return Violation(key, reason, _by_invocation(first.ops + second.ops))
    # The forward zones are disjoint now, so their ends grow with their starts: the only one
    # that can hold a backward zone is the last to start before it (a bisection, not a scan
    # of every pair: a soak run has thousands of clusters per key).
    starts = [c.f for c in forward]
    for inner in (c for c in clusters if not c.forward):
        position = bisect.bisect_left(starts, inner.s) - 1
        if position >= 0:
            outer = forward[position]
            if inner.f < outer.s:
                reason = (
                    f"{inner.must()}, inside the window in which {outer.must()}, and stay the value"
                )
                return Violation(key, reason, _by_invocation(outer.ops + inner.ops))
    return None


def _by_invocation(ops: tuple[Op, ...]) -> tuple[Op, ...]:
    return tuple(sorted(ops, key=lambda op: op.invoked))
