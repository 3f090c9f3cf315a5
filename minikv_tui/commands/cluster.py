"""`minikv cluster …`: create, watch and break local clusters (the launcher does the work).

Each command is one `Launcher` call run with `asyncio.run`; this module only parses arguments,
shows progress on stderr and prints results (Rich tables for people, `--json` for scripts) on
stdout. Which cluster: the NAME argument or `--cluster`, else `MINIKV_CLUSTER`, else the only
one there is (or the only one running) — see `minikv_tui.target.pick_local_cluster`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from minikv_core.client import AsyncClient
from minikv_tui.cluster_status import ClusterSnapshot, Poller
from minikv_tui.commands import maintenance
from minikv_tui.launcher import (
    DEFAULT_NAME,
    ClusterView,
    Launcher,
    NodeView,
    Step,
    UpResult,
)
from minikv_tui.target import pick_local_cluster

T = TypeVar("T")

app = typer.Typer(
    help="Local clusters: up, status, ls, down, destroy, faults (kill, pause, partition …), "
    "and maintenance (repair, verify, rebalance, add-node, remove-node).",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        "-c",
        "--name",  # what `up --name` calls it: either spelling works on every command
        help="The local cluster (default: $MINIKV_CLUSTER, else the only one).",
        show_default=False,
    ),
]
ClusterArgument = Annotated[
    str | None,
    typer.Argument(
        help="The local cluster (default: $MINIKV_CLUSTER, else the only one).",
        show_default=False,
    ),
]
NodeArgument = Annotated[int, typer.Argument(help="The node id (1, 2, …).", min=1)]

_STATE_STYLE = {
    "up": "green",
    "running": "green",
    "partitioned": "magenta",
    "paused": "yellow",
    "degraded": "yellow",
    "unreachable": "red",
    "down": "red",
    "stopped": "dim",
}


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _styled(state: str) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Any]:
    """A spinner (and a bar when the step has a total) on stderr; each step is also kept as a
    dim line, so what happened stays on screen after the spinner goes."""
    if not enabled:
        yield lambda step: None
        return
    console = _err()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("working", total=None)

        def report(step: Step) -> None:
            progress.console.print(f"[dim]· {step.message}[/]")
            progress.update(
                task,
                description=step.message,
                completed=step.done,
                total=step.total or None,
            )

        yield report


async def _pick(name: str | None) -> str:
    return await pick_local_cluster(name)


def _launcher(name: str | None, *, progress: Any = None) -> Launcher:
    return Launcher(_run(_pick(name)), progress=progress)


# ------------------------------------------------------------------------------ rendering


def _node_json(node: NodeView) -> dict[str, Any]:
    return {
        "id": node.node_id,
        "process": node.process,
        "pid": node.pid,
        "grpc": node.grpc,
        "http": node.http,
        "data_dir": str(node.record.data_dir),
        "log": str(node.record.log_path),
    }


def _cluster_json(view: ClusterView) -> dict[str, Any]:
    settings = view.record.settings
    return {
        "name": view.name,
        "state": view.state,
        "directory": str(view.record.directory),
        "nodes": len(view.nodes),  # members now: add-node and remove-node change it
        "shards": settings.shards,
        "replicas": settings.replicas,
        "created_at": view.record.created_at,
        "running": view.running,
        "partition": [list(group) for group in view.partition],
        "one_way": [{"from": list(cut.source), "to": list(cut.sink)} for cut in view.one_way],
        "members": [_node_json(node) for node in view.nodes],
    }


def _nodes_table(view: ClusterView) -> Table:
    table = Table(title=f"cluster {view.name}", title_justify="left")
    for column in ("node", "process", "pid", "gRPC", "HTTP", "log"):
        table.add_column(column, no_wrap=column != "log")
    for node in view.nodes:
        table.add_row(
            str(node.node_id),
            _styled(node.process),
            str(node.pid or "-"),
            node.grpc,
            node.http,
            str(node.record.log_path),
        )
    return table


def _status_tables(view: ClusterView, snapshot: ClusterSnapshot) -> list[Table]:
    nodes = Table(title=f"cluster {view.name}: nodes", title_justify="left")
    for column in ("node", "state", "pid", "meta", "term", "commit/applied", "leads"):
        nodes.add_column(column, no_wrap=True)
    nodes.add_column("notes")
    for node in snapshot.nodes:
        notes = []
        if node.cut_off_from:
            notes.append(f"cut off from {', '.join(map(str, node.cut_off_from))}")
        if node.error and node.state == "unreachable":
            notes.append(node.error)
        reachable = node.reachable
        nodes.add_row(
            str(node.node_id),
            _styled(node.state),
            str(node.pid or "-"),
            node.meta_role if reachable else "-",
            str(node.meta_term) if reachable else "-",
            f"{node.commit}/{node.applied}" if reachable else "-",
            str(node.shard_leaders) if reachable else "-",
            "; ".join(notes),
        )
    shards = Table(title="shards", title_justify="left")
    for column in ("shard", "leader", "term"):
        shards.add_column(column, no_wrap=True)
    shards.add_column("replicas: role commit/applied/last")
    for shard in snapshot.shards:
        cells = []
        for replica in shard.replicas:
            status = shard.replica_status.get(replica)
            if status is None:
                cells.append(f"{replica} [red]?[/]")
                continue
            role = f"[bold green]{status.role}[/]" if status.role == "leader" else status.role
            lag = f" [yellow]lag {status.lag}[/]" if status.lag else ""
            cells.append(
                f"{replica} {role} {status.commit}/{status.applied}/{status.last_index}{lag}"
            )
        shards.add_row(
            str(shard.shard),
            str(shard.leader) if shard.leader is not None else "[red]none[/]",
            str(shard.term),
            ", ".join(cells),
        )
    return [nodes, shards]


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------- commands


@app.command()
def up(
    *,
    name: Annotated[str, typer.Option("--name", "-n", help="The cluster's name.")] = DEFAULT_NAME,
    nodes: Annotated[
        int | None,
        typer.Option(help="Node processes (new cluster; default 3).", min=1, show_default=False),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(help="Shards (new cluster; default 8).", min=1, show_default=False),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            help="Replicas per shard (new cluster; default 3).", min=1, show_default=False
        ),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            # No angle brackets: the help is Markdown, where `<name>` is an HTML tag and vanishes.
            help="Where node data and logs live (new cluster; default: a directory named after "
            "the cluster under $MINIKV_HOME, else ~/.local/share/minikv).",
            show_default=False,
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Create a local cluster and start it, or start a stopped one again with its data."""
    started_at = time.monotonic()
    with _progress(not as_json) as report:
        launcher = Launcher(name, progress=report)
        result: UpResult = _run(
            launcher.up(nodes=nodes, shards=shards, replicas=replicas, directory=directory)
        )
    view = result.view
    if as_json:
        document = _cluster_json(view)
        document["created"] = result.created
        document["started"] = list(result.started)
        _print_json(document)
        return
    out = _out()
    out.print(_nodes_table(view))
    settings = view.record.settings
    if result.already_up:
        out.print(f"cluster [bold]{view.name}[/] is already up.")
    else:
        verb = "created and started" if result.created else "started"
        out.print(
            f"cluster [bold]{view.name}[/] {verb} in {time.monotonic() - started_at:.1f} s: "
            f"{len(view.nodes)} nodes, {settings.shards} shards of {settings.replicas} replicas, "
            f"data in {view.record.directory}"
        )
    out.print("[dim]Try `minikv put hello world`, `minikv cluster status`, `minikv tui`.[/]")


