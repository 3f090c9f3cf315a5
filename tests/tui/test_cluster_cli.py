"""`minikv cluster …` and `minikv get | put | delete | scan`: argument errors through Typer's
CliRunner, the data commands against a real cluster, and the console script end to end."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from minikv_tui.cli import app
from minikv_tui.errors import UserError
from minikv_tui.launcher import Launcher
from tests.tui.conftest import processes_under

SCRIPT_TIMEOUT_S = 90


def invoke(*args: str, input: str | bytes | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=input)
    assert "Traceback" not in result.output
    return result


def flat(text: str) -> str:
    """Typer draws usage errors in a box that wraps; compare words, not layout."""
    for border in "│╭╮╰╯─":
        text = text.replace(border, " ")
    return " ".join(text.split())


def user_error(result: Result) -> UserError:
    assert isinstance(result.exception, UserError), (result.exception, result.output)
    return result.exception


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("cluster", "partition", "1,x"), "'1,x': a group is node ids separated by commas"),
        (("cluster", "partition"), "Missing argument 'groups'"),
        (
            ("cluster", "kill", "0"),
            "Invalid value for 'node': Input should be greater than or equal to 1",
        ),
        (("cluster", "kill", "two"), "Invalid value for 'node': Input should be a valid integer"),
        (("cluster", "transfer-leader", "0"), "Missing argument 'node'"),
        (("cluster", "up", "--nodes", "0"), "Invalid value for '--nodes'"),
        (("cluster", "destroy"), "Missing argument 'name'"),
        (("cluster", "frobnicate"), "No such command 'frobnicate'"),
        (("put", "k"), "give the value either as an argument or with --file"),
        (("put", "k", "v", "--file", "x"), "give the value either as an argument or with --file"),
        (("scan", "--limit", "0"), "Invalid value for '--limit'"),
        (("get",), "Missing argument 'key'"),
    ],
)
def test_argument_errors_exit_2_with_a_clear_message(
    minikv_home: Path, args: tuple[str, ...], says: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert says in flat(result.output), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("args", "says", "code"),
    [
        (("get", "k", "--endpoints", "nowhere"), "--endpoints: 'nowhere' is not host:port", 2),
        (("cluster", "up", "--nodes", "2", "--replicas", "3"), "--replicas must be between", 2),
        (("cluster", "up", "--name", "Bad!"), "invalid cluster name 'Bad!'", 2),
        (("cluster", "status"), "there are no local clusters yet", 1),
        (("cluster", "kill", "1", "--cluster", "ghost"), "no local cluster named 'ghost'", 1),
        (("cluster", "destroy", "ghost", "--yes"), "no local cluster named 'ghost'", 1),
        (("get", "k"), "no local cluster is running", 1),
    ],
)
def test_user_errors_say_what_to_do_with_their_exit_code(
    minikv_home: Path, args: tuple[str, ...], says: str, code: int
) -> None:
    error = user_error(invoke(*args))
    assert says in error.message
    assert error.exit_code == code
    assert error.hint


def test_help_texts_show_what_they_promise() -> None:
    """The help is Markdown: `<name>` in it is an HTML tag and vanished (`--dir` read
    "default /"); and every bad `txn` document points at `minikv txn --help` for the format,
    so the help must show it."""
    up = flat(invoke("cluster", "up", "--help").output)
    assert "default: a directory named after the cluster under $MINIKV_HOME" in up
    assert "default /)" not in up
    txn_help = invoke("txn", "--help").output
    assert '{"compare": [{"key": "a", "target": "version", "op": "==", "version": 3}],' in txn_help
    for word in ('"success"', '"failure"', "delete", "exists", "value_b64"):
        assert word in txn_help, word


def test_data_commands_print_raw_bytes_and_json(local_cluster: Launcher, tmp_path: Path) -> None:
    assert invoke("put", "greeting", "hello").stdout.startswith("OK (version ")
    got = invoke("get", "greeting")
    assert got.exit_code == 0 and got.stdout_bytes == b"hello"

    blob = bytes(range(256)) * 4
    (tmp_path / "blob").write_bytes(blob)
    assert invoke("put", "bin/1", "--file", str(tmp_path / "blob")).exit_code == 0
    assert invoke("get", "bin/1").stdout_bytes == blob
    assert invoke("put", "bin/2", "--file", "-", input=b"from stdin\n").exit_code == 0
    assert invoke("get", "bin/2").stdout_bytes == b"from stdin\n"

    document = json.loads(invoke("get", "bin/1", "--json").stdout)
    assert "value_b64" in document and document["key"] == "bin/1"
    listing = json.loads(invoke("scan", "bin/", "--json").stdout)
    assert [item["key"] for item in listing["items"]] == ["bin/1", "bin/2"]
    assert listing["more"] is False
    keys = invoke("scan", "bin/", "--keys", "--limit", "1")
    assert keys.stdout_bytes == b"bin/1\n" and "raise --limit" in keys.stderr

    missing = user_error(invoke("get", "nope"))
    assert missing.message == "key 'nope' not found" and missing.exit_code == 1
    assert invoke("delete", "greeting").stdout.strip() == "OK (deleted)"
    assert user_error(invoke("delete", "greeting")).exit_code == 1
    endpoints = ",".join(asyncio.run(local_cluster.endpoints()))
    assert invoke("get", "bin/2", "--endpoints", endpoints).stdout_bytes == b"from stdin\n"


def test_a_value_over_one_grpc_message_is_told_in_minikv_terms(
    local_cluster: Launcher, tmp_path: Path
) -> None:
    """Between the node's gRPC bound (4 MiB) and the client's (16 MiB) gRPC itself refuses the
    put, in its own words ("SERVER: Received message larger than max (5000034 vs. 4194304)"),
    which named neither the value nor its limit: both `put` and the REPL must say it plainly."""
    (tmp_path / "big").write_bytes(b"x" * 5_000_000)
    put = invoke("put", "big", "--file", str(tmp_path / "big"))
    error = user_error(put)
    assert error.exit_code == 2
    assert "larger than max" not in error.message
    assert error.message.startswith("the request is 5000034 bytes, over the 4194304-byte bound")
    assert "value limit (1 MiB" in error.message
    repl = invoke("repl", "-c", f"PUT big @{tmp_path / 'big'}")
    assert repl.exit_code == 1
    assert "larger than max" not in repl.stderr
    assert "the request is 5000034 bytes" in flat(repl.stderr)


def test_a_scan_of_big_values_pages_up_to_its_limit(
    local_cluster: Launcher, tmp_path: Path
) -> None:
    """A node cuts one scan answer at 4 MiB of keys and values and says `more`: six 1 MiB
    values came back as three, with "(more keys: raise --limit above 100)" (even at the
    largest --limit), and the REPL's SCAN printed the three as if they were all."""
    (tmp_path / "mib").write_bytes(b"v" * (1 << 20))
    for i in range(6):
        assert invoke("put", f"big/{i}", "--file", str(tmp_path / "mib")).exit_code == 0
    every = [f"big/{i}" for i in range(6)]
    keys = invoke("scan", "big/", "--keys")
    assert keys.stdout.split() == every and "more keys" not in keys.stderr
    listing = json.loads(invoke("scan", "big/", "--json").stdout)
    assert [item["key"] for item in listing["items"]] == every and listing["more"] is False
    four = invoke("scan", "big/", "--keys", "--limit", "4")
    assert four.stdout.split() == every[:4] and "raise --limit above 4" in four.stderr
    repl = invoke("repl", "-c", "SCAN big/")
    assert [line.split("\t")[0] for line in repl.stdout.splitlines()] == every


