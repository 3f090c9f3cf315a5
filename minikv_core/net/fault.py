"""Fault injection rules of one node's transport: partitions, one-way cuts, delay and loss.

This is the only place node-to-node faults are decided, and the peer transport consults it for
every frame it sends (`outbound`) and every frame it receives (`inbound`), so a rule covers all
Raft traffic between nodes (there is no side channel around it). Kills and pauses are not
network faults: the launcher sends real signals for those.

The filter is pure (no I/O, no clock) and draws loss from an injected `random.Random`, so a
test or a demo replays the same losses from the same seed.

How rules compose across nodes (each node has its own filter):

- symmetric partition between groups P and Q: every node of P drops_to and drops_from all of
  Q, and every node of Q the same for P (`FaultRules.partition(Q)` on P's nodes);
- one-way cut A -> B: A drops_to B (B still reaches A; a leader that can send but not hear
  shows check-quorum at work);
- delay and loss apply to every outbound frame of the node, to every peer.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from minikv_core.net import limits


class FaultRulesError(ValueError):
    """Fault rules were invalid; the message names the field and the offending value."""


def _node_ids(name: str, value: object) -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise FaultRulesError(f"{name} must be a set of node ids, got {value!r}")
    ids = frozenset(value)
    for node_id in sorted(ids, key=repr):
        if isinstance(node_id, bool) or not isinstance(node_id, int):
            raise FaultRulesError(f"{name} must hold integer node ids, got {node_id!r}")
        if node_id <= 0:
            raise FaultRulesError(f"{name} node ids must be positive, got {node_id}")
    return ids


@dataclass(frozen=True, slots=True)
class FaultRules:
    """What one node does to its traffic. The default value injects nothing.

    `drop_to`: peers whose outbound frames are dropped. `drop_from`: peers whose inbound
    frames are dropped. `delay_ms`: added to every outbound frame (order is kept: a frame is
    held until it is due, behind any frame held before it). `loss`: probability in [0, 1]
    that an outbound frame (all groups' messages in it) is dropped.
    """

    drop_to: frozenset[int] = field(default_factory=frozenset)
    drop_from: frozenset[int] = field(default_factory=frozenset)
    delay_ms: int = 0
    loss: float = 0.0

    def __post_init__(self) -> None:
        # Normalize iterables (lists from JSON) to frozensets, and reject bad values with a
        # message an operator can act on: these arrive from the admin API.
        object.__setattr__(self, "drop_to", _node_ids("drop_to", self.drop_to))
        object.__setattr__(self, "drop_from", _node_ids("drop_from", self.drop_from))
        delay_ms = self.delay_ms
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int):
            raise FaultRulesError(f"delay_ms must be an integer, got {delay_ms!r}")
        if not 0 <= delay_ms <= limits.FAULT_DELAY_MS_MAX:
            raise FaultRulesError(
                f"delay_ms must be in [0, {limits.FAULT_DELAY_MS_MAX}], got {delay_ms}"
            )
        loss = self.loss
        if isinstance(loss, bool) or not isinstance(loss, int | float):
            raise FaultRulesError(f"loss must be a number in [0, 1], got {loss!r}")
        if math.isnan(loss) or not 0.0 <= loss <= 1.0:
            raise FaultRulesError(f"loss must be in [0, 1], got {loss}")
        object.__setattr__(self, "loss", float(loss))

    @classmethod
    def partition(cls, peers: Iterable[int]) -> FaultRules:
        """Rules cutting this node off from `peers` in both directions. Apply the mirror rule
        on each of `peers` for a symmetric partition."""
        nodes = frozenset(peers)
        return cls(drop_to=nodes, drop_from=nodes)

    @property
    def is_clear(self) -> bool:
        return self == NO_FAULTS

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form (sorted id lists) for the admin API and the dashboard."""
        return {
            "drop_to": sorted(self.drop_to),
            "drop_from": sorted(self.drop_from),
            "delay_ms": self.delay_ms,
            "loss": self.loss,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FaultRules:
        """Parse the admin API's JSON body. Missing keys take their defaults; unknown keys are
        refused (a typo such as `drop_too` must not silently inject nothing)."""
        if not isinstance(data, Mapping):
            raise FaultRulesError(f"fault rules must be an object, got {data!r}")
        known = ("drop_to", "drop_from", "delay_ms", "loss")
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise FaultRulesError(
                f"unknown fault rule field(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        drop_to = data.get("drop_to", ())
        drop_from = data.get("drop_from", ())
        delay_ms = data.get("delay_ms", 0)
        loss = data.get("loss", 0.0)
        return cls(
            drop_to=drop_to,  # type: ignore[arg-type]  # validated in __post_init__
            drop_from=drop_from,  # type: ignore[arg-type]
            delay_ms=delay_ms,  # type: ignore[arg-type]
            loss=loss,  # type: ignore[arg-type]
        )


NO_FAULTS = FaultRules()


class OutboundAction(enum.Enum):
    DELIVER = "deliver"
    DROP_TO = "drop_to"
    LOSS = "loss"


@dataclass(frozen=True, slots=True)
class OutboundVerdict:
    """What to do with one outbound frame: deliver after `delay_ms`, or drop (and why)."""

    action: OutboundAction
    delay_ms: int = 0


_DELIVER_NOW = OutboundVerdict(OutboundAction.DELIVER)
_DROP_TO = OutboundVerdict(OutboundAction.DROP_TO)
_LOSS = OutboundVerdict(OutboundAction.LOSS)


class FaultFilter:
    """The current rules of one node, and the per-frame decisions derived from them."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._rules = NO_FAULTS

    @property
    def rules(self) -> FaultRules:
        return self._rules

    def set(self, rules: FaultRules) -> None:
        """Replace the rules. Frames already held by an earlier delay keep their due time."""
        assert isinstance(rules, FaultRules), rules
        self._rules = rules

    def clear(self) -> None:
        """Heal: deliver everything from now on."""
        self._rules = NO_FAULTS

    def outbound(self, to_node: int) -> OutboundVerdict:
        """Decide one outbound frame to `to_node`. Draws from the RNG only when loss is set
        and the frame was not already cut, so a seed replays the same decisions."""
        rules = self._rules
        if to_node in rules.drop_to:
            return _DROP_TO
        if rules.loss > 0.0 and self._rng.random() < rules.loss:
            return _LOSS
        if rules.delay_ms == 0:
            return _DELIVER_NOW
        return OutboundVerdict(OutboundAction.DELIVER, rules.delay_ms)

    def inbound(self, from_node: int) -> bool:
        """True when a frame from `from_node` may be delivered to this node."""
        return from_node not in self._rules.drop_from


async def pass_outbound(fault_filter: FaultFilter, to_node: int, deadline: float) -> str | None:
    """For a call to another node (a forwarded request, a maintenance call): the fault
    filter's verdict as for a Raft frame. Returns why it is cut (`drop_to`, `loss`), or None
    once its delay, bounded by `deadline`, has passed: the caller then sends it."""
    verdict = fault_filter.outbound(to_node)
    if verdict.action is not OutboundAction.DELIVER:
        return str(verdict.action.value)
    if verdict.delay_ms:
        await asyncio.sleep(min(verdict.delay_ms / 1000.0, max(0.0, deadline - time.monotonic())))
    return None
