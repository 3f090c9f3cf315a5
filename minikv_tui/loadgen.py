"""Closed-loop load on a key-value store: the dashboard's "toggle load" and `minikv bench`.

Each of `clients` tasks sends one request, waits for the answer, records its latency and sends
the next (closed loop: the offered load adapts to the system, as a real client's does, and a
stalled cluster shows up as falling throughput rather than as an ever-growing queue).

What a request goes to is a `LoadTarget`: minikv over gRPC (`GrpcTarget`, the smart client
that routes to leaders), minikv over HTTP (`MinikvHttpTarget`) or etcd over its v3 JSON gateway
(`EtcdHttpTarget`). The generator, key choice, value bytes and timing are the same code whatever
the target, which is what makes a side-by-side comparison fair.

Transactions: `txn` puts the same value to two keys on two different shards in one
transaction (minikv's two-phase commit), `txn1` to two keys on one shard (one Raft entry).
The key space is grouped by shard with the node's own shard function, so the generator needs
the cluster's shard count. A transaction counts as one write, timed whole; one that the store
refuses (a conflict past its deadline: UNAVAILABLE, HTTP 503) counts as an error.

Reproducible: worker `i` draws its keys and read/write choices from `Random(f"{seed}/{i}")`,
and values are fixed bytes derived from the seed; the same seed gives the same request stream
per worker (the interleaving across workers is the event loop's).

Two accumulators: a *window* that `take_window()` returns and resets (sparklines) and the
*totals* since `start()` or `reset_totals()` that `totals()` reads (a benchmark's result).
Latencies go into `LatencyHistogram`s: bounded memory however long the load runs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, Self, get_args

from minikv_core.client import (
    AsyncClient,
    NotFoundError,
    OpKind,
    TxnOp,
    TxnRequest,
    txn_request_document,
)
from minikv_core.cluster.shard_map import shard_for_key
from minikv_tui.http_wire import HttpConnection

Workload = Literal["put", "get", "mixed", "txn", "txn1"]
WORKLOADS: Final[tuple[str, ...]] = get_args(Workload)
TXN_WORKLOADS: Final = frozenset({"txn", "txn1"})
TXN_KEYS: Final = 2
"""Keys per transaction of the txn workloads."""

READ_FRACTION_DEFAULT: Final = 0.5
CLIENTS_MAX: Final = 4096
"""Each client is one task and, over HTTP, up to one connection: a bound on both."""
ERROR_TEXT_LENGTH_MAX: Final = 300
ERROR_BACKOFF_INITIAL_S: Final = 0.01
ERROR_BACKOFF_MAX_S: Final = 0.5
"""After a failed request a worker pauses (doubling, reset by a success), so load on a dead
endpoint does not become a busy loop that starves the dashboard sharing its event loop."""
PRELOAD_CONCURRENCY_DEFAULT: Final = 64
HTTP_TIMEOUT_S_DEFAULT: Final = 5.0
"""The same per-request deadline the minikv client uses by default."""


# --------------------------------------------------------------------------------- histogram


class LatencyHistogram:
    """Log-linear buckets over microseconds, after HdrHistogram: exact below 256 µs, then 128
    sub-buckets per power of two (under 0.8% relative error). Percentiles stay close to exact
    and memory bounded (a few thousand buckets at most) however many samples arrive."""

    PRECISION_BITS: Final = 8

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.max_us = 0
        self.total_us = 0

    def record(self, seconds: float) -> None:
        microseconds = max(0, round(seconds * 1_000_000))
        index = self._index(microseconds)
        self._counts[index] = self._counts.get(index, 0) + 1
        self.count += 1
        self.total_us += microseconds
        self.max_us = max(self.max_us, microseconds)

    def merge(self, other: LatencyHistogram) -> None:
        for index, count in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + count
        self.count += other.count
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile_ms(self, fraction: float) -> float | None:
        """The latency at or below which `fraction` of the samples fall (None when empty):
        the upper bound of the bucket holding that rank, capped at the exact maximum."""
        assert 0.0 <= fraction <= 1.0, fraction
        if self.count == 0:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return min(self._upper_us(index), self.max_us) / 1000.0
        raise AssertionError("bucket counts do not sum to count")

    @property
    def max_ms(self) -> float | None:
        return self.max_us / 1000.0 if self.count else None

    @property
    def mean_ms(self) -> float | None:
        return self.total_us / self.count / 1000.0 if self.count else None

    @classmethod
    def _index(cls, microseconds: int) -> int:
        """Below 2**PRECISION_BITS the value itself; above, (shift, top PRECISION_BITS bits).
        The top bit of `top` is always set, so indexes never collide and sort by value."""
        shift = max(0, microseconds.bit_length() - cls.PRECISION_BITS)
        if shift == 0:
            return microseconds
        return (shift << cls.PRECISION_BITS) + (microseconds >> shift)

    @classmethod
    def _upper_us(cls, index: int) -> int:
        shift = index >> cls.PRECISION_BITS
        if shift == 0:
            return index
        top = index & ((1 << cls.PRECISION_BITS) - 1)
        return ((top + 1) << shift) - 1


# ----------------------------------------------------------------------------------- targets


class LoadTarget(Protocol):
    """Where requests go. `worker` is the client's number, for targets that pin each client
    to one endpoint (as an etcd or HTTP client connects to one member)."""

    async def put(self, worker: int, key: bytes, value: bytes) -> None: ...

    async def get(self, worker: int, key: bytes) -> bool:
        """True when the key was found; False when the store answered that it is absent."""
        ...

    async def txn(self, worker: int, keys: Sequence[bytes], value: bytes) -> None:
        """Put `value` to every key of `keys` in one atomic transaction."""
        ...


class TargetError(Exception):
    """A request the target answered with an error (the message is the answer)."""


class GrpcTarget:
    """minikv's `AsyncClient`: routed to each shard's leader, linearizable reads."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def put(self, worker: int, key: bytes, value: bytes) -> None:
        await self.client.put(key, value)

    async def get(self, worker: int, key: bytes) -> bool:
        try:
            await self.client.get(key)
        except NotFoundError:
            return False
        return True

    async def txn(self, worker: int, keys: Sequence[bytes], value: bytes) -> None:
        await self.client.txn(success=[TxnOp(OpKind.PUT, key, value) for key in keys])


