"""Run one seed: a fault phase of `steps` events, then a quiet phase that must converge.

Everything random comes from one `random.Random(seed)`: the core's election timeouts, the
network's fate of each message, disk latencies, the clients and the fault schedule. Events are
ordered by (virtual time, scheduling sequence), node ids are iterated sorted, and nothing reads
the wall clock or `id()`, so a seed replays exactly and its trace digest is stable.

Quiet phase (liveness, Raft §5.2 and §9): at its start the network is made reliable, every
crashed node is restarted and no fault is injected anymore. Then, within `liveness_bound_ms`,
a leader must be elected, every client must get a write and a read acknowledged, and every
member must have applied the leader's whole log once clients stop. Then the end-of-run checks
run (no acknowledged write lost on any member).
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field

from minikv_core.raft.node import RawNode
from minikv_core.raft.sim import checker as props
from minikv_core.raft.sim import limits
from minikv_core.raft.sim.checker import Checker, NodeFinalState, Violation
from minikv_core.raft.sim.client import ClientArrive, Clients, ClientTimeout, ClientWake
from minikv_core.raft.sim.clock import EventQueue, EventQueueFullError
from minikv_core.raft.sim.disk import Disk
from minikv_core.raft.sim.faults import ClusterView, Fault, FaultKind, FaultSchedule
from minikv_core.raft.sim.host import Host, ReadyDue, Tick
from minikv_core.raft.sim.knobs import draw_knobs
from minikv_core.raft.sim.network import Deliver, Network, NetworkStats
from minikv_core.raft.sim.trace import Trace
from minikv_core.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    RaftError,
    ReadOnlyMode,
    Role,
)


@dataclass(frozen=True, slots=True)
class FaultDue:
    """Event: inject the next fault of the schedule."""


@dataclass(frozen=True, slots=True)
class ConvergenceCheck:
    """Event (quiet phase): has the cluster converged yet?"""


@dataclass(frozen=True, slots=True)
class StartNode:
    """Event: the operator starts a node that was just added to the group."""

    node: int


@dataclass(frozen=True, slots=True)
class Resume:
    """Event: a paused process continues (SIGCONT)."""

    node: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class RestartDue:
    """Event: a supervisor restarts a crashed node (if it is still down)."""

    node: int


@dataclass(frozen=True, slots=True)
class Decommission:
    """Event: the operator stops a node that was removed from the group, for good."""

    node: int


@dataclass(slots=True)
class RunResult:
    seed: int
    nodes: int
    violations: list[Violation]
    trace_tail: str
    trace_digest: str
    steps: int
    virtual_ms: int
    quiet_start_ms: int
    converged_ms: int | None
    read_only_mode: str
    network: NetworkStats
    writes_acked: int
    reads_checked: int
    faults: dict[str, int] = field(default_factory=dict)
    event_counts: dict[str, int] = field(default_factory=dict)  # trace events per kind

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        converged = "-"
        if self.converged_ms is not None:
            converged = f"{self.converged_ms - self.quiet_start_ms}ms"
        return (
            f"seed={self.seed} nodes={self.nodes} steps={self.steps} virtual={self.virtual_ms}ms "
            f"reads={self.read_only_mode} acked_writes={self.writes_acked} "
            f"checked_reads={self.reads_checked} quiet_converged_in={converged} "
            f"net(sent={self.network.sent} lost={self.network.lost} cut={self.network.cut} "
            f"dup={self.network.duplicated}) digest={self.trace_digest}"
        )


class Simulation:
    """One run: hosts, network, clients, faults and the checker, driven by one event queue."""

    def __init__(
        self,
        seed: int,
        nodes: int,
        steps: int,
        *,
        joiners_start_empty: bool | None = None,
        trace_events_max: int = limits.trace_events_max,
    ) -> None:
        """`joiners_start_empty`: True: a node added to the group starts with an empty
        ConfState (its membership unknown until the leader teaches it); False: with the
        group's bootstrap ConfState (it replays the membership changes from the log). Both
        are documented ways to join; None lets the seed choose (knobs)."""
        assert 1 <= nodes <= limits.node_ids_max, f"nodes must be in 1..{limits.node_ids_max}"
        assert steps >= 0
        self.seed = seed
        self.nodes = nodes
        self.fault_steps = steps
        self.rng = random.Random(seed)
        self.queue: EventQueue[object] = EventQueue(limits.in_flight_messages_max * 4)
        self.trace = Trace(trace_events_max)
        self.checker = Checker()
        self.network: Network[Message] = Network(self.rng, self.queue)
        self.knobs = draw_knobs(self.rng)
        self.read_only_mode = self.knobs.read_only_mode
        self.hosts: dict[int, Host] = {}
        self.faults = FaultSchedule(self.rng, pauses=self.read_only_mode == ReadOnlyMode.SAFE)
        self.fault_counts: dict[str, int] = {}
        self.clients = Clients(
            rng=self.rng,
            queue=self.queue,
            checker=self.checker,
            trace=self.trace,
            host_of=self.hosts.get,
            node_ids=self._node_ids,
        )
        self.steps = 0
        self.quiet = False
        self.quiet_start_ms = 0
        self.converged_ms: int | None = None
        self._used_ids = set(range(1, nodes + 1))
        self._leaving: set[int] = set()  # removed nodes whose stop is scheduled
        voters = ConfState(voters=tuple(range(1, nodes + 1)))
        if joiners_start_empty is None:
            joiners_start_empty = self.knobs.joiners_start_empty
        self.joiners_start_empty = joiners_start_empty
        self._joiner_conf = ConfState() if joiners_start_empty else voters
        for node_id in range(1, nodes + 1):
            self.hosts[node_id] = self._new_host(node_id, Disk(voters))

    def _new_host(self, node_id: int, disk: Disk) -> Host:
        return Host(
            node_id,
            disk,
            rng=self.rng,
            queue=self.queue,
            network=self.network,
            checker=self.checker,
            trace=self.trace,
            listener=self,
            knobs=self.knobs,
        )

    def _node_ids(self) -> list[int]:
        return sorted(n for n, host in self.hosts.items() if not host.decommissioned)

    def _record(self, kind: str, detail: str) -> None:
        self.trace.record(self.queue.now_ms, 0, kind, detail)

    # --- HostListener --------------------------------------------------------------------------

    def write_done(
        self, *, node: int, op_id: int, committed: bool, index: int, log_term: int, node_term: int
    ) -> None:
        self.clients.write_done(
            node=node,
            op_id=op_id,
            committed=committed,
            index=index,
            log_term=log_term,
            node_term=node_term,
        )

    def read_done(self, node: int, op_id: int, value: str | None) -> None:
        self.clients.read_done(node, op_id, value)

    def conf_change_applied(self, node: int, change: ConfChange) -> None:
        target = change.node_id
        if change.type == ConfChangeType.REMOVE_NODE:
            host = self.hosts.get(target)
            if host is not None and target not in self._leaving:
                self._leaving.add(target)
                # The operator stops a removed node, but not at once: until then it may try
                # to disrupt the group (pre-vote and check-quorum must contain it).
                delay_ms = self.rng.randint(0, 2 * limits.election_timeout_ms)
                self.queue.schedule(delay_ms, Decommission(target))
        elif target not in self.hosts:
            self.queue.schedule(0, StartNode(target))

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> RunResult:
        self._record("begin", f"seed {self.seed}, {self.nodes} nodes, {self.knobs.describe()}")
        for node_id in sorted(self.hosts):
            self.hosts[node_id].start()
        self.clients.start()
        self.queue.schedule(self.faults.next_delay_ms(), FaultDue())
        try:
            self._loop()
        except EventQueueFullError as error:
            self.checker.report(self.queue.now_ms, props.LIVENESS, f"event queue overflow: {error}")
        except Exception as error:  # any exception out of the core is a finding, with its seed
            frames = traceback.extract_tb(error.__traceback__)
            innermost = frames[-1].filename if frames else ""
            # Blame the innermost frame: an exception raised inside the simulator's own modules
            # is a simulator bug, anything else came out of the core.
            origin = props.SIMULATOR_ERROR if "/raft/sim/" in innermost else props.CORE_EXCEPTION
            self.checker.report(
                self.queue.now_ms,
                origin,
                f"{type(error).__name__}: {error}\n"
                + "".join(traceback.format_list(frames[-6:])).rstrip(),
            )
        return RunResult(
            seed=self.seed,
            nodes=self.nodes,
            violations=list(self.checker.violations),
            trace_tail=self.trace.render_last(),
            trace_digest=self.trace.digest(),
            steps=self.steps,
            virtual_ms=self.queue.now_ms,
            quiet_start_ms=self.quiet_start_ms,
            converged_ms=self.converged_ms,
            read_only_mode=self.read_only_mode.name,
            network=self.network.stats,
            writes_acked=self.checker.writes_acked,
            reads_checked=self.checker.reads_checked,
            faults=dict(sorted(self.fault_counts.items())),
            event_counts=dict(sorted(self.trace.kind_counts.items())),
        )

    def _loop(self) -> None:
        deadline_ms = 0
        while self.checker.ok:
            if not self.quiet and self.steps >= self.fault_steps:
                self._begin_quiet()
                deadline_ms = self.queue.now_ms + limits.liveness_bound_ms
            event = self.queue.pop()
            if event is None:
                self.checker.report(self.queue.now_ms, props.LIVENESS, "no event left to run")
                return
            if self.quiet and self.queue.now_ms > deadline_ms:
                self.checker.report(
                    self.queue.now_ms,
                    props.LIVENESS,
                    f"not converged {limits.liveness_bound_ms} ms after faults stopped: "
                    f"{self._not_converged_reason()}",
                )
                return
            self.steps += 1
            if self.steps > limits.steps_max_default + self.fault_steps:
                self.checker.report(self.queue.now_ms, props.LIVENESS, "step budget exhausted")
                return
            if self._dispatch(event):
                return

    def _dispatch(self, event: object) -> bool:
        """Run one event; True when the run is over (converged)."""
        if isinstance(event, Tick):
            self.hosts[event.node].on_tick(event)
        elif isinstance(event, Deliver):
            if self.network.arrive(event):
                host = self.hosts.get(event.dst)
                if host is not None and host.up:
                    host.on_message(event.message)
        elif isinstance(event, ReadyDue):
            self.hosts[event.node].on_ready_due(event)
        elif isinstance(event, ClientWake):
            self.clients.on_wake(event)
        elif isinstance(event, ClientArrive):
            self.clients.on_arrive(event)
        elif isinstance(event, ClientTimeout):
            self.clients.on_timeout(event)
        elif isinstance(event, FaultDue):
            if not self.quiet:
                self._inject(self.faults.choose(self._view()))
                self.queue.schedule(self.faults.next_delay_ms(), FaultDue())
        elif isinstance(event, StartNode):
            if event.node not in self.hosts:
                self._used_ids.add(event.node)
                self.hosts[event.node] = host = self._new_host(event.node, Disk(self._joiner_conf))
                host.start()
        elif isinstance(event, RestartDue):
            host = self.hosts[event.node]
            if not self.quiet and not host.up and not host.decommissioned:
                self._record("fault", f"supervisor restarts {event.node}")
                host.start()
        elif isinstance(event, Resume):
            host = self.hosts[event.node]
            if host.incarnation == event.incarnation:
                host.resume()
        elif isinstance(event, Decommission):
            host = self.hosts[event.node]
            host.crash("removed from the group: stopped for good")
            host.decommissioned = True
        elif isinstance(event, ConvergenceCheck):
            if self._not_converged_reason() is None:
                self._finish()
                return True
            self.queue.schedule(limits.tick_interval_ms, ConvergenceCheck())
        else:
            raise AssertionError(f"unknown event {event!r}")
        return False

    # --- faults --------------------------------------------------------------------------------

    def _leader(self) -> Host | None:
        """The up node that is leader in the highest term, if any."""
        best: Host | None = None
        for node_id in sorted(self.hosts):
            host = self.hosts[node_id]
            node = host.node
            if node is None or host.paused or node.role != Role.LEADER:
                continue
            if best is None or (best.node is not None and node.term > best.node.term):
                best = host
        return best

    def _view(self) -> ClusterView:
        leader = self._leader()
        conf = ConfState()
        if leader is not None and leader.node is not None:
            conf = leader.node.status().conf_state
        live = self._node_ids()
        return ClusterView(
            up=[n for n in live if self.hosts[n].running],
            down=[n for n in live if not self.hosts[n].up],
            leader=leader.node_id if leader is not None else 0,
            candidates=[
                n
                for n in live
                if self.hosts[n].running
                and self.hosts[n].role in (Role.PRE_CANDIDATE, Role.CANDIDATE)
            ],
            voters=sorted(conf.voters),
            learners=sorted(conf.learners),
            fresh_ids=[n for n in range(1, limits.node_ids_max + 1) if n not in self._used_ids],
        )

    def _inject(self, fault: Fault) -> None:
        self.fault_counts[fault.kind.value] = self.fault_counts.get(fault.kind.value, 0) + 1
        self._record("fault", fault.describe())
        kind = fault.kind
        if kind == FaultKind.CRASH:
            host = self.hosts[fault.nodes[0]]
            if fault.crash_after_persist:
                host.crash_after_persist = True
            else:
                host.crash("fault")
                if fault.entries_count:
                    self._lose_tail(host.node_id, fault.entries_count)
            if fault.duration_ms:
                self.queue.schedule(fault.duration_ms, RestartDue(host.node_id))
        elif kind == FaultKind.RESTART:
            self.hosts[fault.nodes[0]].start()
        elif kind == FaultKind.PARTITION:
            self.network.partition(fault.nodes, fault.others)
        elif kind == FaultKind.CUT_ONE_WAY:
            self.network.cut_one_way(fault.nodes[0], fault.nodes[1])
        elif kind == FaultKind.LOSS_BURST:
            self.network.start_loss_burst(fault.nodes)
        elif kind == FaultKind.HEAL:
            self.network.heal()
        elif kind == FaultKind.PAUSE:
            host = self.hosts[fault.nodes[0]]
            host.pause()
            self.queue.schedule(fault.duration_ms, Resume(host.node_id, host.incarnation))
        elif kind == FaultKind.LOSE_TAIL:
            self._lose_tail(fault.nodes[0], fault.entries_count)
        elif kind == FaultKind.CAMPAIGN:
            for campaigner_id in fault.nodes:
                campaigner = self.hosts[campaigner_id]
                if campaigner.node is not None and campaigner.running:
                    try:
                        campaigner.node.campaign()
                    except RaftError as error:
                        self._record("refused", f"{fault.describe()}: {error}")
                    campaigner.after_input()
        else:
            self._inject_on_leader(fault)

    def _lose_tail(self, victim: int, count_max: int) -> None:
        """The disk of crashed `victim` loses up to `count_max` of its newest entries, but only
        entries that stay on a majority of the voters of every configuration a live node has.

        That is the premise under which the core promises recovery from the peers: Raft's
        Leader Completeness argument (§5.4.3) needs each committed entry on a majority of
        voters; losing it on more servers is data loss no protocol recovers from. Entries
        compacted into another node's snapshot are committed, so that node counts as holding
        them. The checker is unchanged: it never assumed a log only grows (it reads each disk
        when it checks, keys log matching by (index, term), and an entry the victim persists
        again is the same entry).
        """
        host = self.hosts[victim]
        if host.up or host.decommissioned:
            return
        voter_sets = sorted(
            {
                (
                    other.node.conf_state if other.node is not None else other.conf_state_at_crash
                ).voters
                for other in self.hosts.values()
                if not other.decommissioned
            }
            - {()}
        )
        disk = host.disk
        count = 0
        while count < min(count_max, disk.losable_entries()):
            index = disk.last_index() - count
            entry = disk.entry_at(index)
            assert entry is not None
            holders = {
                node_id
                for node_id, other in self.hosts.items()
                if node_id != victim
                and not other.decommissioned
                and other.disk.term_at(index) in (entry.term, None)
            }
            if not voter_sets or not all(
                len(holders.intersection(voters)) > len(voters) // 2 for voters in voter_sets
            ):
                break
            count += 1
        if count == 0:
            self._record("refused", f"lose_tail {victim}: no entry of it is safe to lose")
            return
        last = disk.lose_tail(count)
        self._record("lose_tail", f"node {victim}'s disk lost entries {last + 1}..{last + count}")

    def _inject_on_leader(self, fault: Fault) -> None:
        leader = self._leader()
        if leader is None or leader.node is None:
            return
        node: RawNode = leader.node
        kind = fault.kind
        target = fault.nodes[0]
        try:
            if kind == FaultKind.ADD_LEARNER:
                self._used_ids.add(target)  # a proposed id is never offered again
                node.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, target))
            elif kind == FaultKind.PROMOTE_LEARNER:
                node.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, target))
            elif kind == FaultKind.REMOVE_NODE:
                node.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, target))
            elif kind == FaultKind.TRANSFER_LEADER:
                asker = self.hosts[fault.others[0]] if fault.others else leader
                if asker.node is not None and asker.running:
                    asker.node.transfer_leader(target)
                    asker.after_input()
        except RaftError as error:
            self._record("refused", f"{fault.describe()}: {error}")
        leader.after_input()

    # --- quiet phase and the end ---------------------------------------------------------------

    def _begin_quiet(self) -> None:
        self.quiet = True
        self.quiet_start_ms = self.queue.now_ms
        self._record("quiet", "faults stop: heal the network, restart every crashed node")
        self.network.make_reliable()
        for node_id in self._node_ids():
            host = self.hosts[node_id]
            host.crash_after_persist = False
            host.resume()
            if not host.up:
                host.start()
        self.clients.begin_quiet()
        self.queue.schedule(limits.tick_interval_ms, ConvergenceCheck())

    def _not_converged_reason(self) -> str | None:
        if not self.clients.all_stopped():
            return f"clients not done ({self.clients.describe()})"
        leader = self._leader()
        if leader is None or leader.node is None:
            return "no leader"
        status = leader.node.status()
        members = sorted(status.conf_state.voters + status.conf_state.learners)
        if status.commit != status.last_index:
            return (
                f"leader {leader.node_id} (term {status.term}) has committed {status.commit} "
                f"of {status.last_index}"
            )
        for member in members:
            host = self.hosts.get(member)
            if host is None or host.node is None:
                return f"member {member} is not running"
            if host.machine.applied_index != status.last_index:
                peer = next((p for p in status.peers if p.node_id == member), None)
                view = "no progress entry"
                if peer is not None:
                    view = (
                        f"state={peer.state.name} match={peer.match} next={peer.next} "
                        f"pending_snapshot={peer.pending_snapshot_index} "
                        f"inflight={peer.inflight_messages} active={peer.recent_active}"
                    )
                member_status = host.node.status()
                return (
                    f"member {member} applied {host.machine.applied_index} (commit "
                    f"{member_status.commit}, log {member_status.first_index}.."
                    f"{member_status.last_index}), leader {leader.node_id} has "
                    f"{status.last_index} (log from {status.first_index}); leader's view of "
                    f"{member}: {view}"
                )
            if host.node.term != status.term:
                return f"member {member} is in term {host.node.term}, leader in {status.term}"
        return None

    def _finish(self) -> None:
        self.converged_ms = self.queue.now_ms
        leader = self._leader()
        assert leader is not None and leader.node is not None
        conf = leader.node.status().conf_state
        members = []
        for member in sorted(conf.voters + conf.learners):
            host = self.hosts[member]
            members.append(
                NodeFinalState(member, host.machine.applied_index, dict(host.machine.values))
            )
        self._record("converged", f"leader {leader.node_id}, members {[m.node for m in members]}")
        self.checker.check_final(self.queue.now_ms, members)


def run_seed(
    seed: int, nodes: int, steps: int, *, joiners_start_empty: bool | None = None
) -> RunResult:
    """Run one seed; the result lists violations (empty when every property held)."""
    return Simulation(seed, nodes, steps, joiners_start_empty=joiners_start_empty).run()
