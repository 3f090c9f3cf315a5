"""`minikv txn FILE|-`: one atomic multi-key transaction from a JSON document.

The document is the HTTP API's (`POST /txn`; see `minikv_core.cluster.txn`):

    {"compare": [{"key": "a", "target": "version", "op": "==", "version": 3}],
     "success": [{"op": "put", "key": "a", "value": "y"}, {"op": "get", "key": "b"}],
     "failure": [{"op": "get", "key": "a"}]}

Output: which branch ran, then one line per op of that branch (`put a  version 812`), or with
`--json` the API's answer. Exit status 0 whichever branch ran (a failed compare is an answer,
not an error), 2 for a bad document, 1 when the cluster did not answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from minikv_core.client import (
    ClientError,
    OpKind,
    TxnRequest,
    TxnResponse,
    parse_txn_document,
    txn_response_document,
)
from minikv_tui.commands.data import (
    PANEL,
    AsJson,
    ClusterOption,
    EndpointsOption,
    TimeoutOption,
    _request,
    _show,
)
from minikv_tui.errors import EXIT_USAGE, UserError

_HINT = 'See `minikv txn --help` for the document: {"compare": [...], "success": [...], ...}'


def _read_document(file: Path) -> object:
    where = "stdin" if str(file) == "-" else str(file)
    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as error:
        raise UserError(
            f"cannot read {where}: {error.strerror or error}", exit_code=EXIT_USAGE
        ) from None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(
            f"{where} is not valid JSON: {error}", hint=_HINT, exit_code=EXIT_USAGE
        ) from None


def parse_file(file: Path) -> TxnRequest:
    """The transaction in `file` ('-': stdin), or a UserError naming what is wrong."""
    document = _read_document(file)
    try:
        return parse_txn_document(document)
    except ClientError as error:  # InvalidRequestError / TooLargeError
        raise UserError(
            f"the transaction is not valid: {error}", hint=_HINT, exit_code=EXIT_USAGE
        ) from None


def render(request: TxnRequest, response: TxnResponse) -> list[str]:
    """Human lines: the branch that ran, then each op's outcome."""
    ops = request.success if response.succeeded else request.failure
    lines = [
        "succeeded: every compare held, the success ops ran"
        if response.succeeded
        else "failed: a compare did not hold, the failure ops ran"
    ]
    for op, result in zip(ops, response.results, strict=False):
        key = _show(op.key)
        if result.kind is OpKind.PUT:
            lines.append(f"put     {key}  version {result.version}")
        elif result.kind is OpKind.DELETE:
            lines.append(f"delete  {key}  {'deleted' if result.deleted else 'did not exist'}")
        elif result.value is None:
            lines.append(f"get     {key}  (missing)")
        else:
            value = result.value.decode("utf-8", "backslashreplace")
            lines.append(f"get     {key}  version {result.version}  {value!r}")
    return lines


def txn(
    *,
    file: Annotated[Path, typer.Argument(help="The transaction as a JSON document ('-': stdin).")],
    endpoints: EndpointsOption = None,
    cluster: ClusterOption = None,
    as_json: AsJson = False,
    timeout_s: TimeoutOption = 5.0,
) -> None:
    """Run one atomic transaction: if every compare holds, the success ops, else the failure
    ops (across shards with two-phase commit).

    The document (the HTTP API's `POST /txn` body):

        {"compare": [{"key": "a", "target": "version", "op": "==", "version": 3}],
         "success": [{"op": "put", "key": "a", "value": "y"}, {"op": "get", "key": "b"}],
         "failure": [{"op": "get", "key": "a"}]}

    Ops are `put` (with `value`), `delete` and `get`. A compare's `target` is `version`
    (`==`, `!=`, `<`, `>`; a missing key has version 0), `value` (`==`, `!=`) or `exists`
    (`"value": true|false`). `key_b64` / `value_b64` carry bytes that are not UTF-8. Exit 0
    whichever branch ran, 2 for a bad document."""
    request = parse_file(file)
    response = _request(endpoints, cluster, timeout_s, lambda client: client.txn_request(request))
    if as_json:
        typer.echo(json.dumps(txn_response_document(response), sort_keys=True))
        return
    for line in render(request, response):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add `txn` to the root app."""
    app.command(rich_help_panel=PANEL)(txn)
