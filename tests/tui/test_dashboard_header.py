"""The header line, from hand-made snapshots: the moments a recording rarely catches."""

from __future__ import annotations

import datetime as dt

from textual.app import App, ComposeResult

from minikv_tui.cluster_status import ClusterSnapshot, NodeStatus
from minikv_tui.dashboard.themes import palette_for
from minikv_tui.dashboard.widgets.header import ClusterHeader


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


def snapshot(meta_leader: int | None, *nodes: NodeStatus) -> ClusterSnapshot:
    return ClusterSnapshot(
        taken_at=0.0,
        name="demo",
        nodes=nodes,
        shards=(),
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
