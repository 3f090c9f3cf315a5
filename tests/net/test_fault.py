"""The fault filter: rule validation, and the per-frame decisions the transport applies."""

from __future__ import annotations

import asyncio
import math
import random
import time

import pytest

from minikv_core.net import limits
from minikv_core.net.fault import (
    NO_FAULTS,
    FaultFilter,
    FaultRules,
    FaultRulesError,
    OutboundAction,
    pass_outbound,
)

SEED = 20240601


def test_default_rules_inject_nothing_and_draw_no_randomness() -> None:
    rng = random.Random(SEED)
    state = rng.getstate()
    fault = FaultFilter(rng)
    assert fault.rules == NO_FAULTS and fault.rules.is_clear
    for node in (1, 2, 3):
        verdict = fault.outbound(node)
        assert verdict.action is OutboundAction.DELIVER and verdict.delay_ms == 0
        assert fault.inbound(node)
    assert rng.getstate() == state, "loss=0 must not consume the RNG (seed replay)"


def test_drop_to_cuts_only_outbound_frames_to_those_peers() -> None:
    fault = FaultFilter(random.Random(SEED))
    fault.set(FaultRules(drop_to=frozenset({2})))
    assert fault.outbound(2).action is OutboundAction.DROP_TO
    assert fault.outbound(3).action is OutboundAction.DELIVER
    assert fault.inbound(2), "a one-way cut leaves the other direction open"


def test_drop_from_cuts_only_inbound_frames_from_those_peers() -> None:
    fault = FaultFilter(random.Random(SEED))
    fault.set(FaultRules(drop_from=frozenset({3})))
    assert not fault.inbound(3)
    assert fault.inbound(2)
    assert fault.outbound(3).action is OutboundAction.DELIVER


def test_partition_rules_cut_both_directions_with_those_peers_only() -> None:
    fault = FaultFilter(random.Random(SEED))
    fault.set(FaultRules.partition([2, 3]))
    assert fault.rules == FaultRules(drop_to=frozenset({2, 3}), drop_from=frozenset({2, 3}))
    for peer in (2, 3):
        assert fault.outbound(peer).action is OutboundAction.DROP_TO
        assert not fault.inbound(peer)
    assert fault.outbound(4).action is OutboundAction.DELIVER
    assert fault.inbound(4)


def test_loss_with_a_seeded_rng_drops_about_the_expected_fraction() -> None:
    for loss in (0.1, 0.3, 0.5, 0.9):
        fault = FaultFilter(random.Random(SEED))
        fault.set(FaultRules(loss=loss))
        frames = 20_000
        lost = sum(fault.outbound(2).action is OutboundAction.LOSS for _ in range(frames))
        # Binomial standard deviation is at most 71 frames here; allow 5 sigma.
        sigma = math.sqrt(frames * loss * (1 - loss))
        assert abs(lost - frames * loss) <= 5 * sigma, f"seed={SEED} loss={loss} lost={lost}"


def test_the_same_seed_replays_the_same_losses() -> None:
    def decisions(seed: int) -> list[OutboundAction]:
        fault = FaultFilter(random.Random(seed))
        fault.set(FaultRules(loss=0.5))
        return [fault.outbound(2).action for _ in range(200)]

    assert decisions(SEED) == decisions(SEED)
    assert decisions(SEED) != decisions(SEED + 1)


def test_loss_of_one_drops_every_frame_and_zero_none() -> None:
    fault = FaultFilter(random.Random(SEED))
    fault.set(FaultRules(loss=1.0))
    assert all(fault.outbound(2).action is OutboundAction.LOSS for _ in range(1000))
    fault.set(FaultRules(loss=0.0))
    assert all(fault.outbound(2).action is OutboundAction.DELIVER for _ in range(1000))


def test_drop_to_wins_over_loss_without_drawing() -> None:
    rng = random.Random(SEED)
    fault = FaultFilter(rng)
    fault.set(FaultRules(drop_to=frozenset({2}), loss=0.5))
    state = rng.getstate()
    assert fault.outbound(2).action is OutboundAction.DROP_TO
    assert rng.getstate() == state