def run_minikv(
    home: Path, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("minikv", path=str(Path(sys.executable).parent))
    assert exe is not None, "the minikv console script is not installed in this environment"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIKV_")}
    env["MINIKV_HOME"] = str(home)
    result = subprocess.run(
        [exe, *args],
        check=False,
        capture_output=True,
        env=env,
        input=input,
        timeout=SCRIPT_TIMEOUT_S,
    )
    assert b"Traceback" not in result.stdout + result.stderr, result
    return result


def test_console_script_and_cluster_commands_up_kill_status_start_down_destroy(
    minikv_home: Path,
) -> None:
    """The real `minikv` script where what a user sees matters (JSON on stdout, raw values,
    the one-line error of a missing key); the other steps through CliRunner, which is the same
    code without an interpreter start each."""
    up = run_minikv(
        minikv_home, "cluster", "up", "--name", "cli", "--nodes", "3", "--shards", "2", "--json"
    )
    assert up.returncode == 0, up.stderr.decode()
    created = json.loads(up.stdout)
    assert created["created"] is True and created["started"] == [1, 2, 3]
    assert [m["process"] for m in created["members"]] == ["up", "up", "up"]

    assert invoke("put", "k", "v").exit_code == 0
    assert run_minikv(minikv_home, "get", "k").stdout == b"v"
    missing = run_minikv(minikv_home, "get", "absent")
    assert missing.returncode == 1 and missing.stdout == b""
    assert b"error: key 'absent' not found" in missing.stderr

    assert "node 2 killed" in invoke("cluster", "kill", "2").stdout
    status = invoke("cluster", "status", "--json")
    assert status.exit_code == 0, status.output
    document = json.loads(status.stdout)
    states = {n["node_id"]: n["process"] for n in document["status"]["nodes"]}
    assert states == {1: "up", 2: "down", 3: "up"}
    table = invoke("cluster", "status", "--name", "cli")  # as `up` named it
    assert "down" in table.stdout and "shards" in table.stdout

    assert "node 2 started" in invoke("cluster", "start", "2").stdout
    listing = json.loads(invoke("cluster", "ls", "--json").stdout)
    assert [(c["name"], c["state"]) for c in listing] == [("cli", "running")]

    down = run_minikv(minikv_home, "cluster", "down", "--name", "cli")
    assert down.returncode == 0 and b"cluster cli is down (3 node(s) stopped)" in down.stdout
    healed = invoke("cluster", "heal", "--name", "cli").stdout  # it read "on node(s) -"
    assert "healed: no node is up now" in healed and "node(s) -" not in healed
    assert processes_under(minikv_home) == []

    refused = invoke("cluster", "destroy", "cli", input="n\n")
    assert refused.exit_code == 1 and (minikv_home / "cli").exists()
    gone = invoke("cluster", "destroy", "cli", "--yes")
    assert gone.exit_code == 0, gone.output
    assert not (minikv_home / "cli").exists()
    assert json.loads(invoke("cluster", "ls", "--json").stdout) == []
