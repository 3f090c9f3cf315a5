"""The launcher against real `minikv serve` processes: lifecycle, faults, restarts, races,
failures, and the pid checks that keep it from signalling a stranger."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from minikv_core.client import AsyncClient
from minikv_tui.cluster_status import ClusterSnapshot, Poller
from minikv_tui.launcher import (
    Launcher,
    LauncherError,
    NetworkFaults,
    NodeStartFailedError,
    OneWayCut,
    node_process_state,
    read_faults,
)
from minikv_tui.launcher_membership import new_node, node_command
from minikv_tui.node_process import process_start_ticks
from minikv_tui.registry import EventRecord, NodeRecord, Registry, RegistryError
from tests.tui.conftest import processes_under

T = TypeVar("T")
DEADLINE_S = 20.0


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll until `check` returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + DEADLINE_S
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def snapshot(launcher: Launcher) -> ClusterSnapshot:
    view = await launcher.view()
    async with AsyncClient(view.endpoints()) as client:
        return await Poller(client, name=view.name).poll(view.targets(), detail=False)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


async def events(home: Path, name: str) -> list[str]:
    async with await Registry.open(home) as registry:
        return [event.kind for event in await registry.events(name)]


async def test_lifecycle_kill_start_partition_heal_down_restart_leaves_nothing_running(
    local_cluster: Launcher, minikv_home: Path
) -> None:
    """The issue's scenario end to end on one cluster, then a restart with the same data and
    ports, and a `down` that must also stop a paused node."""
    launcher = local_cluster
    view = await launcher.view()
    pids = [node.pid for node in view.nodes]
    assert all(pid is not None and pid_alive(pid) for pid in pids), view
    again = await launcher.up()
    assert again.already_up and not again.created
    assert [n.pid for n in again.view.nodes] == pids
    async with AsyncClient(view.endpoints()) as client:
        await client.put(b"k", b"v1")
        assert await client.get(b"k") == b"v1"

    # Kill a shard leader: the others elect another; status shows the node down.
    before = await snapshot(launcher)
    victim = before.shards[0].leader
    assert victim is not None, before
    assert "killed" in await launcher.kill(victim)
    assert (await launcher.view()).node(victim).process == "down"  # type: ignore[union-attr]

    async def new_leader() -> ClusterSnapshot | None:
        now = await snapshot(launcher)
        leader = now.shards[0].leader
        return now if leader is not None and leader != victim else None

    after = await eventually(new_leader, f"shard 0 to elect a leader other than {victim}")
    assert after.node(victim).state == "down"  # type: ignore[union-attr]
    assert not after.node(victim).reachable  # type: ignore[union-attr]

    assert "started" in await launcher.start(victim)
    await launcher.wait_ready()
    restarted = (await launcher.view()).node(victim)
    assert restarted is not None and restarted.process == "up" and restarted.pid != pids[victim - 1]

    # Partition it away: its fault rules cut both directions.
    groups = await launcher.partition([[victim]])
    others = sorted({1, 2, 3} - {victim})
    assert groups == ((victim,), tuple(others))
    async with AsyncClient(view.endpoints()) as client:
        cut = await client.status(view.node(victim).grpc)  # type: ignore[union-attr]
        assert sorted(cut["fault"]["drop_to"]) == others, cut["fault"]
        assert sorted(cut["fault"]["drop_from"]) == others, cut["fault"]

    async def isolated_node_leads_nothing() -> bool:
        now = await snapshot(launcher)
        node = now.node(victim)
        return node is not None and node.state == "partitioned" and node.shard_leaders == 0

    await eventually(isolated_node_leads_nothing, f"node {victim} partitioned, leading nothing")
    # The majority side still takes writes (sent to it: a write that reached the isolated
    # node while it still led would rightly end "outcome unknown" at its deadline).
    majority = [node.grpc for node in view.nodes if node.node_id != victim]
    async with AsyncClient(majority) as client:
        await client.put(b"k", b"v2")

    # Heal while the cut-off node is paused: it must drop its rules when resumed.
    assert "paused" in await launcher.pause(victim)
    assert sorted(await launcher.heal()) == others
    assert "resumed" in await launcher.resume(victim)
    async with AsyncClient(view.endpoints()) as client:
        for node in view.nodes:
            fault = (await client.status(node.grpc))["fault"]
            assert not fault["drop_to"] and not fault["drop_from"], fault
        assert await client.get(b"k") == b"v2"
    assert "now leads shard 1" in await launcher.transfer_leader(1, victim)
    assert (await snapshot(launcher)).shards[1].leader == victim

    # Down with a paused node: nothing may survive.
    assert "paused" in await launcher.pause(others[0])
    assert (await launcher.view()).node(others[0]).process == "paused"  # type: ignore[union-attr]
    live = [node.pid for node in (await launcher.view()).nodes]
    assert sorted(await launcher.down(grace_s=5.0)) == [1, 2, 3]
    assert not [pid for pid in live if pid is not None and pid_alive(pid)]
    assert processes_under(minikv_home) == []
    assert (await launcher.view()).state == "stopped"

    # Up again: same ports, same data.
    back = await launcher.up()
    assert back.started == (1, 2, 3) and not back.created
    assert [(n.grpc, n.http) for n in back.view.nodes] == [(n.grpc, n.http) for n in view.nodes]
    async with AsyncClient(back.view.endpoints()) as client:
        assert await client.get(b"k") == b"v2"
    with pytest.raises(LauncherError) as caught:
        await launcher.up(nodes=5)
    assert "--nodes 5" in caught.value.message and caught.value.exit_code == 2

    kinds = await events(minikv_home, launcher.name)
    for kind in ("create", "up", "kill", "start", "partition", "heal", "transfer-leader"):
        assert kind in kinds, kinds
    assert kinds.count("down") == 1 and kinds.count("pause") == 2, kinds


async def test_a_one_way_cut_outlives_a_restart_of_its_sink_and_heal_clears_it(
    local_cluster: Launcher,
) -> None:
    """Kept in partition.json like a partition: node 2, stopped and started again, still drops
    what node 1 sends while node 1 still hears node 2. A partition then replaces the cut (the
    groups describe the whole network); heal clears everything."""
    launcher = local_cluster
    faults = await launcher.cut_one_way([1], [2])
    assert faults == NetworkFaults(one_way=(OneWayCut((1,), (2,)),))
    view = await launcher.view()
    assert view.one_way == faults.one_way and view.partition == ()

    async def rules() -> dict[int, tuple[list[int], list[int]]]:
        """Each node's (drop_to, drop_from), as the node itself reports them."""
        async with AsyncClient(view.endpoints()) as client:
            found = {}
            for node in view.nodes:
                fault = (await client.status(node.grpc))["fault"]
                found[node.node_id] = (sorted(fault["drop_to"]), sorted(fault["drop_from"]))
            return found

    cut = {1: ([2], []), 2: ([], [1]), 3: ([], [])}
    assert await rules() == cut
    before = view.node(2)
    assert before is not None and before.pid is not None
    assert "stopped" in await launcher.stop(2, grace_s=5.0)
    assert "started" in await launcher.start(2)
    after = (await launcher.view()).node(2)
    assert after is not None and after.pid not in (None, before.pid)
    assert await rules() == cut, "the restarted sink lost the cut"

    await launcher.partition([[3]])
    assert await rules() == {1: ([3], [3]), 2: ([3], [3]), 3: ([1, 2], [1, 2])}
    assert (await launcher.view()).one_way == ()
    await launcher.cut_one_way([2], [1])
    assert (await rules())[2] == ([1, 3], [3]), "a cut adds to the partition in force"

    assert sorted(await launcher.heal()) == [1, 2, 3]
    assert await rules() == {1: ([], []), 2: ([], []), 3: ([], [])}
    healed = await launcher.view()
    assert healed.one_way == () and healed.partition == ()