@app.command()
def status(
    name: ClusterArgument = None,
    cluster: ClusterOption = None,
    as_json: AsJson = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for each node.", min=0.1)
    ] = 1.0,
) -> None:
    """Nodes (up/down/paused/partitioned), every shard's leader, term, roles and indices."""
    launcher = _launcher(name or cluster)

    async def poll() -> tuple[ClusterView, ClusterSnapshot]:
        view = await launcher.view()
        async with AsyncClient(view.endpoints()) as client:
            poller = Poller(client, name=view.name, timeout_s=timeout_s)
            return view, await poller.poll(view.targets(), detail=False)

    view, snapshot = _run(poll())
    if as_json:
        _print_json({"cluster": _cluster_json(view), "status": snapshot.to_json()})
        return
    out = _out()
    for table in _status_tables(view, snapshot):
        out.print(table)
    meta = f"meta leader {snapshot.meta_leader}" if snapshot.meta_leader else "meta: no leader"
    partition = (
        "  partition: " + " | ".join(",".join(map(str, g)) for g in view.partition)
        if view.partition
        else ""
    )
    if view.one_way:
        partition += "  one-way: " + "; ".join(cut.describe() for cut in view.one_way)
    up_count = sum(1 for node in snapshot.nodes if node.reachable)
    out.print(
        f"{up_count}/{len(snapshot.nodes)} nodes answer, {meta} (term {snapshot.meta_term}), "
        f"epoch {snapshot.epoch}{partition}"
    )


@app.command("ls")
def list_clusters(as_json: AsJson = False) -> None:
    """Every local cluster, running or not."""
    views = _run(Launcher.list_clusters())
    if as_json:
        _print_json([_cluster_json(view) for view in views])
        return
    out = _out()
    if not views:
        out.print("no local clusters yet: create one with `minikv cluster up`.")
        return
    table = Table(title_justify="left")
    for column in ("name", "state", "nodes up", "shards", "replicas", "created", "directory"):
        table.add_column(column, no_wrap=column != "directory")
    for view in views:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.record.created_at))
        settings = view.record.settings
        table.add_row(
            view.name,
            _styled(view.state),
            f"{view.running}/{len(view.nodes)}",
            str(settings.shards),
            str(settings.replicas),
            created,
            str(view.record.directory),
        )
    out.print(table)


