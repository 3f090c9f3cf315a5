"""Who a local cluster's nodes are, and how each must be started, once membership can change.

A node's command line is not the same for every node any more (issue #10):

- **Founding nodes** (created by `cluster up`) always start with the founding `--peers` list,
  removed founding nodes included: each node's identity file records the list it was created
  with and refuses a start that disagrees, so the list must never change, even after a
  founding node has left the cluster.
- **Joined nodes** (added by `cluster add-node`) start with `--join <a member's gRPC>`: on the
  first start the node asks the cluster to take it in; on every later start its identity file
  already holds its peers, shards and replicas, and the address is not contacted again. They
  take no `--peers`, `--shards`, `--replicas` or `--cluster-id` (the server refuses them).
  They also take `--no-rebalance`: the meta leader would otherwise start a rebalance on its
  own once the node serves, and the tool that adds the node runs that job itself, so that it
  can show its progress, journal it, and honour `add-node --no-rebalance`.

A removed node's id and ports stay taken for good: a founding `--peers` list still names its
address, so a new node listening there would be taken for it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from minikv_core.cluster.config import IDENTITY_FILE
from minikv_tui.node_process import LOOPBACK, free_ports, node_process_state
from minikv_tui.registry import ClusterRecord, NodeRecord

PORT_PICKS_MAX: Final = 20
"""`free_ports` may hand back a port a stopped node of this cluster owns; pick again."""


def ready_file(record: ClusterRecord, node: NodeRecord) -> Path:
    return record.directory / f"node{node.node_id}.ready.json"


def grpc_address(node: NodeRecord) -> str:
    return f"{LOOPBACK}:{node.grpc_port}"


def founding_peers(nodes: Sequence[NodeRecord]) -> str:
    """The `--peers` value every founding node starts with (`nodes`: removed ones included)."""
    founding = sorted((n for n in nodes if not n.joined), key=lambda n: n.node_id)
    return ",".join(f"{n.node_id}={grpc_address(n)}" for n in founding)


def join_address(node: NodeRecord, nodes: Sequence[NodeRecord]) -> str | None:
    """A member `node` can join through: one whose process is up if any (a first join needs
    it to answer), else any other member (a restart does not contact it). None: no other
    member exists."""
    others = [n for n in nodes if n.node_id != node.node_id and not n.removed]
    running = [n for n in others if node_process_state(n) == "up"]
    candidates = running or others
    return grpc_address(candidates[0]) if candidates else None


def node_command(record: ClusterRecord, node: NodeRecord, nodes: Sequence[NodeRecord]) -> list[str]:
    """`python -m minikv_core.server …` for `node`; `nodes` is every node of the cluster,
    removed ones included. Raises ValueError when a joined node has no member to name."""
    command = [
        sys.executable,
        "-m",
        "minikv_core.server",
        "--id",
        str(node.node_id),
        "--data-dir",
        str(node.data_dir),
        "--http",
        f"{LOOPBACK}:{node.http_port}",
        "--grpc",
        grpc_address(node),
        "--ready-file",
        str(ready_file(record, node)),
    ]
    if node.joined:
        via = join_address(node, nodes)
        if via is None:
            raise ValueError(f"node {node.node_id} has no other member to join through")
        return [*command, "--join", via, "--no-rebalance"]
    return [
        *command,
        "--peers",
        founding_peers(nodes),
        "--shards",
        str(record.settings.shards),
        "--replicas",
        str(record.settings.replicas),
        "--cluster-id",
        f"minikv-local-{record.name}",
    ]


def new_node(record: ClusterRecord, nodes: Sequence[NodeRecord]) -> NodeRecord:
    """The record of the next node to add: the highest id ever used plus one (removed ids
    are not reused), two fresh loopback ports no node of the cluster ever had, and a data
    directory and log beside the others. Raises RuntimeError if no such ports turn up."""
    node_id = max((n.node_id for n in nodes), default=0) + 1
    taken = {port for n in nodes for port in (n.grpc_port, n.http_port)}
    for _ in range(PORT_PICKS_MAX):
        grpc_port, http_port = free_ports(2)
        if grpc_port not in taken and http_port not in taken:
            break
    else:
        raise RuntimeError(f"no two free loopback ports outside {sorted(taken)}")
    return NodeRecord(
        cluster=record.name,
        node_id=node_id,
        grpc_port=grpc_port,
        http_port=http_port,
        data_dir=record.directory / f"node{node_id}",
        log_path=record.directory / f"node{node_id}.log",
        state="stopped",
        joined=True,
    )


def lost_its_data(node: NodeRecord) -> bool:
    """Whether `node` served once (its log says so) but its data directory has no identity
    file now: deleted, or the disk was replaced. Why it must not start: a node that comes
    back empty with its founding `--peers` bootstraps afresh, forgets the terms it voted in
    and the log it acknowledged (Raft §5.2, §5.4 need both kept), and could help elect a
    leader missing acknowledged writes. The way back is a new node (remove-node, add-node)."""
    if (node.data_dir / IDENTITY_FILE).exists():
        return False
    serving = f"node {node.node_id} serving: ".encode()
    try:
        with node.log_path.open("rb") as log:
            return any(serving in line for line in log)
    except FileNotFoundError:
        return False
