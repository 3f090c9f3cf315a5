"""Numbers as a person reads them at a glance: short, fixed width, never a misleading zero."""

from __future__ import annotations

import datetime as dt

UNKNOWN = "\u2013"  # an en dash: "not known", never a misleading 0


def size(value: int | None) -> str:
    if value is None:
        return UNKNOWN
    amount = float(value)
    for unit in ("B", "K", "M", "G"):
        if amount < 1024 or unit == "G":
            return f"{amount:.0f}{unit}" if unit == "B" or amount >= 100 else f"{amount:.1f}{unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def rate(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def percent(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.0f}%"


def milliseconds(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    return f"{value:.1f}ms" if value < 100 else f"{value:.0f}ms"


def clock(at: float, tz: dt.tzinfo | None) -> str:
    """HH:MM:SS in `tz` (None: the local zone; tests pass UTC so output never depends on
    where they run)."""
    return dt.datetime.fromtimestamp(at, tz).strftime("%H:%M:%S")


def who(node: int | None) -> str:
    return UNKNOWN if node is None else str(node)
