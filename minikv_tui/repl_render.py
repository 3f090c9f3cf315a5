"""Everything the REPL prints, with Rich: values, tables, notes and the one-line errors.

Interactive sessions get tables and colour; scripted runs (`-c`, piped stdin) get plain lines
that pipe well (a value per line, `key<TAB>value` for scans) and nothing but results on
stdout. Values print as text when they are printable UTF-8, else as a double-quoted string
with escapes that the REPL reads back as the same bytes; `raw` writes the bytes as they are.
Text is never interpreted as Rich markup, so a value like `[red]` prints as itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from minikv_core.client import OpKind, OpResult, ScanItem, ShardRouting, TxnOp
from minikv_core.net.limits import SCAN_LIMIT_MAX
from minikv_tui import repl_grammar
from minikv_tui.repl_errors import ReplError
from minikv_tui.repl_tokens import quote_bytes
from minikv_tui.repl_watcher import ClusterEvent, EventKind


def display_bytes(data: bytes) -> str:
    """`data` as text if it is printable UTF-8 (spaces included), else quoted with escapes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return quote_bytes(data, force_quotes=True)
    if text and text.isprintable() and text.strip() == text:
        return text
    return quote_bytes(data, force_quotes=True)


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One node as STATUS saw it: its admin status document, or why there is none."""

    node: int
    address: str
    status: Mapping[str, Any] | None
    problem: str = ""


class Renderer:
    def __init__(self, out: Console, err: Console, *, interactive: bool, raw: bool) -> None:
        self.out = out
        self.err = err
        self.interactive = interactive
        self.raw = raw

    # --- results ----------------------------------------------------------------------------

    def value(self, data: bytes) -> None:
        if self.raw:
            self._raw_line(data)
        else:
            self.out.print(Text(display_bytes(data)), soft_wrap=True)

    def ok(self, detail: str = "") -> None:
        if self.interactive and detail:
            self.out.print(Text.assemble(("OK", "bold green"), (f" ({detail})", "dim")))
        else:
            self.out.print(Text("OK", style="bold green"))

    def note(self, text: str, style: str = "") -> None:
        self.out.print(Text(text, style=style), soft_wrap=True)

    def queued(self, count: int, shard: int | None) -> None:
        """A command queued inside MULTI (`count` queued now, this one on `shard`)."""
        if not self.interactive:
            self.out.print(Text("QUEUED", style="bold yellow"))
            return
        detail = f" ({count} queued" + (f", shard {shard})" if shard is not None else ")")
        self.out.print(Text.assemble(("QUEUED", "bold yellow"), (detail, "dim")))

    def exec_results(
        self, ops: Sequence[TxnOp], results: Sequence[OpResult], shards: Sequence[int]
    ) -> None:
        """EXEC's answer, one line per queued command in order (as redis's EXEC): numbered
        in a terminal; in scripts the line the command alone prints, and an empty line for a
        GET of a missing key (a real value never prints empty: "" is quoted)."""
        if not ops:
            if self.interactive:
                self.note("(nothing was queued)", "dim")
            return
        for number, (op, result) in enumerate(zip(ops, results, strict=True), start=1):
            prefix = (f"{number}) ", "dim") if self.interactive else ("", "")
            if result.kind is OpKind.PUT:
                detail = f" (version {result.version})" if self.interactive else ""
                self.out.print(Text.assemble(prefix, ("OK", "bold green"), (detail, "dim")))
            elif result.kind is OpKind.DELETE:
                if result.deleted:
                    self.out.print(Text.assemble(prefix, ("deleted", "green")))
                else:
                    self.out.print(Text.assemble(prefix, ("not found (nothing deleted)", "yellow")))
            elif result.value is None:
                self.out.print(Text.assemble(prefix, ("(nil)" if self.interactive else "", "dim")))
            elif self.raw:
                self._raw_line(result.value)
            else:
                self.out.print(Text.assemble(prefix, display_bytes(result.value)), soft_wrap=True)
            assert result.kind is op.kind, (op, result)
        if self.interactive and shards:
            count = f"{len(ops)} command{'s' if len(ops) != 1 else ''}"
            if len(shards) == 1:
                where = f"on shard {shards[0]} (one Raft entry)"
            else:
                where = f"across shards {', '.join(map(str, shards))} (two-phase commit)"
            self.note(f"atomic: {count} {where}", "dim")

    def timing(self, latency_ms: float) -> None:
        self.out.print(Text(f"({latency_ms:.2f} ms)", style="dim"))

    def scan(self, items: Sequence[ScanItem], more: bool, limit: int, prefix: bytes) -> None:
        if self.raw or not self.interactive:
            for item in items:
                if self.raw:
                    self._raw_line(item.key + b"\t" + item.value)
                else:  # not through Rich, which would expand the tab into spaces
                    self.out.file.write(f"{display_bytes(item.key)}\t{display_bytes(item.value)}\n")
            self.out.file.flush()
            return
        if not items:
            self.note("(no keys)" if not prefix else "(no keys under this prefix)", "dim")
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        table.add_column("key", style="cyan", overflow="fold")
        table.add_column("value", overflow="fold")
        table.add_column("version", justify="right", style="dim")
        for item in items:
            table.add_row(
                Text(display_bytes(item.key)), Text(display_bytes(item.value)), str(item.version)
            )
        self.out.print(table)
        count = f"{len(items)} key{'s' if len(items) != 1 else ''}"
        if more:
            where = f"SCAN {quote_bytes(prefix)} " if prefix else "SCAN "
            if limit < SCAN_LIMIT_MAX:
                bigger = min(limit * 10, SCAN_LIMIT_MAX)
                self.note(f"{count} shown; more exist: {where}LIMIT {bigger} shows more", "dim")
            else:  # no bigger LIMIT exists
                self.note(f"{count} shown; more exist: a longer prefix narrows the scan", "dim")
        else:
            self.note(count, "dim")

    def shard(self, key: bytes, shard: int, routing: ShardRouting) -> None:
        leader = routing.leaders.get(shard)
        replicas = routing.replicas.get(shard, ())
        if not self.interactive:
            self.note(
                f"shard={shard} leader={leader or ''} replicas={','.join(map(str, replicas))}"
            )
            return
        line = Text.assemble(
            (display_bytes(key), "cyan"),
            " is in ",
            (f"shard {shard}", "bold"),
            " · leader ",
            _node(leader, routing),
            " · replicas ",
            ", ".join(f"n{r}" for r in replicas),
        )
        self.out.print(line, soft_wrap=True)

    def leaders(self, routing: ShardRouting, shards: Sequence[int]) -> None:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        table.add_column("shard", justify="right")
        table.add_column("leader")
        table.add_column("replicas")
        for shard in shards:
            table.add_row(
                Text(str(shard)),
                _node(routing.leaders.get(shard), routing),
                Text(", ".join(f"n{r}" for r in routing.replicas.get(shard, ()))),
            )
        self.out.print(table)

    def status(self, label: str, routing: ShardRouting, nodes: Sequence[NodeReport]) -> None:
        up = sum(1 for n in nodes if n.status is not None)
        self.out.print(
            Text.assemble(
                (label, "bold"),
                f" · {up}/{len(nodes)} nodes answer · {routing.shard_count} shards"
                f" · shard map epoch {routing.epoch}",
            ),
            soft_wrap=True,
        )
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("node", "address", "state", "uptime", "leads shards"):
            table.add_column(column)
        for report in nodes:
            table.add_row(Text(f"n{report.node}"), Text(report.address), *_node_cells(report))
        self.out.print(table)
        self.leaders(routing, sorted(routing.replicas))

    def help(self, topic: str | None) -> None:
        if topic is None:
            table = Table(box=None, show_header=False, pad_edge=False)
            table.add_column(style="bold cyan")
            table.add_column()
            for command in repl_grammar.COMMANDS:
                table.add_row(Text(command.usage), Text(command.summary))
            self.out.print(table)
            self.note(
                "Separate commands with ';'. Tab completes commands and keys; Ctrl-R searches "
                "history; Ctrl-C clears the line; Ctrl-D exits.",
                "dim",
            )
            return
        spec = repl_grammar.lookup(topic)
        assert spec is not None, topic
        self.out.print(Text(spec.usage, style="bold cyan"))
        if spec.aliases:
            self.note("alias: " + ", ".join(spec.aliases), "dim")
        self.note(spec.summary)
        if spec.details:
            self.note(spec.details, "dim")
        if spec.name == "MULTI":
            self.note(repl_grammar.multi_rules(), "dim")

    def clear(self) -> None:
        if self.interactive:
            self.out.clear()

    # --- errors and events ------------------------------------------------------------------

    def error(self, error: ReplError, where: str = "") -> None:
        """One line: what went wrong, then (dim) what to do next."""
        line = Text.assemble(("error: ", "bold red"), (f"{where}: " if where else "", "red"))
        line.append(error.message, style="red")
        if error.hint:
            line.append(f" — {error.hint}", style="dim")
        self.err.print(line, soft_wrap=True)

    def event(self, event: ClusterEvent) -> None:
        style = {
            EventKind.LEADER_CHANGED: "yellow",
            EventKind.CONTACT_LOST: "bold red",
            EventKind.RECONNECTED: "green",
        }[event.kind]
        self.err.print(Text.assemble(("* ", style), (event.text, style)), soft_wrap=True)

    def _raw_line(self, data: bytes) -> None:
        self.out.file.flush()
        buffer = getattr(self.out.file, "buffer", None)
        if buffer is not None:
            buffer.write(data + b"\n")
            buffer.flush()
        else:  # a text-only stream: keep undecodable bytes as they were read
            self.out.file.write(data.decode("utf-8", "surrogateescape") + "\n")
            self.out.file.flush()


def _node(node: int | None, routing: ShardRouting) -> Text:
    if node is None:
        return Text("none (election in progress?)", style="yellow")
    return Text.assemble((f"n{node}", "bold"), (f" {routing.addresses.get(node, '?')}", "dim"))


def _node_cells(report: NodeReport) -> tuple[Text, Text, Text]:
    status = report.status
    if status is None:
        return Text(report.problem or "down", style="red"), Text(""), Text("")
    if status.get("failure"):
        state = Text(f"failed: {status['failure']}", style="red")
    elif status.get("ready"):
        state = Text("ready", style="green")
    else:
        state = Text(f"not ready: {status.get('not_ready_reason') or '?'}", style="yellow")
    uptime = _duration(float(status.get("uptime_s") or 0.0))
    led = sorted(
        int(group["shard"])
        for group in status.get("groups", ())
        if group.get("role") == "leader" and group.get("shard") is not None
    )
    return state, Text(uptime), Text(", ".join(map(str, led)) or "-")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
