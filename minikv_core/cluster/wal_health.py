"""A running node's own WAL: finding damage on disk, and rewriting the log around it.

A node reads its WAL only when it starts; while it runs, every group's log lives in memory
(raft_log.py: a MemoryStorage per group in front of the WAL). Damage to bytes already written
(bit rot, a bad sector, a stray write) therefore goes unnoticed until the next start, which
refuses a WAL with a bad record in the middle. Two tools close that gap:

- `check_wal` reads every record of the node's WAL, CRCs included, without locking it (the
  same read-only pass as `minikv wal verify`), so `minikv cluster verify` can name a damaged
  segment and offset while the node still serves.
- `rewrite_wal` makes the node stop depending on any segment it has now: it seals the active
  segment, then compacts every group to its applied index (engines flushed first), which lets
  truncation delete every old segment after re-appending each group's latest hard state and
  snapshot mark from memory (raft_log.py's truncation invariant). What the damaged bytes held
  is rewritten from the node's correct in-memory state, so nothing is lost and nothing is read
  back from the bad bytes. This is repair's answer to a WAL finding (issue #10: "a bad
  SSTable/WAL record ... is rebuilt").

A node that was stopped with a damaged WAL cannot rewrite it: it refuses to start, naming file
and offset. Then `minikv wal repair` cuts the log at the damage and the node recovers the
entries it lost from its peers (the same path as a torn tail), or the operator declares the
node dead and `minikv cluster repair --dead` replaces its replicas.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from minikv_core.cluster.service import DeadlineExceededError
from minikv_core.storage import wal as wal_module
from minikv_core.storage.wal import FindingKind

if TYPE_CHECKING:
    from minikv_core.cluster.host import MultiRaftHost

CHECK_ATTEMPTS: Final = 3
"""A truncation may delete a segment while the check reads the directory: look again."""

CONFIRM_AFTER_S: Final = 0.02
"""Pause before the second read that confirms a finding (see `check_wal`): far longer than
one append's write takes."""

REWRITE_RETRY_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class WalDamage:
    segment: str
    offset: int
    reason: str

    def describe(self) -> str:
        return f"WAL segment {self.segment}, byte {self.offset}: {self.reason}"

    def to_json(self) -> dict[str, object]:
        return {"segment": self.segment, "offset": self.offset, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class WalRewrite:
    segments_before: tuple[str, ...]
    segments_after: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"before": list(self.segments_before), "after": list(self.segments_after)}


def check_wal(directory: Path) -> list[WalDamage]:
    """Every bad record in the WAL at `directory` (blocking: run it in a thread). The end of
    the active segment may be a write in progress; that is a torn tail, not damage.

    A finding is reported only if a second read, CONFIRM_AFTER_S later, finds it again. The
    node appends while this reads, and a read racing an append that spans pages can copy
    the record's first page before the write reaches it and its next page after: a zeroed
    header with data behind it, which verify rightly calls damage in a file at rest (seen
    in CI: a repair then failed with "still damaged"). Bit rot stays where it is; a racing
    append is whole by the second read."""
    found = _read_damage(directory)
    if not found:
        return found
    time.sleep(CONFIRM_AFTER_S)
    again = {(damage.segment, damage.offset) for damage in _read_damage(directory)}
    return [damage for damage in found if (damage.segment, damage.offset) in again]


def _read_damage(directory: Path) -> list[WalDamage]:
    for _ in range(CHECK_ATTEMPTS - 1):
        try:
            return _damage(wal_module.verify(directory))
        except FileNotFoundError:
            continue
    return _damage(wal_module.verify(directory))


def _damage(report: wal_module.VerifyReport) -> list[WalDamage]:
    return [
        WalDamage(finding.path.name, finding.offset, finding.reason)
        for finding in report.findings
        if finding.kind is FindingKind.CORRUPTION
    ]


async def rewrite_wal(host: MultiRaftHost, deadline: float) -> WalRewrite:
    """Leave every segment the WAL has now behind (see the module docstring).

    Raises DeadlineExceededError if a group still holds live entries (appended, not yet
    applied) in an old segment when the deadline passes; calling again continues."""
    wal = host.log.wal
    before = tuple(segment.name for segment in wal.segments())
    last_old = wal.end_position.segment
    # Sealed, the active segment (damaged or not) can be truncated like any other; one that
    # held no record stays active and holds nothing to leave behind.
    if not await asyncio.to_thread(wal.seal):
        last_old -= 1
    while wal.first_position.segment <= last_old:
        await host.compact_logs(sorted(host.shard_groups))
        if wal.first_position.segment > last_old:
            break
        if time.monotonic() >= deadline:
            raise DeadlineExceededError(
                f"the WAL still needs segment {wal.first_position.segment} (a group has "
                "entries there it has not applied yet); run the rewrite again"
            )
        await asyncio.sleep(REWRITE_RETRY_S)
    return WalRewrite(before, tuple(segment.name for segment in wal.segments()))
