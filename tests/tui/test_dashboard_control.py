"""`ClusterControl`'s one-way cuts: which nodes refuse what, and which rules each node gets.

The subject is the control's own logic (validation, the rules it derives, the path it takes
with and without a launcher), so the admin client and the launcher are test doubles that
record what they were asked; the rules reaching real nodes are tested in test_launcher.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from minikv_core.client import AsyncClient
from minikv_tui.dashboard.control import ActionError, ClusterControl, PartitionPlan
from minikv_tui.launcher import Launcher, LauncherError, NetworkFaults, OneWayCut

ADDRESSES = {1: "127.0.0.1:1001", 2: "127.0.0.1:1002", 3: "127.0.0.1:1003"}


@dataclass
class RecordingAdmin:
    """Answers fault calls as a node does, remembering each (address, drop_to, drop_from)."""

    faults: list[tuple[str, list[int], list[int]]] = field(default_factory=list)

    async def set_fault(
        self,
        endpoint: str,
        *,
        drop_to: Sequence[int] = (),
        drop_from: Sequence[int] = (),
        delay_ms: int = 0,
        loss: float = 0.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        self.faults.append((endpoint, sorted(drop_to), sorted(drop_from)))
        return {"drop_to": list(drop_to), "drop_from": list(drop_from)}


@dataclass
class RecordingLauncher:
    """Stands for a launcher: records cuts; `refuse` makes it fail as a real one would."""

    cuts: list[tuple[list[int], list[int]]] = field(default_factory=list)
    refuse: LauncherError | None = None
    running: tuple[int, ...] = (1, 2, 3)
    """The nodes whose fault rules `heal` clears (it skips nodes down or paused)."""

    async def heal(self) -> list[int]:
        return list(self.running)

    async def cut_one_way(self, source: Sequence[int], sink: Sequence[int]) -> NetworkFaults:
        if self.refuse is not None:
            raise self.refuse
        self.cuts.append((list(source), list(sink)))
        return NetworkFaults(one_way=(OneWayCut(tuple(source), tuple(sink)),))


@dataclass
class Journal:
    entries: list[tuple[str, str, int | None]] = field(default_factory=list)

    async def __call__(self, kind: str, detail: str, node: int | None) -> None:
        self.entries.append((kind, detail, node))


def control(
    admin: RecordingAdmin, journal: Journal, launcher: RecordingLauncher | None = None
) -> ClusterControl:
    return ClusterControl(
        cast(AsyncClient, admin),
        lambda: ADDRESSES,
        launcher=cast(Launcher, launcher) if launcher is not None else None,
        journal=journal,
    )


def cut(source: tuple[int, ...], sink: tuple[int, ...]) -> PartitionPlan:
    return PartitionPlan(one_way=(source, sink))


async def test_one_way_cut_drops_on_the_source_and_the_sink_only() -> None:
    admin, journal = RecordingAdmin(), Journal()
    answer = await control(admin, journal).partition(cut((1,), (2, 3)))
    assert answer == "cut 1 -> 2,3 dropped (one way)"
    assert sorted(admin.faults) == [
        (ADDRESSES[1], [2, 3], []),
        (ADDRESSES[2], [], [1]),
        (ADDRESSES[3], [], [1]),
    ]
    assert journal.entries == [("partition", "1 -> 2,3 dropped (one way)", None)]


@pytest.mark.parametrize(
    ("source", "sink", "message"),
    [
        ((1,), (7,), "no node 7 in this cluster"),
        ((9,), (2,), "no node 9 in this cluster"),
        ((1, 2), (2, 3), "two disjoint sets"),
        ((), (2,), "nodes on both sides"),
    ],
)
async def test_one_way_cut_that_cannot_be_made_is_refused_before_any_node_is_touched(
    source: tuple[int, ...], sink: tuple[int, ...], message: str
) -> None:
    admin, journal = RecordingAdmin(), Journal()
    launcher = RecordingLauncher()
    for launched in (None, launcher):
        with pytest.raises(ActionError, match=message):
            await control(admin, journal, launched).partition(cut(source, sink))
    assert admin.faults == [] and launcher.cuts == [] and journal.entries == []


async def test_with_a_launcher_the_cut_is_left_to_it_so_it_outlives_restarts() -> None:
    admin, journal = RecordingAdmin(), Journal()
    launcher = RecordingLauncher()
    answer = await control(admin, journal, launcher).partition(cut((3, 1), (2,)))
    assert answer == "cut 1,3 -> 2 dropped (one way)"
    assert launcher.cuts == [([1, 3], [2])]
    assert admin.faults == [], "the launcher sets the rules, not the control"
    assert journal.entries == [], "the launcher journals what it did itself"


async def test_a_launcher_refusing_the_cut_becomes_one_line_with_its_hint() -> None:
    refusal = LauncherError("node 2 did not take its fault rules", hint="try again", exit_code=1)
    launcher = RecordingLauncher(refuse=refusal)
    with pytest.raises(ActionError) as raised:
        await control(RecordingAdmin(), Journal(), launcher).partition(cut((1,), (2,)))
    assert str(raised.value) == "node 2 did not take its fault rules (try again)"


@pytest.mark.parametrize(
    ("running", "answer"),
    [
        ((1, 2, 3), "healed: fault rules cleared on nodes 1,2,3"),
        ((1, 3), "healed: fault rules cleared on nodes 1,3; nodes 2 when started or resumed"),
        ((), "no node running to clear: nodes 1,2,3 start (or resume) with no fault rules"),
    ],
)
async def test_heal_says_which_nodes_it_could_not_reach_yet(
    running: tuple[int, ...], answer: str
) -> None:
    """The launcher clears running nodes only: with every node down, heal answered "healed:
    fault rules cleared on nodes none", as if it had worked."""
    launcher = RecordingLauncher(running=running)
    assert await control(RecordingAdmin(), Journal(), launcher).heal() == answer