async def test_a_one_way_cut_naming_an_unknown_or_shared_node_is_refused(
    minikv_home: Path,
) -> None:
    launcher = Launcher("t", home=minikv_home)
    directory = (await launcher.create(nodes=3, shards=2)).record.directory
    with pytest.raises(LauncherError) as unknown:
        await launcher.cut_one_way([1], [4])
    assert "no node 4" in unknown.value.message and unknown.value.exit_code == 2
    with pytest.raises(LauncherError) as shared:
        await launcher.cut_one_way([1, 2], [2])
    assert "node 2 is on both sides" in shared.value.message
    with pytest.raises(LauncherError) as empty:
        await launcher.cut_one_way([], [2])
    assert "both sides" in empty.value.message
    assert read_faults(directory).empty
    # Nodes that are not running get the cut when they start.
    await launcher.cut_one_way([3, 1], [2, 2])
    assert read_faults(directory) == NetworkFaults(one_way=(OneWayCut((1, 3), (2,)),))


def test_a_partition_file_from_before_one_way_cuts_still_loads(tmp_path: Path) -> None:
    (tmp_path / "partition.json").write_text('{"groups": [[1], [2, 3]]}')
    faults = read_faults(tmp_path)
    assert faults == NetworkFaults(groups=((1,), (2, 3)))
    assert faults.rules(1) == ([2, 3], [2, 3]) and faults.rules(3) == ([1], [1])
    (tmp_path / "partition.json").write_text("{not json")
    assert read_faults(tmp_path).empty, "an unreadable file means no cut, as before"