def test_delay_is_carried_by_delivered_frames() -> None:
    fault = FaultFilter(random.Random(SEED))
    fault.set(FaultRules(delay_ms=250))
    verdict = fault.outbound(2)
    assert verdict.action is OutboundAction.DELIVER
    assert verdict.delay_ms == 250


def test_clear_heals_every_rule() -> None:
    fault = FaultFilter(random.Random(SEED))
    fault.set(FaultRules(drop_to=frozenset({2}), drop_from=frozenset({2}), delay_ms=5, loss=1.0))
    fault.clear()
    assert fault.rules.is_clear
    assert fault.outbound(2).action is OutboundAction.DELIVER
    assert fault.outbound(2).delay_ms == 0
    assert fault.inbound(2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": -0.1}, r"loss must be in \[0, 1\], got -0.1"),
        ({"loss": 1.5}, r"loss must be in \[0, 1\], got 1.5"),
        ({"loss": math.nan}, r"loss must be in \[0, 1\], got nan"),
        ({"loss": "0.5"}, r"loss must be a number in \[0, 1\], got '0.5'"),
        ({"loss": True}, r"loss must be a number in \[0, 1\], got True"),
        ({"delay_ms": -1}, r"delay_ms must be in \[0, 60000\], got -1"),
        ({"delay_ms": limits.FAULT_DELAY_MS_MAX + 1}, r"delay_ms must be in \[0, 60000\]"),
        ({"delay_ms": 1.5}, "delay_ms must be an integer, got 1.5"),
        ({"drop_to": frozenset({0})}, "drop_to node ids must be positive, got 0"),
        ({"drop_from": frozenset({-3})}, "drop_from node ids must be positive, got -3"),
        ({"drop_to": frozenset({"2"})}, "drop_to must hold integer node ids, got '2'"),
        ({"drop_to": frozenset({True})}, "drop_to must hold integer node ids, got True"),
        ({"drop_from": "12"}, "drop_from must be a set of node ids, got '12'"),
        ({"drop_from": 3}, "drop_from must be a set of node ids, got 3"),
    ],
)
def test_invalid_rules_are_rejected_naming_the_field(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(FaultRulesError, match=message):
        FaultRules(**kwargs)  # type: ignore[arg-type]


def test_rules_from_json_lists_round_trip_through_dicts() -> None:
    rules = FaultRules.from_dict({"drop_to": [3, 2], "drop_from": [2], "delay_ms": 40, "loss": 0})
    assert rules == FaultRules(
        drop_to=frozenset({2, 3}), drop_from=frozenset({2}), delay_ms=40, loss=0.0
    )
    assert rules.to_dict() == {"drop_to": [2, 3], "drop_from": [2], "delay_ms": 40, "loss": 0.0}
    assert FaultRules.from_dict(rules.to_dict()) == rules
    assert FaultRules.from_dict({}) == NO_FAULTS


def test_unknown_rule_fields_are_rejected_not_ignored() -> None:
    with pytest.raises(
        FaultRulesError, match=r"unknown fault rule field\(s\) drop_too; known: drop_to"
    ):
        FaultRules.from_dict({"drop_too": [2]})


def test_rules_body_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(FaultRulesError, match="fault rules must be an object, got"):
        FaultRules.from_dict([("loss", 0.5)])  # type: ignore[arg-type]


async def test_a_call_to_another_node_passes_the_filter_as_a_frame_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pass_outbound (forwarded requests, maintenance calls): cut by `drop_to`, delayed by
    `delay_ms` but never past the caller's deadline, else sent at once."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    fault = FaultFilter(random.Random(SEED))
    fault.set(FaultRules(drop_to=frozenset({2}), delay_ms=200))
    assert await pass_outbound(fault, 2, time.monotonic() + 5) == "drop_to"
    assert await pass_outbound(fault, 3, time.monotonic() + 5) is None
    assert await pass_outbound(fault, 3, time.monotonic() + 0.05) is None
    assert slept[0] == pytest.approx(0.2)
    assert 0 < slept[1] <= 0.05, "the delay, cut at the deadline"
    fault.clear()
    assert await pass_outbound(fault, 2, time.monotonic() + 5) is None
    assert len(slept) == 2, "no delay once healed"