class _HttpTarget:
    """Client `worker` talks to `urls[worker % len(urls)]` over its own kept-alive connection
    (`http_wire.py`: a few µs of CPU per request where aiohttp's client spent ~120, on the
    cores the servers under test share): the load is spread evenly over the members and a
    node that leads nothing forwards, as each system does for its own HTTP clients. `close()`
    closes the connections."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float = HTTP_TIMEOUT_S_DEFAULT) -> None:
        assert urls, "at least one base URL"
        self.urls = [url.rstrip("/") for url in urls]
        self.timeout_s = timeout_s
        self._connections: dict[int, HttpConnection] = {}

    def connection(self, worker: int) -> HttpConnection:
        connection = self._connections.get(worker)
        if connection is None:
            url = self.urls[worker % len(self.urls)]
            connection = self._connections[worker] = HttpConnection(url, timeout_s=self.timeout_s)
        return connection

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.close() for c in connections))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _http_error(status: int, body: bytes) -> TargetError:
    return TargetError(f"HTTP {status}: {body[:200].decode(errors='replace').strip()}")


def _kv_path(key: bytes) -> str:
    return "/kv/" + urllib.parse.quote_from_bytes(key, safe="")


class MinikvHttpTarget(_HttpTarget):
    """minikv's HTTP API: `PUT /kv/{key}` (204) and linearizable `GET /kv/{key}` (200/404)."""

    async def put(self, worker: int, key: bytes, value: bytes) -> None:
        status, body = await self.connection(worker).request("PUT", _kv_path(key), value)
        if status != 204:
            raise _http_error(status, body)

    async def get(self, worker: int, key: bytes) -> bool:
        status, body = await self.connection(worker).request("GET", _kv_path(key))
        if status == 200:
            return True
        if status == 404:
            return False
        raise _http_error(status, body)

    async def txn(self, worker: int, keys: Sequence[bytes], value: bytes) -> None:
        """`POST /txn` with the puts as the success branch (no compares: it always succeeds
        unless it is refused, e.g. 503 after conflicting until its deadline)."""
        request = TxnRequest(success=tuple(TxnOp(OpKind.PUT, key, value) for key in keys))
        body = json.dumps(txn_request_document(request)).encode()
        status, answer = await self.connection(worker).request(
            "POST", "/txn", body, content_type="application/json"
        )
        if status != 200:
            raise _http_error(status, answer)
        if json.loads(answer).get("succeeded") is not True:
            raise TargetError(f"the transaction did not succeed: {answer[:200]!r}")


