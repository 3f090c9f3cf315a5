"""`minikv repl`: an interactive shell for a minikv cluster, and its scripted twin.

Interactive (a terminal on stdin, repl_session): a prompt-toolkit session with highlighting,
completion, history, auto-suggest and a live toolbar; a watcher thread keeps the view of the
cluster current and prints leader changes and lost/regained contact above the prompt.
Scripted (`-c "PUT a 1; GET a"`, or commands piped on stdin, here): results only on stdout,
one red line per failed command on stderr, and exit status 1 if any command failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Final

from rich.console import Console

from minikv_core.client import Client, ClientError, InvalidRequestError
from minikv_core.net.limits import REQUEST_TIMEOUT_MS_MAX
from minikv_tui.errors import EXIT_FAILURE, EXIT_USAGE, UserError
from minikv_tui.repl_commands import Executor, Outcome
from minikv_tui.repl_errors import ParseError
from minikv_tui.repl_keys import KeyIndex
from minikv_tui.repl_parser import parse
from minikv_tui.repl_render import Renderer
from minikv_tui.repl_state import SessionState

SCRIPT_CHECK_TIMEOUT_S_MAX: Final = 5.0
TIMEOUT_S_MAX: Final = REQUEST_TIMEOUT_MS_MAX / 1000.0


def run_repl(
    endpoints: Sequence[str],
    name: str | None,
    *,
    command: str | None,
    raw: bool,
    timeout_s: float,
    stdin: IO[str],
) -> int:
    """The whole of `minikv repl`; returns the exit status. Raises UserError when the
    session cannot start (bad endpoints, or a script whose cluster does not answer)."""
    if not 0 < timeout_s <= TIMEOUT_S_MAX:
        raise UserError(
            f"--timeout must be more than 0 and at most {TIMEOUT_S_MAX:g} seconds, "
            f"got {timeout_s:g}",
            hint="Pass e.g. --timeout 5.",
            exit_code=EXIT_USAGE,
        )
    interactive = command is None and stdin.isatty()
    try:
        client = Client(list(endpoints), timeout_s=timeout_s)
    except InvalidRequestError as error:
        raise UserError(
            f"bad endpoints: {error}",
            hint="Pass --endpoints host:port[,host:port...] (the nodes' gRPC addresses).",
            exit_code=EXIT_USAGE,
        ) from None
    with client:
        state = SessionState(label=name or endpoints[0], endpoints=tuple(endpoints))
        out, err = Console(highlight=False), Console(stderr=True, highlight=False)
        renderer = Renderer(out, err, interactive=interactive, raw=raw)
        if interactive:
            # Only a terminal session loads prompt-toolkit and Pygments.
            from minikv_tui.repl_session import InteractiveRepl, default_history, key_index_of

            keys = key_index_of(client)
            InteractiveRepl(client, state, renderer, keys, default_history()).run()
            return 0
        executor = Executor(client, state, renderer, KeyIndex(None))
        _check_reachable(client, endpoints, timeout_s)
        chunks = [("", command)] if command is not None else _numbered_lines(stdin)
        return 0 if run_script(executor, chunks) else EXIT_FAILURE


def run_script(executor: Executor, chunks: Iterable[tuple[str, str]]) -> bool:
    """Run each (where, text) chunk in order; True when every command succeeded. A chunk that
    does not parse runs none of its commands; later chunks still run; EXIT stops all. Input
    that ends inside MULTI fails (its queued commands are never sent)."""
    succeeded = True
    where = ""
    for where, text in chunks:
        try:
            statements = parse(text)
        except ParseError as error:
            executor.parse_failed(error, where)
            succeeded = False
            continue
        for statement in statements:
            outcome = executor.run(statement, where)
            if outcome is Outcome.FAILED:
                succeeded = False
            elif outcome is Outcome.EXIT:
                return executor.finish(where) and succeeded
    return executor.finish(where) and succeeded


def _check_reachable(client: Client, endpoints: Sequence[str], timeout_s: float) -> None:
    """A script against a cluster that does not answer fails once, clearly, instead of
    once per command after a full deadline each."""
    try:
        client.shard_map(timeout_s=min(timeout_s, SCRIPT_CHECK_TIMEOUT_S_MAX))
    except ClientError as error:
        raise UserError(
            f"cannot reach the cluster at {', '.join(endpoints)}: {error}",
            hint="Check that the cluster is running (`minikv cluster status`) and that "
            "--endpoints names its nodes' gRPC addresses.",
        ) from None


def _numbered_lines(stdin: IO[str]) -> Iterator[tuple[str, str]]:
    """Lines of piped input, decoded so that any byte survives (surrogateescape)."""
    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        for number, line in enumerate(buffer, start=1):
            yield f"line {number}", line.decode("utf-8", "surrogateescape").rstrip("\r\n")
    else:
        for number, text in enumerate(stdin, start=1):
            yield f"line {number}", text.rstrip("\r\n")
