"""minikv (3 nodes) against etcd (3 members) on this machine, driven by the same load generator.

    .venv/bin/python bench/cluster_vs_etcd.py [--install] [--duration 10] [--json]

Both clusters run on loopback ports chosen by the OS, in a temporary directory, with fsync on
(minikv always syncs; etcd syncs unless `--unsafe-no-fsync`, which is not passed). Both stay up
for the whole run and the workloads alternate between them, so background load on a shared
machine falls on both alike (the idle one costs little: heartbeats).

Fairness: every request comes from `minikv_tui.loadgen.LoadGenerator` in this process, over
HTTP/1.1 keep-alive with one aiohttp session, client `i` pinned to member `i mod 3`, the same
keys, values and seed. Only the request encoding differs: `PUT/GET /kv/{key}` for minikv and
etcd's v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`, base64) for etcd. Reads are
linearizable in both. The `minikv-grpc` rows add minikv's own client (leader-routed gRPC), the
way minikv's tools talk to it; etcd's equivalent (Go clientv3) is not used, so those rows have
no etcd counterpart.

Every process started here is stopped in `finally` (SIGTERM, then SIGKILL of its process
group), whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp

from minikv_core.client import AsyncClient
from minikv_tui.loadgen import (
    WORKLOADS,
    EtcdHttpTarget,
    GrpcTarget,
    LoadGenerator,
    LoadSummary,
    LoadTarget,
    MinikvHttpTarget,
    Workload,
)
from minikv_tui.node_process import CLOCK_TICKS, free_ports, proc_usage

SIZE: Final = 3
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
POLL_S: Final = 0.05
SYSTEMS: Final = ("minikv-http", "etcd-http", "minikv-grpc")
RUNS_DEFAULT: Final = "put:64,get:64,mixed:64,put:1"


# ---------------------------------------------------------------------------------- processes


@dataclass
class Member:
    name: str
    command: list[str]
    log_path: Path
    url: str = ""
    """HTTP base URL (minikv: known once its ready file appears)."""
    grpc_address: str = ""
    process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIKV_", "ETCD"))}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stop() reaches its children
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}; log tail:\n{self.log_tail()}"
            )

    def cpu_seconds(self) -> float:
        """User + system CPU of the process so far (from /proc), 0 when it is gone."""
        if self.process is None:
            return 0.0
        ticks, _ = proc_usage(self.process.pid)
        return 0.0 if ticks is None else ticks / CLOCK_TICKS

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def eventually(
    predicate: Callable[[], Awaitable[bool]], what: str, members: Sequence[Member]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        for member in members:
            member.check_alive()
        try:
            if await predicate():
                return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            last = error
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"timed out after {START_TIMEOUT_S}s waiting for {what}; last: {last!r}")


@dataclass
class Cluster:
    system: str
    members: list[Member] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def cpu_seconds(self) -> float:
        return sum(m.cpu_seconds() for m in self.members)

    def stop(self) -> None:
        for member in self.members:
            member.stop()


async def start_minikv(root: Path, session: aiohttp.ClientSession, shards: int) -> Cluster:
    cluster = Cluster("minikv")
    ports = free_ports(SIZE)
    peers = ",".join(f"{i}=127.0.0.1:{port}" for i, port in enumerate(ports, start=1))
    for node_id, port in enumerate(ports, start=1):
        ready = root / f"minikv{node_id}.ready.json"
        member = Member(
            name=f"minikv node {node_id}",
            command=[
                sys.executable,
                "-m",
                "minikv_core.server",
                "--id",
                str(node_id),
                "--data-dir",
                str(root / f"minikv{node_id}"),
                "--http",
                "127.0.0.1:0",
                "--grpc",
                f"127.0.0.1:{port}",
                "--peers",
                peers,
                "--shards",
                str(shards),
                "--replicas",
                "3",
                "--ready-file",
                str(ready),
                "--log-level",
                "warning",
            ],
            log_path=root / f"minikv{node_id}.log",
            grpc_address=f"127.0.0.1:{port}",
        )
        cluster.members.append(member)
    try:
        for member in cluster.members:
            member.launch()
        for node_id, member in enumerate(cluster.members, start=1):
            ready = root / f"minikv{node_id}.ready.json"

            async def started(ready: Path = ready, member: Member = member) -> bool:
                if not ready.exists():
                    return False
                member.url = "http://" + json.loads(ready.read_text())["http"]
                return True

            await eventually(started, f"{member.name} to serve", cluster.members)
        for member in cluster.members:

            async def healthy(member: Member = member) -> bool:
                async with session.get(member.url + "/health/ready") as response:
                    return response.status == 200

            await eventually(healthy, f"{member.name} ready", cluster.members)
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def start_etcd(root: Path, session: aiohttp.ClientSession, etcd: str) -> Cluster:
    cluster = Cluster("etcd")
    ports = free_ports(2 * SIZE)
    client_ports, peer_ports = ports[:SIZE], ports[SIZE:]
    initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peer_ports, start=1))
    token = f"minikv-bench-{os.getpid()}-{time.time_ns()}"
    for number, (client_port, peer_port) in enumerate(
        zip(client_ports, peer_ports, strict=True), 1
    ):
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        member = Member(
            name=f"etcd member m{number}",
            command=[
                etcd,
                "--name",
                f"m{number}",
                "--data-dir",
                str(root / f"etcd{number}"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                initial,
                "--initial-cluster-token",
                token,
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ],
            log_path=root / f"etcd{number}.log",
            url=client_url,
        )
        cluster.members.append(member)
    try:
        for member in cluster.members:
            member.launch()
        for member in cluster.members:

            async def healthy(member: Member = member) -> bool:
                async with session.get(member.url + "/health") as response:
                    if response.status != 200:
                        return False
                    return bool(json.loads(await response.read()).get("health") == "true")

            await eventually(healthy, f"{member.name} healthy", cluster.members)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def etcd_binary(install: bool) -> str:
    """The etcd server binary, installing Debian's package when asked (issue 5: the script
    installs what it needs)."""
    found = shutil.which("etcd")
    if found is not None:
        return found
    if not install:
        raise SystemExit(
            "etcd is not installed: run with --install (uses apt-get), or "
            "`sudo apt-get install -y etcd-server etcd-client`"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "etcd-server", "etcd-client"], check=True)
    found = shutil.which("etcd")
    if found is None:
        raise SystemExit("apt-get installed etcd-server but `etcd` is not on PATH")
    return found


def etcd_version(etcd: str) -> str:
    output = subprocess.run([etcd, "--version"], capture_output=True, text=True, check=False)
    first = (output.stdout or output.stderr).splitlines()
    return first[0].replace("etcd Version:", "").strip() if first else "unknown"


# ----------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Run:
    workload: Workload
    clients: int

    @property
    def label(self) -> str:
        return f"{self.workload}, {self.clients} client{'s' if self.clients > 1 else ''}"


@dataclass(frozen=True)
class Result:
    system: str
    run: Run
    summary: LoadSummary
    server_cpu_s: float
    client_cpu_s: float

    def to_json(self) -> str:
        document: dict[str, Any] = {"system": self.system, **self.summary.__dict__}
        document["server_cpu_s"] = round(self.server_cpu_s, 3)
        document["client_cpu_s"] = round(self.client_cpu_s, 3)
        return json.dumps(document)


def parse_runs(text: str) -> list[Run]:
    runs = []
    for part in text.split(","):
        workload, _, clients = part.strip().partition(":")
        if workload not in WORKLOADS or not clients.isdigit() or int(clients) < 1:
            raise SystemExit(
                f"--runs: {part!r} is not WORKLOAD:CLIENTS (WORKLOAD in put|get|mixed)"
            )
        runs.append(Run(workload, int(clients)))  # type: ignore[arg-type]
    return runs


async def measure(
    system: str,
    target: LoadTarget,
    *,
    cluster: Cluster,
    run: Run,
    arguments: argparse.Namespace,
    prefix: bytes,
) -> Result:
    generator = LoadGenerator(
        target,
        workload=run.workload,
        clients=run.clients,
        keys=arguments.keys,
        value_size=arguments.value_size,
        seed=arguments.seed,
        prefix=prefix,
    )
    if run.workload != "put":
        await generator.preload()
    generator.start()
    try:
        await asyncio.sleep(arguments.warmup)
        generator.reset_totals()
        server_before, client_before = cluster.cpu_seconds(), time.process_time()
        await asyncio.sleep(arguments.duration)  # the measured interval, not a synchronisation
        summary = generator.totals()
        server_cpu = cluster.cpu_seconds() - server_before
        client_cpu = time.process_time() - client_before
    finally:
        await generator.stop()
    for member in cluster.members:
        member.check_alive()
    return Result(system, run, summary, server_cpu, client_cpu)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(results: list[Result], runs: list[Run], file: TextIO) -> None:
    header = (
        f"{'workload':<20} {'system':<12} {'ops/s':>9} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'errors':>6} {'srv cpu':>8} {'cli cpu':>8}"
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    for run in runs:
        rows = {r.system: r for r in results if r.run == run}
        for system in SYSTEMS:
            result = rows.get(system)
            if result is None:
                continue
            s = result.summary
            print(
                f"{run.label:<20} {system:<12} {s.ops_per_s:>9,.0f} {_ms(s.p50_ms):>8} "
                f"{_ms(s.p90_ms):>8} {_ms(s.p99_ms):>8} {_ms(s.max_ms):>8} {s.errors:>6} "
                f"{result.server_cpu_s / s.seconds:>7.0%} {result.client_cpu_s / s.seconds:>7.0%}",
                file=file,
            )
        ours, peer = rows.get("minikv-http"), rows.get("etcd-http")
        if ours is not None and peer is not None and peer.summary.ops_per_s > 0:
            ratio = ours.summary.ops_per_s / peer.summary.ops_per_s
            line = f"{'':<20} minikv/etcd throughput {ratio:.2f}x"
            if ours.summary.p50_ms and peer.summary.p50_ms:
                line += f", p50 {ours.summary.p50_ms / peer.summary.p50_ms:.2f}x"
            print(line, file=file)
    print("(srv cpu: the cluster's processes, cli cpu: this process; 100% = one core)", file=file)


def print_targets(results: list[Result], file: TextIO) -> None:
    """Issue 5's targets, from the HTTP rows (the like-for-like ones)."""
    by_key: dict[tuple[str, str, int], LoadSummary] = {
        (r.system, r.run.workload, r.run.clients): r.summary for r in results
    }

    def pair(workload: str, clients: int) -> tuple[LoadSummary, LoadSummary] | None:
        ours = by_key.get(("minikv-http", workload, clients))
        peer = by_key.get(("etcd-http", workload, clients))
        return None if ours is None or peer is None or peer.ops_per_s == 0 else (ours, peer)

    for workload, want in (("put", 1.5), ("get", 2.0)):
        multi = [r.run.clients for r in results if r.run.workload == workload and r.run.clients > 1]
        found = pair(workload, max(multi)) if multi else None
        if found is not None:
            ratio = found[0].ops_per_s / found[1].ops_per_s
            verdict = "met" if ratio >= want else "missed"
            print(
                f"target {workload} throughput >= {want}x etcd: {ratio:.2f}x, {verdict}", file=file
            )
    single = pair("put", 1)
    if single is not None and single[0].p50_ms is not None and single[1].p50_ms is not None:
        verdict = "met" if single[0].p50_ms <= single[1].p50_ms else "missed"
        print(
            f"target single-client put p50 <= etcd's: {single[0].p50_ms:.2f} ms vs "
            f"{single[1].p50_ms:.2f} ms, {verdict}",
            file=file,
        )