class EtcdHttpTarget(_HttpTarget):
    """etcd's v3 JSON gateway: `POST /v3/kv/put` and `POST /v3/kv/range`, keys and values in
    base64. A range is linearizable unless `serializable` is set, as minikv's default GET."""

    async def put(self, worker: int, key: bytes, value: bytes) -> None:
        document = {"key": _b64(key), "value": _b64(value)}
        await self._post(worker, "/v3/kv/put", document)

    async def get(self, worker: int, key: bytes) -> bool:
        answer = await self._post(worker, "/v3/kv/range", {"key": _b64(key)})
        return int(answer.get("count", 0)) > 0

    async def txn(self, worker: int, keys: Sequence[bytes], value: bytes) -> None:
        """`POST /v3/kv/txn` with no compares and one `requestPut` per key."""
        puts = [{"requestPut": {"key": _b64(key), "value": _b64(value)}} for key in keys]
        answer = await self._post(worker, "/v3/kv/txn", {"success": puts})
        if answer.get("succeeded") is not True:
            raise TargetError(f"etcd's transaction did not succeed: {answer!r:.200}")

    async def _post(self, worker: int, path: str, document: dict[str, Any]) -> dict[str, Any]:
        status, body = await self.connection(worker).request(
            "POST", path, json.dumps(document).encode(), content_type="application/json"
        )
        if status != 200:
            raise _http_error(status, body)
        answer = json.loads(body)
        if not isinstance(answer, dict):
            raise TargetError(f"etcd answered {body[:200]!r}, not a JSON object")
        if "error" in answer:
            raise TargetError(f"etcd error: {answer['error']}")
        return answer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LoadWindow:
    """What happened since the previous `take_window()` (or `start()`)."""

    seconds: float
    ops: int
    errors: int
    ops_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    last_error: str | None


@dataclass(frozen=True)
class LoadSummary:
    """Totals since `start()` or `reset_totals()`: what a benchmark reports."""

    workload: Workload
    clients: int
    seconds: float
    ops: int
    reads: int
    writes: int
    misses: int
    """Reads that found no key: served, so counted in `ops`, but a preloaded get workload
    expects none."""
    errors: int
    ops_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    last_error: str | None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=False)


class _Tally:
    """Counters and a histogram over one interval."""

    def __init__(self, now: float) -> None:
        self.started = now
        self.histogram = LatencyHistogram()
        self.reads = 0
        self.writes = 0
        self.misses = 0
        self.errors = 0
        self.last_error: str | None = None

    def record(self, is_read: bool, found: bool, seconds: float) -> None:
        self.histogram.record(seconds)
        if is_read:
            self.reads += 1
            self.misses += not found
        else:
            self.writes += 1

    def fail(self, error: str) -> None:
        self.errors += 1
        self.last_error = error


# -------------------------------------------------------------------------------- generator


def value_bytes(value_size: int, seed: int) -> bytes:
    """The value every put writes: fixed, seeded bytes (not all one byte, so a compressing
    store gets no unfair edge)."""
    return random.Random(f"value/{seed}").randbytes(value_size)


def key_bytes(prefix: bytes, index: int) -> bytes:
    return prefix + b"%08d" % index


