"""Throughput of the Raft core alone: 3 in-memory nodes, plain message passing, no faults.

    python -m minikv_core.raft.bench [--entries N] [--batch B] [--payload-bytes P]
                                     [--one-by-one] [--json]

Each cycle the leader proposes B commands of P bytes (`propose_batch`, or B `propose()` calls
with --one-by-one, as a host forwarding client requests would), then every node runs
its Ready cycle by the contract (MemoryStorage.persist, send, apply, advance) and every queued
message is stepped into its recipient. The clock starts after the election. An entry counts
once the leader has applied it; the run ends when all nodes have applied all N entries. The
logs are compacted every `--compact-every` entries as a host would, so memory stays bounded.

What this measures is the CPU cost of the core's replication path (proposal, batching into
AppendEntries, conflict checks, commit, hand-out for apply); there is no fsync and no network.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass

from minikv_core.raft.node import Config, RawNode
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import ConfState, Message, Role

NODE_IDS = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class BenchResult:
    entries: int
    batch: int
    payload_bytes: int
    seconds: float
    entries_per_second: float
    ready_cycles: int
    messages: int
    one_by_one: bool


def run(
    entries: int, batch: int, payload_bytes: int, compact_every: int, *, one_by_one: bool = False
) -> BenchResult:
    """Commit `entries` commands on a 3-node group; returns the measured rate."""
    assert entries > 0 and batch > 0 and payload_bytes >= 0 and compact_every > 0
    conf = ConfState(voters=NODE_IDS)
    storages = {node_id: MemoryStorage(conf) for node_id in NODE_IDS}
    nodes = {
        node_id: RawNode(Config(node_id=node_id), storages[node_id], random.Random(node_id))
        for node_id in NODE_IDS
    }
    applied = dict.fromkeys(NODE_IDS, 0)
    compacted = dict.fromkeys(NODE_IDS, 0)
    inbox: list[Message] = []
    counters = {"cycles": 0, "messages": 0}

    def cycle() -> bool:
        moved = False
        for node_id in NODE_IDS:
            node = nodes[node_id]
            if not node.has_ready():
                continue
            moved = True
            ready = node.ready()
            storages[node_id].persist(ready)
            inbox.extend(ready.messages)
            if ready.committed_entries:
                applied[node_id] = ready.committed_entries[-1].index
            node.advance(ready)
            counters["cycles"] += 1
            if applied[node_id] - compacted[node_id] >= compact_every:
                node.compact(applied[node_id], b"")
                compacted[node_id] = applied[node_id]
        if inbox:
            moved = True
            batch_messages = inbox[:]
            inbox.clear()
            counters["messages"] += len(batch_messages)
            for message in batch_messages:
                nodes[message.to].step(message)
        return moved

    nodes[1].campaign()
    while cycle():
        pass
    assert nodes[1].role == Role.LEADER, "node 1 did not win the election"
    leader = nodes[1]
    base = applied[1]
    target = base + entries
    payloads = [bytes([65 + i % 26]) * payload_bytes for i in range(batch)]
    proposed = 0
    start = time.perf_counter()
    while min(applied.values()) < target:
        if proposed < entries:
            count = min(batch, entries - proposed)
            if one_by_one:
                for payload in payloads[:count]:
                    leader.propose(payload)
            else:
                leader.propose_batch(payloads[:count] if count < batch else payloads)
            proposed += count
        cycle()
    seconds = time.perf_counter() - start
    return BenchResult(
        entries=entries,
        batch=batch,
        payload_bytes=payload_bytes,
        seconds=seconds,
        entries_per_second=entries / seconds,
        ready_cycles=counters["cycles"],
        messages=counters["messages"],
        one_by_one=one_by_one,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--compact-every", type=int, default=100_000)
    parser.add_argument(
        "--one-by-one", action="store_true", help="propose() each command instead of a batch"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.entries <= 0 or args.batch <= 0 or args.payload_bytes < 0 or args.compact_every <= 0:
        parser.error("--entries, --batch and --compact-every must be > 0, --payload-bytes >= 0")
    result = run(
        args.entries,
        args.batch,
        args.payload_bytes,
        args.compact_every,
        one_by_one=args.one_by_one,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "raft_core_3_nodes_in_memory",
                    "entries": result.entries,
                    "batch": result.batch,
                    "payload_bytes": result.payload_bytes,
                    "seconds": round(result.seconds, 4),
                    "entries_per_second": round(result.entries_per_second),
                    "ready_cycles": result.ready_cycles,
                    "messages": result.messages,
                    "one_by_one": result.one_by_one,
                    "python": sys.version.split()[0],
                }
            )
        )
    else:
        print(
            f"raft core, 3 nodes in memory: {result.entries} entries of "
            f"{result.payload_bytes} B, batch {result.batch}"
            f"{' (one propose() each)' if result.one_by_one else ''}: {result.seconds:.3f} s, "
            f"{result.entries_per_second:,.0f} entries/s "
            f"({result.ready_cycles} ready cycles, {result.messages} messages)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
