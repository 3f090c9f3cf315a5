"""ReadIndex bookkeeping on the leader (Raft thesis §6.4, etcd-io/raft `read_only.go`).

A read request is answered with the leader's commit index once the leader has proved it was
still the leader *after* the request arrived: a heartbeat round sent after the request was
acknowledged by a quorum. Rounds are numbered by the leader; every heartbeat broadcast is a
new round and carries its number as the heartbeat context, which followers echo. Many
requests share one round (batching): all requests registered before a round was broadcast are
confirmed together when a quorum acknowledges that round or a later one.

Requests arriving before the new leader has committed an entry of its own term wait in
`awaiting_commit`: until then its commit index may be behind the previous leader's (thesis
§6.4 step 1), so it cannot name a safe read index.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

_ROUND = struct.Struct(">Q")


def encode_round(round_number: int) -> bytes:
    return _ROUND.pack(round_number)


def decode_round(context: bytes) -> int:
    """The round in a heartbeat context; 0 (no round) for anything that is not one."""
    if len(context) != _ROUND.size:
        return 0
    value: int = _ROUND.unpack(context)[0]
    return value


@dataclass(frozen=True, slots=True)
class ReadRequest:
    requester: int
    """The node that asked (the leader itself, or a follower that forwarded READ_INDEX)."""
    context: bytes
    index: int = 0
    round: int = 0


class ReadOnly:
    """Pending read-index requests of one leader term. Bounded by `pending_max`."""

    __slots__ = ("awaiting_commit", "broadcast_needed", "pending", "pending_max", "round")

    def __init__(self, pending_max: int) -> None:
        assert pending_max >= 1
        self.pending_max = pending_max
        self.awaiting_commit: deque[ReadRequest] = deque()
        self.pending: deque[ReadRequest] = deque()
        self.round = 0
        """The last round broadcast."""
        self.broadcast_needed = False

    def __len__(self) -> int:
        return len(self.awaiting_commit) + len(self.pending)

    @property
    def full(self) -> bool:
        return len(self) >= self.pending_max

    def add_awaiting_commit(self, requester: int, context: bytes) -> None:
        assert not self.full
        self.awaiting_commit.append(ReadRequest(requester, context))

    def add(self, requester: int, context: bytes, index: int) -> None:
        """Register a request for read index `index`, confirmed by the next round."""
        assert not self.full
        self.pending.append(ReadRequest(requester, context, index, self.round + 1))
        self.broadcast_needed = True

    def release_awaiting_commit(self, index: int) -> None:
        """The leader committed an entry of its term: the waiting requests get `index`."""
        while self.awaiting_commit:
            request = self.awaiting_commit.popleft()
            self.pending.append(
                ReadRequest(request.requester, request.context, index, self.round + 1)
            )
            self.broadcast_needed = True

    def next_round(self) -> int:
        """A heartbeat broadcast is about to go out: its round number."""
        self.round += 1
        self.broadcast_needed = False
        return self.round

    def confirmed(self, quorum_round: int) -> list[ReadRequest]:
        """Pop the requests whose round a quorum has acknowledged, in arrival order."""
        released: list[ReadRequest] = []
        pending = self.pending
        while pending and pending[0].round <= quorum_round:
            released.append(pending.popleft())
        return released

    def take_all_confirmed_now(self) -> list[ReadRequest]:
        """A single-voter group is its own quorum: every pending request is confirmed."""
        released = list(self.pending)
        self.pending.clear()
        self.broadcast_needed = False
        return released
