"""The fault schedule: what goes wrong next, and when, drawn from the run's seeded RNG.

Pure choice: given a view of the cluster, pick a fault the runner then carries out. Kept apart
from the runner so the mix can be read (and retuned) in one place.

Fault model: crash (optionally between a Ready's fsync and its sends) and restart from disk;
symmetric partitions between two random groups; one-way link cuts; loss bursts on some nodes;
healing; membership changes (add a fresh node as learner, promote a learner, remove a voter or
learner) and leadership transfers, both proposed whatever else is broken at the time; and
forced elections (a node campaigns at once); process pauses (SIGSTOP: ticks lost, messages
queued until SIGCONT), only with ReadIndex reads since leases assume bounded clock drift; and a
crashed node's disk losing its newest, acknowledged entries (a damaged WAL tail), as far as
every entry lost stays on a majority of voters (the runner checks).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from minikv_core.raft.sim import limits


class FaultKind(enum.Enum):
    CRASH = "crash"
    RESTART = "restart"
    PARTITION = "partition"
    CUT_ONE_WAY = "cut_one_way"
    LOSS_BURST = "loss_burst"
    HEAL = "heal"
    ADD_LEARNER = "add_learner"
    PROMOTE_LEARNER = "promote_learner"
    REMOVE_NODE = "remove_node"
    TRANSFER_LEADER = "transfer_leader"
    CAMPAIGN = "campaign"
    PAUSE = "pause"
    LOSE_TAIL = "lose_tail"


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    nodes: tuple[int, ...] = ()  # the nodes it acts on (the first group of a partition)
    others: tuple[int, ...] = ()  # the second group of a partition
    crash_after_persist: bool = False
    duration_ms: int = 0  # a pause's length; for a crash, restart after it (0: stay down)
    entries_count: int = 0  # CRASH, LOSE_TAIL: how many newest entries the disk loses (at most)

    def describe(self) -> str:
        text = self.kind.value
        if self.nodes:
            text += " " + ",".join(str(n) for n in self.nodes)
        if self.others:
            text += " | " + ",".join(str(n) for n in self.others)
        if self.crash_after_persist:
            text += " (at next Ready, between fsync and send)"
        if self.duration_ms:
            verb = "restart after" if self.kind == FaultKind.CRASH else "for"
            text += f" ({verb} {self.duration_ms} ms)"
        if self.entries_count:
            text += f" (disk loses up to {self.entries_count} newest entries)"
        return text


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the schedule may look at; every list sorted (no set-order dependence)."""

    up: list[int]  # running (not paused)
    down: list[int]
    leader: int  # 0 if none
    candidates: list[int]  # running nodes campaigning (pre-candidate or candidate)
    voters: list[int]
    learners: list[int]
    fresh_ids: list[int]  # never used yet: candidates to join


_WEIGHTS: tuple[tuple[FaultKind, int], ...] = (
    (FaultKind.CRASH, 6),
    (FaultKind.RESTART, 5),
    (FaultKind.PARTITION, 3),
    (FaultKind.CUT_ONE_WAY, 2),
    (FaultKind.LOSS_BURST, 2),
    (FaultKind.HEAL, 3),
    (FaultKind.ADD_LEARNER, 3),
    (FaultKind.PROMOTE_LEARNER, 4),
    (FaultKind.REMOVE_NODE, 2),
    (FaultKind.TRANSFER_LEADER, 2),
    (FaultKind.CAMPAIGN, 3),
    (FaultKind.PAUSE, 2),
    (FaultKind.LOSE_TAIL, 3),
)