def test_two_racing_ups_start_each_node_exactly_once(minikv_home: Path) -> None:
    """Two `minikv cluster up` processes at once: the cluster lock makes one create and start
    the nodes and the other find them running."""
    minikv = Path(sys.executable).parent / "minikv"
    command = [str(minikv), "cluster", "up", "--name", "race", "--nodes", "3", "--shards", "2"]
    env = {**os.environ, "MINIKV_HOME": str(minikv_home)}
    racers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = []
    for racer in racers:
        out, err = racer.communicate(timeout=90)
        outputs.append(out.decode() + err.decode())
        assert racer.returncode == 0, outputs[-1]
    assert sum("already up" in output for output in outputs) == 1, outputs
    assert "Traceback" not in "".join(outputs)
    view = asyncio.run(Launcher("race", home=minikv_home).view())
    for node in view.nodes:
        data_dir = str(node.record.data_dir).encode()
        serving = [
            pid
            for pid in processes_under(minikv_home)
            if data_dir + b"\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert serving == [node.pid], (node.node_id, serving, node.pid)


async def test_a_node_that_fails_to_start_shows_its_log_and_the_rest_are_stopped(
    minikv_home: Path,
) -> None:
    launcher = Launcher("t", home=minikv_home)
    created = await launcher.create(nodes=3, shards=2)
    broken = created.node(2)
    assert broken is not None
    broken.record.data_dir.parent.mkdir(parents=True, exist_ok=True)
    broken.record.data_dir.write_text("not a directory")

    with pytest.raises(NodeStartFailedError) as caught:
        await launcher.up()
    error = caught.value
    assert error.node_id == 2
    assert "node 2 of t failed to start" in error.message
    assert "is not a directory" in error.message  # the node's own words, from its log
    assert str(broken.record.log_path) in error.message
    assert processes_under(minikv_home) == []
    view = await launcher.view()
    assert [n.process for n in view.nodes] == ["stopped", "down", "stopped"]
    assert view.node(2).record.state == "failed"  # type: ignore[union-attr]
    assert "start-failed" in await events(minikv_home, launcher.name)


async def test_a_taken_port_is_named_before_anything_starts(minikv_home: Path) -> None:
    launcher = Launcher("t", home=minikv_home)
    node = (await launcher.create(nodes=3, shards=2)).node(3)
    assert node is not None
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.record.http_port))
        squatter.listen()
        with pytest.raises(LauncherError) as caught:
            await launcher.up()
    assert f"node 3's HTTP port 127.0.0.1:{node.record.http_port} is taken" in caught.value.message
    assert processes_under(minikv_home) == []
    assert (await launcher.view()).state == "stopped"
    with pytest.raises(LauncherError) as twice:
        await launcher.create()
    assert "already exists" in twice.value.message


async def test_a_node_whose_data_directory_is_gone_is_not_started_empty(
    minikv_home: Path,
) -> None:
    """Started empty with its founding --peers, it bootstrapped afresh and rejoined with no
    memory of its votes or log (seen: it even became the meta leader)."""
    launcher = Launcher("t", home=minikv_home)
    await launcher.up(nodes=3, shards=2)
    try:
        await launcher.stop(3)
        node = (await launcher.view()).node(3)
        assert node is not None
        shutil.rmtree(node.record.data_dir)
        with pytest.raises(LauncherError) as caught:
            await launcher.start(3)
        assert caught.value.message.startswith("node 3 served before, but its data directory")
        assert "`minikv cluster repair --dead 3`" in caught.value.hint
        assert not node.record.data_dir.exists()
        await launcher.down()
        with pytest.raises(LauncherError) as again:
            await launcher.up()
        assert "start the others (`minikv cluster start 1`, `minikv cluster start 2`)" in (
            again.value.hint
        )
        assert processes_under(minikv_home) == []
        await launcher.start(1)  # the others still start one by one
    finally:
        await launcher.down()


async def test_operations_on_a_missing_cluster_or_node_say_what_exists(minikv_home: Path) -> None:
    with pytest.raises(LauncherError) as no_cluster:
        await Launcher("ghost", home=minikv_home).kill(1)
    assert "no local cluster named 'ghost'" in no_cluster.value.message
    assert "minikv cluster up --name ghost" in no_cluster.value.hint
    with pytest.raises(LauncherError) as bad_name:
        Launcher("Bad Name", home=minikv_home)
    assert bad_name.value.exit_code == 2
    with pytest.raises(LauncherError) as bad_settings:
        await Launcher("x", home=minikv_home).up(nodes=2, replicas=3)
    assert "--replicas" in bad_settings.value.message
    assert not (minikv_home / "x").exists()


