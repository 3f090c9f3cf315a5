"""`minikv serve` configuration: TOML < MINIKV_* environment < flags, and one clear line with
exit status 2 for everything a person must fix (no traceback, no node started)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minikv_core import early_signals
from minikv_core.server import (
    EXIT_USAGE,
    ConfigError,
    _StopSignal,
    check_data_dir,
    config_from_argv,
    main,
    parse_peers,
    resolve,
    serve,
)
from minikv_tui.node_process import free_ports

PEERS = "1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003"


def base_flags(tmp_path: Path) -> dict[str, object]:
    return {"id": 1, "data_dir": str(tmp_path / "d"), "http": "127.0.0.1:0", "peers": PEERS}


def test_flags_alone_give_a_complete_config_with_defaults(tmp_path: Path) -> None:
    config = resolve(base_flags(tmp_path), env={})
    assert config.node_id == 1
    assert config.peers == {1: "127.0.0.1:9001", 2: "127.0.0.1:9002", 3: "127.0.0.1:9003"}
    assert config.grpc_address == "127.0.0.1:9001", "defaults to this node's peer address"
    assert (config.node.shards, config.node.replicas) == (8, 3)
    assert config.api.value_size_bytes_max == 1024 * 1024
    assert config.api.request_timeout_ms_default == 5000
    assert config.api.admin_allow_remote is False


def test_toml_then_env_then_flags_later_wins(tmp_path: Path) -> None:
    toml = tmp_path / "minikv.toml"
    toml.write_text(
        'id = 1\ndata_dir = "from-toml"\nhttp = "127.0.0.1:1"\nshards = 4\nreplicas = 1\n'
        'value_size_max = 2048\n[peers]\n1 = "127.0.0.1:9001"\n2 = "127.0.0.1:9002"\n'
    )
    env = {"MINIKV_SHARDS": "6", "MINIKV_HTTP": "127.0.0.1:2", "MINIKV_ADMIN_ALLOW_REMOTE": "1"}
    config = resolve({"shards": "5", "replicas": None}, env, toml)
    assert config.node.shards == 5, "flag beats env and file"
    assert config.http_address == "127.0.0.1:2", "env beats file"
    assert config.data_dir == Path("from-toml"), "file alone"
    assert config.node.replicas == 1, "a flag left unset (None) does not override"
    assert config.api.value_size_bytes_max == 2048
    assert config.api.admin_allow_remote is True
    assert config.peers == {1: "127.0.0.1:9001", 2: "127.0.0.1:9002"}


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f'id = 2\ndata_dir = "x"\nhttp = "127.0.0.1:0"\npeers = "{PEERS}"\n')
    config = config_from_argv([], {"MINIKV_CONFIG": str(toml)})
    assert config.node_id == 2
    assert config.grpc_address == "127.0.0.1:9002"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"id": 4}, "must list this node"),
        ({"id": 0}, "positive"),
        ({"peers": "1=127.0.0.1:9001,1=127.0.0.1:9002"}, "listed twice"),
        ({"peers": "1=127.0.0.1:9001,2=127.0.0.1:9001"}, "share address"),
        ({"peers": "1=localhost"}, "host:port"),
        ({"peers": "one=127.0.0.1:1"}, "positive id"),
        ({"peers": "1=127.0.0.1:0"}, "fixed port"),
        ({"peers": ","}, "empty"),
        ({"grpc": "127.0.0.1:9999"}, "tells the other nodes"),
        ({"http": "nowhere"}, "--http must be host:port"),
        ({"replicas": 4}, "--replicas (4) cannot exceed the number of nodes (3)"),
        ({"shards": 0}, "--shards must be in 1..1024, got 0"),
        ({"shards": "many"}, "must be an integer"),
        ({"value_size_max": 10**12}, "--value-size-max must be in 1.."),
        ({"request_timeout_ms": 0}, "--request-timeout-ms must be in 1..60000, got 0"),
        ({"request_timeout_ms": 70_000}, "--request-timeout-ms must be in 1..60000, got 70000"),
        ({"log_level": "loud"}, "--log-level"),
        ({"admin_allow_remote": "maybe"}, "true or false"),
        ({"repair_after_s": -1}, "repair_after_s must be in 0..86400"),
        ({"txn_record_gc_s": 0}, "txn_record_gc_s must be in 1..86400 seconds, got 0"),
        ({"join": "127.0.0.1:9002"}, "--join and --peers exclude each other"),
    ],
)
def test_bad_values_are_one_clear_config_error(
    tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    merged = base_flags(tmp_path) | flags
    with pytest.raises(ConfigError) as raised:
        resolve(merged, env={})
    assert message in str(raised.value)


def test_missing_required_option_names_all_three_sources(tmp_path: Path) -> None:
    flags = base_flags(tmp_path)
    del flags["data_dir"]
    with pytest.raises(ConfigError, match=r"--data-dir is required .*MINIKV_DATA_DIR"):
        resolve(flags, env={})


def test_unknown_toml_key_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("id = 1\nshard = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) shard; known: id, data_dir"):
        resolve({}, {}, toml)


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("id = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve({}, {}, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({}, {}, tmp_path / "absent.toml")


def test_unknown_flag_is_a_config_error_not_a_usage_exit() -> None:
    with pytest.raises(ConfigError, match="unrecognized arguments: --shardz"):
        config_from_argv(["--shardz", "3"], {})


def test_parse_peers_keeps_order_and_strips_spaces() -> None:
    assert parse_peers(" 2=127.0.0.1:2 , 1=127.0.0.1:1 ") == {2: "127.0.0.1:2", 1: "127.0.0.1:1"}


def test_unwritable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # Root writes through permission bits; /proc refuses new files even to root.
        with pytest.raises(ConfigError, match="not writable"):
            check_data_dir(Path("/proc"))
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_data_dir(locked)
    finally:
        locked.chmod(0o700)


def test_data_dir_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create data directory"):
        check_data_dir(blocker / "sub")
    with pytest.raises(ConfigError, match="not a directory"):
        check_data_dir(blocker)


def test_main_prints_one_line_and_exits_2_on_a_bad_peer_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--id",
            "1",
            "--data-dir",
            str(tmp_path),
            "--http",
            "127.0.0.1:0",
            "--peers",
            "1=127.0.0.1",
        ],
        env={},
    )
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("minikv serve: error: the address of peer 1 must be host:port")


def _run_server(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIKV_")}
    return subprocess.run(
        [sys.executable, "-m", "minikv_core.server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def test_port_in_use_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_server(
            [
                "--id",
                "1",
                "--data-dir",
                str(tmp_path / "d"),
                "--http",
                "127.0.0.1:0",
                "--peers",
                f"1=127.0.0.1:{port}",
                "--replicas",
                "1",
            ],
            tmp_path,
        )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and f"127.0.0.1:{port}" in errors[0], result.stderr


def test_http_port_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as grpc_probe:
        grpc_probe.bind(("127.0.0.1", 0))
        grpc_port = grpc_probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        result = _run_server(
            [
                "--id",
                "1",
                "--data-dir",
                str(tmp_path / "d"),
                "--http",
                f"127.0.0.1:{http_port}",
                "--peers",
                f"1=127.0.0.1:{grpc_port}",
                "--replicas",
                "1",
            ],
            tmp_path,
        )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot bind HTTP address 127.0.0.1:{http_port}" in result.stderr


def test_bad_flag_in_a_real_process_exits_2_without_traceback(tmp_path: Path) -> None:
    result = _run_server(["--id", "x"], tmp_path)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith("minikv serve: error: id (--id) must be an integer")
    assert "Traceback" not in result.stderr


def test_serve_command_turns_config_errors_into_user_errors_with_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from minikv_tui.commands import serve
    from minikv_tui.errors import UserError

    result = CliRunner().invoke(
        serve.app,
        [
            "--id",
            "1",
            "--data-dir",
            str(tmp_path),
            "--http",
            "127.0.0.1:0",
            "--peers",
            "1=127.0.0.1:1,1=127.0.0.1:2",
        ],
    )
    assert isinstance(result.exception, UserError), result.output
    assert result.exception.exit_code == EXIT_USAGE
    assert result.exception.message == "peer 1 is listed twice"
    assert "Traceback" not in result.output


def test_serve_command_help_lists_every_option() -> None:
    from typer.testing import CliRunner

    from minikv_core.server import OPTIONS
    from minikv_tui.commands import serve

    result = CliRunner().invoke(serve.app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in OPTIONS:
        assert "--" + option.name.replace("_", "-") in result.output, option.name
    assert "--config" in result.output


def test_join_takes_the_cluster_shape_from_the_cluster(tmp_path: Path) -> None:
    flags = {
        "id": 5,
        "data_dir": str(tmp_path / "d"),
        "http": "127.0.0.1:0",
        "grpc": "127.0.0.1:9005",
        "join": "127.0.0.1:9001",
    }
    config = resolve(flags, env={})
    assert config.join == "127.0.0.1:9001"
    assert config.peers == {5: "127.0.0.1:9005"}, "provisional until the cluster answers"
    for name, value in (("shards", 8), ("replicas", 3)):
        with pytest.raises(ConfigError, match=f"--join takes --{name} from the cluster"):
            resolve(flags | {name: value}, env={})
    with pytest.raises(ConfigError, match="--join needs --grpc"):
        resolve({k: v for k, v in flags.items() if k != "grpc"}, env={})
    with pytest.raises(ConfigError, match="--join must be host:port"):
        resolve(flags | {"join": "nowhere"}, env={})


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        # "²".isdigit() is true but int("²") raises; int() refuses more than 4300 digits.
        # Both escaped `resolve` as a ValueError: exit 70 with "this is a bug" instead of 2.
        ({"MINIKV_SHARDS": "²"}, {}, "shards (MINIKV_SHARDS) must be an integer, got '²'"),
        ({"MINIKV_SHARDS": "9" * 5000}, {}, "shards (MINIKV_SHARDS) must be an integer"),
        ({}, {"http": "127.0.0.1:²"}, "--http must be host:port"),
        ({}, {"http": "127.0.0.1:" + "1" * 5000}, "--http must be host:port"),
        ({}, {"peers": "1=127.0.0.1:9001,²=127.0.0.1:9002"}, "peers entry '²=127.0.0.1:9002'"),
        ({}, {"peers": "1=127.0.0.1:²"}, "the address of peer 1 must be host:port"),
        ({}, {"peers": "9" * 5000 + "=127.0.0.1:9001"}, "must be id=host:port"),
    ],
)
def test_numbers_int_cannot_read_are_config_errors(
    tmp_path: Path, env: dict[str, str], flags: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve(base_flags(tmp_path) | flags, env=env)
    assert message in str(raised.value)
    assert len(str(raised.value)) < 300, "the line quotes a cut of a huge value, not all of it"


@pytest.mark.parametrize(
    "content",
    [b'id = "\xff"\n', b"id = " + b"9" * 5000 + b"\n"],
    ids=["not-utf8", "int-over-4300-digits"],
)
def test_toml_tomllib_refuses_with_a_value_error_is_a_config_error(
    tmp_path: Path, content: bytes
) -> None:
    """tomllib raises UnicodeDecodeError (not TOMLDecodeError) for bytes that are not UTF-8,
    and a bare ValueError for a huge integer: both were tracebacks (exit 70)."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match="is not valid TOML"):
        resolve({}, {}, bad)


