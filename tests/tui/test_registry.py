"""The registry of local clusters: schema migrations, records, the event journal, and sharing
one file between real processes (the CLI, the launcher and the dashboard all write to it)."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, cast

import pytest

from minikv_tui.registry import (
    REGISTRY_FILENAME,
    SCHEMA_VERSION,
    ClusterRecord,
    ClusterSettings,
    EventRecord,
    NodeRecord,
    NodeState,
    Registry,
    RegistryError,
    default_home,
)

PROCESS_DEADLINE_S = 60.0


def make_cluster(
    home: Path, name: str, nodes: int = 3, created_at: float = 1_700_000_000.25
) -> tuple[ClusterRecord, list[NodeRecord]]:
    directory = home / "clusters" / name
    record = ClusterRecord(
        name=name,
        directory=directory,
        settings=ClusterSettings(nodes=nodes, shards=8, replicas=min(3, nodes)),
        created_at=created_at,
    )
    node_records = [
        NodeRecord(
            cluster=name,
            node_id=node_id,
            grpc_port=40_000 + node_id,
            http_port=41_000 + node_id,
            data_dir=directory / f"node{node_id}",
            log_path=directory / f"node{node_id}.log",
            state="stopped",
        )
        for node_id in range(1, nodes + 1)
    ]
    return record, node_records


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file behind the registry's back, as another tool would."""
    with sqlite3.connect(path) as db:
        return list(db.execute(sql).fetchall())


# -- schema -------------------------------------------------------------------------------------


async def test_migrations_from_empty_home_create_the_schema_in_wal_mode(tmp_path: Path) -> None:
    home = tmp_path / "not" / "yet" / "there"
    async with await Registry.open(home) as registry:
        assert registry.path == home / REGISTRY_FILENAME
    versions = sqlite_rows(registry.path, "SELECT version FROM schema_version ORDER BY version")
    assert [version for (version,) in versions] == list(range(1, SCHEMA_VERSION + 1))
    tables = {name for (name,) in sqlite_rows(registry.path, "SELECT name FROM sqlite_master")}
    assert {"clusters", "nodes", "events", "schema_version"} <= tables
    assert sqlite_rows(registry.path, "PRAGMA journal_mode") == [("wal",)]


async def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    cluster, nodes = make_cluster(tmp_path, "keep")
    async with await Registry.open(tmp_path) as registry:
        await registry.add_cluster(cluster, nodes)
        updated = await registry.update_node("keep", 2, state="running", pid=4242, pid_start=99)
        event = await registry.record_event("keep", "start", "node 2 started", node=2)
    async with await Registry.open(tmp_path) as registry:
        assert await registry.clusters() == [cluster]
        assert await registry.cluster("keep") == cluster
        assert await registry.node("keep", 2) == updated
        assert await registry.nodes("keep") == [nodes[0], updated, nodes[2]]
        assert await registry.events("keep") == [event]
    versions = sqlite_rows(tmp_path / REGISTRY_FILENAME, "SELECT version FROM schema_version")
    assert len(versions) == SCHEMA_VERSION


