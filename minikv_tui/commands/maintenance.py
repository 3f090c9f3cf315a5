"""`minikv cluster repair | verify | rebalance | add-node | remove-node`: cluster maintenance.

The meta leader does the work as a background job (`minikv_core/cluster/maintenance.py`);
these commands start it through `maintenance_jobs.JobRunner`, show its progress on stderr (one
bar over the steps and the current step's text, a line per finished step that stays), and
print a summary on stdout. Which cluster: `--endpoints`, else `--cluster` / MINIKV_CLUSTER,
else the only running local cluster (`minikv_tui.target`). For a local cluster the node ids
are checked against the registry before anything is asked of the cluster, every job's start
and end go in its journal, and the launcher starts (`add-node`) or retires (`remove-node`)
the node process: only it touches processes.

Exit status: 0 when the job is done (and, for verify, every replica agrees), 1 when it failed
or found damage, 2 for bad arguments.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Final, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from minikv_core.client import AsyncClient, ClientError
from minikv_tui.errors import EXIT_USAGE, UserError
from minikv_tui.launcher import Launcher, Step
from minikv_tui.maintenance_jobs import (
    CALL_TIMEOUT_S,
    Job,
    JobFailedError,
    JobRunner,
    JobStep,
    Journal,
    Operation,
    Plan,
)
from minikv_tui.node_process import node_process_state
from minikv_tui.target import Target, resolve_target_async

T = TypeVar("T")

ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        "-c",
        help="The local cluster (default: $MINIKV_CLUSTER, else the only one running).",
        show_default=False,
    ),
]
EndpointsOption = Annotated[
    str | None,
    typer.Option(
        "--endpoints",
        "-e",
        help="gRPC host:port of nodes of a cluster started elsewhere (comma-separated).",
        show_default=False,
    ),
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Show the plan and change nothing.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the node's JSON document.")]
NodeArgument = Annotated[int, typer.Argument(help="The node id (1, 2, …).", min=1)]

REACH_TIMEOUT_S: Final = 5.0
"""How long the first contact may take before a command says the cluster does not answer."""

_STATE_STYLE = {"done": "green", "running": "yellow", "failed": "red", "pending": "dim"}


def register(app: typer.Typer) -> None:
    """Add the maintenance commands to the `minikv cluster` app."""
    app.command("repair")(repair)
    app.command("verify")(verify)
    app.command("rebalance")(rebalance)
    app.command("add-node")(add_node)
    app.command("remove-node")(remove_node)


# ------------------------------------------------------------------------------- display


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


class Display:
    """Progress on stderr: one bar (a job's steps, or a launcher's stages) with the current
    text, and a dim line per finished step, which stays when the bar goes."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task = progress.add_task("starting", total=None) if progress is not None else None
        self._told: set[int] = set()

    def _line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)

    def step(self, step: Step) -> None:
        """A launcher stage (`Launcher(progress=display.step)`)."""
        if self._progress is None or self._task is None:
            return
        self._line(f"[dim]· {escape(step.message)}[/]")
        self._progress.update(
            self._task, description=step.message, completed=step.done, total=step.total or None
        )

    def job(self, job: Job) -> None:
        """A poll of a job (`JobRunner.follow(job, display.job)`)."""
        if self._progress is None or self._task is None:
            return
        for index, step in enumerate(job.steps):
            if index in self._told or step.state not in ("done", "failed"):
                continue
            self._told.add(index)
            mark = "[green]✓[/]" if step.state == "done" else "[red]✗[/]"
            detail = f": {step.detail}" if step.detail else ""
            self._line(f"[dim]{mark} {escape(step.describe())}{escape(detail)}[/]")
        current = job.current
        text = current.describe() if current is not None else f"{job.title}: planning"
        self._progress.update(
            self._task,
            description=text,
            completed=job.steps_done,
            total=len(job.steps) or None,
        )


@contextmanager
def _display(enabled: bool) -> Iterator[Display]:
    if not enabled:
        yield Display(None)
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        console=Console(stderr=True, highlight=False),
        transient=True,
    ) as progress:
        yield Display(progress)


def _styled(state: str) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def _shard(step: JobStep) -> str:
    return str(step.shard) if step.shard >= 0 else "-"


def _node(step: JobStep) -> str:
    return str(step.node) if step.node > 0 else "all"


