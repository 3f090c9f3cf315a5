"""Transactions: the JSON document, validation and limits, compare evaluation, and the codec."""

from __future__ import annotations

import random
import re

import pytest

from minikv_core.cluster import limits
from minikv_core.cluster.commands import CommandDecodeError, TxnCommand, decode_command
from minikv_core.cluster.service import InvalidRequestError, TooLargeError
from minikv_core.cluster.txn import (
    SYSTEM_KEY_PREFIX,
    Compare,
    CompareOp,
    CompareTarget,
    OpKind,
    OpResult,
    TxnOp,
    TxnRequest,
    TxnResponse,
    evaluate_compare,
    parse_document,
    request_document,
    response_document,
    validate,
)
from minikv_core.cluster.txn_codec import (
    Blocker,
    BodyKind,
    Conflict,
    Decide,
    Decided,
    Decision,
    Finish,
    Finished,
    Forget,
    Intent,
    OnePhase,
    PartDone,
    Prepare,
    Prepared,
    Resolve,
    ResolveMany,
    ShardPart,
    TxnBody,
    TxnCodecError,
    TxnResult,
    decode_body,
    decode_intent,
    decode_record,
    decode_result,
    encode_body,
    encode_intent,
    encode_record,
    encode_result,
    split_by_shard,
)

ISSUE_EXAMPLE = {
    "compare": [
        {"key": "a", "target": "value", "op": "==", "value": "x"},
        {"key": "b", "target": "version", "op": "==", "version": 3},
        {"key": "c", "target": "exists", "value": False},
    ],
    "success": [
        {"op": "put", "key": "a", "value": "y"},
        {"op": "delete", "key": "b"},
        {"op": "get", "key": "c"},
    ],
    "failure": [{"op": "get", "key_b64": "/w=="}],
}


def test_the_issue_example_parses_to_the_model() -> None:
    request = parse_document(ISSUE_EXAMPLE)
    assert request.compare == (
        Compare(b"a", CompareTarget.VALUE, CompareOp.EQUAL, value=b"x"),
        Compare(b"b", CompareTarget.VERSION, CompareOp.EQUAL, version=3),
        Compare(b"c", CompareTarget.EXISTS, CompareOp.EQUAL, exists=False),
    )
    assert request.success == (
        TxnOp(OpKind.PUT, b"a", b"y"),
        TxnOp(OpKind.DELETE, b"b"),
        TxnOp(OpKind.GET, b"c"),
    )
    assert request.failure == (TxnOp(OpKind.GET, b"\xff"),)
    assert parse_document(request_document(request)) == request


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"compare": [], "succes": []}, "unknown field(s) succes"),
        ({}, "empty"),
        ({"success": "put"}, "success must be a list"),
        ({"success": [{"op": "put", "key": "a"}]}, "success op 0: value"),
        ({"success": [{"op": "get", "key": "a", "value": "v"}]}, "takes no value"),
        ({"success": [{"op": "upsert", "key": "a"}]}, "op must be one of put, delete, get"),
        ({"success": [{"op": "get", "key": ""}]}, "key is empty"),
        ({"success": [{"op": "get"}]}, "key (or key_b64) is missing"),
        ({"success": [{"op": "get", "key_b64": "!!"}]}, "not valid base64"),
        ({"success": [{"op": "get", "key": "a", "key_b64": "YQ=="}]}, "not both"),
        ({"compare": [{"key": "a", "target": "value", "op": "<", "value": "x"}]}, "versions only"),
        ({"compare": [{"key": "a", "target": "exists", "value": "yes"}]}, "true or false"),
        ({"compare": [{"key": "a", "target": "version", "version": "3"}]}, "integer version"),
        ({"compare": [{"key": "a", "target": "version", "version": -1}]}, "0..2**64-1"),
        ({"compare": [{"key": "a", "target": "colour"}]}, "target must be one of"),
        (
            {"success": [{"op": "put", "key": "a", "value": "1"}, {"op": "delete", "key": "a"}]},
            "written twice",
        ),
        ({"success": [{"op": "get", "key": "\uffff"}]}, None),
    ],
)
def test_bad_documents_are_refused_naming_the_problem(
    document: object, message: str | None
) -> None:
    if message is None:
        parse_document(document)  # a valid non-ASCII key
        return
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        parse_document(document)


def test_reserved_keys_are_refused() -> None:
    key = (SYSTEM_KEY_PREFIX + b"r/x").decode("latin-1")
    with pytest.raises(InvalidRequestError, match="reserved"):
        validate(TxnRequest(success=(TxnOp(OpKind.GET, key.encode("latin-1")),)))