async def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    async with await Registry.open(tmp_path) as registry:
        path = registry.path
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, 0)",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(RegistryError) as caught:
        await Registry.open(tmp_path)
    assert caught.value.message == (
        f"registry schema {SCHEMA_VERSION + 1} is newer than this minikv ({SCHEMA_VERSION}): "
        "upgrade minikv"
    )
    assert str(path) in caught.value.hint
    assert sqlite_rows(path, "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION + 1,)]


async def test_corrupt_registry_file_names_the_file_and_says_to_move_it_aside(
    tmp_path: Path,
) -> None:
    path = tmp_path / REGISTRY_FILENAME
    garbage = b"this is not a SQLite database, it is a text file\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(RegistryError) as caught:
        await Registry.open(tmp_path)
    assert str(path) in caught.value.message
    assert "corrupt" in caught.value.message
    assert f"mv {path} " in caught.value.hint
    assert path.read_bytes() == garbage, "a corrupt registry must not be overwritten"


async def test_home_that_is_a_file_is_a_registry_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("a file where the minikv home should be\n")
    with pytest.raises(RegistryError, match=f"cannot create the minikv home {home}") as caught:
        await Registry.open(home)
    assert "MINIKV_HOME" in caught.value.hint


# -- default home -------------------------------------------------------------------------------


def test_default_home_prefers_minikv_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIKV_HOME", str(tmp_path / "mk"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "mk"


def test_default_home_expands_a_tilde_in_minikv_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MINIKV_HOME", "~/mk")
    assert default_home() == tmp_path / "mk"


def test_default_home_falls_back_to_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MINIKV_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "minikv"


@pytest.mark.parametrize("xdg", [None, "", "relative/data"])
def test_default_home_without_usable_xdg_is_under_local_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MINIKV_HOME", "")
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert default_home() == tmp_path / ".local" / "share" / "minikv"


async def test_open_without_home_uses_default_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIKV_HOME", str(tmp_path / "from-env"))
    async with await Registry.open() as registry:
        assert registry.path == tmp_path / "from-env" / REGISTRY_FILENAME
    assert registry.path.is_file()


# -- clusters -----------------------------------------------------------------------------------


async def test_add_list_and_remove_clusters(tmp_path: Path) -> None:
    async with await Registry.open(tmp_path) as registry:
        zeta, zeta_nodes = make_cluster(tmp_path, "zeta", nodes=1)
        alpha, alpha_nodes = make_cluster(tmp_path, "alpha", nodes=5)
        await registry.add_cluster(zeta, zeta_nodes)
        await registry.add_cluster(alpha, alpha_nodes)
        assert await registry.clusters() == [alpha, zeta]
        assert await registry.nodes("alpha") == alpha_nodes
        assert await registry.node("alpha", 5) == alpha_nodes[4]
        assert await registry.node("alpha", 6) is None
        assert await registry.cluster("nope") is None
        await registry.record_event("alpha", "up")
        kept = await registry.record_event("zeta", "up")

        await registry.remove_cluster("alpha")

        assert await registry.clusters() == [zeta]
        assert await registry.cluster("alpha") is None
        assert await registry.nodes("alpha") == []
        assert await registry.events("alpha") == []
        assert await registry.nodes("zeta") == zeta_nodes
        assert await registry.events("zeta") == [kept]
    path = tmp_path / REGISTRY_FILENAME
    assert sqlite_rows(path, "SELECT COUNT(*) FROM nodes WHERE cluster = 'alpha'") == [(0,)]
    assert sqlite_rows(path, "SELECT COUNT(*) FROM events WHERE cluster = 'alpha'") == [(0,)]


async def test_remove_unknown_cluster_is_a_registry_error(tmp_path: Path) -> None:
    async with await Registry.open(tmp_path) as registry:
        with pytest.raises(RegistryError, match="no local cluster named 'ghost'"):
            await registry.remove_cluster("ghost")


async def test_duplicate_cluster_name_is_refused_and_the_first_is_kept(tmp_path: Path) -> None:
    async with await Registry.open(tmp_path) as registry:
        first, first_nodes = make_cluster(tmp_path, "twin", nodes=3)
        second, second_nodes = make_cluster(tmp_path / "elsewhere", "twin", nodes=5)
        await registry.add_cluster(first, first_nodes)
        with pytest.raises(RegistryError, match="'twin' already exists") as caught:
            await registry.add_cluster(second, second_nodes)
        assert "another name" in caught.value.hint
        assert await registry.clusters() == [first]
        assert await registry.nodes("twin") == first_nodes


@pytest.mark.parametrize(
    "name", ["", "A", "Upper", "-lead", "_lead", "a" * 41, "a b", "a/b", "a.b", "ok\n", "é"]
)
async def test_bad_cluster_names_are_refused_with_the_rule(tmp_path: Path, name: str) -> None:
    async with await Registry.open(tmp_path) as registry:
        cluster, nodes = make_cluster(tmp_path, name)
        with pytest.raises(RegistryError, match="invalid cluster name") as caught:
            await registry.add_cluster(cluster, nodes)
        assert "[a-z0-9][a-z0-9_-]{0,39}" in caught.value.hint
        assert await registry.clusters() == []


@pytest.mark.parametrize("name", ["a", "7", "a" * 40, "my-cluster_2"])
async def test_good_cluster_names_are_accepted(tmp_path: Path, name: str) -> None:
    async with await Registry.open(tmp_path) as registry:
        cluster, nodes = make_cluster(tmp_path, name)
        await registry.add_cluster(cluster, nodes)
        assert await registry.cluster(name) == cluster


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (ClusterSettings(nodes=0, shards=8, replicas=1), "at least 1"),
        (ClusterSettings(nodes=3, shards=0, replicas=1), "at least 1"),
        (ClusterSettings(nodes=2, shards=8, replicas=3), "at most as many replicas as nodes"),
    ],
)
async def test_impossible_settings_are_refused(
    tmp_path: Path, settings: ClusterSettings, complaint: str
) -> None:
    async with await Registry.open(tmp_path) as registry:
        cluster = ClusterRecord("bad", tmp_path / "bad", settings, created_at=1.0)
        with pytest.raises(RegistryError) as caught:
            await registry.add_cluster(cluster, [])
        assert complaint in caught.value.hint
        assert await registry.clusters() == []


