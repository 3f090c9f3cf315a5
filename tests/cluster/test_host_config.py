"""NodeConfig validation and the node identity file (what a data directory belongs to)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from minikv_core.cluster import config as config_module
from minikv_core.cluster.config import (
    IdentityError,
    IdentityMismatchError,
    NodeConfig,
    NodeIdentity,
    derive_cluster_id,
)
from minikv_core.net import limits as net_limits

PEERS = {1: "127.0.0.1:9001", 2: "127.0.0.1:9002", 3: "127.0.0.1:9003"}


def make(tmp_path: Path, **overrides: Any) -> NodeConfig:
    values: dict[str, Any] = {
        "node_id": 1,
        "data_dir": tmp_path / "node1",
        "grpc_address": "127.0.0.1:9001",
        "http_address": "127.0.0.1:8001",
        "peers": PEERS,
    }
    values.update(overrides)
    return NodeConfig(**values)


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    config = make(tmp_path)
    assert (config.shards, config.replicas, config.tick_ms) == (8, 3, 100)
    assert config.request_timeout_s == 5.0
    assert config.value_size_bytes_max == 1024 * 1024
    assert config.key_size_bytes_max >= 1024
    assert config.wal_dir == tmp_path / "node1" / "wal"
    assert config.shard_dir(3) == tmp_path / "node1" / "shards" / "3"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node_id": 0}, "node_id must be a positive integer"),
        ({"node_id": 4}, "peers must include this node"),
        ({"node_id": True}, "node_id must be an integer"),
        ({"grpc_address": "nohost"}, "grpc_address must be host:port"),
        ({"http_address": "h:99999"}, "http_address must be host:port"),
        ({"peers": {}}, "peers must list every node"),
        ({"peers": {1: "a:1", 2: "a:1"}}, "used by several nodes"),
        ({"peers": {1: "a:1", -2: "b:2"}}, "positive integers"),
        ({"peers": {1: "a:1", 2: "b"}}, r"peers\[2\] must be host:port"),
        ({"replicas": 4}, "cannot exceed the number of nodes"),
        ({"shards": 0}, "shards must be in"),
        ({"tick_ms": 0}, "tick_ms must be in"),
        ({"election_timeout_ticks": 1}, "election_timeout_ticks must be in"),
        ({"value_size_bytes_max": 0}, "value_size_bytes_max must be in"),
        ({"value_size_bytes_max": 1 << 40}, "value_size_bytes_max must be in"),
        ({"key_size_bytes_max": 512}, "key_size_bytes_max must be in 1024"),
        ({"key_size_bytes_max": 1 << 20}, "key_size_bytes_max must be in"),
        ({"wal_segment_size_bytes": 100}, "wal_segment_size_bytes must be in"),
        ({"request_timeout_ms": 0}, "request_timeout_ms must be in"),
        ({"cluster_id": "x" * 200}, "cluster_id must be at most 128"),
        ({"seed": "7"}, "seed must be an integer"),
    ],
)
def test_invalid_settings_raise_value_error_naming_the_field(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **overrides)


def test_cluster_id_is_derived_from_the_sorted_peer_list(tmp_path: Path) -> None:
    reordered = dict(reversed(list(PEERS.items())))
    assert make(tmp_path).cluster_id == make(tmp_path, peers=reordered).cluster_id
    assert make(tmp_path).cluster_id == derive_cluster_id(PEERS)
    other = {**PEERS, 3: "127.0.0.1:9999"}
    assert make(tmp_path, peers=other).cluster_id != make(tmp_path).cluster_id
    assert make(tmp_path, cluster_id="demo").cluster_id == "demo", "an explicit id wins"


def test_identity_round_trips_through_its_file(tmp_path: Path) -> None:
    config = make(tmp_path)
    config.data_dir.mkdir(parents=True)
    identity = NodeIdentity.of(config, bootstrapped=True, incarnation="0a1b2c3d")
    identity.store(config.identity_path)
    assert not config.identity_path.with_name("identity.json.tmp").exists()
    loaded = NodeIdentity.load(config.identity_path)
    assert loaded == identity
    assert loaded is not None
    loaded.check(config, config.identity_path)


def test_missing_identity_file_means_a_fresh_directory(tmp_path: Path) -> None:
    assert NodeIdentity.load(tmp_path / "identity.json") is None


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"node_id": 2, "grpc_address": "127.0.0.1:9002"}, "node_id"),
        ({"peers": {**PEERS, 4: "127.0.0.1:9004"}}, "peers"),
        ({"shards": 16}, "shards"),
        ({"replicas": 1}, "replicas"),
        ({"cluster_id": "other"}, "cluster_id"),
    ],
)
def test_flags_contradicting_the_identity_name_the_field(
    tmp_path: Path, overrides: dict[str, Any], field_name: str
) -> None:
    original = make(tmp_path)
    original.data_dir.mkdir(parents=True)
    NodeIdentity.of(original, bootstrapped=True, incarnation="0a1b").store(original.identity_path)
    stored = NodeIdentity.load(original.identity_path)
    assert stored is not None
    changed = make(tmp_path, **overrides)
    with pytest.raises(IdentityMismatchError, match=f"{field_name}=") as caught:
        stored.check(changed, original.identity_path)
    assert caught.value.field_name == field_name
    assert str(original.data_dir) in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"format": 2}', b'{"format": 1, "node_id": "1"}'],
)
def test_malformed_identity_file_is_reported_with_its_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.json"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match=r"identity\.json"):
        NodeIdentity.load(path)


def test_identity_file_is_human_readable_json(tmp_path: Path) -> None:
    config = make(tmp_path)
    config.data_dir.mkdir(parents=True)
    NodeIdentity.of(config, bootstrapped=False, incarnation="0a1b").store(config.identity_path)
    document = json.loads(config.identity_path.read_text())
    assert document["node_id"] == 1
    assert document["peers"] == {str(k): v for k, v in PEERS.items()}
    assert document["bootstrapped"] is False


def test_request_timeout_bound_is_the_api_deadline_cap(tmp_path: Path) -> None:
    """A node timeout the APIs would refuse or cap must be refused at config time instead."""
    assert config_module.REQUEST_TIMEOUT_MS_MAX == net_limits.REQUEST_TIMEOUT_MS_MAX
    at_cap = make(tmp_path, request_timeout_ms=net_limits.REQUEST_TIMEOUT_MS_MAX)
    assert at_cap.request_timeout_s == net_limits.REQUEST_TIMEOUT_MS_MAX / 1000.0
    with pytest.raises(ValueError, match="request_timeout_ms must be in"):
        make(tmp_path, request_timeout_ms=net_limits.REQUEST_TIMEOUT_MS_MAX + 1)