class FaultSchedule:
    def __init__(self, rng: random.Random, *, pauses: bool) -> None:
        """`pauses`: whether processes may be paused (not with lease reads, see limits)."""
        self._rng = rng
        self._pauses = pauses

    def next_delay_ms(self) -> int:
        return self._rng.randint(limits.fault_interval_ms_min, limits.fault_interval_ms_max)

    def _possible(self, kind: FaultKind, view: ClusterView) -> bool:
        if kind == FaultKind.CRASH:
            return len(view.up) > 1
        if kind == FaultKind.RESTART:
            return bool(view.down)
        if kind in (FaultKind.PARTITION, FaultKind.CUT_ONE_WAY):
            return len(view.up) + len(view.down) >= 2
        if kind == FaultKind.ADD_LEARNER:
            return bool(view.fresh_ids) and view.leader != 0
        if kind == FaultKind.PROMOTE_LEARNER:
            return bool(view.learners) and view.leader != 0
        if kind == FaultKind.REMOVE_NODE:
            # Keep at least two voters: fewer makes every later fault a total outage.
            return view.leader != 0 and (len(view.voters) > 2 or bool(view.learners))
        if kind == FaultKind.TRANSFER_LEADER:
            return view.leader != 0 and len(view.voters) > 1
        if kind == FaultKind.CAMPAIGN:
            return bool(view.up)
        if kind == FaultKind.PAUSE:
            return self._pauses and len(view.up) > 1
        if kind == FaultKind.LOSE_TAIL:
            return bool(view.down)
        return True

    def choose(self, view: ClusterView) -> Fault:
        kinds = [(kind, weight) for kind, weight in _WEIGHTS if self._possible(kind, view)]
        total = sum(weight for _, weight in kinds)
        roll = self._rng.randrange(total)
        for kind, weight in kinds:
            if roll < weight:
                return self._build(kind, view)
            roll -= weight
        raise AssertionError("unreachable: roll below total weight")

    def _pick(self, items: list[int]) -> int:
        assert items
        return items[self._rng.randrange(len(items))]

    def _build(self, kind: FaultKind, view: ClusterView) -> Fault:
        rng = self._rng
        everyone = sorted(view.up + view.down)
        if kind == FaultKind.CRASH:
            # Leaders and candidates are the interesting victims: a crash in mid-election
            # tests that votes and terms are durable (Raft Figure 2, persistent state).
            roll = rng.random()
            if view.leader and roll < 0.35:
                victim = view.leader
            elif view.candidates and roll < 0.7:
                victim = self._pick(view.candidates)
            else:
                victim = self._pick(view.up)
            mid_ready = rng.random() < limits.crash_mid_ready_probability
            # Usually a supervisor restarts the process soon after (systemd, the launcher).
            restart_ms = 0
            if rng.random() < limits.crash_quick_restart_probability:
                restart_ms = rng.randint(1, limits.crash_quick_restart_ms_max)
            # Some crashes damage the last WAL record: the node restarts without its newest
            # acknowledged entries while its leader still counts them (stale match index).
            lost = 0
            if not mid_ready and rng.random() < limits.crash_lose_tail_probability:
                lost = rng.randint(1, limits.lost_tail_entries_max)
            return Fault(
                kind,
                (victim,),
                crash_after_persist=mid_ready,
                duration_ms=restart_ms,
                entries_count=lost,
            )
        if kind == FaultKind.RESTART:
            return Fault(kind, (self._pick(view.down),))
        if kind == FaultKind.PARTITION:
            shuffled = everyone[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            return Fault(kind, tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:])))
        if kind == FaultKind.CUT_ONE_WAY:
            src = view.leader if view.leader and rng.random() < 0.5 else self._pick(everyone)
            dst = self._pick([n for n in everyone if n != src])
            return Fault(kind, (src, dst))
        if kind == FaultKind.LOSS_BURST:
            count = rng.randint(1, max(1, len(everyone) // 2))
            shuffled = everyone[:]
            rng.shuffle(shuffled)
            return Fault(kind, tuple(sorted(shuffled[:count])))
        if kind == FaultKind.ADD_LEARNER:
            return Fault(kind, (view.fresh_ids[0],))
        if kind == FaultKind.PROMOTE_LEARNER:
            return Fault(kind, (self._pick(view.learners),))
        if kind == FaultKind.REMOVE_NODE:
            candidates = view.learners + (view.voters if len(view.voters) > 2 else [])
            return Fault(kind, (self._pick(sorted(candidates)),))
        if kind == FaultKind.TRANSFER_LEADER:
            # Mostly to another voter; sometimes to a learner or the leader itself (the core
            # must refuse or ignore those). `others` names who asks: the leader, or a
            # follower that forwards the request (thesis §3.10).
            targets = [v for v in view.voters if v != view.leader]
            if rng.random() < 0.1:
                targets = sorted([*view.learners, view.leader])
            asker = view.leader
            followers = [n for n in view.up if n != view.leader]
            if followers and rng.random() < 0.3:
                asker = self._pick(followers)
            return Fault(kind, (self._pick(targets),), (asker,))
        if kind == FaultKind.CAMPAIGN:
            # Two at once make a contested election: both may campaign in the same term.
            shuffled = view.up[:]
            rng.shuffle(shuffled)
            return Fault(kind, tuple(sorted(shuffled[: rng.randint(1, 2)])))
        if kind == FaultKind.PAUSE:
            victim = view.leader if view.leader and rng.random() < 0.5 else self._pick(view.up)
            return Fault(kind, (victim,), duration_ms=rng.randint(1, limits.pause_ms_max))
        if kind == FaultKind.LOSE_TAIL:
            count = rng.randint(1, limits.lost_tail_entries_max)
            return Fault(kind, (self._pick(view.down),), entries_count=count)
        return Fault(kind)  # HEAL