async def test_relative_paths_are_stored_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cluster, nodes = make_cluster(Path("rel"), "rel", nodes=1)
    async with await Registry.open(tmp_path / "home") as registry:
        await registry.add_cluster(cluster, nodes)
        stored = await registry.cluster("rel")
        stored_node = await registry.node("rel", 1)
    assert stored is not None and stored_node is not None
    assert stored.directory == tmp_path / "rel" / "clusters" / "rel"
    assert stored_node.log_path == tmp_path / "rel" / "clusters" / "rel" / "node1.log"


# -- nodes --------------------------------------------------------------------------------------


async def test_update_node_changes_state_and_pid(tmp_path: Path) -> None:
    cluster, nodes = make_cluster(tmp_path, "upd")
    async with await Registry.open(tmp_path) as registry:
        await registry.add_cluster(cluster, nodes)
        running = await registry.update_node("upd", 1, state="running", pid=1234, pid_start=777)
        assert running == NodeRecord(
            cluster="upd",
            node_id=1,
            grpc_port=40_001,
            http_port=41_001,
            data_dir=nodes[0].data_dir,
            log_path=nodes[0].log_path,
            state="running",
            pid=1234,
            pid_start=777,
        )
        assert await registry.node("upd", 1) == running
        killed = await registry.update_node("upd", 1, state="killed", pid=None, pid_start=None)
        assert (killed.state, killed.pid, killed.pid_start) == ("killed", None, None)
        assert await registry.nodes("upd") == [killed, nodes[1], nodes[2]]


async def test_update_unknown_node_or_cluster_or_state_is_a_registry_error(
    tmp_path: Path,
) -> None:
    cluster, nodes = make_cluster(tmp_path, "upd")
    async with await Registry.open(tmp_path) as registry:
        await registry.add_cluster(cluster, nodes)
        with pytest.raises(RegistryError, match="cluster 'upd' has no node 9"):
            await registry.update_node("upd", 9, state="running", pid=1, pid_start=1)
        with pytest.raises(RegistryError, match="no local cluster named 'ghost'"):
            await registry.update_node("ghost", 1, state="running", pid=1, pid_start=1)
        with pytest.raises(RegistryError, match="unknown node state 'zombie'") as caught:
            await registry.update_node(
                "upd", 1, state=cast(NodeState, "zombie"), pid=None, pid_start=None
            )
        assert "stopped, running, paused, killed, failed" in caught.value.hint
        assert await registry.nodes("upd") == nodes


# -- events -------------------------------------------------------------------------------------


async def test_events_come_in_id_order_and_page_with_after_id(tmp_path: Path) -> None:
    async with await Registry.open(tmp_path) as registry:
        for name in ("one", "two"):
            await registry.add_cluster(*make_cluster(tmp_path, name))
        recorded: list[EventRecord] = []
        for index in range(25):
            recorded.append(
                await registry.record_event("one", "leader-change", f"#{index}", node=index % 3)
            )
            await registry.record_event("two", "noise")  # interleaved ids of another cluster
        assert [event.id for event in recorded] == sorted({event.id for event in recorded})
        assert [event.at for event in recorded] == sorted(event.at for event in recorded)

        pages: list[list[EventRecord]] = []
        after_id = 0
        while page := await registry.events("one", after_id=after_id, limit=10):
            pages.append(page)
            after_id = page[-1].id
        assert [len(page) for page in pages] == [10, 10, 5]
        assert [event for page in pages for event in page] == recorded
        assert await registry.events("one") == recorded
        assert await registry.events("one", after_id=recorded[-1].id) == []
        assert recorded[7] == EventRecord(
            id=recorded[7].id,
            at=recorded[7].at,
            cluster="one",
            node=1,
            kind="leader-change",
            detail="#7",
        )


