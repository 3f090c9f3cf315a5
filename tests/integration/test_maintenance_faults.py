"""Fault injection covers maintenance calls between nodes (issue 5: the filter "covers every
byte exchanged between nodes, forwarding included"). Before, a node cut off from the others
by its own rules still had a repair's dry run answered by the meta leader through a gRPC
channel the filter did not see: the demo's partition let maintenance through."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


async def meta_leader(cluster: Cluster) -> int:
    for node_id in cluster.nodes:
        status, _, body = await cluster.request(node_id, "GET", "/admin/status")
        assert status == 200, body
        for group in json.loads(body)["groups"]:
            if group["group"] == 0 and group["role"] == "leader":
                return node_id
    raise AssertionError("no meta leader")


async def dry_run(cluster: Cluster, node_id: int) -> tuple[int, bytes]:
    status, _, body = await cluster.request(
        node_id, "POST", "/admin/repair", json_body={"dry_run": True}
    )
    return status, body


async def test_a_node_cut_off_by_its_own_rules_cannot_reach_the_meta_leader(
    cluster: Cluster,
) -> None:
    leader = await meta_leader(cluster)
    cut = next(node_id for node_id in cluster.nodes if node_id != leader)
    status, body = await dry_run(cluster, cut)
    assert status == 200, body  # healthy: forwarded to the meta leader and answered
    others = [node_id for node_id in cluster.nodes if node_id != cut]
    rules = {"drop_to": others, "drop_from": others}
    status, _, body = await cluster.request(cut, "POST", "/admin/fault", json_body=rules)
    assert status == 200, body
    status, body = await dry_run(cluster, cut)
    assert status == 503, body
    assert b"fault injection" in body or b"no leader" in body, body
    status, _, body = await cluster.request(cut, "DELETE", "/admin/fault")
    assert status == 200, body


async def test_the_meta_leader_refuses_calls_from_a_node_it_does_not_hear(
    cluster: Cluster,
) -> None:
    """A one-way cut on the callee's side: the meta leader drops what node `cut` sends, so
    the repair that node forwards must not be served either."""
    leader = await meta_leader(cluster)
    cut = next(node_id for node_id in cluster.nodes if node_id != leader)
    status, _, body = await cluster.request(
        leader, "POST", "/admin/fault", json_body={"drop_from": [cut]}
    )
    assert status == 200, body
    status, body = await dry_run(cluster, cut)
    assert status == 503, body
    assert f"a call from node {cut} was dropped".encode() in body, body
    status, _, body = await cluster.request(leader, "DELETE", "/admin/fault")
    assert status == 200, body
    status, body = await dry_run(cluster, cut)
    assert status == 200, body
