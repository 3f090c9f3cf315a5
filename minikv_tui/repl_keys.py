"""What the REPL knows of key names, for completion: keys recently typed or seen, and the
results of server-side prefix scans run in one background thread.

Why a thread of its own: completion runs on every keystroke, and a scan is a network round
trip that may take up to its deadline when a node is down. The completer only ever reads
what is already here and asks for more; the answer arrives later as a plain
`concurrent.futures.Future` (polled, never called back, so nothing crosses into an event loop
that may be gone by then).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Final

RECENT_KEYS_MAX: Final = 500
CACHED_PREFIXES_MAX: Final = 256
COMPLETION_KEYS_MAX: Final = 50
"""Keys one prefix scan asks for: more than a completion menu can usefully show."""
FRESH_S: Final = 3.0
"""A scan result younger than this is used without asking the cluster again."""
FAILURE_PAUSE_S: Final = 1.0
"""After a failed scan, no new scan for this long: the cluster is likely down, and each
keystroke must not start another request that waits for its deadline."""

ScanKeys = Callable[[bytes, int], tuple[Sequence[bytes], bool]]
"""(prefix, limit) -> (keys in order, whether more keys exist). May raise on failure."""


class RecentKeys:
    """Keys in most-recently-used order, bounded."""

    def __init__(self, capacity: int = RECENT_KEYS_MAX) -> None:
        assert capacity > 0
        self._capacity = capacity
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def touch(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                self._keys[key] = None
                self._keys.move_to_end(key)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)

    def forget(self, key: bytes) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def matching(self, prefix: bytes) -> list[bytes]:
        """Keys starting with `prefix`, most recent first."""
        with self._lock:
            return [key for key in reversed(self._keys) if key.startswith(prefix)]


@dataclass(frozen=True, slots=True)
class _Scanned:
    keys: tuple[bytes, ...]
    complete: bool
    """No key under the prefix was left out (the scan was not cut by its limit)."""
    fetched_at: float


class PrefixScanner:
    """Runs prefix scans in one daemon thread (started on first use) and caches the results.

    Only the newest request waits to run: a request superseded before its scan started is
    answered None, so a fast typist causes one scan at a time, for what they typed last.
    """

    def __init__(
        self,
        scan: ScanKeys,
        *,
        limit: int = COMPLETION_KEYS_MAX,
        fresh_s: float = FRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert limit > 0 and fresh_s > 0
        self._scan = scan
        self._limit = limit
        self._fresh_s = fresh_s
        self._clock = clock
        self._cache: OrderedDict[bytes, _Scanned] = OrderedDict()
        self._waiting: dict[bytes, list[Future[tuple[bytes, ...] | None]]] = {}
        self._wanted: bytes | None = None
        self._in_flight: bytes | None = None
        self._failed_at: float | None = None
        self._closed = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self.scans_run = 0
        """Scans sent so far (for the curious and for tests: a cache hit sends none)."""

    def cached(self, prefix: bytes) -> tuple[bytes, ...] | None:
        """Fresh keys under `prefix`: its own scan, or a complete scan of a shorter prefix
        filtered down. None when nothing fresh is known."""
        with self._condition:
            return self._cached_locked(prefix)

    def request(self, prefix: bytes) -> Future[tuple[bytes, ...] | None]:
        """Keys under `prefix`, now if cached, else from a scan in the background. The
        future's result is None when the scan failed, was superseded, or the scanner closed."""
        future: Future[tuple[bytes, ...] | None] = Future()
        with self._condition:
            known = self._cached_locked(prefix)
            if known is not None:
                future.set_result(known)
                return future
            if self._closed or (
                self._failed_at is not None and self._clock() - self._failed_at < FAILURE_PAUSE_S
            ):
                future.set_result(None)
                return future
            self._waiting.setdefault(prefix, []).append(future)
            if prefix != self._in_flight:
                superseded = self._wanted
                if superseded is not None and superseded != prefix:
                    _resolve_all(self._waiting.pop(superseded, []), None)
                self._wanted = prefix
                self._condition.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="minikv-repl-keys", daemon=True
                )
                self._thread.start()
        return future

    def note_put(self, key: bytes) -> None:
        """A key was written: complete cached scans that cover it must list it."""
        with self._condition:
            for prefix, scanned in list(self._cache.items()):
                if scanned.complete and key.startswith(prefix) and key not in scanned.keys:
                    keys = tuple(sorted((*scanned.keys, key)))
                    self._cache[prefix] = _Scanned(keys, True, scanned.fetched_at)

    def note_delete(self, key: bytes) -> None:
        with self._condition:
            for prefix, scanned in list(self._cache.items()):
                if key in scanned.keys:
                    keys = tuple(k for k in scanned.keys if k != key)
                    self._cache[prefix] = _Scanned(keys, scanned.complete, scanned.fetched_at)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
            waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            _resolve_all(futures, None)
        if thread is not None:
            # A scan in flight ends by its own deadline; the daemon thread is not waited for
            # longer than that bound, and exits as soon as it returns.
            thread.join(timeout=0.1)

    def _cached_locked(self, prefix: bytes) -> tuple[bytes, ...] | None:
        now = self._clock()
        exact = self._cache.get(prefix)
        if exact is not None and now - exact.fetched_at < self._fresh_s:
            return exact.keys
        for length in range(len(prefix) - 1, -1, -1):
            shorter = self._cache.get(prefix[:length])
            if (
                shorter is not None
                and shorter.complete
                and now - shorter.fetched_at < self._fresh_s
            ):
                return tuple(key for key in shorter.keys if key.startswith(prefix))
        return None

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._wanted is None and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                prefix = self._wanted
                assert prefix is not None
                self._wanted = None
                self._in_flight = prefix
            result: tuple[bytes, ...] | None
            try:
                keys, more = self._scan(prefix, self._limit)
                result = tuple(keys)
                failed = False
            except Exception:  # any failure only means no completions from the cluster now
                result, more, failed = None, False, True
            with self._condition:
                self.scans_run += 1
                self._in_flight = None
                if failed:
                    self._failed_at = self._clock()
                else:
                    assert result is not None
                    self._failed_at = None
                    self._cache[prefix] = _Scanned(result, not more, self._clock())
                    self._cache.move_to_end(prefix)
                    while len(self._cache) > CACHED_PREFIXES_MAX:
                        self._cache.popitem(last=False)
                futures = self._waiting.pop(prefix, [])
            _resolve_all(futures, result)


def _resolve_all(
    futures: list[Future[tuple[bytes, ...] | None]], result: tuple[bytes, ...] | None
) -> None:
    for future in futures:
        if not future.done():
            future.set_result(result)


class KeyIndex:
    """Recent keys plus the scanner: what the completer asks, what the executor tells."""

    def __init__(self, scanner: PrefixScanner | None) -> None:
        self.recent = RecentKeys()
        self.scanner = scanner

    def saw(self, keys: Iterable[bytes]) -> None:
        self.recent.touch(keys)

    def wrote(self, key: bytes) -> None:
        self.recent.touch((key,))
        if self.scanner is not None:
            self.scanner.note_put(key)

    def deleted(self, key: bytes) -> None:
        self.recent.forget(key)
        if self.scanner is not None:
            self.scanner.note_delete(key)

    def close(self) -> None:
        if self.scanner is not None:
            self.scanner.close()