async def test_sigterm_while_joining_stops_at_once_with_exit_0(tmp_path: Path) -> None:
    """SIGTERM while `--join` still looked for the cluster was not acted on until the join
    gave up (30 s): the node then exited 1 ("could not join"). Nothing is open yet, so it
    stops at once with 0."""
    grpc_port, nobody = free_ports(2)  # nothing listens on `nobody`
    config = resolve(
        {
            "id": 5,
            "data_dir": str(tmp_path / "d"),
            "http": "127.0.0.1:0",
            "grpc": f"127.0.0.1:{grpc_port}",
            "join": f"127.0.0.1:{nobody}",
        },
        env={},
    )
    stop = _StopSignal()
    serving = asyncio.ensure_future(serve(config, stop))
    try:
        await asyncio.sleep(1.0)
        assert not serving.done(), "still looking for the cluster"
        asked = time.monotonic()
        stop._fire(signal.SIGTERM)  # what the loop's SIGTERM handler calls
        assert await asyncio.wait_for(serving, timeout=10) == 0
        assert time.monotonic() - asked < 3.0
    finally:
        serving.cancel()
        with contextlib.suppress(BaseException):
            await serving


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: /proc/PID/status SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


async def test_a_sigterm_noted_while_importing_stops_the_node_once_it_serves() -> None:
    """The entry point's early handler only notes the signal; installing the loop's handlers
    replays it, so the node stops as it would for a later SIGTERM."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    loop = asyncio.get_running_loop()
    try:
        early_signals.note_until_serving()
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once: this thread is the main one
        stop = _StopSignal()
        stop.install(loop)
        assert stop.event.is_set() and stop.signal_name == "SIGTERM"
        assert early_signals.take_noted() == [], "a noted signal is replayed once"
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param([sys.executable, "-m", "minikv_core.server"], id="launcher"),
        pytest.param([str(Path(sys.executable).parent / "minikv"), "serve"], id="minikv-serve"),
    ],
)
def test_sigterm_as_soon_as_a_starting_node_handles_it_exits_0(
    tmp_path: Path, entry: list[str]
) -> None:
    """`cluster stop` right after `start`: the node exited 143 when SIGTERM came during its
    imports. Sent as soon as the process catches SIGTERM, it must stop cleanly, whether the
    launcher started it or a person ran `minikv serve`."""
    grpc_port, http_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIKV_")}
    flags = ["--id", "1", "--data-dir", str(tmp_path / "d"), "--http", f"127.0.0.1:{http_port}"]
    peers = [
        "--grpc",
        f"127.0.0.1:{grpc_port}",
        "--peers",
        f"1=127.0.0.1:{grpc_port}",
        "--replicas",
        "1",
    ]
    process = subprocess.Popen(
        [*entry, *flags, *peers],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while not _catches(process.pid, signal.SIGTERM):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the node never handled SIGTERM"
            time.sleep(0.002)
        # The entry point notes signals before its slow imports (grpc's C core loads ~60-90
        # ms later here); without that, SIGTERM is caught only once the event loop runs.
        loaded = Path(f"/proc/{process.pid}/maps").read_text()
        process.send_signal(signal.SIGTERM)
        assert "cygrpc" not in loaded, "SIGTERM was not caught before grpc was imported"
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