async def main_async(arguments: argparse.Namespace) -> int:
    runs = parse_runs(arguments.runs)
    systems = [s.strip() for s in arguments.systems.split(",")]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"--systems: unknown {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    etcd = etcd_binary(arguments.install) if "etcd-http" in systems else ""
    version = etcd_version(etcd) if etcd else "-"
    print(
        f"etcd {version}; python {sys.version.split()[0]}; {os.cpu_count()} cpus; "
        f"{arguments.duration}s per run after {arguments.warmup}s warm-up; "
        f"{arguments.value_size} B values over {arguments.keys} keys; seed {arguments.seed}",
        file=sys.stderr,
    )
    results: list[Result] = []
    minikv: Cluster | None = None
    etcd_cluster: Cluster | None = None
    with tempfile.TemporaryDirectory(prefix="minikv-vs-etcd-", dir=arguments.dir) as tmp:
        root = Path(tmp)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            grpc_client: AsyncClient | None = None
            http_targets: list[MinikvHttpTarget | EtcdHttpTarget] = []
            try:
                if any(s.startswith("minikv") for s in systems):
                    minikv = await start_minikv(root, session, arguments.shards)
                if etcd:
                    etcd_cluster = await start_etcd(root, session, etcd)
                targets: dict[str, tuple[LoadTarget, Cluster]] = {}
                if "minikv-http" in systems and minikv is not None:
                    http_targets.append(MinikvHttpTarget(minikv.urls))
                    targets["minikv-http"] = (http_targets[-1], minikv)
                if etcd_cluster is not None:
                    http_targets.append(EtcdHttpTarget(etcd_cluster.urls))
                    targets["etcd-http"] = (http_targets[-1], etcd_cluster)
                if "minikv-grpc" in systems and minikv is not None:
                    grpc_client = AsyncClient([m.grpc_address for m in minikv.members])
                    targets["minikv-grpc"] = (GrpcTarget(grpc_client), minikv)
                for number, run in enumerate(runs):
                    for system in SYSTEMS:
                        if system not in targets:
                            continue
                        target, cluster = targets[system]
                        print(f"running {run.label} on {system}", file=sys.stderr)
                        prefix = f"bench/{number}/{run.workload}/".encode()
                        result = await measure(
                            system,
                            target,
                            cluster=cluster,
                            run=run,
                            arguments=arguments,
                            prefix=prefix,
                        )
                        results.append(result)
                        if arguments.json:
                            print(result.to_json(), flush=True)
            finally:
                if grpc_client is not None:
                    await grpc_client.close()
                for http_target in http_targets:
                    await http_target.close()
                for started in (minikv, etcd_cluster):
                    if started is not None:
                        started.stop()
    # With --json the table still goes to stderr: a person watching sees the same summary.
    output = sys.stderr if arguments.json else sys.stdout
    print_table(results, runs, output)
    print_targets(results, output)
    return 0


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--runs", default=RUNS_DEFAULT, help=f"WORKLOAD:CLIENTS,... (default {RUNS_DEFAULT})"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument("--keys", type=int, default=10_000, help="key space (preloaded for gets)")
    parser.add_argument("--shards", type=int, default=8, help="minikv shards (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary dir")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    parser.add_argument(
        "--install", action="store_true", help="apt-get install etcd-server if missing"
    )
    arguments = parser.parse_args(argv)
    if arguments.duration <= 0 or arguments.warmup < 0 or arguments.keys < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --keys >= 1")
    return arguments


def main() -> int:
    arguments = parse_arguments()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(arguments))
    return int(uvloop.run(main_async(arguments)))


if __name__ == "__main__":
    sys.exit(main())
