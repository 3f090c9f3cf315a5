"""The JSON envelope of `minikv.v1.Cluster`: malformed requests are clear errors."""

from __future__ import annotations

import pytest

from minikv_core.cluster.service import InvalidRequestError, UnavailableError
from minikv_core.net.maintenance_rpc import (
    BODY_BYTES_MAX,
    decode_answer,
    decode_request,
    encode_request,
)


def test_a_request_round_trips() -> None:
    assert decode_request(encode_request("repair", {"dead": [3]})) == ("repair", {"dead": [3]})
    assert decode_request(b'{"method": "job"}') == ("job", {})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"args": {}}', '"method"'),
        (b'{"method": ""}', '"method"'),
        (b'{"method": "x", "args": [1]}', '"args" must be a JSON object'),
        (b" " * (BODY_BYTES_MAX + 1), "exceeds"),
    ],
)
def test_malformed_requests_name_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        decode_request(raw)


def test_a_malformed_answer_is_unavailable_naming_the_call() -> None:
    with pytest.raises(UnavailableError, match="status on n1: the answer is not valid JSON"):
        decode_answer(b"<html>", "status on n1")
    with pytest.raises(UnavailableError, match="not a JSON object"):
        decode_answer(b"[1]", "status on n1")
