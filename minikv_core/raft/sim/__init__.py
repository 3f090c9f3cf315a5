"""Deterministic simulator that tries to break minikv's Raft core (`minikv_core.raft`).

The core is pure (no I/O, clock or randomness of its own), so a whole cluster runs inside one
process on virtual time: every node is a `RawNode` driven by a host loop exactly as a real
node drives it, and one `random.Random(seed)` decides everything else. A seed therefore replays
exactly, and a failure prints its seed, the violated property and the last 50 events.

Modules (one job each)
----------------------
- `limits`        every bound and timing of the simulator, relations asserted at import;
- `clock`         virtual time and the seeded, bounded event queue;
- `network`       loss, delay, duplication, reordering, symmetric partitions, one-way cuts;
- `disk`          per-node durable state; only what a Ready asked to persist survives a crash;
- `state_machine` the replicated key-value map and its running digest;
- `host`          tick / step / ready / persist / send / apply / advance; crash, restart, pause;
- `knobs`         per-seed core Config (pre-vote, check-quorum, read mode, small size limits);
- `client`        closed-loop clients: unique writes, ReadIndex reads, timeouts, redirects;
- `faults`        the fault schedule drawn from the seed;
- `checker`       the properties, fed with plain observations (testable on hand-made histories);
- `trace`         bounded ring buffer of readable events and a digest of the whole run;
- `runner`        one seed: a fault phase, then a quiet phase that must converge.

Fault model
-----------
- network: every message may be lost (2% background, 60% on the links of nodes in a loss
  burst), duplicated (2%), delayed 1-12 ms (ticks are ~10 ms, so messages overtake each other),
  and 1% are held up to three election timeouts (they land in a changed cluster); symmetric
  partitions between two random groups, one-way cuts, healing; a cut also drops what is in
  flight on the link;
- nodes: crash at any event (everything not persisted is lost: the core, unpersisted Ready
  contents, the state machine, pending client requests), also between the fsync and the sends
  of one Ready, and while a Ready waits for its (random) disk latency; leaders and candidates
  are the preferred victims; most crashed nodes are restarted by a "supervisor" within two
  election timeouts, the rest by a later fault; a restart rebuilds the core from the disk
  (hard state, snapshot, log) and resumes the state machine from a flushed image
  (`Config.applied_index`) or from the snapshot;
- process pauses (SIGSTOP/SIGCONT, up to four election timeouts: ticks lost, messages queued),
  only in seeds with ReadIndex reads: lease reads assume bounded clock drift, which a pause
  breaks by design (thesis §6.4.1);
- clocks: each node ticks every 9, 10 or 11 ms (+-10% drift, within the lease margin);
- log compaction at random points (snapshot of the applied state), so lagging and new nodes
  catch up by InstallSnapshot;
- membership: add a fresh node as learner, promote a learner, remove a voter or learner (the
  removed node is stopped only after a random delay, so it may try to disrupt), all proposed
  while other faults are active; leadership transfers; forced (also simultaneous) elections.
  A joining node starts, per seed, with the group's bootstrap ConfState or with an empty one
  (the core's two documented ways to join; `--joiners-start-empty` or
  `--joiners-start-bootstrapped` forces one);
- core settings per seed (`knobs`): ReadIndex or lease reads, pre-vote and check-quorum on or
  off, heartbeat interval, and for half the seeds tiny size limits (one entry per message,
  8-byte snapshot chunks, one message in flight...) so batching, flow control and chunked
  snapshots run under the same faults.
- disks: a crash may damage the newest WAL records, so the node restarts without its newest
  fsynced, acknowledged entries (its leader's match index for it is then stale), but only
  while every entry lost stays on a majority of the voters of each live configuration: that
  is the premise of recovery from the peers (a committed entry on a majority, Raft §5.4.3).
Not modelled: corrupted messages or otherwise corrupted disks (CRCs in the WAL and transport
cover those; Raft assumes non-Byzantine peers), lost vote records, an overwritten log suffix
coming back, clock drift beyond +-10%.

Properties checked after every step (see `checker`)
---------------------------------------------------
election safety (one leader per term, whole history); log matching on the persisted logs;
leader completeness; state machine safety (also across snapshot installs and on the final
states); linearizability of the client-visible history (a read returns a value at least as
new as every write acknowledged, and every value read, before it began); no acknowledged write
lost (in every later leader's log, and in every member's applied state at the end); the host
protocol (no exception out of the core, no impossible disk write such as a vote changed
within a term, committed entries handed out in order); liveness (after faults stop and every
node is restarted and resumed: a leader is elected, every client gets a write and a read
through, and every member applies the leader's whole log, within 50 election timeouts).

Running
-------
    python -m minikv_core.raft.sim --seeds 10000 --nodes 5            # 10,000 seeds
    python -m minikv_core.raft.sim --seeds 10000 --nodes 5 --jobs 2   # the same, two cores
    python -m minikv_core.raft.sim --seeds 1 --seed 4242 --nodes 3 --verbose   # one seed

Each seed runs `--steps` events (default 5,000) of faults, then the quiet phase. The last line
is always `seeds=N violations=V` (V = seeds that broke a property); the exit status is 1 if
V > 0. To reproduce a failure, run the command printed under its trace (`--seeds 1 --seed S
--nodes K --steps M`): the same seed, node count and step count replay the same run event for
event, as long as the core's code is the same (tests/raft/test_sim_runs.py holds the trace
digest equal across two runs). From Python, `run_seed(seed, nodes, steps)` returns a
`RunResult`; `Simulation(..., trace_events_max=10**7)` keeps the whole trace for debugging.
"""

from minikv_core.raft.sim.checker import Checker, NodeFinalState, Violation
from minikv_core.raft.sim.runner import RunResult, Simulation, run_seed

__all__ = ["Checker", "NodeFinalState", "RunResult", "Simulation", "Violation", "run_seed"]
