"""The HTTP API over a real in-process node: status codes, headers, encodings, limits,
deadlines, admin and fault routes, metrics, health."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from minikv_core.cluster.service import UnavailableError
from minikv_core.net.http_api import (
    _error_parts,
    _told_as_write,
    decode_bytes_field,
    encode_bytes_field,
)
from minikv_core.server import NodeServer
from tests.net.api_harness import configs, non_loopback_ip, running


class Http:
    def __init__(self, session: aiohttp.ClientSession, server: NodeServer) -> None:
        self.session = session
        self.server = server
        self.base = f"http://{server.http_address}"

    async def call(
        self, method: str, path: str, body: bytes | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(
            method, self.base + path, data=body, timeout=aiohttp.ClientTimeout(total=20), **kwargs
        ) as response:
            return response.status, dict(response.headers), await response.read()

    async def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        status, _, payload = await self.call(method, path, data)
        return status, json.loads(payload)


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    """One node leading every shard (replicas=1), with a 64 KiB value limit."""
    server_configs = configs(tmp_path, 1, shards=2, replicas=1, value_size_max=64 * 1024)
    async with running(server_configs) as servers, aiohttp.ClientSession() as session:
        yield Http(session, servers[0])


async def test_put_get_delete_round_trip_with_versions(http: Http) -> None:
    status, headers, _ = await http.call("PUT", "/kv/alpha", b"one")
    assert status == 204
    first = int(headers["x-minikv-version"])
    status, headers, _ = await http.call("PUT", "/kv/alpha", b"two")
    second = int(headers["x-minikv-version"])
    assert second > first > 0, "versions grow with every write of a key"
    status, headers, body = await http.call("GET", "/kv/alpha")
    assert (status, body, int(headers["x-minikv-version"])) == (200, b"two", second)
    assert headers["Content-Type"] == "application/octet-stream"
    status, headers, body = await http.call("GET", "/kv/alpha?consistency=stale")
    assert (status, body) == (200, b"two")
    assert (await http.call("DELETE", "/kv/alpha"))[0] == 204
    status, _, body = await http.call("GET", "/kv/alpha")
    assert status == 404
    assert json.loads(body) == {"error": "not_found", "detail": json.loads(body)["detail"]}
    status, _, body = await http.call("DELETE", "/kv/alpha")
    assert status == 404, "deleting an absent key is 404"


async def test_binary_keys_are_percent_encoded_bytes_and_empty_values_are_allowed(
    http: Http,
) -> None:
    assert (await http.call("PUT", "/kv/%00%FF%2Fslash", b""))[0] == 204
    status, _, body = await http.call("GET", "/kv/%00%FF%2Fslash")
    assert (status, body) == (200, b"")
    status, scanned = await http.json("GET", "/kv?prefix=%00")
    assert scanned["items"][0]["key_b64"] == base64.b64encode(b"\x00\xff/slash").decode()
    assert "key" not in scanned["items"][0]
    assert scanned["items"][0]["value"] == "", "an empty value is valid UTF-8"


async def test_key_with_slashes_in_the_path_is_one_key(http: Http) -> None:
    assert (await http.call("PUT", "/kv/a/b/c", b"deep"))[0] == 204
    assert (await http.call("GET", "/kv/a%2Fb%2Fc"))[2] == b"deep"


async def test_scan_is_ordered_across_shards_with_limit_and_bounds(http: Http) -> None:
    keys = [f"scan/{n:03d}" for n in range(40)]
    for key in keys:
        assert (await http.call("PUT", f"/kv/{key}", key.encode()))[0] == 204
    assert (await http.call("PUT", "/kv/other", b"x"))[0] == 204
    status, page = await http.json("GET", "/kv?prefix=scan/")
    assert status == 200
    assert [item["key"] for item in page["items"]] == keys
    assert all(item["value"] == item["key"] for item in page["items"])
    assert page["more"] is False
    status, page = await http.json("GET", "/kv?prefix=scan/&limit=15")
    assert [item["key"] for item in page["items"]] == keys[:15]
    assert page["more"] is True
    resume = page["items"][-1]["key"] + "%00"
    status, page = await http.json("GET", f"/kv?prefix=scan/&limit=100&start={resume}")
    assert [item["key"] for item in page["items"]] == keys[15:]
    status, page = await http.json("GET", "/kv?start=scan/010&end=scan/013")
    assert [item["key"] for item in page["items"]] == keys[10:13]


async def test_scan_encodes_invalid_utf8_values_as_base64(http: Http) -> None:
    assert (await http.call("PUT", "/kv/bin", b"\xff\xfe"))[0] == 204
    assert (await http.call("PUT", "/kv/txt", "é".encode()))[0] == 204
    _, page = await http.json("GET", "/kv?start=bin&end=txu")
    by_key = {item["key"]: item for item in page["items"]}
    assert by_key["bin"]["value_b64"] == "//4="
    assert by_key["txt"]["value"] == "é"
    assert decode_bytes_field(by_key["bin"], "value") == b"\xff\xfe"


def test_bytes_field_encoding_round_trips() -> None:
    for data in (b"", b"plain", "ü".encode(), b"\x80", b"\x00\xff"):
        item: dict[str, Any] = {}
        encode_bytes_field("key", data, item)
        assert decode_bytes_field(item, "key") == data
    with pytest.raises(ValueError, match="neither"):
        decode_bytes_field({"key_b64": "***"}, "key")


async def test_value_over_the_limit_is_413_by_content_length_and_by_chunked_body(
    http: Http,
) -> None:
    status, _, body = await http.call("PUT", "/kv/big", b"x" * (64 * 1024 + 1))
    assert status == 413
    assert "65536" in json.loads(body)["detail"]

    async def chunks(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // 4096):
            yield b"y" * 4096

    status, _, body = await http.call("PUT", "/kv/big", chunks(128 * 1024))  # type: ignore[arg-type]
    assert status == 413, body
    status, _, _ = await http.call("PUT", "/kv/big", chunks(32 * 1024))  # type: ignore[arg-type]
    assert status == 204, "a chunked body under the limit is accepted"
    assert len((await http.call("GET", "/kv/big"))[2]) == 32 * 1024
    status, _, _ = await http.call("PUT", "/kv/exact", b"z" * (64 * 1024))
    assert status == 204, "exactly the limit is allowed"


async def test_key_over_4_kib_is_413_and_4_kib_is_fine(http: Http) -> None:
    assert (await http.call("PUT", "/kv/" + "k" * 4096, b"v"))[0] == 204
    # 4096 binary bytes are 12 KiB of percent-encoding in the request line: still served.
    binary_key = bytes(range(256)) * 16
    path = "/kv/" + urllib.parse.quote_from_bytes(binary_key, safe="")
    assert (await http.call("PUT", path, b"bin"))[0] == 204
    assert (await http.call("GET", path))[2] == b"bin"
    status, _, body = await http.call("PUT", "/kv/" + "k" * 4097, b"v")
    assert status == 413
    assert json.loads(body)["error"] == "too_large"


async def test_unknown_routes_and_methods_answer_json(http: Http) -> None:
    status, headers, body = await http.call("GET", "/no/such/route")
    assert (status, json.loads(body)["error"]) == (404, "no_route")
    status, headers, body = await http.call("POST", "/kv/a")
    assert (status, json.loads(body)["error"]) == (405, "method_not_allowed")
    assert "PUT" in headers["Allow"]
    status, _, body = await http.call("PUT", "/admin/status")
    assert status == 405


async def test_admin_documents_are_json_objects(http: Http) -> None:
    for path in ("/admin/status", "/admin/shards", "/admin/wal", "/admin/sstables"):
        status, document = await http.json("GET", path)
        assert status == 200, path
        assert isinstance(document, dict) and document, path
    _, status_document = await http.json("GET", "/admin/status")
    assert status_document["node_id"] == 1


async def test_fault_rules_are_set_validated_and_cleared(http: Http) -> None:
    # A one-node cluster: node 1 is its only member (rules name members only).
    status, answer = await http.json(
        "POST", "/admin/fault", {"drop_to": [1], "drop_from": [1], "delay_ms": 5, "loss": 0.25}
    )
    assert status == 200
    assert answer["fault"] == {"drop_to": [1], "drop_from": [1], "delay_ms": 5, "loss": 0.25}
    status, answer = await http.json("POST", "/admin/fault", {"loss": 2})
    assert (status, answer["error"]) == (400, "invalid_request")
    # A typo that would cut nothing is refused, naming the members.
    status, answer = await http.json("POST", "/admin/fault", {"drop_to": [4]})
    assert (status, answer["error"]) == (400, "invalid_request")
    assert "node 4: not a member of this cluster (members: 1)" in answer["detail"], answer
    status, answer = await http.json("DELETE", "/admin/fault")
    assert (status, answer) == (200, {"fault": None})


async def test_snapshot_and_compact_answer_documents(http: Http) -> None:
    assert (await http.call("PUT", "/kv/s", b"v"))[0] == 204
    status, document = await http.json("POST", "/admin/snapshot", {"shards": [0, 1]})
    assert status == 200 and isinstance(document, dict), document
    status, document = await http.json("POST", "/admin/compact")
    assert status == 200 and isinstance(document, dict), document


async def test_metrics_count_requests_by_route_and_code(http: Http) -> None:
    await http.call("PUT", "/kv/m", b"v")
    await http.call("PUT", "/kv/n", b"v")  # the same labels again: counted twice
    await http.call("GET", "/kv/absent")
    status, headers, body = await http.call("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert 'minikv_requests_total{api="http",code="204",route="/kv/{key}"} 2.0' in text
    assert 'minikv_requests_total{api="http",code="404",route="/kv/{key}"} 1.0' in text
    assert 'minikv_request_duration_seconds_count{api="http",route="/kv/{key}"} 3.0' in text
    assert "minikv_raft_term{" in text
    assert "minikv_raft_commit_index{" in text


async def test_health_live_and_ready(http: Http) -> None:
    assert (await http.json("GET", "/health/live")) == (200, {"status": "live"})
    assert (await http.json("GET", "/health/ready")) == (200, {"status": "ready"})


async def test_admin_routes_refuse_non_loopback_clients_by_default(tmp_path: Path) -> None:
    address = non_loopback_ip()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    configured = configs(tmp_path, 1, shards=1, replicas=1, http_host="0.0.0.0")
    async with running(configured) as [server], aiohttp.ClientSession() as session:
        remote = f"http://{address}:{server.http_port}"
        async with session.get(remote + "/admin/status") as response:
            assert response.status == 403
            assert (await response.json())["error"] == "forbidden"
        async with session.post(remote + "/admin/fault", json={"loss": 1.0}) as response:
            assert response.status == 403
        async with session.get(remote + "/health/live") as response:
            assert response.status == 200, "health answers everyone"
        async with session.get(f"http://127.0.0.1:{server.http_port}/admin/status") as response:
            assert response.status == 200


async def test_without_quorum_reads_and_writes_answer_503_or_504_within_the_deadline(
    tmp_path: Path,
) -> None:
    # Node 1 of a three-node cluster, alone: no group can elect a leader.
    lonely = configs(tmp_path, 1, shards=1, replicas=3, peers_count=3)
    async with running(lonely, wait_ready=False) as [server], aiohttp.ClientSession() as session:
        base = f"http://{server.http_address}"
        async with session.get(base + "/health/ready") as response:
            assert response.status == 503
            document = await response.json()
            assert document["error"] == "not_ready" and document["detail"], document
        for method, path in (("PUT", "/kv/k?timeout_ms=300"), ("GET", "/kv/k?timeout_ms=300")):
            started = time.monotonic()
            async with session.request(method, base + path, data=b"v") as response:
                elapsed = time.monotonic() - started
                assert response.status in (503, 504), (method, response.status)
                if response.status == 503:
                    assert int(response.headers["Retry-After"]) >= 1
                assert (await response.json())["error"] in ("unavailable", "deadline_exceeded")
            assert elapsed < 0.3 + 1.0, f"{method} took {elapsed:.2f}s past a 300 ms deadline"


def test_a_503_of_a_write_says_whether_it_may_have_applied() -> None:
    """curl users get the client's rule in words: the header when sending again is safe, and
    a detail naming the unknown outcome when it is not."""
    refused = UnavailableError("no leader", leader_hint=2, unapplied=True)
    status, headers, document = _error_parts(_told_as_write(refused))
    assert (status, headers["x-minikv-unapplied"]) == (503, "1")
    assert "may have been applied" not in document["detail"]

    broken = UnavailableError("Socket closed", leader_hint=2, retry_after_s=0.5)
    status, headers, document = _error_parts(_told_as_write(broken))
    assert status == 503 and "x-minikv-unapplied" not in headers
    assert headers["x-minikv-leader"] == "2"
    assert "Socket closed; the write may have been applied" in document["detail"]