class ShardedKeys:
    """The key space grouped by shard, for the transaction workloads: `pair()` draws two
    distinct keys on two different shards (`spread`) or on one shard. The first key is drawn
    uniformly from the key space, so the load spreads over the shards as a put workload's does.
    """

    def __init__(self, prefix: bytes, keys: int, shard_count: int, *, spread: bool) -> None:
        assert keys >= 1 and shard_count >= 1, (keys, shard_count)
        self.spread = spread
        self._keys = [key_bytes(prefix, index) for index in range(keys)]
        self._shard = [shard_for_key(key, shard_count) for key in self._keys]
        self._by_shard: dict[int, list[bytes]] = {}
        self._position: list[int] = []
        for key, shard in zip(self._keys, self._shard, strict=True):
            same = self._by_shard.setdefault(shard, [])
            self._position.append(len(same))
            same.append(key)
        if spread:
            if len(self._by_shard) < 2:
                raise ValueError(
                    f"the txn workload needs keys on 2 or more shards; {keys} keys fall on "
                    f"{len(self._by_shard)} of the cluster's {shard_count} shards"
                )
            self._others = {
                shard: sorted(set(self._by_shard) - {shard}) for shard in self._by_shard
            }
        else:
            self._firsts = [
                index for index, shard in enumerate(self._shard) if len(self._by_shard[shard]) > 1
            ]
            if not self._firsts:
                raise ValueError(
                    f"the txn1 workload needs 2 or more keys on one shard; {keys} keys over "
                    f"{shard_count} shards have none"
                )

    def pair(self, rng: random.Random) -> tuple[bytes, bytes]:
        if self.spread:
            index = rng.randrange(len(self._keys))
            other = rng.choice(self._others[self._shard[index]])
            return self._keys[index], rng.choice(self._by_shard[other])
        index = rng.choice(self._firsts)
        same = self._by_shard[self._shard[index]]
        position = rng.randrange(len(same) - 1)
        if position >= self._position[index]:
            position += 1  # any key of the shard but the first one
        return self._keys[index], same[position]