def _plan_table(plan: Plan) -> Table:
    table = Table(title=f"{plan.operation.command} plan", title_justify="left")
    for column in ("#", "step", "shard", "node"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason")
    for index, step in enumerate(plan.steps, start=1):
        table.add_row(
            str(index), step.kind.replace("_", "-"), _shard(step), _node(step), escape(step.reason)
        )
    return table


def _steps_table(job: Job) -> Table:
    table = Table(title=job.title, title_justify="left")
    for column in ("#", "step", "shard", "node", "state", "seconds"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail")
    for index, step in enumerate(job.steps, start=1):
        table.add_row(
            str(index),
            step.kind.replace("_", "-"),
            _shard(step),
            _node(step),
            _styled(step.state),
            f"{step.seconds:.1f}",
            escape(step.detail or step.reason),
        )
    return table


def _health_lines(plan_or_job: Plan | Job) -> list[str]:
    lines = []
    if plan_or_job.under_replicated:
        shards = ", ".join(
            f"{u.shard} ({u.healthy}/{u.wanted} healthy)" for u in plan_or_job.under_replicated
        )
        lines.append(f"[yellow]under-replicated before:[/] shard {shards}")
    lines.extend(f"[red]blocked:[/] {escape(b.describe())}" for b in plan_or_job.blocked)
    return lines


def _print_plan(plan: Plan) -> None:
    out = _out()
    if plan.steps:
        out.print(_plan_table(plan))
    else:
        out.print(f"nothing to {plan.operation.command}: the cluster is as it should be.")
    for line in _health_lines(plan):
        out.print(line)
    out.print("[dim]dry run: nothing was changed; run it without --dry-run to do it.[/]")


def _print_job(job: Job) -> None:
    out = _out()
    if job.steps:
        out.print(_steps_table(job))
    for line in _health_lines(job):
        out.print(line)
    out.print(job.summary())


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


def _failed(job: Job) -> JobFailedError:
    command = job.kind.replace("_", "-")
    return JobFailedError(
        job.summary(),
        hint="Check `minikv cluster status` and the nodes' logs, then run "
        f"`minikv cluster {command}` again: it plans only what is left.",
    )


# ------------------------------------------------------------------------------- running


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _journal(target: Target, node: int | None = None) -> Journal | None:
    if target.name is None:
        return None
    launcher = Launcher(target.name)

    async def record(kind: str, detail: str) -> None:
        await launcher.record_event(kind, detail, node)

    return record


def _check_members(target: Target, ids: Sequence[int], what: str) -> None:
    """Local clusters: refuse ids the registry does not list before asking the cluster."""
    if target.name is None:
        return
    members = {node.node_id for node in target.nodes}
    unknown = sorted(set(ids) - members)
    if unknown:
        listing = ", ".join(str(n) for n in sorted(members))
        raise UserError(
            f"{what}: cluster {target.name} has no node {', '.join(map(str, unknown))} "
            f"(nodes: {listing})",
            hint="See `minikv cluster status` for the node ids.",
            exit_code=EXIT_USAGE,
        )


async def _check_reachable(client: AsyncClient, target: Target) -> None:
    """Fail at once when no node answers at all. The runner rides out unreachable nodes for
    a minute (a meta leader failing over mid-job), so a wrong --endpoints or a cluster that
    is down cost that minute in silence before its one error. Every live node answers the
    shard map from memory, elections or not, so this refuses nothing the runner could do."""
    try:
        await client.shard_map(timeout_s=REACH_TIMEOUT_S)
    except ClientError as error:
        raise UserError(
            f"cannot reach the cluster at {', '.join(target.endpoints)}: {error}",
            hint="Check that it runs (`minikv cluster status`) and that --endpoints names "
            "its nodes' gRPC addresses.",
        ) from None


async def _plan_or_run(
    target: Target,
    operation: Operation,
    args: dict[str, Any],
    *,
    dry_run: bool,
    as_json: bool,
    node: int | None = None,
) -> Job | None:
    """The dry run's plan printed (None), or the job run to its end with progress shown."""
    async with AsyncClient(target.endpoints, timeout_s=CALL_TIMEOUT_S) as client:
        await _check_reachable(client, target)
        runner = JobRunner(client, target.endpoints, journal=_journal(target, node))
        if dry_run:
            plan = await runner.plan(operation, args)
            if as_json:
                _print_json(plan.document)
            else:
                _print_plan(plan)
            return None
        with _display(not as_json) as display:
            job = await runner.run(operation, args, display.job)
    if as_json:
        _print_json(job.document)
    elif job.kind != Operation.VERIFY:
        _print_job(job)
    if job.state == "failed":
        raise _failed(job)
    return job


# ------------------------------------------------------------------------------- commands


def repair(
    dead: Annotated[
        list[int] | None,
        typer.Option(
            "--dead",
            help="A node to treat as gone for good, repeatable (else nodes down longer than "
            "the nodes' --repair-after-s count).",
            min=1,
            show_default=False,
        ),
    ] = None,
    dry_run: DryRunOption = False,
    cluster: ClusterOption = None,
    endpoints: EndpointsOption = None,
    as_json: AsJson = False,
) -> None:
    """Re-create replicas lost with dead nodes (or found corrupt) on live ones."""
    dead_ids = sorted(set(dead or []))

    async def go() -> None:
        target = await resolve_target_async(endpoints, cluster)
        _check_members(target, dead_ids, "--dead")
        running = [
            n.node_id
            for n in target.nodes
            if n.node_id in dead_ids and node_process_state(n) == "up"
        ]
        if running:
            them = "them" if len(running) > 1 else "it"
            raise UserError(
                f"--dead: {_nodes_are(running)} running",
                hint=f"--dead is for nodes that are gone; kill or stop {them} first, or use "
                "`minikv cluster remove-node` to move replicas off a live node.",
                exit_code=EXIT_USAGE,
            )
        await _plan_or_run(
            target, Operation.REPAIR, {"dead": dead_ids}, dry_run=dry_run, as_json=as_json
        )

    _run(go())


def _nodes_are(ids: Sequence[int]) -> str:
    """Messages read as sentences: `node 3 is`, `nodes 1, 2 are`."""
    listing = ", ".join(map(str, ids))
    return f"node {listing} is" if len(ids) == 1 else f"nodes {listing} are"


def rebalance(
    dry_run: DryRunOption = False,
    cluster: ClusterOption = None,
    endpoints: EndpointsOption = None,
    as_json: AsJson = False,
) -> None:
    """Even out replicas and shard leaders across the nodes (repairing first if needed)."""

    async def go() -> None:
        target = await resolve_target_async(endpoints, cluster)
        await _plan_or_run(target, Operation.REBALANCE, {}, dry_run=dry_run, as_json=as_json)

    _run(go())


def verify(
    cluster: ClusterOption = None,
    endpoints: EndpointsOption = None,
    as_json: AsJson = False,
) -> None:
    """Compare every shard's replicas by checksum at one index and read every node's WAL back;
    name the replicas that differ and the damaged WAL records."""

    async def go() -> Job | None:
        target = await resolve_target_async(endpoints, cluster)
        return await _plan_or_run(target, Operation.VERIFY, {}, dry_run=False, as_json=as_json)

    job = _run(go())
    assert job is not None
    if not as_json:
        _print_verify(job)
    if job.corrupt:
        raise JobFailedError(
            f"{len(job.corrupt)} corrupt replica(s) or damaged WAL record(s) found",
            hint=(
                "Run `minikv cluster repair`: it rebuilds corrupt replicas from the healthy "
                "ones and has a node with a damaged WAL rewrite it."
            ),
        )


def _print_verify(job: Job) -> None:
    out = _out()
    if job.corrupt:
        table = Table(title="corrupt replicas and damaged WALs", title_justify="left")
        for column in ("shard", "node"):
            table.add_column(column, no_wrap=True)
        table.add_column("reason")
        for corrupt in job.corrupt:
            table.add_row(
                "WAL" if corrupt.shard < 0 else str(corrupt.shard),
                str(corrupt.node),
                escape(corrupt.reason),
            )
        out.print(table)
    else:
        out.print(
            f"[green]all {len(job.shards)} shards consistent[/] "
            f"({job.replicas_checked()} replicas checked)"
        )
    for shard in job.shards:
        for replica in shard.replicas:
            if replica.digest is None:
                out.print(
                    f"[yellow]not checked:[/] shard {shard.shard} on node {replica.node}: "
                    f"{escape(replica.problem)}"
                )


def remove_node(
    node: NodeArgument,
    dry_run: DryRunOption = False,
    cluster: ClusterOption = None,
    endpoints: EndpointsOption = None,
    as_json: AsJson = False,
) -> None:
    """Move a node's replicas elsewhere, then take it out of the cluster (it stops itself).

    For a local cluster the node is then recorded as removed: `up` never starts it again."""

    async def go() -> str | None:
        target = await resolve_target_async(endpoints, cluster)
        _check_members(target, [node], "remove-node")
        job = await _plan_or_run(
            target,
            Operation.REMOVE_NODE,
            {"node": node},
            dry_run=dry_run,
            as_json=as_json,
            node=node,
        )
        if job is None or target.name is None:
            return None
        with _display(not as_json) as display:
            launcher = Launcher(target.name, progress=display.step)
            return await launcher.mark_removed(node)

    message = _run(go())
    if message is not None and not as_json:
        _out().print(message)


def add_node(
    cluster: ClusterOption = None,
    no_rebalance: Annotated[
        bool,
        typer.Option("--no-rebalance", help="Only start the node; move no replicas to it."),
    ] = False,
) -> None:
    """Start a new node that joins the running local cluster, then rebalance onto it."""

    async def go() -> None:
        target = await resolve_target_async(None, cluster)
        assert target.name is not None  # no --endpoints: always a local cluster
        with _display(True) as display:
            launcher = Launcher(target.name, progress=display.step)
            node_id = await launcher.add_node()
            view = await launcher.view()
        added = view.node(node_id)
        assert added is not None
        _out().print(
            f"node {node_id} joined cluster {view.name} (pid {added.pid}, gRPC {added.grpc}, "
            f"HTTP {added.http}, data in {added.record.data_dir})"
        )
        if no_rebalance:
            _out().print(
                "[dim]It holds no replica yet: `minikv cluster rebalance` moves some to it.[/]"
            )
            return
        endpoints = view.endpoints()
        live = Target(view.name, endpoints, tuple(n.record for n in view.nodes))
        try:
            await _plan_or_run(live, Operation.REBALANCE, {}, dry_run=False, as_json=False)
        except UserError as error:
            raise UserError(
                f"node {node_id} joined, but the rebalance did not finish: {error.message}",
                hint="Run `minikv cluster rebalance` again: it plans only what is left.",
                exit_code=error.exit_code,
            ) from None

    _run(go())