async def test_event_ids_are_not_reused_after_a_cluster_is_removed(tmp_path: Path) -> None:
    """A poller holding `after_id` must see the events of a re-created cluster of that name."""
    async with await Registry.open(tmp_path) as registry:
        await registry.add_cluster(*make_cluster(tmp_path, "again"))
        last = await registry.record_event("again", "up")
        await registry.remove_cluster("again")
        await registry.add_cluster(*make_cluster(tmp_path, "again"))
        fresh = await registry.record_event("again", "up")
        assert fresh.id > last.id
        assert await registry.events("again", after_id=last.id) == [fresh]


async def test_event_for_unknown_cluster_is_a_registry_error(tmp_path: Path) -> None:
    async with await Registry.open(tmp_path) as registry:
        with pytest.raises(RegistryError, match="no local cluster named 'ghost'"):
            await registry.record_event("ghost", "up")
        assert await registry.events("ghost") == []


async def test_concurrent_tasks_share_one_registry(tmp_path: Path) -> None:
    """Dashboard workers call one Registry at once: transactions must not interleave."""
    async with await Registry.open(tmp_path) as registry:
        await registry.add_cluster(*make_cluster(tmp_path, "tasks"))
        states: tuple[NodeState, ...] = ("running", "paused", "stopped")
        results = await asyncio.gather(
            *(registry.record_event("tasks", "tick", str(index)) for index in range(40)),
            *(
                registry.update_node("tasks", 1, state=states[i % 3], pid=i + 1, pid_start=i)
                for i in range(20)
            ),
        )
        events = [result for result in results if isinstance(result, EventRecord)]
        assert len({event.id for event in events}) == 40
        assert sorted(events, key=lambda event: event.id) == await registry.events("tasks")


# -- several processes on one registry ----------------------------------------------------------

WORKERS = 4
EVENTS_PER_WORKER = 40
SHARED_CLUSTER = "shared"


def _append_worker(
    home: str, worker: int, barrier: threading.Barrier, results: multiprocessing.Queue[Any]
) -> None:
    """In a child process: append events and update this worker's node, as a CLI would."""

    async def run() -> list[int]:
        async with await Registry.open(Path(home)) as registry:
            barrier.wait(timeout=PROCESS_DEADLINE_S)
            ids: list[int] = []
            node_id = worker + 1
            for index in range(EVENTS_PER_WORKER):
                event = await registry.record_event(
                    SHARED_CLUSTER, "test", f"w{worker}-{index}", node=node_id
                )
                ids.append(event.id)
                state: NodeState = "running" if index % 2 else "paused"
                await registry.update_node(
                    SHARED_CLUSTER, node_id, state=state, pid=1000 + index, pid_start=worker
                )
            return ids

    try:
        results.put((worker, asyncio.run(run()), None))
    except BaseException as exc:
        results.put((worker, [], f"{type(exc).__name__}: {exc}"))


def _add_cluster_worker(
    home: str, worker: int, barrier: threading.Barrier, results: multiprocessing.Queue[Any]
) -> None:
    """In a child process: open a maybe-new registry and claim the name 'race'."""

    async def run() -> str:
        barrier.wait(timeout=PROCESS_DEADLINE_S)
        cluster, nodes = make_cluster(Path(home) / f"w{worker}", "race", nodes=worker + 1)
        async with await Registry.open(Path(home)) as registry:
            try:
                await registry.add_cluster(cluster, nodes)
            except RegistryError as exc:
                return f"RegistryError: {exc.message}"
            return "ok"

    try:
        results.put((worker, asyncio.run(run()), None))
    except BaseException as exc:
        results.put((worker, "", f"{type(exc).__name__}: {exc}"))