class LoadGenerator:
    """Closed-loop clients on the caller's event loop; start/stop any number of times."""

    def __init__(
        self,
        client: AsyncClient | LoadTarget,
        *,
        workload: Workload = "mixed",
        clients: int = 4,
        keys: int = 1000,
        value_size: int = 100,
        seed: int = 0,
        prefix: bytes = b"load/",
        read_fraction: float = READ_FRACTION_DEFAULT,
        shard_count: int | None = None,
    ) -> None:
        """`shard_count`: the cluster's, needed by the transaction workloads to place keys."""
        if workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
        if not 1 <= clients <= CLIENTS_MAX:
            raise ValueError(f"clients must be in [1, {CLIENTS_MAX}], got {clients}")
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        if value_size < 0:
            raise ValueError(f"value_size must be >= 0, got {value_size}")
        if not 0.0 <= read_fraction <= 1.0:
            raise ValueError(f"read_fraction must be in [0, 1], got {read_fraction}")
        self.target: LoadTarget = GrpcTarget(client) if isinstance(client, AsyncClient) else client
        self.workload: Workload = workload
        self.clients = clients
        self.keys = keys
        self.value_size = value_size
        self.seed = seed
        self.prefix = prefix
        self.read_fraction = {"get": 1.0, "mixed": read_fraction}.get(workload, 0.0)
        self.pairs: ShardedKeys | None = None
        if workload in TXN_WORKLOADS:
            if shard_count is None or shard_count < 1:
                raise ValueError(f"the {workload} workload needs the cluster's shard count")
            self.pairs = ShardedKeys(prefix, keys, shard_count, spread=workload == "txn")
        self._value = value_bytes(value_size, seed)
        self._tasks: list[asyncio.Task[None]] = []
        now = time.monotonic()
        self._window = _Tally(now)
        self._totals = _Tally(now)
        self._stopped_at: float | None = now

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        """Spawn the client tasks on the running loop; resets the window and the totals."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self._window = _Tally(now)
        self._totals = _Tally(now)
        self._stopped_at = None
        self._tasks = [
            loop.create_task(self._worker(worker), name=f"loadgen-{worker}")
            for worker in range(self.clients)
        ]

    async def stop(self) -> None:
        """Cancel every client task and wait until all have ended (in-flight requests are
        abandoned, not counted)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self._stopped_at = time.monotonic()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result  # a bug in the worker loop itself; requests' errors are counted

    def take_window(self) -> LoadWindow:
        now = time.monotonic()
        window, self._window = self._window, _Tally(now)
        end = now if self._stopped_at is None else max(window.started, self._stopped_at)
        seconds = max(end - window.started, 0.0)
        ops = window.histogram.count
        return LoadWindow(
            seconds=seconds,
            ops=ops,
            errors=window.errors,
            ops_per_s=ops / seconds if seconds > 0 else 0.0,
            p50_ms=window.histogram.percentile_ms(0.50),
            p99_ms=window.histogram.percentile_ms(0.99),
            last_error=window.last_error,
        )

    def reset_totals(self) -> None:
        """Start the totals afresh (a benchmark calls this when its warm-up ends)."""
        self._totals = _Tally(time.monotonic())

    def totals(self) -> LoadSummary:
        totals = self._totals
        end = time.monotonic() if self._stopped_at is None else self._stopped_at
        seconds = max(end - totals.started, 0.0)
        histogram = totals.histogram
        return LoadSummary(
            workload=self.workload,
            clients=self.clients,
            seconds=seconds,
            ops=histogram.count,
            reads=totals.reads,
            writes=totals.writes,
            misses=totals.misses,
            errors=totals.errors,
            ops_per_s=histogram.count / seconds if seconds > 0 else 0.0,
            p50_ms=histogram.percentile_ms(0.50),
            p90_ms=histogram.percentile_ms(0.90),
            p99_ms=histogram.percentile_ms(0.99),
            max_ms=histogram.max_ms,
            mean_ms=histogram.mean_ms,
            last_error=totals.last_error,
        )

    async def preload(self, concurrency: int = PRELOAD_CONCURRENCY_DEFAULT) -> None:
        """Write every key of the key space once, so reads find what they look for. Raises
        the first error: a benchmark on a half-loaded key space would measure misses."""
        assert concurrency >= 1, concurrency
        next_index = iter(range(self.keys))

        async def writer(worker: int) -> None:
            for index in next_index:  # shared iterator: each index taken by one writer
                await self.target.put(worker, key_bytes(self.prefix, index), self._value)

        writers = [asyncio.ensure_future(writer(w)) for w in range(min(concurrency, self.keys))]
        try:
            await asyncio.gather(*writers)
        finally:
            for task in writers:
                task.cancel()
            await asyncio.gather(*writers, return_exceptions=True)

    async def _worker(self, worker: int) -> None:
        rng = random.Random(f"{self.seed}/{worker}")
        target, value, read_fraction = self.target, self._value, self.read_fraction
        pairs = self.pairs
        backoff_s = ERROR_BACKOFF_INITIAL_S
        while True:
            keys = pairs.pair(rng) if pairs is not None else None
            key = key_bytes(self.prefix, rng.randrange(self.keys)) if keys is None else b""
            is_read = read_fraction >= 1.0 or (read_fraction > 0.0 and rng.random() < read_fraction)
            started = time.perf_counter()
            try:
                found = True
                if keys is not None:
                    await target.txn(worker, keys, value)
                elif is_read:
                    found = await target.get(worker, key)
                else:
                    await target.put(worker, key, value)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                text = f"{type(error).__name__}: {error}"[:ERROR_TEXT_LENGTH_MAX]
                self._window.fail(text)
                self._totals.fail(text)
                await asyncio.sleep(backoff_s)
                backoff_s = min(ERROR_BACKOFF_MAX_S, backoff_s * 2)
                continue
            elapsed = time.perf_counter() - started
            self._window.record(is_read, found, elapsed)
            self._totals.record(is_read, found, elapsed)
            backoff_s = ERROR_BACKOFF_INITIAL_S
