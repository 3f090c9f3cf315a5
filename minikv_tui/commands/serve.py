"""`minikv serve …`: run one node in the foreground (`minikv_core.server` does the work).

Wire it with `app.add_typer(serve.app, name="serve")`: the sub-app has no sub-commands, its
callback is the command, so `minikv serve --id 1 …` runs it. Every flag may also come from
the TOML file (`--config`) or a `MINIKV_*` variable; only the flags given here override them.
"""

from __future__ import annotations

import os

# Before anything imports grpc: its C core reads this once. Honours an explicit setting.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from pathlib import Path
from typing import Annotated

import typer

from minikv_tui.errors import EXIT_FAILURE, EXIT_USAGE, UserError

app = typer.Typer(
    help="Run one minikv node (storage, Raft groups, peer transport, HTTP and gRPC APIs).",
    invoke_without_command=True,
    no_args_is_help=False,
    # No sub-commands: without this the usage line promised `COMMAND [ARGS]...`.
    subcommand_metavar="",
)


@app.callback(invoke_without_command=True)
def serve(
    *,
    node_id: Annotated[
        int | None, typer.Option("--id", help="This node's id (a key of --peers).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Directory of the WAL and shard data.")
    ] = None,
    http: Annotated[
        str | None, typer.Option(help="HTTP API address host:port (port 0: any free port).")
    ] = None,
    grpc: Annotated[
        str | None,
        typer.Option(help="gRPC address host:port for clients and peers (default: --peers[id])."),
    ] = None,
    peers: Annotated[str | None, typer.Option(help="Every node: 1=host:port,2=host:port,…")] = None,
    join: Annotated[
        str | None,
        typer.Option(help="Join a running cluster through a member's gRPC host:port."),
    ] = None,
    rebalance: Annotated[
        bool | None,
        typer.Option(
            "--rebalance/--no-rebalance",
            help="With --join: rebalance replicas onto this node once it serves (on).",
        ),
    ] = None,
    repair_after_s: Annotated[
        int | None,
        typer.Option(
            "--repair-after-s", help="Replace replicas of a node down this long (60; 0: never)."
        ),
    ] = None,
    txn_record_gc_s: Annotated[
        int | None,
        typer.Option(
            "--txn-record-gc-s",
            help="Forget transaction records left behind after this long (180; same on all nodes).",
        ),
    ] = None,
    shards: Annotated[int | None, typer.Option(help="Shards at cluster creation (8).")] = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas per shard (3).")] = None,
    value_size_max: Annotated[
        int | None, typer.Option("--value-size-max", help="Largest value in bytes (1 MiB).")
    ] = None,
    request_timeout_ms: Annotated[
        int | None,
        typer.Option("--request-timeout-ms", help="Default request deadline in ms (5000)."),
    ] = None,
    admin_allow_remote: Annotated[
        bool | None,
        typer.Option(
            "--admin-allow-remote/--no-admin-allow-remote",
            help="Serve admin and fault endpoints to non-loopback clients (off).",
        ),
    ] = None,
    cluster_id: Annotated[
        str | None, typer.Option("--cluster-id", help="Cluster name checked on peer streams.")
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option("--ready-file", help="Write {pid, http, grpc} JSON here once serving."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error (info).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with the same options.")
    ] = None,
) -> None:
    """Run one node until SIGTERM or Ctrl-C, then stop gracefully (exit 0)."""
    from minikv_core import server
    from minikv_core.cluster.host import NodeStartError
    from minikv_core.cluster.join import JoinError

    flags: dict[str, object] = {
        "id": node_id,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "http": http,
        "grpc": grpc,
        "peers": peers,
        "join": join,
        "rebalance": rebalance,
        "repair_after_s": repair_after_s,
        "txn_record_gc_s": txn_record_gc_s,
        "shards": shards,
        "replicas": replicas,
        "value_size_max": value_size_max,
        "request_timeout_ms": request_timeout_ms,
        "admin_allow_remote": admin_allow_remote,
        "cluster_id": cluster_id,
        "ready_file": str(ready_file) if ready_file is not None else None,
        "log_level": log_level,
    }
    try:
        resolved = server.resolve(flags, os.environ, config)
        code = server.run(resolved)
    except server.ConfigError as error:
        raise UserError(
            str(error),
            hint="See `minikv serve --help`; options also come from --config and MINIKV_*.",
            exit_code=EXIT_USAGE,
        ) from None
    except JoinError as error:
        raise UserError(
            str(error),
            hint="The node could not join the cluster at --join; see the message.",
            exit_code=EXIT_FAILURE,
        ) from None
    except NodeStartError as error:
        raise UserError(
            str(error),
            hint="The node refused to open its data directory as it is; see the message.",
            exit_code=EXIT_FAILURE,
        ) from None
    if code:
        raise typer.Exit(code)