@contextmanager
def spawned(
    target: Callable[..., None], home: Path, count: int
) -> Iterator[multiprocessing.Queue[Any]]:
    """Start `count` fresh interpreters released together by a barrier; always reap them."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results: multiprocessing.Queue[Any] = context.Queue()
    processes: list[SpawnProcess] = [
        context.Process(target=target, args=(str(home), worker, barrier, results))
        for worker in range(count)
    ]
    try:
        for process in processes:
            process.start()
        yield results
        for process in processes:
            process.join(timeout=PROCESS_DEADLINE_S)
            assert process.exitcode == 0, f"worker exited with {process.exitcode}"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        results.close()


def collect(results: multiprocessing.Queue[Any], count: int) -> dict[int, tuple[Any, str | None]]:
    collected: dict[int, tuple[Any, str | None]] = {}
    deadline = time.monotonic() + PROCESS_DEADLINE_S
    while len(collected) < count:
        try:
            worker, value, error = results.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"only {sorted(collected)} of {count} workers reported in time")
        collected[worker] = (value, error)
    return collected


async def test_processes_appending_events_and_updating_nodes_lose_nothing(
    tmp_path: Path,
) -> None:
    async with await Registry.open(tmp_path) as registry:
        await registry.add_cluster(*make_cluster(tmp_path, SHARED_CLUSTER, nodes=WORKERS))
        total = WORKERS * EVENTS_PER_WORKER
        with spawned(_append_worker, tmp_path, WORKERS) as results:
            # Poll as the dashboard does while the writers run: each event exactly once, in id
            # order, although commits from four processes interleave.
            seen: list[EventRecord] = []
            deadline = time.monotonic() + PROCESS_DEADLINE_S
            while len(seen) < total and time.monotonic() < deadline:
                after_id = seen[-1].id if seen else 0
                seen += await registry.events(SHARED_CLUSTER, after_id=after_id, limit=16)
                await asyncio.sleep(0.005)  # pacing, not synchronisation: the deadline rules
            reports = await asyncio.to_thread(collect, results, WORKERS)

        errors = {worker: error for worker, (_, error) in reports.items() if error}
        assert errors == {}, f"workers failed: {errors}"
        stored = await registry.events(SHARED_CLUSTER, limit=total + 1)
        assert len(stored) == total
        assert seen == stored
        ids = [event.id for event in stored]
        assert ids == sorted(set(ids)), "ids must be unique and increasing"
        for worker, (worker_ids, _) in reports.items():
            assert worker_ids == sorted(set(worker_ids)), f"worker {worker} saw ids go back"
            mine = [event for event in stored if event.node == worker + 1]
            assert [event.id for event in mine] == worker_ids
            assert [event.detail for event in mine] == [
                f"w{worker}-{index}" for index in range(EVENTS_PER_WORKER)
            ]
        nodes = await registry.nodes(SHARED_CLUSTER)
        assert [(node.state, node.pid, node.pid_start) for node in nodes] == [
            ("running", 1000 + EVENTS_PER_WORKER - 1, worker) for worker in range(WORKERS)
        ]


async def test_processes_racing_to_add_the_same_name_exactly_one_wins(tmp_path: Path) -> None:
    """They also race to create and migrate the registry, since the home starts empty."""
    racers = 3
    with spawned(_add_cluster_worker, tmp_path, racers) as results:
        reports = await asyncio.to_thread(collect, results, racers)
    errors = {worker: error for worker, (_, error) in reports.items() if error}
    assert errors == {}, f"workers failed outside the registry's rules: {errors}"
    outcomes = {worker: outcome for worker, (outcome, _) in reports.items()}
    winners = [worker for worker, outcome in outcomes.items() if outcome == "ok"]
    assert len(winners) == 1, outcomes
    for worker, outcome in outcomes.items():
        if worker != winners[0]:
            assert outcome == "RegistryError: a local cluster named 'race' already exists"
    winner = winners[0]
    async with await Registry.open(tmp_path) as registry:
        cluster, nodes = make_cluster(tmp_path / f"w{winner}", "race", nodes=winner + 1)
        assert await registry.clusters() == [cluster]
        assert await registry.nodes("race") == nodes
