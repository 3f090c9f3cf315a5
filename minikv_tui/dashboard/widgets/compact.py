"""Figures squeezed into table cells of a few characters, so that a panel a third of a laptop
screen wide shows every column instead of a horizontal scrollbar.

Each format has a hard upper bound on its length (the tables' fixed column widths rely on it)
and rounds *down*, so a figure never claims more than is there: 1999 entries read "1.9k".
"""

from __future__ import annotations

from minikv_tui.dashboard import format as fmt

SIZE_CHARS_MAX = 4
"""`size` never needs more than "999K"."""
_SIZE_UNITS = ("K", "M", "G", "T")
_COUNT_UNITS = ((1_000, "k"), (1_000_000, "M"), (1_000_000_000, "G"))


def size(value: int | None) -> str:
    """Bytes in at most four characters: "999B", "8.5K", "87K", "64M"."""
    if value is None:
        return fmt.UNKNOWN
    assert value >= 0, value
    if value < 1000:
        return f"{value}B"
    amount = value / 1024
    for unit in _SIZE_UNITS:
        if amount < 10:
            return f"{int(amount * 10) / 10:.1f}{unit}"
        if amount < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{int(amount)}{unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def count(value: int, width: int = 4) -> str:
    """A non-negative count in at most `width` characters (width >= 2 for counts below a
    billion): exact while it fits, then "12k", "1.2M"."""
    assert value >= 0 and width >= 1, (value, width)
    text = str(value)
    if len(text) <= width:
        return text
    for divisor, unit in _COUNT_UNITS:
        whole = value // divisor
        if whole >= 1000:
            continue
        if whole < 10:
            tenths = f"{whole}.{value * 10 // divisor % 10}{unit}"
            if len(tenths) <= width:
                return tenths
        text = f"{whole}{unit}"
        if len(text) <= width:
            return text
    return text  # past a trillion, or a width too small for any form: the shortest one


def signed_lag(lag: int, width: int) -> str:
    """ "-12": how many entries behind, in `width` characters including the sign."""
    return "-" + count(lag, max(1, width - 1))