def _record(pid: int | None, pid_start: int | None, data_dir: Path) -> NodeRecord:
    return NodeRecord(
        cluster="t",
        node_id=1,
        grpc_port=1,
        http_port=2,
        data_dir=data_dir,
        log_path=data_dir.with_suffix(".log"),
        state="running",
        pid=pid,
        pid_start=pid_start,
    )


def test_a_pid_counts_only_with_its_start_time_command_line_and_data_dir(tmp_path: Path) -> None:
    """A stand-in process with a node's command line shape (it only sleeps): the launcher
    must accept it only while pid, start time, program and data directory all match."""
    data_dir = tmp_path / "node1"
    code = "import time; time.sleep(60)"
    argv = [sys.executable, "-c", code, "minikv_core.server", "--data-dir", str(data_dir)]
    process = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while str(data_dir).encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in never showed its command line"
            time.sleep(0.01)
        start = process_start_ticks(process.pid)
        assert start is not None
        assert node_process_state(_record(process.pid, start, data_dir)) == "up"
        # The same pid with another start time: a reused pid, not our node.
        assert node_process_state(_record(process.pid, start + 1, data_dir)) == "down"
        # Another data directory: another cluster's node.
        assert node_process_state(_record(process.pid, start, tmp_path / "x")) == "down"
        # A live process that is not a node at all (this test).
        mine = process_start_ticks(os.getpid())
        assert node_process_state(_record(os.getpid(), mine, data_dir)) == "down"
    finally:
        process.kill()
        process.wait()
    assert node_process_state(_record(process.pid, start, data_dir)) == "down"
    stopped = NodeRecord(**{**_record(None, None, data_dir).__dict__, "state": "stopped"})
    assert node_process_state(stopped) == "stopped"


# ------------------------------------------------------------------- membership records

_SCHEMA_1 = """
CREATE TABLE clusters (
    name TEXT PRIMARY KEY NOT NULL, directory TEXT NOT NULL,
    nodes INTEGER NOT NULL CHECK (nodes >= 1), shards INTEGER NOT NULL CHECK (shards >= 1),
    replicas INTEGER NOT NULL CHECK (replicas BETWEEN 1 AND nodes), created_at REAL NOT NULL
);
CREATE TABLE nodes (
    cluster TEXT NOT NULL REFERENCES clusters (name), node_id INTEGER NOT NULL,
    grpc_port INTEGER NOT NULL, http_port INTEGER NOT NULL, data_dir TEXT NOT NULL,
    log_path TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('stopped', 'running', 'paused', 'killed', 'failed')),
    pid INTEGER, pid_start INTEGER, PRIMARY KEY (cluster, node_id)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
    cluster TEXT NOT NULL REFERENCES clusters (name), node INTEGER, kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_by_cluster ON events (cluster, id);
CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL, applied_at REAL NOT NULL);
INSERT INTO schema_version VALUES (1, 0);
"""


async def test_a_registry_from_before_membership_changes_keeps_its_nodes_as_founding_members(
    tmp_path: Path,
) -> None:
    """Schema 1 (no joined / removed columns), as the previous release wrote it: opened by
    this one, its nodes are founding members; removal hides a node without freeing its id."""
    with sqlite3.connect(tmp_path / "registry.sqlite3") as db:
        db.executescript(_SCHEMA_1)
        db.execute("INSERT INTO clusters VALUES ('old', ?, 2, 4, 2, 0)", (str(tmp_path / "old"),))
        for node_id in (1, 2):
            db.execute(
                "INSERT INTO nodes VALUES ('old', ?, ?, ?, ?, ?, 'stopped', NULL, NULL)",
                (node_id, 7000 + node_id, 7100 + node_id, f"/d{node_id}", f"/l{node_id}"),
            )
    async with await Registry.open(tmp_path) as registry:
        nodes = await registry.nodes("old")
        assert [(n.node_id, n.joined, n.removed) for n in nodes] == [
            (1, False, False),
            (2, False, False),
        ]
        removed = await registry.mark_removed("old", 2)
        assert removed.removed and removed.removed_at is not None
        again = await registry.mark_removed("old", 2)
        assert again.removed_at == removed.removed_at  # the first removal is the one kept
        assert [n.node_id for n in await registry.nodes("old")] == [1]
        assert [n.node_id for n in await registry.nodes("old", include_removed=True)] == [1, 2]
        assert await registry.node("old", 2) == again
        with pytest.raises(RegistryError) as taken:
            await registry.add_node(NodeRecord(**{**nodes[0].__dict__, "node_id": 2}))
        assert "already has a node 2" in taken.value.message


