"""The `minikv` command: a Typer app whose sub-commands live in `minikv_tui.commands`.

`main()` is the console-script entry point. It is the last line of defence for the rule that
no traceback reaches a user: typed `UserError`s print one line and their exit code; anything
unexpected prints one line naming the bug and exits 70.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

# gRPC's C core logs INFO lines ("Got goaway") to stderr unless told otherwise, and reads this
# once at import: set it before any command module imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from minikv_core import early_signals

if sys.argv[1:2] == ["serve"]:  # a node: a SIGTERM during the imports stops it cleanly, too
    early_signals.note_until_serving()

import typer
from rich.console import Console

from minikv_core import __version__
from minikv_tui.commands import bench, cluster, data, repl, serve, sstable, tui, txn, wal
from minikv_tui.errors import EXIT_FAILURE, EXIT_INTERNAL, UserError, is_output_error, report

app = typer.Typer(
    name="minikv",
    help="minikv: a distributed key-value store, and the tools to run, watch and break it.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


app.add_typer(serve.app, name="serve", rich_help_panel="Cluster")
app.add_typer(cluster.app, name="cluster", rich_help_panel="Cluster")
data.register(app)
txn.register(app)
repl.register(app)
tui.register(app)
app.add_typer(wal.app, name="wal", rich_help_panel="Storage")
app.add_typer(sstable.app, name="sstable", rich_help_panel="Storage")
app.add_typer(bench.app, name="bench", rich_help_panel="Benchmarks")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"minikv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """minikv: a distributed key-value store, and the tools to run, watch and break it."""


def main() -> None:
    stderr = Console(stderr=True)
    try:
        app()
    except UserError as exc:
        report(stderr, exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:  # (a reader that went away, EPIPE, is Click's: it exits 1 quietly)
        if not is_output_error(exc):
            _internal_error(stderr, exc)
        _silence_stdout()  # what is still buffered cannot be written either
        where = exc.filename or "the output"  # stdout's errors name no file
        report(stderr, f"cannot write {where}: {exc.strerror or exc}")
        sys.exit(EXIT_FAILURE)
    except Exception as exc:  # the last line of defence: no traceback for users
        _internal_error(stderr, exc)


def _internal_error(stderr: Console, exc: Exception) -> NoReturn:
    report(
        stderr,
        f"internal error: {type(exc).__name__}: {exc}",
        "This is a bug in minikv; please report it with the command you ran.",
    )
    sys.exit(EXIT_INTERNAL)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit does not fail again
    (and print "Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no stdout to redirect: nothing will be flushed either
        pass