def test_limits_on_ops_and_bytes_are_too_large_errors() -> None:
    ops = [{"op": "get", "key": f"k{i}"} for i in range(limits.TXN_OPS_MAX + 1)]
    with pytest.raises(TooLargeError, match=f"limit is {limits.TXN_OPS_MAX}"):
        parse_document({"success": ops})
    # Exactly at the op limit is fine.
    parse_document({"success": ops[:-1]})
    value = "v" * (limits.TXN_BYTES_MAX // 2)
    with pytest.raises(TooLargeError, match=f"limit is {limits.TXN_BYTES_MAX} bytes"):
        parse_document(
            {
                "success": [
                    {"op": "put", "key": "a", "value": value},
                    {"op": "put", "key": "b", "value": value},
                ]
            }
        )
    with pytest.raises(TooLargeError, match="limit is 10 bytes"):
        parse_document(
            {"success": [{"op": "put", "key": "a", "value": "x" * 11}]}, value_size_bytes_max=10
        )


@pytest.mark.parametrize(
    ("compare", "current", "holds"),
    [
        (Compare(b"k", CompareTarget.VALUE, value=b"x"), (b"x", 4), True),
        (Compare(b"k", CompareTarget.VALUE, value=b"x"), (b"y", 4), False),
        (Compare(b"k", CompareTarget.VALUE, value=b""), None, False),
        (Compare(b"k", CompareTarget.VALUE, CompareOp.NOT_EQUAL, value=b"x"), None, True),
        (Compare(b"k", CompareTarget.VERSION, version=0), None, True),
        (Compare(b"k", CompareTarget.VERSION, version=4), (b"x", 4), True),
        (Compare(b"k", CompareTarget.VERSION, CompareOp.LESS, version=5), (b"x", 4), True),
        (Compare(b"k", CompareTarget.VERSION, CompareOp.LESS, version=4), (b"x", 4), False),
        (Compare(b"k", CompareTarget.VERSION, CompareOp.GREATER, version=3), (b"x", 4), True),
        (Compare(b"k", CompareTarget.VERSION, CompareOp.GREATER, version=0), None, False),
        (Compare(b"k", CompareTarget.VERSION, CompareOp.NOT_EQUAL, version=4), (b"x", 4), False),
        (Compare(b"k", CompareTarget.EXISTS, exists=False), None, True),
        (Compare(b"k", CompareTarget.EXISTS, exists=True), None, False),
        (Compare(b"k", CompareTarget.EXISTS, CompareOp.NOT_EQUAL, exists=True), None, True),
    ],
)
def test_compare_evaluation(
    compare: Compare, current: tuple[bytes, int] | None, holds: bool
) -> None:
    assert evaluate_compare(compare, current) is holds


def test_response_document_uses_b64_for_binary_values_and_null_for_missing() -> None:
    response = TxnResponse(
        True,
        (
            OpResult(OpKind.PUT, 7),
            OpResult(OpKind.DELETE, deleted=True),
            OpResult(OpKind.GET, 3, value=b"\xff"),
            OpResult(OpKind.GET, 0, value=None),
            OpResult(OpKind.GET, 5, value=b"text"),
        ),
    )
    assert response_document(response) == {
        "succeeded": True,
        "results": [
            {"op": "put", "version": 7},
            {"op": "delete", "deleted": True},
            {"op": "get", "value_b64": "/w==", "version": 3},
            {"op": "get", "value": None, "version": 0},
            {"op": "get", "value": "text", "version": 5},
        ],
    }


def test_split_by_shard_keeps_each_ops_position() -> None:
    request = parse_document(ISSUE_EXAMPLE)
    parts = split_by_shard(request, lambda key: 0 if key in (b"a", b"c") else 1)
    assert parts[0].compare_index == (0, 2)
    assert parts[0].success_index == (0, 2)
    assert parts[1].compare_index == (1,)
    assert parts[1].success == (TxnOp(OpKind.DELETE, b"b"),)
    assert parts[1].failure == (TxnOp(OpKind.GET, b"\xff"),)


def test_every_body_and_result_round_trips() -> None:
    rng = random.Random(9)
    txn_id = rng.randbytes(limits.TXN_ID_BYTES)
    part = ShardPart.whole(parse_document(ISSUE_EXAMPLE))
    bodies: list[TxnBody] = [
        OnePhase(part),
        Prepare(txn_id, 3, 1_700_000_000_000, part),
        Resolve(txn_id, Decision.COMMIT_FAILURE),
        Decide(txn_id, Decision.ABORT),
        Decide(txn_id, Decision.COMMIT_SUCCESS, resolve=True),
        ResolveMany((Resolve(txn_id, Decision.ABORT), Resolve(bytes(16), Decision.COMMIT_FAILURE))),
        Forget((txn_id,)),
        Forget(tuple(rng.randbytes(limits.TXN_ID_BYTES) for _ in range(3))),
        Finish(txn_id, True, True, False, part),
        Finish(txn_id, False, False, True, part),
    ]
    for body in bodies:
        assert decode_body(encode_body(body)) == body
        command = TxnCommand(body, request_id=77)
        assert decode_command(command.encode()) == command
    results: list[TxnResult] = [
        Conflict((Blocker(txn_id, 2, 5),), "keys are locked"),
        PartDone(False, ((1, OpResult(OpKind.GET, 0, value=None)),)),
        Prepared(True, ((0, OpResult(OpKind.PUT, 9)),), ((0, OpResult(OpKind.GET, 2, value=b"")),)),
        Decided(Decision.COMMIT_SUCCESS),
        Finished(Decision.COMMIT_FAILURE, False, ((2, OpResult(OpKind.GET, 4, value=b"x")),)),
        Finished(None, True, ()),
    ]
    for result in results:
        assert decode_result(encode_result(result)) == result
    record = Finished(Decision.COMMIT_SUCCESS, True, ((0, OpResult(OpKind.PUT, 9)),))
    assert decode_record(encode_record(record)) == record
    assert encode_record(record)[0] == Decision.COMMIT_SUCCESS, "the decision byte comes first"
    # A DECIDE's record is its decision byte alone.
    assert decode_record(bytes([Decision.ABORT])) == Finished(Decision.ABORT, False, ())
    intent = Intent(txn_id, 1, 2, 3, (b"r",), ((b"a", b"v"), (b"b", None)), ())
    assert decode_intent(encode_intent(intent)) == intent


def test_a_forget_in_the_single_id_format_of_older_logs_still_decodes() -> None:
    txn_id = bytes(range(16))
    assert decode_body(bytes([BodyKind.FORGET]) + txn_id) == Forget((txn_id,))


def test_a_forget_names_between_one_and_the_batch_limit_of_ids() -> None:
    with pytest.raises(TxnCodecError, match="1 to"):
        encode_body(Forget(()))
    with pytest.raises(TxnCodecError, match="1 to"):
        encode_body(Forget((bytes(16),) * (limits.TXN_FORGET_BATCH_MAX + 1)))
    data = encode_body(Forget((bytes(16),)))
    with pytest.raises(TxnCodecError, match="names 0 transactions"):
        decode_body(data[:1] + bytes(4))


def test_a_resolve_many_names_between_one_and_the_batch_limit_of_items() -> None:
    item = Resolve(bytes(16), Decision.ABORT)
    with pytest.raises(TxnCodecError, match="1 to"):
        encode_body(ResolveMany(()))
    with pytest.raises(TxnCodecError, match="1 to"):
        encode_body(ResolveMany((item,) * (limits.TXN_RESOLVE_BATCH_MAX + 1)))
    data = encode_body(ResolveMany((item,)))
    with pytest.raises(TxnCodecError, match="unknown decision"):
        decode_body(data[:-1] + b"\x09")


def test_a_finish_with_unknown_flags_is_refused() -> None:
    part = ShardPart.whole(parse_document(ISSUE_EXAMPLE))
    data = bytearray(encode_body(Finish(bytes(16), True, True, True, part)))
    data[1 + limits.TXN_ID_BYTES] |= 8
    with pytest.raises(TxnCodecError, match="unknown finish flags"):
        decode_body(bytes(data))


def test_malformed_bodies_are_refused_by_the_decoder() -> None:
    body = encode_body(Resolve(bytes(16), Decision.ABORT))
    with pytest.raises(TxnCodecError, match="unknown decision"):
        decode_body(body[:-1] + b"\x09")
    with pytest.raises(TxnCodecError, match="cut short"):
        decode_body(body[:-3])
    with pytest.raises(TxnCodecError, match="trailing"):
        decode_body(body + b"\x00")
    # A committed entry with a bad body is a decode error (the state machine rejects it).
    data = TxnCommand(Resolve(bytes(16), Decision.ABORT), 1).encode()
    with pytest.raises(CommandDecodeError, match="TXN body"):
        decode_command(data[:-1] + b"\x09")


def test_an_empty_transaction_built_in_code_is_invalid() -> None:
    """The parsers refused `{}`, but `validate` let TxnRequest((), (), ()) through to the
    coordinator, which failed on it (min() of no shards): an error a caller could not read."""
    with pytest.raises(InvalidRequestError, match="the transaction is empty"):
        validate(TxnRequest())