async def test_a_removed_node_is_never_started_and_its_id_and_ports_stay_taken(
    minikv_home: Path,
) -> None:
    """Without processes: what the launcher would run for each kind of node, and what it
    refuses to touch once a node is removed."""
    launcher = Launcher("t", home=minikv_home)
    created = await launcher.create(nodes=3, shards=2)
    async with await Registry.open(minikv_home) as registry:
        await registry.mark_removed("t", 3)
        everyone = await registry.nodes("t", include_removed=True)
        record = await registry.cluster("t")
    assert record is not None
    assert [n.node_id for n in (await launcher.view()).nodes] == [1, 2]
    with pytest.raises(LauncherError) as refused:
        await launcher.start(3)
    assert "node 3 was removed from cluster t" in refused.value.message
    assert refused.value.exit_code == 2 and "add-node" in refused.value.hint

    joined = new_node(record, everyone)
    assert joined.node_id == 4 and joined.joined  # 3 is never handed out again
    taken = {port for n in everyone for port in (n.grpc_port, n.http_port)}
    assert not {joined.grpc_port, joined.http_port} & taken
    assert joined.data_dir == created.record.directory / "node4"

    founding_peers = ",".join(f"{n.node_id}=127.0.0.1:{n.grpc_port}" for n in everyone)
    first = node_command(record, everyone[0], [*everyone, joined])
    assert first[first.index("--peers") + 1] == founding_peers  # the removed node 3 included
    assert "--join" not in first
    for flag in ("--shards", "--replicas", "--cluster-id"):
        assert flag in first
    second = node_command(record, joined, [*everyone, joined])
    assert second[second.index("--join") + 1] in {f"127.0.0.1:{n.grpc_port}" for n in everyone[:2]}
    assert "--no-rebalance" in second  # the tool adding it runs the rebalance itself
    for flag in ("--peers", "--shards", "--replicas", "--cluster-id"):
        assert flag not in second
    alone = NodeRecord(**{**joined.__dict__, "node_id": 9})
    with pytest.raises(ValueError, match="no other member"):
        node_command(record, alone, [alone])


async def test_add_node_that_fails_to_start_is_stopped_and_its_id_skipped(
    local_cluster: Launcher, minikv_home: Path
) -> None:
    launcher = local_cluster
    directory = (await launcher.view()).record.directory
    (directory / "node4").write_text("not a directory")
    with pytest.raises(LauncherError) as caught:
        await launcher.add_node()
    assert "node 4 of t failed to start" in caught.value.message
    assert "is not a directory" in caught.value.message
    assert "minikv cluster add-node" in caught.value.hint
    assert [n.node_id for n in (await launcher.view()).nodes] == [1, 2, 3]
    assert len(processes_under(minikv_home)) == 3

    assert await launcher.add_node() == 5
    view = await launcher.view()
    assert [(n.node_id, n.process) for n in view.nodes] == [(i, "up") for i in (1, 2, 3, 5)]
    added = view.node(5)
    assert added is not None and added.record.joined and added.pid is not None
    argv = Path(f"/proc/{added.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--join" in argv and b"--peers" not in argv
    async with AsyncClient(view.endpoints()) as client:
        shard_map = await client.shard_map()
    assert sorted(node["id"] for node in shard_map["nodes"]) == [1, 2, 3, 5]
    journal = [(e.node, e.kind) for e in await _events(minikv_home, launcher.name)]
    assert journal.count((4, "add-node")) == 1 and (5, "add-node") in journal


async def _events(home: Path, name: str) -> list[EventRecord]:
    async with await Registry.open(home) as registry:
        return await registry.events(name)


async def test_transfer_to_a_node_without_a_replica_is_a_usage_error(minikv_home: Path) -> None:
    """It said "node at 127.0.0.1:PORT reports no replica of shard 0" and exited 1: the
    person asked for the wrong node, which the message did not name."""
    launcher = Launcher("solo", home=minikv_home)
    try:
        await launcher.up(nodes=3, shards=2, replicas=1)
        snap = await snapshot(launcher)
        holder = snap.shards[0].leader
        assert holder is not None, snap
        other = next(n.node_id for n in snap.nodes if n.node_id != holder)
        with pytest.raises(LauncherError) as refused:
            await launcher.transfer_leader(0, other)
        assert refused.value.exit_code == 2
        assert f"node {other} holds no replica of shard 0" in refused.value.message
    finally:
        await launcher.down(grace_s=2.0)