@app.command()
def down(
    name: ClusterArgument = None,
    cluster: ClusterOption = None,
    grace_s: Annotated[
        float,
        typer.Option("--grace", help="Seconds a node has to stop before SIGKILL.", min=0.0),
    ] = 10.0,
) -> None:
    """Stop every node (SIGTERM; SIGKILL after the grace period). Data is kept."""
    with _progress() as report:
        launcher = _launcher(name or cluster, progress=report)
        stopped = _run(launcher.down(grace_s=grace_s))
    if stopped:
        _out().print(f"cluster {launcher.name} is down ({len(stopped)} node(s) stopped).")
    else:
        _out().print(f"cluster {launcher.name} was not running.")


@app.command()
def destroy(
    name: Annotated[str, typer.Argument(help="The cluster to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Stop the cluster and delete its data, logs and registry entry."""
    launcher = Launcher(name)
    view = _run(launcher.view())
    if not yes:
        typer.confirm(
            f"Delete cluster {name} and all its data in {view.record.directory}?", abort=True
        )
    with _progress() as report:
        _run(Launcher(name, progress=report).destroy())
    _out().print(f"cluster {name} destroyed.")


def _node_action(name: str | None, verb: str, node: int) -> None:
    with _progress() as report:
        launcher = _launcher(name, progress=report)
        action = getattr(launcher, verb)
        message: str = _run(action(node))
    _out().print(message)


@app.command()
def kill(node: NodeArgument, cluster: ClusterOption = None) -> None:
    """SIGKILL a node: a crash, without flushing anything."""
    _node_action(cluster, "kill", node)


@app.command()
def stop(node: NodeArgument, cluster: ClusterOption = None) -> None:
    """Stop a node gracefully (SIGTERM)."""
    _node_action(cluster, "stop", node)


@app.command()
def start(node: NodeArgument, cluster: ClusterOption = None) -> None:
    """Start a stopped, killed or failed node again, with its data."""
    _node_action(cluster, "start", node)


@app.command()
def pause(node: NodeArgument, cluster: ClusterOption = None) -> None:
    """Freeze a node (SIGSTOP): it holds its connections but answers nothing."""
    _node_action(cluster, "pause", node)


@app.command()
def resume(node: NodeArgument, cluster: ClusterOption = None) -> None:
    """Thaw a paused node (SIGCONT)."""
    _node_action(cluster, "resume", node)


def parse_groups(texts: Sequence[str]) -> list[list[int]]:
    """`["1,2", "3"]` to `[[1, 2], [3]]`; a malformed group is a usage error (exit 2)."""
    groups: list[list[int]] = []
    for text in texts:
        members: list[int] = []
        for raw in text.split(","):
            part = raw.strip()
            if not part.isdigit() or int(part) < 1:
                raise typer.BadParameter(
                    f"{text!r}: a group is node ids separated by commas, like 1,2",
                    param_hint="GROUPS",
                )
            members.append(int(part))
        groups.append(members)
    return groups


def _print_partition(groups: Sequence[Sequence[int]]) -> None:
    sides = " | ".join(",".join(str(n) for n in group) for group in groups)
    _out().print(f"partitioned: {sides}  (`minikv cluster heal` to undo)")


@app.command()
def partition(
    groups: Annotated[
        list[str],
        typer.Argument(
            help="Groups of node ids, e.g. `1,2 3`: nodes talk only within their group; "
            "nodes not listed form one more group.",
            show_default=False,
        ),
    ],
    cluster: ClusterOption = None,
) -> None:
    """Split the network: each group can only talk within itself."""
    parsed = parse_groups(groups)
    with _progress() as report:
        launcher = _launcher(cluster, progress=report)
        full = _run(launcher.partition(parsed))
    _print_partition(full)


@app.command()
def isolate(node: NodeArgument, cluster: ClusterOption = None) -> None:
    """Cut one node off from every other node (both directions)."""
    with _progress() as report:
        launcher = _launcher(cluster, progress=report)
        full = _run(launcher.isolate(node))
    _print_partition(full)


@app.command()
def heal(cluster: ClusterOption = None) -> None:
    """Remove every network fault (partitions, isolation)."""
    with _progress() as report:
        launcher = _launcher(cluster, progress=report)
        cleared = _run(launcher.heal())
    if cleared:
        _out().print(f"healed: fault rules cleared on node(s) {', '.join(map(str, cleared))}")
    else:  # it read "cleared on node(s) -"; the launcher has said which nodes are down
        _out().print("healed: no node is up now; its fault rules go as it starts or resumes")


@app.command("transfer-leader")
def transfer_leader(
    shard: Annotated[int, typer.Argument(help="The shard (0-based).", min=0)],
    node: NodeArgument,
    cluster: ClusterOption = None,
) -> None:
    """Move a shard's leadership to another of its replicas."""
    with _progress() as report:
        launcher = _launcher(cluster, progress=report)
        message = _run(launcher.transfer_leader(shard, node))
    _out().print(message)


maintenance.register(app)
