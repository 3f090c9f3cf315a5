"""The header and the shard matrix, from hand-made snapshots: the moments the recordings the
SVG snapshots replay never caught (a killed meta leader still named, a paused node)."""

from __future__ import annotations

import datetime as dt

import pytest
from textual.app import App, ComposeResult

from minikv_tui.cluster_status import ClusterSnapshot, NodeStatus, ReplicaStatus, ShardStatus
from minikv_tui.dashboard.themes import palette_for
from minikv_tui.dashboard.widgets.header import ClusterHeader
from minikv_tui.dashboard.widgets.shard_matrix import ShardMatrix


def node(node_id: int, *, process: str = "up", reachable: bool = True) -> NodeStatus:
    return NodeStatus(
        node_id=node_id,
        grpc=f"127.0.0.1:{5000 + node_id}",
        http=None,
        pid=None,
        process=process,  # type: ignore[arg-type]
        reachable=reachable,
        meta_role="follower" if reachable else "unknown",
        meta_term=1,
    )


def snapshot(
    meta_leader: int | None, *nodes: NodeStatus, shards: tuple[ShardStatus, ...] = ()
) -> ClusterSnapshot:
    return ClusterSnapshot(
        taken_at=0.0,
        name="demo",
        nodes=nodes,
        shards=shards,
        meta_leader=meta_leader,
        meta_term=1,
        epoch=1,
    )


class _Host(App[None]):
    def compose(self) -> ComposeResult:
        yield ClusterHeader("demo")


async def shown(state: ClusterSnapshot) -> str:
    app = _Host()
    async with app.run_test(size=(100, 5)):
        header = app.query_one(ClusterHeader)
        header.show(state, palette_for("", True), dt.UTC, False)
        assert header._last is not None
        return header._last.plain


async def test_a_killed_meta_leader_is_not_shown_as_the_leader() -> None:
    """Just after the meta leader is killed, the live followers still name it (until their
    election timeout): the nodes table says "down", so the header must not say "L3" as if it
    led, but "L3?" as the shard matrix's leader column does."""
    text = await shown(snapshot(3, node(1), node(2), node(3, process="down", reachable=False)))
    assert "meta L3?" in text, text


async def test_a_paused_meta_leader_is_not_shown_as_the_leader() -> None:
    text = await shown(snapshot(2, node(1), node(2, process="paused", reachable=False), node(3)))
    assert "meta L2?" in text, text


async def test_a_live_meta_leader_is_shown_plainly() -> None:
    text = await shown(snapshot(1, node(1), node(2), node(3)))
    assert "meta L1 " in text and "?" not in text, text
    assert "meta no leader" in await shown(snapshot(None, node(1), node(2), node(3)))


class _MatrixHost(App[None]):
    def compose(self) -> ComposeResult:
        yield ShardMatrix(id="matrix")


async def matrix_cells(state: ClusterSnapshot, width: int) -> dict[str, str]:
    """Shard 0's row, by column key, with the matrix `width` columns wide."""
    app = _MatrixHost()
    async with app.run_test(size=(width, 10)) as pilot:
        matrix = app.query_one(ShardMatrix)
        matrix.show(state, palette_for("", True))
        await pilot.pause()
        return {
            str(column.value): matrix.get_cell("0", column).plain
            for column in matrix.columns
            if column.value is not None
        }


def one_shard(*live: int) -> tuple[ShardStatus, ...]:
    replicas = {n: ReplicaStatus(n, "leader" if n == 1 else "follower", 1, 7, 7, 7) for n in live}
    return (ShardStatus(0, 1, (1, 2, 3), 1, 1, replicas),)


@pytest.mark.parametrize(("width", "word"), [(80, "paused"), (18, "||")])
async def test_a_paused_nodes_replicas_read_paused_not_down(width: int, word: str) -> None:
    """SIGSTOPped, a node keeps its replicas (frozen): the nodes table said "paused" while
    every one of its matrix cells said "down", as for a killed node."""
    nodes = (node(1), node(2, process="paused", reachable=False), node(3, reachable=False))
    cells = await matrix_cells(snapshot(1, *nodes, shards=one_shard(1)), width)
    assert cells["n2"].strip() == word, cells
    assert cells["n3"].strip() in ("down", "\u00d7"), cells  # killed: still "down"
