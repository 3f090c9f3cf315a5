"""`minikv get | put | delete | scan`: one request against a cluster, output that pipes.

Values go to stdout as the raw bytes stored (a newline is added only on a terminal), so
`minikv get img > img.png` round-trips; messages and errors go to stderr. `--json` gives a
structured form where non-UTF-8 bytes are base64 in a `*_b64` field, as the HTTP API does.
The cluster is `--endpoints`, else `--cluster`/`MINIKV_CLUSTER`, else the only running local
cluster (`minikv_tui.target`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from minikv_core.client import (
    AsyncClient,
    ClientError,
    Consistency,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    TooLargeError,
    UnavailableError,
)
from minikv_core.net import limits
from minikv_core.net.http_api import encode_bytes_field
from minikv_tui.errors import (
    EXIT_FAILURE,
    EXIT_OUTCOME_UNKNOWN,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    UserError,
    too_large_message,
)
from minikv_tui.target import resolve_target

T = TypeVar("T")

EndpointsOption = Annotated[
    str | None,
    typer.Option(
        "--endpoints",
        "-e",
        help="gRPC addresses host:port,… of any cluster (wins over --cluster).",
        show_default=False,
    ),
]
ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        "-c",
        help="A local cluster (default: $MINIKV_CLUSTER, else the only one running).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds for the whole request, retries included.",
        min=0.001,
        max=limits.REQUEST_TIMEOUT_MS_MAX / 1000.0,
    ),
]
StaleOption = Annotated[
    bool,
    typer.Option("--stale", help="Read the local state of a replica (faster, maybe old)."),
]
PANEL = "Data"


def _key(text: str) -> bytes:
    """Arguments arrive decoded with surrogateescape; fsencode gives back the exact bytes."""
    return os.fsencode(text)


def _show(key: bytes) -> str:
    """A key for a message: as text, with escapes for what a terminal should not print."""
    text = key.decode(errors="backslashreplace")
    return text if text.isprintable() else text.encode("unicode_escape").decode()


def _write_raw(data: bytes) -> None:
    typer.echo(data, nl=False)
    if sys.stdout.isatty():
        typer.echo("")


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, sort_keys=True))


def _request(
    endpoints: str | None,
    cluster: str | None,
    timeout_s: float,
    call: Callable[[AsyncClient], Awaitable[T]],
) -> T:
    """Resolve the cluster, run one client call, and turn client errors into one-line ones."""
    target = resolve_target(endpoints, cluster)

    async def run() -> T:
        async with AsyncClient(target.endpoints, timeout_s=timeout_s) as client:
            return await call(client)

    where = target.describe()
    try:
        return asyncio.run(run())
    except NotFoundError:
        raise
    except InvalidRequestError as error:
        raise UserError(str(error), exit_code=EXIT_USAGE) from None
    except TooLargeError as error:
        raise UserError(too_large_message(str(error)), exit_code=EXIT_USAGE) from None
    except OutcomeUnknownError as error:
        raise UserError(
            f"cluster {where}: the write may or may not have been applied ({error})",
            hint="Read the key (`minikv get`) to see which before writing it again.",
            exit_code=EXIT_OUTCOME_UNKNOWN,
        ) from None
    except (UnavailableError, DeadlineExceededError) as error:
        # Its own status, not 1: a script must tell "the key is absent" from "no answer".
        raise UserError(
            f"cluster {where} did not answer in time: {error}",
            hint="Check it with `minikv cluster status`, or raise --timeout.",
            exit_code=EXIT_UNAVAILABLE,
        ) from None
    except ClientError as error:
        raise UserError(f"cluster {where}: {error}") from None


def _not_found(key: bytes) -> UserError:
    return UserError(f"key {_show(key)!r} not found", exit_code=EXIT_FAILURE)


def get(
    *,
    key: Annotated[str, typer.Argument(help="The key.")],
    endpoints: EndpointsOption = None,
    cluster: ClusterOption = None,
    as_json: AsJson = False,
    stale: StaleOption = False,
    timeout_s: TimeoutOption = 5.0,
) -> None:
    """Print a key's value (raw bytes).

    Exits 1 if the key is absent, 69 if the cluster did not answer."""
    raw = _key(key)
    consistency = Consistency.STALE if stale else Consistency.LINEARIZABLE
    try:
        found = _request(
            endpoints,
            cluster,
            timeout_s,
            lambda client: client.get_versioned(raw, consistency=consistency),
        )
    except NotFoundError:
        raise _not_found(raw) from None
    if as_json:
        document: dict[str, Any] = {"version": found.version}
        encode_bytes_field("key", raw, document)
        encode_bytes_field("value", found.value, document)
        _print_json(document)
        return
    _write_raw(found.value)


def put(
    *,
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[
        str | None,
        typer.Argument(help="The value (or use --file).", show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="Read the value from this file ('-': stdin).", show_default=False
        ),
    ] = None,
    endpoints: EndpointsOption = None,
    cluster: ClusterOption = None,
    as_json: AsJson = False,
    timeout_s: TimeoutOption = 5.0,
) -> None:
    """Write a key's value, once committed on a quorum.

    Exits 69 if the cluster did not answer, 75 if the write may or may not have applied
    (read the key to see which)."""
    if (value is None) == (file is None):
        raise typer.BadParameter(
            "give the value either as an argument or with --file, not both or neither",
            param_hint="VALUE",
        )
    if file is not None:
        data = _read_value_file(file)
    else:
        assert value is not None
        data = _key(value)
    raw = _key(key)
    version = _request(endpoints, cluster, timeout_s, lambda client: client.put(raw, data))
    if as_json:
        document: dict[str, Any] = {"version": version, "bytes": len(data)}
        encode_bytes_field("key", raw, document)
        _print_json(document)
        return
    typer.echo(f"OK (version {version})")


def _read_value_file(file: Path) -> bytes:
    try:
        if str(file) == "-":
            return sys.stdin.buffer.read()
        return file.read_bytes()
    except OSError as error:
        raise UserError(
            f"cannot read {file}: {error.strerror or error}", exit_code=EXIT_USAGE
        ) from None


def delete(
    *,
    key: Annotated[str, typer.Argument(help="The key.")],
    endpoints: EndpointsOption = None,
    cluster: ClusterOption = None,
    as_json: AsJson = False,
    timeout_s: TimeoutOption = 5.0,
) -> None:
    """Delete a key.

    Exits 1 if the key is absent, 69 if the cluster did not answer, 75 if the delete may or
    may not have applied (read the key to see which)."""
    raw = _key(key)
    existed = _request(endpoints, cluster, timeout_s, lambda client: client.delete(raw))
    if not existed:
        raise _not_found(raw)
    if as_json:
        document: dict[str, Any] = {"deleted": True}
        encode_bytes_field("key", raw, document)
        _print_json(document)
        return
    typer.echo("OK (deleted)")


def scan(
    *,
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", help="At most this many keys.", min=1, max=limits.SCAN_LIMIT_MAX
        ),
    ] = 100,
    keys_only: Annotated[bool, typer.Option("--keys", help="Print keys only.")] = False,
    endpoints: EndpointsOption = None,
    cluster: ClusterOption = None,
    as_json: AsJson = False,
    stale: StaleOption = False,
    timeout_s: TimeoutOption = 5.0,
) -> None:
    """List keys (and values) in order: one `KEY<TAB>VALUE` line each, or --json."""
    raw = _key(prefix)
    consistency = Consistency.STALE if stale else Consistency.LINEARIZABLE
    result = _request(
        endpoints,
        cluster,
        timeout_s,
        lambda client: client.scan_paged(
            prefix=raw, limit=limit, consistency=consistency, timeout_s=timeout_s
        ),
    )
    if as_json:
        items = []
        for item in result.items:
            document: dict[str, Any] = {"version": item.version}
            encode_bytes_field("key", item.key, document)
            if not keys_only:
                encode_bytes_field("value", item.value, document)
            items.append(document)
        _print_json({"items": items, "more": result.more})
        return
    for item in result.items:
        line = item.key if keys_only else item.key + b"\t" + item.value
        typer.echo(line + b"\n", nl=False)
    if result.more:
        advice = (
            f"raise --limit above {limit}"
            if limit < limits.SCAN_LIMIT_MAX
            else f"narrow the prefix (--limit is at most {limits.SCAN_LIMIT_MAX})"
        )
        typer.echo(f"(more keys: {advice})", err=True)


def register(app: typer.Typer) -> None:
    """Add the data commands to the root app (they are top-level: `minikv get KEY`)."""
    for command in (get, put, delete, scan):
        app.command(rich_help_panel=PANEL)(command)
